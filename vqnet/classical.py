"""Classical baselines (JPEG, WebP, AVIF through Pillow) coded at a target bit rate.

Why downscaling is part of the search: at the rates a VQGAN reaches (~0.01-0.06 bpp) a
full-size image does not fit at all (a 768x512 Kodak JPEG at quality 1 is ~0.08 bpp), and
where it fits, quality 0-5 smears the whole image. Coding a Lanczos-downscaled copy and upscaling the decoded image back gives these codecs
their best shot, so the comparison is against a fair baseline rather than a straw man.

Rates are honest: bpp is the whole file (container and headers included) over the *original*
pixel count, the same accounting as a ``.vqn`` file's bpp.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import PIL
from PIL import Image, features

from vqnet.errors import VqnetError
from vqnet.metrics import bpp, lpips_distance

if TYPE_CHECKING:
    import torch


class ClassicalError(VqnetError, ValueError):
    """An unknown or unavailable classical codec (one line for the user)."""


class RateError(ClassicalError):
    """No (scale, quality) on the grid fits the bit budget."""


@dataclass(frozen=True)
class _Format:
    pil_format: str
    qualities: range  # searched range, lowest quality (= smallest file) first
    options: dict  # fixed encoder settings, pinned so results do not move with Pillow's defaults
    feature: str  # PIL.features name that must be present


#: Pillow's quality scales: JPEG 1..95 (Pillow advises against more: it only grows files), WebP and
#: AVIF take 0..100. ``optimize`` builds per-image Huffman tables (smaller files, same pixels);
#: ``method=6`` / ``speed=6`` are WebP's slowest-best and AVIF's default effort.
CODECS: dict[str, _Format] = {
    "jpeg": _Format("JPEG", range(1, 96), {"optimize": True}, "jpg"),
    "webp": _Format("WEBP", range(0, 101), {"method": 6}, "webp"),
    "avif": _Format("AVIF", range(0, 101), {"speed": 6}, "avif"),
}
#: Downscaling factors tried; 1/8 of a Kodak image is 96x64, below which nothing looks like a photo.
SCALES: tuple[float, ...] = (1.0, 1 / 2, 1 / 3, 1 / 4, 1 / 6, 1 / 8)
#: Smallest side a downscaled image may have; smaller scales are skipped for small images.
MIN_SIDE = 8


@dataclass(frozen=True)
class ClassicalResult:
    """One coded image: the decoded, upscaled reconstruction and what it cost."""

    codec: str
    image: np.ndarray  # uint8 (H, W, 3), the original's size
    n_bytes: int
    bpp: float
    scale: float
    quality: int
    lpips: float


def unavailable_reason(codec: str) -> str | None:
    """Why ``codec`` cannot be used with this Pillow, or None if it can.

    Raises :class:`ClassicalError` for a name that is not a known codec at all.
    """
    spec = _spec(codec)
    if not features.check(spec.feature):
        return f"this Pillow ({PIL.__version__}) was built without {codec.upper()} support"
    return None


def _spec(codec: str) -> _Format:
    try:
        return CODECS[codec]
    except KeyError:
        raise ClassicalError(f"unknown classical codec {codec!r}; choose from {', '.join(CODECS)}") from None


def _scaled_size(h: int, w: int, scale: float) -> tuple[int, int]:
    """PIL ``(width, height)`` of the downscaled copy."""
    return max(1, round(w * scale)), max(1, round(h * scale))


def encode_at_bpp(img: np.ndarray, codec: str, target_bpp: float) -> ClassicalResult:
    """The lowest-LPIPS coding of ``img`` with ``codec`` whose whole file is at most ``target_bpp``
    (:meth:`ClassicalCoder.at_bpp`; use a :class:`ClassicalCoder` to code one image at several rates)."""
    return ClassicalCoder(img).at_bpp(codec, target_bpp)


class ClassicalCoder:
    """Codes one image with the classical codecs at any number of target rates.

    Why a class: an evaluation codes each image at one rate per K, and the searches for nearby
    rates visit the same (codec, scale, quality) settings. File sizes and the LPIPS of decoded
    settings are remembered, so each setting is encoded at most once and scored at most once;
    the answers are exactly those of separate searches.
    """

    def __init__(self, img: np.ndarray, device: torch.device | str = "cpu"):
        self.img, self.device = img, device  # where LPIPS runs
        self.h, self.w = img.shape[:2]
        self._small: dict[float, Image.Image] = {}
        self._files: dict[tuple[str, float, int], bytes] = {}
        self._scored: dict[tuple[str, float, int], tuple[float, np.ndarray]] = {}

    def file(self, codec: str, scale: float, quality: int) -> bytes:
        """The coded file of the image downscaled by ``scale`` (Lanczos) at ``quality``."""
        key = (codec, scale, quality)
        if key not in self._files:
            if scale not in self._small:
                small = Image.fromarray(self.img)
                if scale != 1.0:
                    small = small.resize(_scaled_size(self.h, self.w, scale), Image.Resampling.LANCZOS)
                self._small[scale] = small
            spec = _spec(codec)
            buf = io.BytesIO()
            self._small[scale].save(buf, spec.pil_format, quality=quality, **spec.options)
            self._files[key] = buf.getvalue()
        return self._files[key]

    def scored(self, codec: str, scale: float, quality: int) -> tuple[float, np.ndarray]:
        """(LPIPS-alex, reconstruction): the file decoded and upscaled back to the original size."""
        key = (codec, scale, quality)
        if key not in self._scored:
            with Image.open(io.BytesIO(self.file(codec, scale, quality))) as decoded:
                out = decoded.convert("RGB")
            if out.size != (self.w, self.h):
                out = out.resize((self.w, self.h), Image.Resampling.LANCZOS)
            recon = np.array(out, dtype=np.uint8)
            self._scored[key] = (lpips_distance(self.img, recon, self.device), recon)
        return self._scored[key]

    def at_bpp(self, codec: str, target_bpp: float) -> ClassicalResult:
        """The lowest-LPIPS coding with ``codec`` whose whole file is at most ``target_bpp``.

        For each scale in :data:`SCALES` the highest quality that fits the budget is found by
        bisection on file sizes alone (size grows with quality; where it does not quite,
        bisection may settle a little low, but never over budget, because only measured sizes are
        accepted), then the scale whose fitting coding has the lowest LPIPS-alex wins. Raises
        :class:`RateError` if no scale fits even at the lowest quality (e.g. the codec's headers
        alone exceed the budget).
        """
        if (reason := unavailable_reason(codec)) is not None:
            raise ClassicalError(reason)
        h, w = self.h, self.w
        qualities = CODECS[codec].qualities
        best: ClassicalResult | None = None
        for scale in SCALES:
            if min(_scaled_size(h, w, scale)) < MIN_SIDE:
                continue
            if bpp(len(self.file(codec, scale, qualities[0])), h, w) > target_bpp:
                continue
            # Invariant: qualities[lo] fits; qualities[hi] does not, or is past the end.
            lo, hi = 0, len(qualities)
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if bpp(len(self.file(codec, scale, qualities[mid])), h, w) <= target_bpp:
                    lo = mid
                else:
                    hi = mid
            d, recon = self.scored(codec, scale, qualities[lo])
            if best is None or d < best.lpips:
                n_bytes = len(self.file(codec, scale, qualities[lo]))
                best = ClassicalResult(codec, recon, n_bytes, bpp(n_bytes, h, w), scale, qualities[lo], d)
        if best is None:
            raise RateError(f"{codec} cannot reach {target_bpp:.4f} bpp on a {w}x{h} image at any scale")
        return best
