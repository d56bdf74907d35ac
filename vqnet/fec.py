"""Reed-Solomon erasure coding across an image's packets (zfec), and its recovery at the receiver.

The code is systematic: the image's packets (index packets, then the colour packet) go out
unchanged, and after each block of ``k`` of them come ``r`` parity packets. Any ``k`` of a
block's ``k + r`` packets give back all of its data packets; with fewer, the block's holes stay
holes and concealment fills them, as without FEC. zfec (Tahoe-LAFS's Reed-Solomon erasure code
over GF(2^8), a C extension with wheels) does the arithmetic; its field caps a block at 256
packets.

Packets differ in length, and an erasure code works on equal-length symbols, so each data
packet's symbol is its length (u16) followed by its bytes, zero-padded to the block's longest
packet: a recovered symbol gives back the packet exactly, CRC included, and the depacketizer
checks it like any other.

A data packet's place in the image's sequence is read from its own header: an index packet's
``packet_number``; the colour packet (known by its magic) is the last (it has no number; the parity
header says how many data packets the image has); anything else is not a data packet of the image. So data packets need no extra
framing. Every vqnet packet ends in the CRC-32 of the bytes before it, which is how a damaged one
is kept out of a decode.

Parity packet byte layout (network byte order, ``struct`` format in brackets)::

    offset  size  field            notes
    ------  ----  ---------------  -----------------------------------------------------
    0       2     magic [2s]       b"VF" (index packets b"VQ", the colour packet b"VC")
    2       1     version [B]      1
    3       4     image_id [I]     as the image's other packets
    7       2     n_data [H]       data packets of the image, >= 1
    9       2     first [H]        sequence number of the block's first data packet
    11      1     k [B]            data packets in the block, 1..255
    12      1     r [B]            parity packets of the block, 1..256-k
    13      1     j [B]            which parity packet this is, 0..r-1 (zfec share k+j)
    14      2     payload_len [H]  2 + the block's longest data packet
    16      L     payload          the parity symbol
    16+L    4     crc32 [I]        zlib.crc32 of bytes 0 .. 16+L-1
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

import zfec

from vqnet.packets import CHROMA_MAGIC, PARITY_MAGIC, Packet, PacketError
from vqnet.packets import MAGIC as INDEX_MAGIC

__all__ = ["MAX_N", "Block", "FecCode", "Recovered", "is_parity_packet", "protect", "recover"]

MAGIC = PARITY_MAGIC
VERSION = 1
_HEAD = struct.Struct("!2sBIHHBBBH")
_CRC = struct.Struct("!I")
_LEN = struct.Struct("!H")
#: Bytes a parity packet adds around its symbol.
OVERHEAD = _HEAD.size + _CRC.size
#: zfec's limit on the packets of one block (data + parity): the size of GF(2^8).
MAX_N = 256


@dataclass(frozen=True)
class Block:
    """Data packets ``first .. first + k - 1`` of an image and their ``r`` parity packets."""

    first: int
    k: int
    r: int


@dataclass(frozen=True)
class FecCode:
    """How an image's packets are split into blocks: ``k`` data + ``n - k`` parity packets per block
    (the last block keeps ``n - k`` parity for what is left), or a ``parity`` ratio (parity packets
    per data packet), applied to blocks as long as the code allows, because one long block
    survives any loss pattern that leaves enough of it, where short blocks each need their own."""

    k: int | None = None
    n: int | None = None
    parity: float | None = None

    def __post_init__(self) -> None:
        if (self.parity is None) == (self.k is None or self.n is None) or (self.k is None) != (self.n is None):
            raise ValueError("give fec either k and n, or a parity ratio")
        if self.parity is not None and not 0 < self.parity <= MAX_N - 1:
            raise ValueError(f"fec parity ratio must be in (0, {MAX_N - 1}], got {self.parity:g}")
        if self.k is not None and self.n is not None:
            if self.k < 1:
                raise ValueError(f"fec k must be >= 1, got {self.k}")
            if self.k >= self.n:
                raise ValueError(f"fec needs k < n (n - k parity packets per block), got k={self.k}, n={self.n}")
            if self.n > MAX_N:
                raise ValueError(
                    f"fec n={self.n} is above the Reed-Solomon limit of {MAX_N} packets a block (zfec, GF(2^8))"
                )

    def blocks(self, n_data: int) -> list[Block]:
        """The blocks of an image of ``n_data`` packets, in sending order."""
        if n_data < 1:
            raise ValueError("an image has at least one packet")
        if self.k is not None and self.n is not None:
            return [Block(first, min(self.k, n_data - first), self.n - self.k) for first in range(0, n_data, self.k)]
        assert self.parity is not None
        # Fewest equal blocks whose data and parity fit in one code word.
        count = 1
        while True:
            k = math.ceil(n_data / count)
            if k + self._parity_for(k) <= MAX_N:
                break
            count += 1
        sizes = [n_data // count + (i < n_data % count) for i in range(count)]
        starts = [sum(sizes[:i]) for i in range(count)]
        return [Block(first, k, self._parity_for(k)) for first, k in zip(starts, sizes)]

    def _parity_for(self, k: int) -> int:
        assert self.parity is not None
        return max(1, round(self.parity * k))


def _symbol(packet: bytes, width: int) -> bytes:
    return _LEN.pack(len(packet)) + packet + bytes(width - 2 - len(packet))


def _parity_packet(image_id: int, n_data: int, block: Block, j: int, symbol: bytes) -> bytes:
    body = _HEAD.pack(MAGIC, VERSION, image_id, n_data, block.first, block.k, block.r, j, len(symbol)) + symbol
    return body + _CRC.pack(zlib.crc32(body))


def protect(packets: list[bytes], code: FecCode, image_id: int = 0) -> list[bytes]:
    """The image's packets in sending order with parity: each block's data packets, then its
    parity packets. ``packets`` are the image's data packets in sequence order (index packets by
    number, the colour packet last)."""
    if len(packets) > 0xFFFF:
        raise ValueError(f"{len(packets)} packets are more than a parity header can number")
    out: list[bytes] = []
    for block in code.blocks(len(packets)):
        data = packets[block.first : block.first + block.k]
        width = 2 + max(len(p) for p in data)
        encoder = zfec.Encoder(block.k, block.k + block.r)
        shares = encoder.encode([_symbol(p, width) for p in data], list(range(block.k, block.k + block.r)))
        out += data
        out += [_parity_packet(image_id, len(packets), block, j, bytes(s)) for j, s in enumerate(shares)]
    return out


def is_parity_packet(data: bytes) -> bool:
    """True for a parity packet (by its magic; whether it is intact is checked on use)."""
    return bytes(data[:2]) == MAGIC


@dataclass(frozen=True)
class _Parity:
    image_id: int
    n_data: int
    block: Block
    j: int
    symbol: bytes


def _read_parity(data: bytes) -> _Parity:
    """Parse and check a parity packet; any defect raises :class:`PacketError`."""
    data = bytes(data)
    if len(data) < OVERHEAD:
        raise PacketError(f"parity packet of {len(data)} bytes is shorter than its header")
    magic, version, image_id, n_data, first, k, r, j, length = _HEAD.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise PacketError("not a parity packet")
    if not _intact(data):
        raise PacketError("CRC mismatch")
    if len(data) != OVERHEAD + length or length < 2:
        raise PacketError(f"length {len(data)} disagrees with payload_len {length}")
    if not (k >= 1 and 1 <= r <= MAX_N - k and j < r and first + k <= n_data):
        raise PacketError(f"inconsistent block: first={first} k={k} r={r} j={j} n_data={n_data}")
    return _Parity(image_id, n_data, Block(first, k, r), j, data[_HEAD.size : -_CRC.size])


def _intact(data: bytes) -> bool:
    return len(data) > _CRC.size and zlib.crc32(data[: -_CRC.size]) == _CRC.unpack_from(data, len(data) - _CRC.size)[0]


def _sequence_number(data: bytes, n_data: int) -> int | None:
    """Where an intact data packet stands in its image's sequence, None for a damaged one."""
    magic = bytes(data[:2])
    if magic == CHROMA_MAGIC:
        return n_data - 1 if _intact(data) else None
    if magic != INDEX_MAGIC:
        return None
    try:
        return Packet.from_bytes(data).packet_number
    except PacketError:
        return None


