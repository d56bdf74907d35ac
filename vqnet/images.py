"""Image sources and the pixel <-> tensor conventions shared by the codec, training and the sweep.

Why one module: the sweep, the trainer and `vqnet score` must agree on how an image becomes a
tensor (RGB, [-1,1], padded to a multiple of f) or the numbers they report are not comparable.
"""

from __future__ import annotations

import glob
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vqnet.errors import VqnetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
# scikit-image photos that ship inside the wheel (no download), so the default scenario runs offline.
SKIMAGE_DEFAULTS = ("astronaut", "chelsea", "coffee", "rocket")


class ImageError(VqnetError, ValueError):
    """An image source that cannot be read; the message is meant for the user as one line."""


@dataclass(frozen=True)
class NamedImage:
    name: str
    pixels: np.ndarray  # uint8 H,W,3


def to_rgb(arr: np.ndarray) -> np.ndarray:
    """Any image array -> uint8 H,W,3: greyscale (H,W or H,W,1) expanded, an alpha channel
    (H,W,2 or H,W,4) dropped, and the values scaled from their type's range: bool {0,1}, uint8 as
    is, uint16 [0, 65535] (÷257, rounded), float [0, 1] (×255, rounded). Anything else (signed
    or 32-bit integers, floats outside [0, 1] or not finite, other channel counts) raises
    :class:`ImageError`: guessing its range would mangle the picture silently."""
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[2] in (1, 2):
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4) or 0 in arr.shape:
        raise ImageError(f"expected an H×W greyscale or H×W×3 colour image, got shape {arr.shape}")
    arr = arr[..., :3]
    if arr.dtype == np.uint8:
        pass
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype == np.uint16:
        arr = np.round(arr / 257.0).astype(np.uint8)
    elif arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise ImageError("float pixels must be finite numbers in [0, 1], found NaN or inf")
        if arr.min() < 0 or arr.max() > 1:
            raise ImageError(
                f"float pixels must lie in [0, 1], got [{arr.min():g}, {arr.max():g}]; save the image as 8- or 16-bit"
            )
        arr = np.round(arr.astype(np.float64) * 255.0).astype(np.uint8)
    else:
        raise ImageError(f"{arr.dtype} pixels have no known range; save the image as 8- or 16-bit")
    return np.ascontiguousarray(arr)


#: Pillow modes whose pixels ``convert("RGB")`` would clip or truncate instead of scale; they go
#: through :func:`to_rgb` as arrays. ``I`` (32-bit signed) has no range to scale from and is refused there.
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "F", "I")


def _pil_to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode in _WIDE_MODES:
        return to_rgb(np.array(im))
    if im.mode in ("RGBa", "La"):  # premultiplied alpha: un-premultiply first
        im = im.convert("RGBA")
    return to_rgb(np.array(im.convert("RGB")))


