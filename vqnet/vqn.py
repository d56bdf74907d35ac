"""The ``.vqn`` coded-image file: one image's packets, kept so they can be decoded later.

Why a container around the packets: the packets carry the index grid, but decoding also needs
the codec they were made with (model id), the codebook size K and the original image size (to
crop the codec's padding and to compute bpp). Why the packets are stored verbatim, each framed
by its length: a file is a recording of what the sender transmits, so a receiver may be handed
any subset of them (a lossy link, :func:`drop_packets`) and conceal what is missing, and a
damaged packet fails its own CRC-32 and is merely lost. The header has a CRC of its own because
nothing else protects it and every later read is sized by it.

Byte layout (network byte order, ``struct`` format in brackets)::

    offset  size  field              notes
    ------  ----  -----------------  ------------------------------------------------------
    0       3     magic [3s]         b"VQN"
    3       1     version [B]        1
    4       8     model_id [8s]      the first 8 bytes of the codec file's sha256
                                     (``Codec.model_id``, 16 hex digits)
    12      2     K [H]              codebook size, >= 2
    14      4     height [I]         original image height in pixels, >= 1
    18      4     width [I]          original image width, >= 1; height*width <= MAX_PIXELS
    22      2     max_payload [H]    the packetizer's setting, MIN_PAYLOAD .. MAX_VQN_PAYLOAD
    24      1     layout [B]         0 = raster, 1 = interleaved
    25      4     packet_count [I]   packet records that follow (a file may hold fewer
                                     packets than the image was split into)
    29      4     header_crc [I]     zlib.crc32 of bytes 0 .. 28
    33            packet_count records, each:
                  2   length [H]     1 .. 65535
                  L   packet         the exact bytes :func:`vqnet.packets.packetize` made, or
                                     the colour packet (:mod:`vqnet.chroma`, magic b"VC")
    end           nothing follows the last record

The header CRC sits right after the fields it covers, not at the end of the file, so the reader
checks the packet count before using it and can still tell a truncated file from a damaged
header. The CRC covers the header only: each packet has its own.

Reading is strict: every defect (wrong magic, unknown version, bad CRC, a field out of range,
a record running past the end, trailing bytes) raises :class:`VqnError` with a one-line
message, and no allocation is sized by a field before the data has shown it is that long.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from vqnet.errors import VqnetError
from vqnet.images import MAX_PIXELS
from vqnet.packets import HEADER_BYTES, MIN_PAYLOAD, TRAILER_BYTES, Depacketized, Layout
from vqnet.receiver import conceal, decode, receive
from vqnet.sender import PacketSettings, send

if TYPE_CHECKING:
    from vqnet.codec.bundle import Codec

__all__ = [
    "VqnError",
    "VqnFile",
    "DecodedVqn",
    "MAGIC",
    "VERSION",
    "HEADER_SIZE",
    "MAX_PIXELS",
    "MAX_VQN_PAYLOAD",
    "write_vqn",
    "read_vqn",
    "drop_packets",
    "encode_vqn",
    "decode_vqn",
]

MAGIC = b"VQN"
VERSION = 1
_FIELDS = struct.Struct("!3sB8sHIIHBI")
_CRC = struct.Struct("!I")
_RECORD_LEN = struct.Struct("!H")
#: Bytes before the first packet record (fields + header CRC).
HEADER_SIZE = _FIELDS.size + _CRC.size
#: Layout codes are positions in this tuple; fixed here because they are part of the file format.
_LAYOUTS: tuple[str, ...] = ("raster", "interleaved")
#: Largest packet a u16 record length can frame.
_MAX_RECORD = 0xFFFF
#: Largest max_payload whose packets (payload + the longest header + CRC) still fit a record.
MAX_VQN_PAYLOAD = _MAX_RECORD - max(HEADER_BYTES.values()) - TRAILER_BYTES


class VqnError(VqnetError, ValueError):
    """A ``.vqn`` file that is malformed, of another version, or for another codec (one line)."""


def _check_size(height: int, width: int) -> None:
    if not (1 <= height <= 0xFFFFFFFF and 1 <= width <= 0xFFFFFFFF) or height * width > MAX_PIXELS:
        raise VqnError(f"image size {width}x{height} is empty or larger than {MAX_PIXELS} pixels")


def _check_max_payload(max_payload: int) -> None:
    if not MIN_PAYLOAD <= max_payload <= MAX_VQN_PAYLOAD:
        raise VqnError(
            f"max_payload {max_payload} is outside [{MIN_PAYLOAD}, {MAX_VQN_PAYLOAD}] "
            f"(every packet must fit a u16-framed record)"
        )


@dataclass(frozen=True)
class VqnFile:
    """The decoded contents of a ``.vqn`` file; construction validates every field."""

    model_id: str
    K: int
    height: int
    width: int
    max_payload: int
    layout: Layout
    packets: tuple[bytes, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "packets", tuple(self.packets))
        mid = self.model_id
        if not (isinstance(mid, str) and len(mid) == 16 and all(c in "0123456789abcdef" for c in mid)):
            raise VqnError(f"model id must be 16 lowercase hex digits (a saved codec's id), got {mid!r}")
        if not 2 <= self.K <= 0xFFFF:
            raise VqnError(f"K={self.K} is outside [2, 65535]")
        _check_size(self.height, self.width)
        _check_max_payload(self.max_payload)
        if self.layout not in _LAYOUTS:
            raise VqnError(f"unknown layout {self.layout!r}")
        if len(self.packets) > 0xFFFFFFFF:
            raise VqnError(f"{len(self.packets)} packets do not fit the u32 count")
        for i, p in enumerate(self.packets):
            if not isinstance(p, bytes) or not 1 <= len(p) <= _MAX_RECORD:
                raise VqnError(f"packet {i} must be 1 to {_MAX_RECORD} bytes")


def write_vqn(vqn: VqnFile) -> bytes:
    """Serialise ``vqn`` in the layout of the module docstring."""
    fields = _FIELDS.pack(
        MAGIC,
        VERSION,
        bytes.fromhex(vqn.model_id),
        vqn.K,
        vqn.height,
        vqn.width,
        vqn.max_payload,
        _LAYOUTS.index(vqn.layout),
        len(vqn.packets),
    )
    parts = [fields, _CRC.pack(zlib.crc32(fields))]
    for p in vqn.packets:
        parts += [_RECORD_LEN.pack(len(p)), p]
    return b"".join(parts)


def read_vqn(data: bytes | bytearray | memoryview, source: str = ".vqn data") -> VqnFile:
    """Parse and validate a ``.vqn`` file; any defect raises :class:`VqnError` naming ``source``.

    The packets themselves are not parsed here: a damaged one is the depacketizer's business
    (it counts as lost), so a file with bad packets still reads.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise VqnError(f"{source}: expected bytes, got {type(data).__name__}")
    b = bytes(data)
    if b[: len(MAGIC)] != MAGIC:
        raise VqnError(f"{source}: not a .vqn file (starts with {b[: len(MAGIC)]!r}, expected {MAGIC!r})")
    if len(b) > len(MAGIC) and b[len(MAGIC)] != VERSION:
        raise VqnError(f"{source}: .vqn version {b[len(MAGIC)]} is not supported (this vqnet reads version {VERSION})")
    if len(b) < HEADER_SIZE:
        raise VqnError(f"{source}: truncated: {len(b)} bytes, shorter than the {HEADER_SIZE}-byte header")
    (crc,) = _CRC.unpack_from(b, _FIELDS.size)
    if zlib.crc32(b[: _FIELDS.size]) != crc:
        raise VqnError(f"{source}: header CRC mismatch (the header is damaged)")
    _, _, model_id, K, height, width, max_payload, layout_code, count = _FIELDS.unpack_from(b)
    if layout_code >= len(_LAYOUTS):
        raise VqnError(f"{source}: unknown layout code {layout_code}")
    # Every record takes at least 3 bytes, so a forged count is caught before any loop or list.
    if count * (_RECORD_LEN.size + 1) > len(b) - HEADER_SIZE:
        raise VqnError(
            f"{source}: truncated: header announces {count} packets, only {len(b) - HEADER_SIZE} bytes follow"
        )
    packets: list[bytes] = []
    pos = HEADER_SIZE
    for i in range(count):
        if pos + _RECORD_LEN.size > len(b):
            raise VqnError(f"{source}: truncated in the length of packet {i} of {count}")
        (n,) = _RECORD_LEN.unpack_from(b, pos)
        pos += _RECORD_LEN.size
        if n == 0:
            raise VqnError(f"{source}: packet {i} of {count} has length 0")
        if pos + n > len(b):
            raise VqnError(f"{source}: truncated in packet {i} of {count} ({len(b) - pos} of {n} bytes present)")
        packets.append(b[pos : pos + n])
        pos += n
    if pos != len(b):
        raise VqnError(f"{source}: {len(b) - pos} unexpected bytes after the last packet")
    try:
        return VqnFile(
            model_id=model_id.hex(),
            K=K,
            height=height,
            width=width,
            max_payload=max_payload,
            layout=_LAYOUTS[layout_code],
            packets=tuple(packets),
        )  # type: ignore[arg-type]
    except VqnError as exc:
        raise VqnError(f"{source}: {exc}") from None


