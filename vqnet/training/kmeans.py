"""K-means codebook reduction: the paper's variable-rate mechanism.

The paper clusters a trained codebook into K centroids and uses them as a smaller codebook
(optionally fine-tuned). We weight each code by how often the training set uses it: an unused code
should not pull a centroid away from the codes that carry the images (Mao et al. cluster plainly;
with a 1024 book trained from scratch many codes are rare, so weighting matters more here).
"""

from __future__ import annotations

import torch

#: Largest distance matrix (entries) one assignment step builds: 32 MB. The official codebook has
#: 16384 codes, so a large K would otherwise hold 16384 x K floats at once.
MAX_DISTANCES = 1 << 23


def nearest_centroid(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of each row's nearest centroid, in row chunks of at most :data:`MAX_DISTANCES`
    distances (one call when they fit, so small problems compute what they always did)."""
    rows = max(1, MAX_DISTANCES // centroids.shape[0])
    if x.shape[0] <= rows:
        return torch.cdist(x, centroids).argmin(dim=1)
    return torch.cat([torch.cdist(chunk, centroids).argmin(dim=1) for chunk in x.split(rows)])


def kmeans(
    points: torch.Tensor, k: int, weights: torch.Tensor | None = None, iters: int = 50, seed: int = 0
) -> torch.Tensor:
    """Weighted Lloyd's k-means with k-means++ seeding. Returns (k, d) float32 centroids."""
    x = points.detach().float()
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    w = torch.ones(n) if weights is None else weights.detach().float().clamp_min(0) + 1e-6
    gen = torch.Generator().manual_seed(seed)
    centroids = x[torch.multinomial(w, 1, generator=gen)]
    d2 = torch.cdist(x, centroids).squeeze(1) ** 2
    for _ in range(1, k):
        nxt = x[torch.multinomial(w * d2 + 1e-12, 1, generator=gen)]
        centroids = torch.cat([centroids, nxt])
        d2 = torch.minimum(d2, (torch.cdist(x, nxt).squeeze(1)) ** 2)
    for _ in range(iters):
        assign = nearest_centroid(x, centroids)
        mass = torch.zeros(k).index_add_(0, assign, w)
        sums = torch.zeros(k, x.shape[1]).index_add_(0, assign, x * w[:, None])
        empty = mass <= 1e-9
        new = sums / mass.clamp_min(1e-9)[:, None]
        new[empty] = centroids[empty]  # keep an empty centroid where it is rather than NaN
        if torch.allclose(new, centroids):
            break
        centroids = new
    return centroids