def load_image(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file as uint8 RGB (any mode or bit depth Pillow reads, see :func:`to_rgb`;
    TIFFs Pillow cannot open, such as float RGB, through tifffile). ``max_pixels`` refuses a
    larger image from its header, before its pixels are decoded."""
    path = Path(path)
    if path.is_dir():
        raise ImageError(f"{path} is a folder, not an image file")
    try:
        with Image.open(path) as im:
            _check_pixels(im.height, im.width, max_pixels)
            return _pil_to_rgb(im)
    except FileNotFoundError:
        raise ImageError(f"image not found: {path}") from None
    except UnidentifiedImageError:
        if path.suffix.lower() in (".tif", ".tiff"):
            return _load_tiff(path, max_pixels)
        raise ImageError(f"cannot read image {path}: not an image format Pillow knows") from None
    except ImageError as exc:
        raise ImageError(f"{path}: {exc}") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"cannot read image {path}: {exc}") from None


def _load_tiff(path: Path, max_pixels: int | None) -> np.ndarray:
    import tifffile  # scikit-image's TIFF reader, already installed with it

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            _check_pixels(int(page.shape[0]), int(page.shape[1]) if len(page.shape) > 1 else 1, max_pixels)
            arr = page.asarray()
    except (tifffile.TiffFileError, OSError, ValueError, IndexError) as exc:
        raise ImageError(f"cannot read image {path}: {exc}") from None
    try:
        return to_rgb(arr)
    except ImageError as exc:
        raise ImageError(f"{path}: {exc}") from None


def _check_pixels(height: int, width: int, max_pixels: int | None) -> None:
    if max_pixels is not None and height * width > max_pixels:
        raise ImageError(
            f"{width}x{height} ({height * width / 1e6:.1f} Mpx) is more than this machine can code "
            f"(at most {max_pixels / 1e6:.1f} Mpx)"
        )


def save_image(path: str | Path, pixels: np.ndarray) -> None:
    """Write uint8 RGB pixels in the format the suffix names (ImageError if that fails)."""
    if Path(path).is_dir():
        raise ImageError(f"{path} is a folder; name the image file to write, e.g. {Path(path) / 'out.png'}")
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


def load_images(
    source: str | None, names: list[str] | None = None, limit: int | None = None, max_pixels: int | None = None
) -> list[NamedImage]:
    """The sweep's images: ``source`` is a folder/glob/file, or None for scikit-image's bundled photos.

    Each is named by :func:`image_names` (keys, seeds and tables use the name); ``max_pixels``
    refuses a larger image before decoding it."""
    if source is None:
        chosen = names or list(SKIMAGE_DEFAULTS)
        images = [NamedImage(n, skimage_image(n)) for n in chosen]
    else:
        files = list_image_files(source)
        images = [NamedImage(name, load_image(f, max_pixels)) for name, f in zip(image_names(files, source), files)]
    return images[:limit] if limit else images


def image_names(files: list[Path], source: str | Path) -> list[str]:
    """A distinct name per file: its stem where no other file shares it (so results keyed by
    stem stay valid), else its path relative to the source folder (posix, suffix kept): ``x.png``
    and ``x.jpg``, or ``a/x.png`` and ``b/x.png`` under a recursive source. Why not always the
    path: the stem is what every result written so far was keyed and seeded by."""
    root = Path(source) if Path(source).is_dir() else Path(os.path.commonpath([f.parent for f in files]))
    paths = [f.relative_to(root).as_posix() if f.is_relative_to(root) else f.as_posix() for f in files]
    names = [f.stem for f in files]
    while len(set(names)) < len(names):  # a path can equal another file's stem ("x.png.png"): repeat
        count = Counter(names)
        names = [path if count[name] > 1 else name for name, path in zip(names, paths)]
    return names


#: Peak memory of coding one image with the default codec family (encode, decode, LPIPS), in bytes:
#: per pixel, and per squared latent position (the attention at the f=16 grid holds an N×N float32
#: matrix and its scaled copy). Measured with ru_maxrss on the bundled model: 590 B/px at
#: 1024x1024, 549 at 2048x2048.
_BYTES_PER_PIXEL = 600
_BYTES_PER_ATTENTION_CELL = 8
#: Share of the available memory a coding may plan to use (the process and the OS need the rest).
_MEMORY_SHARE = 0.8


def available_memory() -> int:
    """Bytes this machine can hand out now (``MemAvailable``; total memory where that is unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


#: Largest image (pixels) vqnet codes, and a .vqn file may describe. The decoder allocates for the
#: whole image a header names, so without a bound a 33-byte file could demand gigabytes; 64 Mpx
#: (8192 x 8192) is beyond anything this simulator decodes on a CPU.
MAX_PIXELS = 1 << 26


def codable_pixels(factor: int = 16, memory: int | None = None) -> int:
    """The largest image (pixels) the codec can code in ``memory`` bytes (default: what this
    machine has available), so a larger one is refused in one line before anything is allocated
    instead of being killed by the OOM killer. Never above the .vqn format's own limit."""
    budget = _MEMORY_SHARE * (available_memory() if memory is None else memory)
    # a*px + b*(px/f²)² <= budget, solved for px
    a, b = _BYTES_PER_PIXEL, _BYTES_PER_ATTENTION_CELL / factor**4
    px = (math.sqrt(a * a + 4 * b * budget) - a) / (2 * b)
    return int(min(px, MAX_PIXELS))


def require_codable(height: int, width: int, what: str, factor: int = 16) -> None:
    """Raise :class:`ImageError` unless a ``height`` × ``width`` image fits :func:`codable_pixels`."""
    try:
        _check_pixels(height, width, codable_pixels(factor))
    except ImageError as exc:
        raise ImageError(f"{what}: {exc}") from None


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
    return (
        torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).unsqueeze(0).double().div(127.5).sub(1.0).float()
    )


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (1,3,H,W) in [-1,1] -> uint8 H,W,3 (rounded, clipped)."""
    return to_uint8_batch(x[:1])[0]


def to_uint8_batch(x: torch.Tensor) -> np.ndarray:
    """float (N,3,H,W) in [-1,1] -> uint8 (N,H,W,3) (rounded, clipped)."""
    arr = ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().byte()
    return arr.permute(0, 2, 3, 1).cpu().numpy()
