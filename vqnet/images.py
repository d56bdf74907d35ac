"""Image sources and the pixel <-> tensor conventions shared by the codec, training and the sweep.

Why one module: the sweep, the trainer and `vqnet score` must agree on how an image becomes a
tensor (RGB, [-1,1], padded to a multiple of f) or the numbers they report are not comparable.
"""
from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
# scikit-image photos that ship inside the wheel (no download), so the default scenario runs offline.
SKIMAGE_DEFAULTS = ("astronaut", "chelsea", "coffee", "rocket")


class ImageError(ValueError):
    """An image source that cannot be read; the message is meant for the user as one line."""


@dataclass(frozen=True)
class NamedImage:
    name: str
    pixels: np.ndarray  # uint8 H,W,3


def to_rgb(arr: np.ndarray) -> np.ndarray:
    """Greyscale -> RGB, RGBA -> RGB (alpha dropped), always uint8 H,W,3."""
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ImageError(f"expected an H×W×3 image, got shape {arr.shape}")
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def load_image(path: str | Path) -> np.ndarray:
    """Read any PIL-readable file as uint8 RGB."""
    try:
        with Image.open(path) as im:
            return to_rgb(np.array(im.convert("RGB")))
    except FileNotFoundError:
        raise ImageError(f"image not found: {path}") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"cannot read image {path}: {exc}") from None


def save_image(path: str | Path, pixels: np.ndarray) -> None:
    """Write uint8 RGB pixels in the format the suffix names (ImageError if that fails)."""
    try:
        Image.fromarray(to_rgb(pixels)).save(path)
    except (OSError, ValueError) as exc:  # PIL: unknown suffix -> ValueError, unwritable -> OSError
        raise ImageError(f"cannot write image {path}: {exc}") from None


def list_image_files(source: str | Path) -> list[Path]:
    """A folder (recursive), a glob pattern, or a single file -> sorted image paths."""
    s = str(source)
    p = Path(s)
    if p.is_dir():
        files = [f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES]
    elif any(ch in s for ch in "*?["):
        files = [Path(f) for f in glob.glob(s, recursive=True) if Path(f).suffix.lower() in IMAGE_SUFFIXES]
    elif p.is_file():
        files = [p]
    else:
        raise ImageError(f"no such image file or folder: {s}")
    if not files:
        raise ImageError(f"no images found in {s}")
    return sorted(files)


def choose_photos(data: str | Path, n: int | None, seed: int = 0) -> list[Path]:
    """All photos under ``data``, or ``n`` of them drawn by ``seed`` (in file order): the one rule
    every training step samples photos by, so a later step can tell which ones an earlier used."""
    files = list_image_files(data)
    if n is None or n >= len(files):
        return files
    rng = np.random.default_rng(seed)
    return [files[i] for i in sorted(rng.choice(len(files), size=n, replace=False))]


def skimage_image(name: str) -> np.ndarray:
    import skimage.data

    if name not in SKIMAGE_DEFAULTS:
        raise ImageError(f"unknown scikit-image photo {name!r}; choose from {', '.join(SKIMAGE_DEFAULTS)}")
    return to_rgb(getattr(skimage.data, name)())


def load_images(source: str | None, names: list[str] | None = None, limit: int | None = None) -> list[NamedImage]:
    """The sweep's images: ``source`` is a folder/glob/file, or None for scikit-image's bundled photos."""
    if source is None:
        chosen = names or list(SKIMAGE_DEFAULTS)
        images = [NamedImage(n, skimage_image(n)) for n in chosen]
    else:
        images = [NamedImage(f.stem, load_image(f)) for f in list_image_files(source)]
    return images[:limit] if limit else images


def pad_to_multiple(img: np.ndarray, multiple: int) -> np.ndarray:
    """Edge-replicate pad bottom/right to a multiple of the codec's downsampling factor.

    Replication (not zeros) keeps the border latents close to the image content; the padding is
    cropped away after decoding and never counted in bpp (which uses the original pixels).
    """
    h, w = img.shape[:2]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return img
    return np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="edge")


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 H,W,3 -> float (1,3,H,W) in [-1,1] (x/127.5-1, the LPIPS and taming convention).

    Computed in float64 and rounded once, exactly as ``lpips.im2tensor`` does.
    """
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).unsqueeze(0).double().div(127.5).sub(1.0).float()


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (1,3,H,W) in [-1,1] -> uint8 H,W,3 (rounded, clipped)."""
    return to_uint8_batch(x[:1])[0]


def to_uint8_batch(x: torch.Tensor) -> np.ndarray:
    """float (N,3,H,W) in [-1,1] -> uint8 (N,H,W,3) (rounded, clipped)."""
    arr = ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().byte()
    return arr.permute(0, 2, 3, 1).cpu().numpy()
