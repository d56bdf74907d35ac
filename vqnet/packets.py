"""Independently decodable packets of range-coded codebook indices.

An (h, w) index grid is split into packets, each carrying its own range-coder
stream (:func:`vqnet.entropy.encode`), so any subset of packets can be decoded
and the receiver knows exactly which grid positions were lost.

Byte layout (network byte order, ``struct`` format in brackets)::

    offset  size  field           notes
    ------  ----  --------------  ---------------------------------------------
    0       2     magic [2s]      b"VQ"
    2       1     version [B]     1
    3       1     layout [B]      0 = raster run, 1 = interleaved
    4       4     image_id [I]    caller-chosen, to separate images on a link
    8       2     K [H]           codebook size, >= 2
    10      2     h [H]           grid height, >= 1
    12      2     w [H]           grid width, >= 1; h*w <= MAX_GRID (2**22)
    14      2     packet_no [H]   0 <= packet_no < packet_count
    16      2     packet_count [H] packets making up this image, >= 1
    -- raster layout (layout 0) --
    18      4     start [I]       first raster position (row-major, w fastest)
    22      4     n [I]           positions start .. start+n-1, n >= 1
    26      2     payload_len [H]
    28      L     payload         entropy.encode(indices at those positions)
    28+L    4     crc32 [I]       zlib.crc32 of bytes 0 .. 28+L-1
    -- interleaved layout (layout 1) --
    18      4     n [I]           positions packet_no + k*packet_count, k < n
    22      2     payload_len [H]
    24      L     payload
    24+L    4     crc32 [I]       zlib.crc32 of bytes 0 .. 24+L-1

The payload codes the packet's indices in the order of ``positions()``; under a
prior with a context table each index is coded against its left (else upper)
grid neighbour when that one travels in the same packet, or against both when
the prior has a pair exponent (:func:`context_refs`).

So the header is 28 bytes (raster) or 24 bytes (interleaved), plus a 4-byte
CRC trailer.  In the interleaved layout ``n`` is redundant (it must equal the
number of positions ``p < h*w`` with ``p % packet_count == packet_no``) and is
checked, which catches forged or mis-parsed headers.

Why two layouts: raster runs are simplest and give the fewest packets, but a
lost packet is a contiguous hole; interleaving spreads every packet over the
whole image, so losses become scattered single tokens, which concealment
models (AR or masked) fill far better, at the cost of weaker clustering.
"""

from __future__ import annotations

import struct
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from vqnet import entropy
from vqnet.entropy import EntropyError, Prior
from vqnet.errors import VqnetError

__all__ = [
    "PacketError",
    "Packet",
    "Depacketized",
    "HEADER_BYTES",
    "TRAILER_BYTES",
    "MIN_PAYLOAD",
    "MAX_PAYLOAD",
    "MAX_GRID",
    "context_refs",
    "packetize",
    "depacketize",
]

Layout = Literal["raster", "interleaved"]

MAGIC = b"VQ"
#: The other packet kinds on the link, each named by its first two bytes (their formats live in
#: :mod:`vqnet.chroma` and :mod:`vqnet.fec`). Receivers route every packet by them, never by its
#: place in the sequence; they are here, beside the index packets', so that any module can tell the
#: kinds apart without importing the others (chroma brings torch).
CHROMA_MAGIC = b"VC"
PARITY_MAGIC = b"VF"
VERSION = 1
_LAYOUT_CODE: dict[str, int] = {"raster": 0, "interleaved": 1}
_LAYOUT_NAME: dict[int, str] = {v: k for k, v in _LAYOUT_CODE.items()}

_COMMON = struct.Struct("!2sBBIHHHHH")
_LAYOUT_FIELDS: dict[str, struct.Struct] = {"raster": struct.Struct("!II"), "interleaved": struct.Struct("!I")}
_PAYLOAD_LEN = struct.Struct("!H")
_CRC = struct.Struct("!I")

#: Header bytes before the payload, per layout (28 raster, 24 interleaved).
HEADER_BYTES: dict[str, int] = {name: _COMMON.size + s.size + _PAYLOAD_LEN.size for name, s in _LAYOUT_FIELDS.items()}
#: CRC-32 trailer after the payload.
TRAILER_BYTES = _CRC.size

