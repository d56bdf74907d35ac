"""A low-resolution colour side channel: one small packet that puts the colour back.

Why: the bundled VQGAN reconstructs luminance and texture but almost no colour. Its decoded Kodak
images keep ~12 % of the originals' chroma variance (16x16-block means of Cb/Cr), a red door comes
out grey-brown, and a linear read-out of the encoder's latent predicts only 16 % of the block
chroma: the small, CPU-trained encoder never learned to carry it, and the GPU-trained decoders
cannot invent it. Colour is what the eye resolves least, so the sender measures the chroma
(Cb, Cr of JPEG's full-range YCbCr) of blocks of ``cells`` x ``cells`` index cells, quantises it and
range-codes it into one extra packet; the receiver keeps the VQGAN's luminance and replaces its
chroma with the thumbnail, upsampled, plus the luma's local detail scaled by how the colour varies
with the luma around it (chroma from luma: where the decoded luma has an edge, the colour changes
with it instead of bleeding across a 32-px blur). A lost or damaged chroma packet only costs the
colour (the image decodes as without it), so it travels beside the index packets, not in them.

Packet byte layout (network byte order, ``struct`` format in brackets)::

    offset  size  field              notes
    ------  ----  -----------------  ----------------------------------------------------
    0       2     magic [2s]         b"VC" (index packets start with b"VQ")
    2       1     version [B]        1
    3       4     image_id [I]       as the image's index packets
    7       2     h [H]              index grid height, >= 1
    9       2     w [H]              index grid width, >= 1; h*w <= packets.MAX_GRID
    11      1     cells [B]          a thumbnail pixel covers cells x cells index cells, 1..16
    12      1     step [B]           quantiser step of Cb/Cr in 8-bit units, 1..64
    13      1     decay [B]          index into DECAYS: the residuals' model
    14      2     payload_len [H]    a multiple of 4
    16      L     payload            range-coded residuals, Cb plane then Cr plane
    16+L    4     crc32 [I]          zlib.crc32 of bytes 0 .. 16+L-1

Each plane is predicted in raster order from the left neighbour (the upper one in the first
column, 0 = grey at the origin) and the residuals are coded against a two-sided geometric
distribution p(r) ∝ decay^|r|, the decay chosen by the sender from :data:`DECAYS` to minimise
the bits. Its table is built by repeated float64 multiplication (correctly rounded everywhere),
so sender and receiver build the same model on any IEEE machine.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import constriction
import numpy as np
import torch
import torch.nn.functional as F

from vqnet.errors import VqnetError
from vqnet.packets import CHROMA_MAGIC, MAX_GRID

if TYPE_CHECKING:
    from vqnet.codec.bundle import Codec

MAGIC = CHROMA_MAGIC
VERSION = 1
_HEAD = struct.Struct("!2sBIHHBBBH")
_CRC = struct.Struct("!I")
#: Bytes a chroma packet adds around its payload.
OVERHEAD = _HEAD.size + _CRC.size
#: Residual models the sender chooses from: decay of p(r) ∝ decay^|r|.
DECAYS = tuple(i / 32 for i in range(4, 32))
MAX_CELLS = 16
MAX_STEP = 64
#: Default thumbnail pixel (2 x 2 index cells: 32 px at f=16) and quantiser step
#: (docs/colour.md): a finer step is the cheapest LPIPS this codec can buy (on Kodak, step 8 -> 4 costs
#: 0.0014 bpp, a fifth of what K=256 -> 1024 costs, for twice its gain), a finer thumbnail the
#: dearest (one index cell a sample costs 3.2x the bits of two, for less), and step 4 keeps every
#: K's total below the paper's uniform rate log2(K)/256.
CELLS = 2
STEP = 4
#: The chroma-from-luma slope's regulariser, in (8-bit luma)^2: how much luma contrast a window
#: needs before its colour follows the luma. Chosen with the window (radius one block) on training
#: photos; LPIPS is flat from eps 4 to 16 and radius 24 to 48 px at 32-px blocks.
DETAIL_EPS = 4.0

# JPEG / JFIF full-range BT.601: what PIL's "YCbCr" mode uses.
_TO_YCC = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
_TO_RGB = np.linalg.inv(_TO_YCC)
_YCC_OFFSET = np.array([0.0, 128.0, 128.0])


def receiver_settings(cells: int) -> dict:
    """What a scored image depends on when the colour packet is sent, beyond the ``cells`` option
    (the sender's step, the receiver's filter), for result journals' fingerprints: a journal
    written under other settings must not be resumed. Empty when the packet is off."""
    return {"chroma": [cells, STEP, DETAIL_EPS]} if cells else {}


class ChromaError(VqnetError, ValueError):
    """A malformed, damaged or inconsistent chroma packet (the receiver treats it as lost)."""


@dataclass(frozen=True)
class Chroma:
    """Quantised block chroma: ``planes[c, i, j]`` · ``step`` + 128 is the mean Cb (c=0) or Cr
    (c=1) of thumbnail pixel (i, j), which covers ``cells`` x ``cells`` index cells."""

    cells: int
    step: int
    planes: np.ndarray  # int64 (2, th, tw)


def thumbnail_shape(h: int, w: int, cells: int) -> tuple[int, int]:
    """Thumbnail size for an (h, w) index grid: every index cell is covered."""
    return -(-h // cells), -(-w // cells)


def to_ycbcr(img: np.ndarray) -> np.ndarray:
    """Float64 (H, W, 3) Y, Cb, Cr of a uint8 RGB image (JPEG full range, no rounding)."""
    return img.astype(np.float64) @ _TO_YCC.T + _YCC_OFFSET


def measure(img: np.ndarray, factor: int, cells: int, step: int) -> Chroma:
    """The chroma thumbnail of a uint8 (H, W, 3) image for a codec with downsampling ``factor``.

    Blocks are ``cells * factor`` pixels square, aligned with the index grid; the image is
    edge-padded to whole blocks, as the codec pads to whole cells.
    """
    if not 1 <= cells <= MAX_CELLS or not 1 <= step <= MAX_STEP:
        raise ValueError(f"chroma cells must be in [1, {MAX_CELLS}] and step in [1, {MAX_STEP}]")
    size = cells * factor
    H, W = img.shape[:2]
    th, tw = thumbnail_shape(-(-H // factor), -(-W // factor), cells)
    padded = np.pad(img, ((0, th * size - H), (0, tw * size - W), (0, 0)), mode="edge")
    means = to_ycbcr(padded)[..., 1:].reshape(th, size, tw, size, 2).mean(axis=(1, 3))
    limit = _limit(step)
    q = np.clip(np.rint((means - 128.0) / step), -limit, limit).astype(np.int64)
    return Chroma(cells, step, q.transpose(2, 0, 1).copy())


def _box(x: np.ndarray, r: int) -> np.ndarray:
    """Mean of each (2r+1)^2 window of a 2-D array (edge-replicated), in O(1) per pixel."""
    c = np.pad(np.pad(x, r, mode="edge").cumsum(0).cumsum(1), ((1, 0), (1, 0)))  # c[i, j]: sum above-left
    k = 2 * r + 1
    return (c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]) / (k * k)


def _luma_detail(luma: np.ndarray, planes: np.ndarray, r: int, eps: float) -> np.ndarray:
    """Each of ``planes`` plus the part of ``luma``'s local detail that its colour follows (chroma
    from luma).

    Why: the upsampled thumbnail is right on average but blurred over a whole block, while the
    decoded luma is sharp. In each (2r+1)^2 window the slope of a plane against ``luma`` is fitted
    as in He et al.'s guided filter; adding slope x (luma - its window mean) puts colour edges where
    the luma has them and leaves the plane as it is where the luma is flat. (The guided filter's own
    output, slope x luma + intercept, also re-blurs the plane in flat windows: on training photos it
    gained half as much LPIPS and raised the chroma error, where this lowers it.) The luma's window
    statistics are shared by the planes, so they are computed once.
    """
    mean_y = _box(luma, r)
    var_y = _box(luma * luma, r) - mean_y**2
    detail = luma - mean_y
    out = np.empty_like(planes)
    for i, p in enumerate(planes):
        slope = (_box(luma * p, r) - mean_y * _box(p, r)) / (var_y + eps)
        out[i] = p + _box(slope, r) * detail
    return out


def apply(decoded: np.ndarray, chroma: Chroma, factor: int, from_luma: bool = True) -> np.ndarray:
    """The decoded uint8 image with its chroma replaced by the thumbnail's (luminance kept),
    upsampled bicubically and given the decoded luma's detail (:func:`_luma_detail`, windows of
    two blocks). ``from_luma=False`` stops at the bicubic upsampling: the plain-thumbnail
    receiver that ``scripts/experiments/chroma_rd.py`` compares against."""
    H, W = decoded.shape[:2]
    size = chroma.cells * factor
    planes = torch.from_numpy(chroma.planes.astype(np.float64) * chroma.step + 128.0).unsqueeze(0)
    up = F.interpolate(planes, scale_factor=size, mode="bicubic", align_corners=False)[0, :, :H, :W].numpy()
    ycc = to_ycbcr(decoded)
    ycc[..., 1:] = np.moveaxis(_luma_detail(ycc[..., 0], up, size, DETAIL_EPS) if from_luma else up, 0, -1)
    rgb = (ycc - _YCC_OFFSET) @ _TO_RGB.T
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def decode_in_colour(
    codec: Codec, grid: np.ndarray, K: int, size: tuple[int, int], colour: Chroma | None
) -> np.ndarray:
    """Decode an index grid to a (size) image and, when the colour packet arrived, put its chroma
    under it: what every receiver (``.vqn`` decoding, the sweep) shows."""
    return decode_many_in_colour(codec, [grid], K, size, colour)[0]


def decode_many_in_colour(
    codec: Codec, grids: list[np.ndarray], K: int, size: tuple[int, int], colour: Chroma | None
) -> list[np.ndarray]:
    """:func:`decode_in_colour` of grids of one image (one colour packet), in one decoder call."""
    images = codec.decode_many(grids, K, size)
    return images if colour is None else [apply(image, colour, codec.factor) for image in images]


def _residuals(planes: np.ndarray) -> np.ndarray:
    """Raster-order prediction residuals of each plane (left neighbour, upper in column 0)."""
    pred = np.zeros_like(planes)
    pred[:, :, 1:] = planes[:, :, :-1]
    pred[:, 1:, 0] = planes[:, :-1, 0]
    return (planes - pred).ravel()


def _from_residuals(res: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    r = res.reshape(shape)
    planes = np.cumsum(r, axis=2)  # left prediction along each row ...
    planes += np.cumsum(r[:, :, 0], axis=1)[:, :, None] - r[:, :, 0][:, :, None]  # ... from column 0's chain
    return planes


def _probs(decay: float, span: int) -> np.ndarray:
    """p(r) ∝ decay^|r| over r in [-span, span], indexed by r + span (float64, summing to 1)."""
    powers = np.empty(span + 1)
    powers[0] = 1.0
    for k in range(1, span + 1):
        powers[k] = powers[k - 1] * decay
    weights = np.concatenate([powers[:0:-1], powers])
    return weights / weights.sum()


def _model(decay: int, span: int) -> constriction.stream.model.Categorical:
    return constriction.stream.model.Categorical(_probs(DECAYS[decay], span).astype(np.float32), perfect=False)


def _limit(step: int) -> int:
    """Largest |quantised chroma| at ``step``: Cb/Cr lie within 128 of grey."""
    return -(-128 // step)


def _span(step: int) -> int:
    return 2 * _limit(step)  # residuals of values in [-limit, limit]


def chroma_packet(chroma: Chroma, h: int, w: int, image_id: int = 0) -> bytes:
    """Serialise ``chroma`` for an (h, w) index grid, coded with the cheapest residual model."""
    if chroma.planes.shape[1:] != thumbnail_shape(h, w, chroma.cells):
        raise ValueError(f"thumbnail {chroma.planes.shape[1:]} does not fit a {h}x{w} grid at cells={chroma.cells}")
    span = _span(chroma.step)
    symbols = _residuals(chroma.planes) + span
    counts = np.bincount(symbols, minlength=2 * span + 1)
    best = int(np.argmin([-(counts * np.log2(_probs(d, span))).sum() for d in DECAYS]))
    enc = constriction.stream.queue.RangeEncoder()
    enc.encode(symbols.astype(np.int32), _model(best, span))
    payload = enc.get_compressed().astype(">u4").tobytes()
    if len(payload) > 0xFFFF:
        raise ValueError(f"a chroma payload of {len(payload)} bytes does not fit a packet; use more cells")
    body = _HEAD.pack(MAGIC, VERSION, image_id, h, w, chroma.cells, chroma.step, best, len(payload)) + payload
    return body + _CRC.pack(zlib.crc32(body))


def fitting_chroma_packet(
    img: np.ndarray,
    factor: int,
    grid: tuple[int, int],
    cells: int,
    max_payload: int,
    step: int = STEP,
    image_id: int = 0,
) -> bytes | None:
    """The chroma packet at the finest thumbnail, from ``cells`` up by doubling, whose payload
    fits ``max_payload`` bytes (as every packet on the link must); None if none does."""
    while cells <= MAX_CELLS:
        packet = chroma_packet(measure(img, factor, cells, step), *grid, image_id=image_id)
        if len(packet) - OVERHEAD <= max_payload:
            return packet
        cells *= 2
    return None


def is_chroma_packet(data: bytes) -> bool:
    """Whether ``data`` claims to be a chroma packet (by its magic), so receivers can route it."""
    return bytes(data[:2]) == MAGIC


def read_chroma_packet(data: bytes | bytearray | memoryview) -> tuple[int, int, int, Chroma]:
    """Parse and decode a chroma packet: (image_id, h, w, chroma); any defect raises ChromaError."""
    b = bytes(data)
    if len(b) < OVERHEAD:
        raise ChromaError(f"chroma packet of {len(b)} bytes is shorter than its header")
    magic, version, image_id, h, w, cells, step, decay, length = _HEAD.unpack_from(b)
    if magic != MAGIC or version != VERSION:
        raise ChromaError(f"not a version-{VERSION} chroma packet")
    if zlib.crc32(b[: -_CRC.size]) != _CRC.unpack_from(b, len(b) - _CRC.size)[0]:
        raise ChromaError("CRC mismatch")
    if len(b) != OVERHEAD + length or length % 4:
        raise ChromaError(f"length {len(b)} disagrees with payload_len {length}")
    if not (
        1 <= h
        and 1 <= w
        and h * w <= MAX_GRID
        and 1 <= cells <= MAX_CELLS
        and 1 <= step <= MAX_STEP
        and decay < len(DECAYS)
    ):
        raise ChromaError("chroma header field out of range")
    shape = (2, *thumbnail_shape(h, w, cells))
    span = _span(step)
    # Every sample costs at least -log2(max p) bits, so a payload holds only so many: a forged
    # header naming a huge thumbnail is refused before the decoder is asked for it (2x slack).
    if np.prod(shape) * -np.log2(_probs(DECAYS[decay], span).max()) > 2 * (8 * length + 64):
        raise ChromaError("the header names more samples than the payload can hold")
    words = np.frombuffer(b[_HEAD.size : _HEAD.size + length], dtype=">u4").astype(np.uint32)
    try:
        symbols = constriction.stream.queue.RangeDecoder(words).decode(_model(decay, span), int(np.prod(shape)))
    except Exception as exc:  # constriction raises plain exceptions for exhausted or invalid data
        raise ChromaError(f"undecodable chroma payload: {exc}") from exc
    planes = _from_residuals(np.asarray(symbols, dtype=np.int64) - span, shape)
    if np.abs(planes).max() > _limit(step):
        raise ChromaError("chroma values outside their range")
    return image_id, h, w, Chroma(cells, step, planes)