@dataclass(frozen=True)
class Recovered:
    """The data packets the receiver has after decoding (those that arrived, then those rebuilt),
    and what decoding did: blocks decoded (a block is decoded only when one of its data packets
    is missing and enough of it arrived) and data packets rebuilt."""

    packets: list[bytes]
    blocks_decoded: int
    packets_recovered: int


def recover(received: Iterable[bytes], image_id: int | None = None) -> Recovered:
    """Rebuild every missing data packet of each block of which at least k packets arrived.

    Parity packets that fail their CRC or belong to another image are dropped; when parity
    packets disagree on the image's blocks, the first intact one decides. Blocks with too little
    left stay as they are: their missing packets are for concealment.
    """
    data: list[bytes] = []
    parity: list[_Parity] = []
    for item in received:
        if not is_parity_packet(item):
            data.append(bytes(item))
            continue
        try:
            p = _read_parity(item)
        except PacketError:
            continue
        if image_id is None or p.image_id == image_id:
            parity.append(p)
    if not parity:
        return Recovered(data, 0, 0)
    n_data = parity[0].n_data
    by_block: dict[Block, dict[int, bytes]] = {}
    for p in parity:
        if p.n_data == n_data:
            by_block.setdefault(p.block, {}).setdefault(p.block.k + p.j, p.symbol)
    have: dict[int, bytes] = {}
    for packet in data:
        seq = _sequence_number(packet, n_data)
        if seq is not None:
            have.setdefault(seq, packet)
    rebuilt: list[bytes] = []
    decoded = 0
    for block, shares in by_block.items():
        members = range(block.first, block.first + block.k)
        missing = [s for s in members if s not in have]
        width = len(next(iter(shares.values())))
        present = {s - block.first: have[s] for s in members if s in have and len(have[s]) <= width - 2}
        if not missing or len(present) + len(shares) < block.k:
            continue
        chosen = sorted(present.items())[: block.k]
        nums = [i for i, _ in chosen] + sorted(shares)[: block.k - len(chosen)]
        symbols = [_symbol(p, width) for _, p in chosen] + [shares[i] for i in nums[len(chosen) :]]
        if any(len(s) != width for s in symbols):
            continue  # parity packets of one block that disagree on its width: a forged header
        out = zfec.Decoder(block.k, block.k + block.r).decode(symbols, nums)
        decoded += 1
        for s in missing:
            symbol = bytes(out[s - block.first])
            (length,) = _LEN.unpack_from(symbol)
            if length <= width - 2:
                rebuilt.append(symbol[2 : 2 + length])
    return Recovered(data + rebuilt, decoded, len(rebuilt))