#: Smallest accepted ``max_payload``: a range-coder stream carries up to two
#: words of overhead, so 8 bytes always hold one symbol (even a 24-bit one).
MIN_PAYLOAD = 8
#: Largest payload the u16 length field can describe.
MAX_PAYLOAD = 0xFFFF
#: Most grid positions (h*w) a packet may describe.  The receiver allocates the
#: whole grid a header names, so without this bound one forged 40-byte packet
#: (65535 x 65535, valid CRC) would ask for 34 GB.  2**22 positions is a
#: 2048 x 2048 grid, a 32768 x 32768-pixel image at f=16.
MAX_GRID = 1 << 22

_U16 = 0xFFFF
_U32 = 0xFFFFFFFF


class PacketError(VqnetError, ValueError):
    """Raised for malformed, corrupted or inconsistent packets."""


@dataclass(frozen=True)
class Packet:
    """One packet; construction validates every field (see module docstring).

    ``start`` is only meaningful for the raster layout and must be 0 for the
    interleaved one.
    """

    layout: Layout
    image_id: int
    K: int
    h: int
    w: int
    packet_number: int
    packet_count: int
    n: int
    payload: bytes
    start: int = 0

    def __post_init__(self) -> None:
        if self.layout not in _LAYOUT_CODE:
            raise PacketError(f"unknown layout {self.layout!r}")
        if not 0 <= self.image_id <= _U32:
            raise PacketError(f"image_id {self.image_id} outside u32")
        if not 2 <= self.K <= _U16:
            raise PacketError(f"K={self.K} outside [2, 65535]")
        if not (1 <= self.h <= _U16 and 1 <= self.w <= _U16):
            raise PacketError(f"grid {self.h}x{self.w} must have sides in [1, 65535]")
        if self.h * self.w > MAX_GRID:
            raise PacketError(f"grid {self.h}x{self.w} has more than {MAX_GRID} positions")
        if not 1 <= self.packet_count <= _U16:
            raise PacketError(f"packet_count {self.packet_count} outside [1, 65535]")
        if not 0 <= self.packet_number < self.packet_count:
            raise PacketError(f"packet_number {self.packet_number} not in [0, {self.packet_count})")
        size = self.h * self.w
        if self.layout == "raster":
            if not (1 <= self.n and 0 <= self.start and self.start + self.n <= size):
                raise PacketError(f"raster run start={self.start} n={self.n} outside grid of {size}")
        else:
            if self.start != 0:
                raise PacketError("interleaved packets have no start field")
            expected = len(range(self.packet_number, size, self.packet_count))
            if self.n != expected or self.n == 0:
                raise PacketError(
                    f"interleaved packet {self.packet_number}/{self.packet_count} "
                    f"must carry {expected} positions, header says {self.n}"
                )
        if not isinstance(self.payload, bytes):
            raise PacketError("payload must be bytes")
        if len(self.payload) > MAX_PAYLOAD or len(self.payload) % 4:
            raise PacketError(f"payload length {len(self.payload)} is not a multiple of 4 up to {MAX_PAYLOAD}")
        if self.n > entropy.max_symbols(len(self.payload)):
            raise PacketError(f"n={self.n} symbols cannot fit in a {len(self.payload)}-byte payload")

    def positions(self) -> np.ndarray:
        """Raster (row-major) grid positions carried, in payload order (int64)."""
        k = np.arange(self.n, dtype=np.int64)
        if self.layout == "raster":
            return self.start + k
        return self.packet_number + k * self.packet_count

    def to_bytes(self) -> bytes:
        """Serialise, appending the CRC-32 of everything before it."""
        head = _COMMON.pack(
            MAGIC,
            VERSION,
            _LAYOUT_CODE[self.layout],
            self.image_id,
            self.K,
            self.h,
            self.w,
            self.packet_number,
            self.packet_count,
        )
        if self.layout == "raster":
            head += _LAYOUT_FIELDS["raster"].pack(self.start, self.n)
        else:
            head += _LAYOUT_FIELDS["interleaved"].pack(self.n)
        body = head + _PAYLOAD_LEN.pack(len(self.payload)) + self.payload
        return body + _CRC.pack(zlib.crc32(body))

    @classmethod
    def from_bytes(cls, b: bytes | bytearray | memoryview) -> Packet:
        """Parse and validate; any defect raises :class:`PacketError`."""
        if not isinstance(b, (bytes, bytearray, memoryview)):
            raise PacketError(f"expected bytes, got {type(b).__name__}")
        b = bytes(b)
        if len(b) < min(HEADER_BYTES.values()) + TRAILER_BYTES:
            raise PacketError(f"packet of {len(b)} bytes is shorter than any header")
        magic, version, layout_code, image_id, K, h, w, number, count = _COMMON.unpack_from(b)
        if magic != MAGIC:
            raise PacketError(f"bad magic {magic!r}")
        if version != VERSION:
            raise PacketError(f"unsupported version {version}")
        (crc,) = _CRC.unpack_from(b, len(b) - TRAILER_BYTES)
        if zlib.crc32(b[:-TRAILER_BYTES]) != crc:
            raise PacketError("CRC mismatch")
        layout = _LAYOUT_NAME.get(layout_code)
        if layout is None:
            raise PacketError(f"unknown layout code {layout_code}")
        header = HEADER_BYTES[layout]
        if len(b) < header + TRAILER_BYTES:
            raise PacketError(f"packet of {len(b)} bytes is shorter than its {layout} header")
        if layout == "raster":
            start, n = _LAYOUT_FIELDS["raster"].unpack_from(b, _COMMON.size)
        else:
            start, (n,) = 0, _LAYOUT_FIELDS["interleaved"].unpack_from(b, _COMMON.size)
        (payload_len,) = _PAYLOAD_LEN.unpack_from(b, header - _PAYLOAD_LEN.size)
        if len(b) != header + payload_len + TRAILER_BYTES:
            raise PacketError(f"length {len(b)} disagrees with payload_len {payload_len}")
        return cls(
            layout=layout,
            image_id=image_id,
            K=K,
            h=h,
            w=w,
            packet_number=number,
            packet_count=count,
            n=n,
            payload=b[header : header + payload_len],
            start=start,
        )


