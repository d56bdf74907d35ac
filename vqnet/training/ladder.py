"""Build the variable-rate ladder: K-means codebooks for each K plus a static entropy prior per K.

Input: a trained VQModel and a folder of training photos. The encoder runs once per photo; every K
re-quantises the same latents, so adding rungs costs almost nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from vqnet.codec.bundle import Codebook, Codec, CodecError
from vqnet.codec.model import VQModel, nearest_code_chunked
from vqnet.entropy import PAIR_EXPONENTS, Prior
from vqnet.packets import context_refs
from vqnet.training.kmeans import kmeans


def quantized_vectors(latents: Sequence[torch.Tensor], qc_weight: torch.Tensor, qc_bias: torch.Tensor) -> torch.Tensor:
    """All latent positions after quant_conv, as an (N, embed_dim) matrix."""
    with torch.inference_mode():
        return torch.cat(
            [F.conv2d(z, qc_weight, qc_bias).permute(0, 2, 3, 1).reshape(-1, qc_weight.shape[0]) for z in latents]
        )


def code_indices(vectors: torch.Tensor, codebook: torch.Tensor) -> np.ndarray:
    """Nearest code of every row of ``vectors`` (chunked, so memory stays flat), computed where
    they are."""
    with torch.inference_mode():
        return torch.cat([nearest_code_chunked(chunk, codebook) for chunk in vectors.split(8192)]).cpu().numpy()


def code_counts(vectors: torch.Tensor, codebook: torch.Tensor) -> np.ndarray:
    return np.bincount(code_indices(vectors, codebook), minlength=codebook.shape[0]).astype(np.float64)


def neighbour_pairs(grid: np.ndarray, K: int) -> np.ndarray:
    """(K, K) counts of (neighbour, index) over horizontally and vertically adjacent positions.

    Both directions go into one table: the codes are close to isotropic, and on Kodak the pooled
    table coded either neighbour as well as or better than a table per direction.
    """
    a = np.concatenate([grid[:, :-1].ravel(), grid[:-1, :].ravel()]).astype(np.int64)
    b = np.concatenate([grid[:, 1:].ravel(), grid[1:, :].ravel()]).astype(np.int64)
    return np.bincount(a * K + b, minlength=K * K).reshape(K, K).astype(np.float64)


#: Shrinkage strengths :func:`fit_prior` chooses each context table's from (the weight of the
#: marginal in a row, :meth:`~vqnet.entropy.Prior.with_context`). Why a choice: a K=1024 table has a
#: million cells and 1,500 photos give a few neighbour pairs per cell, so its rows are mostly noise
#: and want heavy shrinkage, while a K=16 row is well estimated and wants little. Fitted on 3000
#: views of the training photos, a K=1024 table coded Kodak in 0.0336 ideal bpp at strength 32 and
#: 0.0328 at 1024 (ideal bits of raster streams, as :func:`best_pair` counts them).
STRENGTHS = (32.0, 128.0, 512.0, 2048.0)


def fit_prior(latents: Sequence[torch.Tensor], cb: Codebook, views: int = 1) -> Prior:
    """The index distribution of ``cb`` (with its own quant_conv) on the encoder outputs, with
    its neighbour-context table (:meth:`Prior.with_context`), the table's shrinkage strength and
    the pair exponent that code held-out maps best (:func:`best_context`).

    ``views`` consecutive latents are views of one photo (mirror, shifts: :func:`~vqnet.training.photos.photo_views`);
    they are held out together, or the held-out maps would reward a table that memorised them."""
    grids = [
        code_indices(quantized_vectors([z], cb.quant_conv_weight, cb.quant_conv_bias), cb.embedding).reshape(
            z.shape[-2:]
        )
        for z in latents
    ]
    # Strength and exponent are chosen on half the photos with a table fitted on the other half:
    # chosen on the maps its table was fitted on, the product rewards the table's overfitting.
    fit, held = photo_halves(grids, views)
    (counts, pairs), (held_counts, held_pairs) = (_code_counts(half, cb.K) for half in (fit, held))
    strength, pair = best_context(counts, pairs, held) if held else (STRENGTHS[0], None)
    return Prior.from_counts(counts + held_counts).with_context(pairs + held_pairs, strength).with_pair(pair)


def photo_halves(grids: Sequence[np.ndarray], views: int = 1) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Every other photo's ``views`` consecutive maps, and the rest: a split that never parts a
    photo from its own views."""
    halves: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
    for i, g in enumerate(grids):
        halves[i // views % 2].append(g)
    return halves


def _code_counts(grids: Sequence[np.ndarray], K: int) -> tuple[np.ndarray, np.ndarray]:
    """(K,) code counts and (K, K) neighbour-pair counts of ``grids``."""
    counts = sum((np.bincount(g.ravel(), minlength=K).astype(np.float64) for g in grids), np.zeros(K))
    return counts, sum((neighbour_pairs(g, K) for g in grids), np.zeros((K, K)))


def _raster_bits(grids: Sequence[np.ndarray], limit: int) -> Callable[[Prior], float]:
    """Ideal bits a prior spends on ``grids`` (at most ``limit`` of them, evenly spaced), each
    coded as one raster stream."""
    chosen = list(grids)[:: max(1, -(-len(grids) // limit))]
    streams = [(g.ravel(), context_refs(np.arange(g.size), g.shape[1])) for g in chosen]
    return lambda prior: sum(float(prior.information_bits(s, refs).sum()) for s, refs in streams)


def best_pair(prior: Prior, grids: Sequence[np.ndarray], limit: int = 400) -> float | None:
    """The pair exponent (:data:`PAIR_EXPONENTS`, or None for one neighbour) under which
    ``prior`` codes ``grids`` (at most ``limit`` of them, evenly spaced), each as one raster
    stream, in the fewest ideal bits.

    Why choose rather than fix it: the product of the two neighbours' rows double-counts what they
    share, and how much depends on K and on the data (for the bundled model, Kodak's ideal bits
    favour 0.7 at K=1024 and 1 at K=16, ``scripts/experiments/context_bits.py``; held-out training maps chose
    0.5 and 0.75)."""
    bits = _raster_bits(grids, limit)
    return min((None, *PAIR_EXPONENTS), key=lambda pair: bits(prior.with_pair(pair)))


def best_context(
    counts: np.ndarray, pairs: np.ndarray, grids: Sequence[np.ndarray], limit: int = 400
) -> tuple[float, float | None]:
    """The (shrinkage strength, pair exponent) under which the prior of ``counts`` and the table
    of ``pairs`` code ``grids`` (held-out maps) in the fewest ideal bits, as :func:`best_pair`."""
    bits = _raster_bits(grids, limit)
    marginal = Prior.from_counts(counts)
    tables = {s: marginal.with_context(pairs, s) for s in STRENGTHS}
    return min(
        ((s, pair) for s in STRENGTHS for pair in (None, *PAIR_EXPONENTS)),
        key=lambda choice: bits(tables[choice[0]].with_pair(choice[1])),
    )


def build_ladder(
    model: VQModel,
    latents: Sequence[torch.Tensor],
    ks: Sequence[int],
    seed: int = 0,
    views: int = 1,
    device: str | torch.device = "cpu",
) -> Codec:
    """K-means the base codebook (usage-weighted) into every K and fit each K's prior on the latents
    (``views`` as :func:`fit_prior`). The usage count runs on ``device``: against the official
    16384-code book it is the costliest step (1500 photos and their mirrors: ~19 TFLOP)."""
    base = Codebook.from_model(model)
    vectors = quantized_vectors(latents, base.quant_conv_weight, base.quant_conv_bias)
    usage = code_counts(vectors.to(device), base.embedding.to(device))
    del vectors
    codebooks: dict[int, Codebook] = {}
    for K in sorted(set(ks), reverse=True):
        if K > base.K:
            raise ValueError(f"K={K} exceeds the base codebook size {base.K}")
        emb = base.embedding if K == base.K else kmeans(base.embedding, K, torch.from_numpy(usage).float(), seed=seed)
        cb = replace(base, K=K, embedding=emb.clone())
        codebooks[K] = replace(cb, prior=fit_prior(latents, cb, views))
    return Codec(model, codebooks)


def swap_decoder(codec: Codec, model: VQModel, latents: Sequence[torch.Tensor] | None = None, views: int = 1) -> Codec:
    """``codec`` with ``model``'s post_quant_conv and decoder, every codebook kept.

    Why not rebuild the ladder with K-means: a decoder fine-tuned with the encoder frozen
    (``vqnet train vqgan --freeze encoder``) leaves every index map as it was, so the ladder's
    codebooks, their index fingerprints and the concealment transformers trained on them all stay
    valid, whereas K-means run again can move centroids (a last-bit change in the encoder's
    arithmetic is enough). Every rung takes the new post_quant_conv, so fine-tuned rungs are refused:
    their own convs were trained for the old decoder (fine-tune after swapping instead).
    With ``latents``, each K's prior is refit on them (and gains a context table; ``views`` as
    :func:`fit_prior`).
    """
    tuned = [K for K, cb in codec.codebooks.items() if cb.finetuned]
    if tuned:
        raise CodecError(
            f"K={', '.join(map(str, tuned))} were fine-tuned for the old decoder; swap the decoder "
            f"into a K-means ladder and fine-tune afterwards"
        )
    if model.config.encoder_side != codec.model.config.encoder_side:
        raise CodecError("the new model's config differs from the codec's (other than its decoder's size)")
    for part in ("encoder", "quant_conv", "quantize"):
        old, new = getattr(codec.model, part).state_dict(), getattr(model, part).state_dict()
        if any(not torch.equal(old[k].half(), new[k].half()) for k in old):
            raise CodecError(
                f"the new model's {part} differs from the codec's: its index maps would change, "
                f"so build a new ladder (vqnet codebook kmeans) instead"
            )
    swapped = VQModel(model.config)  # the new decoder may be larger (grow_decoder)
    swapped.load_state_dict(
        codec.model.state_dict() | {k: v for k, v in model.state_dict().items() if k.startswith("decoder.")}
    )
    swapped.to(memory_format=torch.channels_last).eval()
    swapped.post_quant_conv.load_state_dict(model.post_quant_conv.state_dict())
    base = Codebook.from_model(swapped)
    codebooks = {
        K: replace(
            cb,
            post_quant_conv_weight=base.post_quant_conv_weight.clone(),
            post_quant_conv_bias=base.post_quant_conv_bias.clone(),
        )
        for K, cb in codec.codebooks.items()
    }
    out = Codec(swapped, codebooks, provenance=dict(codec.provenance))
    return refit_priors(out, latents, views) if latents is not None else out


def refit_priors(codec: Codec, latents: Sequence[torch.Tensor], views: int = 1) -> Codec:
    """``codec`` with every rung's prior and neighbour-context table (and those of the K-means
    codebooks kept as ``raw``) fitted again on ``latents``; nothing else changes, so index maps,
    and the transformers trained on them, stay valid.

    Why: a ladder built on a GPU machine gets its priors from the 256-px crops it was sent, too
    few neighbour pairs for K=1024's 1024x1024 context table: refit on 1500 whole training photos,
    K=1024 coded Kodak in 0.0356 instead of 0.0380 bpp (docs/experiment-log.md). ``views`` as
    :func:`fit_prior`.
    """

    def refit(cb: Codebook) -> Codebook:
        return replace(cb, prior=fit_prior(latents, cb, views), raw=refit(cb.raw) if cb.raw is not None else None)

    return Codec(codec.model, {K: refit(cb) for K, cb in codec.codebooks.items()}, provenance=dict(codec.provenance))