def drop_packets(data: bytes, fraction: float, seed: int) -> bytes:
    """The same file with ``round(fraction * packets)`` packet records removed at random.

    Simulates a receiver that got only part of a transmission; the survivors keep their order.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    vqn = read_vqn(data)
    n = len(vqn.packets)
    gone = set(np.random.default_rng(seed).choice(n, size=round(fraction * n), replace=False).tolist())
    kept = tuple(p for i, p in enumerate(vqn.packets) if i not in gone)
    return write_vqn(VqnFile(vqn.model_id, vqn.K, vqn.height, vqn.width, vqn.max_payload, vqn.layout, kept))


def encode_vqn(
    codec: Codec, img: np.ndarray, K: int, max_payload: int, layout: Layout, chroma_cells: int = 0
) -> VqnFile:
    """Send a uint8 (H, W, 3) image at K (:func:`vqnet.sender.send`, image id 0) into a :class:`VqnFile`.

    ``chroma_cells`` > 0 appends the colour packet (:mod:`vqnet.chroma`) with thumbnail pixels of
    that many index cells, or more where that does not fit ``max_payload``.
    The size and max_payload are checked before encoding, which is the expensive part.
    """
    h, w = img.shape[:2]
    _check_size(h, w)
    _check_max_payload(max_payload)
    sent = send(codec, img, K, PacketSettings(max_payload, layout, chroma_cells))
    return VqnFile(codec.model_id, K, h, w, max_payload, layout, tuple(sent.packets))


@dataclass(frozen=True)
class DecodedVqn:
    """A decoded image and what the receiver made of the packets it was given."""

    image: np.ndarray
    received: Depacketized  # the index packets (a chroma packet is not one of them)
    chroma_cells: int | None = None  # thumbnail pixel of the chroma packet applied; None: no colour packet

    @property
    def missing(self) -> int | None:
        """Packets of the image that did not decode (absent or damaged); None if no packet
        survived to tell how many there were."""
        r = self.received
        return None if r.n_packets_expected is None else r.n_packets_expected - r.n_packets_ok

    @property
    def concealed(self) -> float:
        """Fraction of the grid's indices that concealment had to fill."""
        return float(self.received.lost.mean())


def decode_vqn(codec: Codec, vqn: VqnFile, method: str = "neighbor") -> DecodedVqn:
    """Receive what the file holds (:func:`vqnet.receiver.receive`, image id 0), conceal the missing
    indices with ``method``, decode.

    Packets for another image, grid or K than the header's count as damaged, so only a header
    mismatch with the codec is an error: :class:`VqnError` for another model, ``CodecError`` for a K
    the codec lacks.
    """
    if vqn.model_id != codec.model_id:
        raise VqnError(
            f"the file was encoded with model {vqn.model_id} but the loaded codec is {codec.model_id}; "
            f"pass --model with the codec it was made with"
        )
    got = receive(codec, vqn.packets, vqn.K, (vqn.height, vqn.width))
    [image] = decode(codec, got, [conceal(codec, got, method)])
    return DecodedVqn(image, got.grid, None if got.colour is None else got.colour.cells)