@dataclass(frozen=True)
class Depacketized:
    """What the receiver reconstructs from the packets that arrived.

    ``indices`` holds ``fill`` wherever ``lost`` is True.  Bad packets (parse,
    CRC, header disagreement, undecodable payload) count as lost.  ``K`` and
    ``n_packets_expected`` come from the headers and are None if no valid
    packet arrived.
    """

    indices: np.ndarray
    lost: np.ndarray
    n_packets_expected: int | None
    n_packets_ok: int
    n_packets_bad: int
    K: int | None


def _first_true(pred: Callable[[int], bool], lo: int, hi: int, guess: int) -> int:
    """Smallest x in [lo, hi] with ``pred(x)``, for ``pred`` going False -> True.

    ``pred(hi)`` is assumed True without being evaluated.  Gallops from
    ``guess`` and then bisects, so a good guess costs O(1) evaluations.  The
    result is either ``hi`` or a point where ``pred`` was evaluated True, and
    the point below it was evaluated False (or is below ``lo``), even if
    ``pred`` is not perfectly monotone.
    """
    t = min(max(guess, lo), hi)  # candidate, becomes the known-True point
    f = lo - 1  # known-False point (lo - 1 is a sentinel)
    step = 1
    if t == hi or pred(t):
        while t > lo:  # gallop down
            cand = max(lo, t - step)
            if not pred(cand):
                f = cand
                break
            t, step = cand, step * 2
    else:
        f = t
        while True:  # gallop up
            cand = min(hi, f + step)
            if cand == hi or pred(cand):
                t = cand
                break
            f, step = cand, step * 2
    while t - f > 1:
        mid = (t + f) // 2
        if pred(mid):
            t = mid
        else:
            f = mid
    return t


def _validate_grid(indices: np.ndarray, prior: Prior) -> np.ndarray:
    a = np.asarray(indices)
    if a.ndim != 2:
        raise ValueError(f"indices must be a 2-D (h, w) grid, got shape {a.shape}")
    h, w = a.shape
    if not (1 <= h <= _U16 and 1 <= w <= _U16):
        raise ValueError(f"grid sides must be in [1, 65535], got {h}x{w}")
    if h * w > MAX_GRID:
        raise ValueError(f"grid {h}x{w} has more than {MAX_GRID} positions")
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"indices must be integers, got {a.dtype}")
    if not 2 <= prior.K <= _U16:
        raise ValueError(f"prior K={prior.K} does not fit the u16 header field")
    if a.min() < 0 or a.max() >= prior.K:
        raise ValueError(f"indices must lie in [0, {prior.K}), got [{a.min()}, {a.max()}]")
    return a.astype(np.int64).ravel()


