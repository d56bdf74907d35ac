"""The receiver: received packets -> index grid with holes (+ the colour) -> restored indices -> image.

One receiver for every place an image is received: the sweep (:mod:`vqnet.sweep`) and ``.vqn``
files (:func:`vqnet.vqn.decode_vqn`, hence ``vqnet decode`` and ``vqnet eval``). The sending half
is :mod:`vqnet.sender`.

Packets may arrive in any order, damaged or not at all. Each kind is told by its magic, never by
its place: parity packets (``VF``) rebuild the data packets of every block of which enough arrived
(:func:`vqnet.fec.recover`; without parity nothing changes), index packets (``VQ``) are
depacketized into the grid and its mask of lost indices (:func:`vqnet.packets.depacketize`:
packets of another image, grid or K count as damaged), and the first intact colour packet
(``VC``) of this image and grid gives the colour; a damaged one is as good as lost.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from vqnet.chroma import Chroma, ChromaError, decode_many_in_colour, is_chroma_packet, read_chroma_packet
from vqnet.fec import recover
from vqnet.packets import Depacketized, depacketize
from vqnet.restore import RestoreContext, restore

if TYPE_CHECKING:
    from vqnet.codec.bundle import Codec
    from vqnet.sender import Sent

__all__ = ["Received", "receive", "receive_masked", "conceal", "decode"]


@dataclass(frozen=True)
class Received:
    """What the receiver holds of one image before concealment."""

    K: int
    size: tuple[int, int]  # the image's height and width in pixels
    grid: Depacketized  # the index grid with holes (0 where lost), the lost mask, the packet counts
    colour: Chroma | None  # what the colour packet carries, if it arrived intact
    packets_recovered: int = 0  # data packets rebuilt from parity

    @property
    def indices(self) -> np.ndarray:
        return self.grid.indices

    @property
    def lost(self) -> np.ndarray:
        return self.grid.lost


def receive(codec: Codec, packets: Iterable[bytes], K: int, size: tuple[int, int], *, image_id: int = 0) -> Received:
    """What arrived of image ``image_id``, coded at K from a (height, width) image, as the receiver
    sees it. Raises ``CodecError`` for a K the codec lacks."""
    prior = codec.codebook(K).prior
    shape = (-(-size[0] // codec.factor), -(-size[1] // codec.factor))
    fec = recover(packets, image_id=image_id)
    grid = depacketize(
        [p for p in fec.packets if not is_chroma_packet(p)], {K: prior}, shape=shape, image_id=image_id, K=K
    )
    return Received(K, size, grid, _colour(fec.packets, image_id, shape), fec.packets_recovered)


def _colour(packets: list[bytes], image_id: int, shape: tuple[int, int]) -> Chroma | None:
    for packet in filter(is_chroma_packet, packets):
        try:
            got_id, h, w, chroma = read_chroma_packet(packet)
        except ChromaError:
            continue  # damaged: the image keeps the decoder's own colour
        if (got_id, h, w) == (image_id, *shape):
            return chroma
    return None


def receive_masked(sent: Sent, lost: np.ndarray) -> Received:
    """What the receiver holds when the channel loses indices rather than packets (the sweep's
    index-mask channels): the sent grid with holes where ``lost``, filled as the depacketizer
    fills them, every packet counted as arrived, and the colour, which is side information."""
    n_index = sum(not is_chroma_packet(p) for p in sent.packets)
    grid = Depacketized(np.where(lost, 0, sent.indices), lost, n_index, n_index, 0, sent.K)
    return Received(sent.K, sent.size, grid, sent.colour)


def conceal(codec: Codec, received: Received, method: str, seed: int = 0) -> np.ndarray:
    """The received grid with its holes filled by ``method`` (:mod:`vqnet.restore`); ``seed`` feeds
    the methods that draw."""
    ctx = RestoreContext(received.K, codec.codebook(received.K).prior, seed, codec)
    return restore(method, received.indices, received.lost, ctx)


def decode(codec: Codec, received: Received, grids: list[np.ndarray]) -> list[np.ndarray]:
    """Restored grids of the received image -> images of its size, in the colour packet's colour
    when it arrived (:func:`vqnet.chroma.decode_many_in_colour`), in one decoder call."""
    return decode_many_in_colour(codec, grids, received.K, received.size, received.colour)