def context_refs(positions: np.ndarray, w: int) -> np.ndarray:
    """For one packet's positions (ascending raster order, grid width ``w``): (n, 2), where in
    the packet each position's left and upper neighbours sit, -1 for one that is not there.

    These are the neighbours a context prior codes an index against (:func:`entropy.encode`'s
    ``refs``: the left one, else the upper one, or both for a prior with a pair exponent). Only
    neighbours inside the same packet count, so a packet still decodes alone: a raster run gets
    the left neighbour almost everywhere and the upper one once it is longer than a row,
    interleaved packets get the upper one when the packet count divides the width, and none at
    all otherwise.
    """
    pos = np.asarray(positions, dtype=np.int64)
    if pos.size == 0:
        return np.zeros((0, 2), dtype=np.int64)

    def find(target: np.ndarray, valid: np.ndarray) -> np.ndarray:
        j = np.minimum(np.searchsorted(pos, target), pos.size - 1)
        return np.where(valid & (pos[j] == target), j, -1)

    return np.stack([find(pos - 1, pos % w != 0), find(pos - w, pos >= w)], axis=1)


def _fitting_payload(symbols: np.ndarray, prior: Prior, max_payload: int, refs: np.ndarray) -> bytes | None:
    """Encoded payload if it fits in ``max_payload`` bytes, else None."""
    try:
        data = entropy.encode(symbols, prior, refs)
    except EntropyError:  # too many near-free symbols for the decode bound
        return None
    return data if len(data) <= max_payload else None


def _raster_runs(flat: np.ndarray, prior: Prior, max_payload: int, w: int) -> list[tuple[int, int, bytes]]:
    """Greedy contiguous ``(start, n, payload)`` runs: each takes as many symbols as fit."""
    info = prior.information_bits(flat, context_refs(np.arange(flat.size), w))
    cum = np.concatenate([[0.0], np.cumsum(info)])
    budget_bits = 8 * max_payload - 32  # ~one word of coder overhead
    runs: list[tuple[int, int, bytes]] = []
    start = 0
    while start < flat.size:
        remaining = flat.size - start
        cache: dict[int, bytes | None] = {}

        def fits(n: int) -> bool:
            if n > remaining:
                return False
            if n not in cache:
                cache[n] = _fitting_payload(
                    flat[start : start + n], prior, max_payload, context_refs(np.arange(start, start + n), w)
                )
            return cache[n] is not None

        if not fits(1):
            raise ValueError(f"symbol at position {start} does not fit in max_payload={max_payload}")
        guess = int(np.searchsorted(cum[start + 1 :], cum[start] + budget_bits, side="right"))
        n = _first_true(lambda m: not fits(m + 1), 1, remaining, guess)
        fits(n)  # _first_true guarantees n fits; this just makes sure its payload is cached
        runs.append((start, n, cache[n]))  # type: ignore[arg-type]
        start += n
    return runs


def _interleaved_payloads(flat: np.ndarray, prior: Prior, max_payload: int, w: int) -> list[bytes]:
    """Payloads for the smallest packet count N at which every class fits."""
    limit = min(_U16, flat.size)
    cache: dict[int, list[bytes] | None] = {}

    def fits(N: int) -> bool:
        if N not in cache:
            payloads: list[bytes] | None = []
            for i in range(N):
                data = _fitting_payload(flat[i::N], prior, max_payload, context_refs(np.arange(i, flat.size, N), w))
                if data is None:
                    payloads = None
                    break
                payloads.append(data)
            cache[N] = payloads
        return cache[N] is not None

    total_bits = float(prior.information_bits(flat).sum())  # a guess: context would only lower it
    guess = int(np.ceil(total_bits / (8 * max_payload - 32)))
    N = _first_true(fits, 1, limit, guess)
    if not fits(N):
        raise ValueError(f"cannot fit {flat.size} symbols in {limit} packets of max_payload={max_payload}")
    return cache[N]  # type: ignore[return-value]


def packetize(
    indices: np.ndarray, prior: Prior, max_payload: int, layout: Layout = "raster", image_id: int = 0
) -> list[bytes]:
    """Split an (h, w) grid into independently decodable packets.

    Every packet's payload (the range-coded bytes, not the header) is at most
    ``max_payload`` bytes, checked by actually encoding.  ``raster`` fills
    each packet greedily with consecutive positions; ``interleaved`` uses the
    smallest packet count N for which every strided class ``i, i+N, ...``
    fits.  Raises ValueError for bad input or if ``max_payload`` is outside
    ``[MIN_PAYLOAD, MAX_PAYLOAD]`` (8 .. 65535) or the grid needs more than
    65535 packets.
    """
    if layout not in _LAYOUT_CODE:
        raise ValueError(f"layout must be 'raster' or 'interleaved', got {layout!r}")
    if not MIN_PAYLOAD <= max_payload <= MAX_PAYLOAD:
        raise ValueError(f"max_payload must be in [{MIN_PAYLOAD}, {MAX_PAYLOAD}] bytes, got {max_payload}")
    if not 0 <= image_id <= _U32:
        raise ValueError(f"image_id must fit in u32, got {image_id}")
    flat = _validate_grid(indices, prior)
    h, w = (int(d) for d in np.shape(indices))
    common = dict(image_id=int(image_id), K=prior.K, h=h, w=w)
    if layout == "raster":
        runs = _raster_runs(flat, prior, max_payload, w)
        if len(runs) > _U16:
            raise ValueError(f"grid needs {len(runs)} packets, more than 65535; raise max_payload")
        packets = [
            Packet(layout="raster", packet_number=i, packet_count=len(runs), n=n, payload=data, start=start, **common)
            for i, (start, n, data) in enumerate(runs)
        ]
    else:
        payloads = _interleaved_payloads(flat, prior, max_payload, w)
        N = len(payloads)
        packets = [
            Packet(
                layout="interleaved",
                packet_number=i,
                packet_count=N,
                n=len(range(i, flat.size, N)),
                payload=data,
                **common,
            )
            for i, data in enumerate(payloads)
        ]
    return [p.to_bytes() for p in packets]


def depacketize(
    packets: Iterable[bytes],
    prior_for_k: Callable[[int], Prior] | Mapping[int, Prior],
    shape: tuple[int, int] | None = None,
    image_id: int | None = None,
    fill: int = 0,
    K: int | None = None,
) -> Depacketized:
    """Rebuild the grid and the lost mask from whatever packets arrived.

    Each item is parsed independently; unparsable or CRC-failing items,
    packets for another ``image_id``, ``shape`` or ``K`` (when given), packets
    disagreeing with the majority header (image_id, K, h, w, packet count,
    layout; ties go to the earliest), conflicting copies of a packet number,
    overlapping runs and undecodable payloads all count as bad.  Exact
    duplicates are ignored.  Only :class:`PacketError` escapes: when nothing
    valid arrived and ``shape`` is None, or when no prior is available for
    the header's K (or it has a different K).
    """
    parsed: list[tuple[Packet, bytes]] = []
    n_bad = 0
    for item in packets:
        try:
            pkt = Packet.from_bytes(item)
        except PacketError:
            n_bad += 1
            continue
        if (
            (image_id is not None and pkt.image_id != image_id)
            or (shape is not None and (pkt.h, pkt.w) != tuple(shape))
            or (K is not None and pkt.K != K)
        ):
            n_bad += 1
            continue
        parsed.append((pkt, bytes(item)))

    def key(p: Packet) -> tuple[int, int, int, int, int, str]:
        return (p.image_id, p.K, p.h, p.w, p.packet_count, p.layout)

    if not parsed:
        if shape is None:
            raise PacketError("no valid packet arrived and no shape was given")
        h, w = shape
        return Depacketized(
            indices=np.full((h, w), fill, dtype=np.int64),
            lost=np.ones((h, w), dtype=bool),
            n_packets_expected=None,
            n_packets_ok=0,
            n_packets_bad=n_bad,
            K=None,
        )

    votes = Counter(key(p) for p, _ in parsed)
    winner = max(votes, key=votes.__getitem__)  # max keeps the first-seen key on ties
    _, K, h, w, count, _ = winner
    try:
        prior = prior_for_k[K] if isinstance(prior_for_k, Mapping) else prior_for_k(K)
    except LookupError as exc:
        raise PacketError(f"no prior available for K={K}") from exc
    if prior.K != K:
        raise PacketError(f"prior for K={K} has K={prior.K}")

    flat = np.full(h * w, fill, dtype=np.int64)
    received = np.zeros(h * w, dtype=bool)
    seen: dict[int, bytes] = {}
    n_ok = 0
    for pkt, raw in parsed:
        if key(pkt) != winner:
            n_bad += 1
            continue
        if pkt.packet_number in seen:
            if seen[pkt.packet_number] != raw:  # a conflicting copy; exact duplicates are harmless
                n_bad += 1
            continue
        seen[pkt.packet_number] = raw
        pos = pkt.positions()
        if received[pos].any():  # only a forged header can overlap another run
            n_bad += 1
            continue
        try:
            symbols = entropy.decode(pkt.payload, pkt.n, prior, context_refs(pos, w))
        except EntropyError:
            n_bad += 1
            continue
        flat[pos] = symbols
        received[pos] = True
        n_ok += 1
    return Depacketized(
        indices=flat.reshape(h, w),
        lost=~received.reshape(h, w),
        n_packets_expected=count,
        n_packets_ok=n_ok,
        n_packets_bad=n_bad,
        K=K,
    )
