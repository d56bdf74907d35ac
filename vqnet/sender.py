"""The sender: image -> indices -> range-coded packets (+ the colour packet) -> what goes on the link.

One function for every place an image is sent: the sweep (:mod:`vqnet.sweep`), ``.vqn`` files
(:func:`vqnet.vqn.encode_vqn`, hence ``vqnet encode`` and ``vqnet eval``). The receiving half is
:mod:`vqnet.receiver`; the channel between them is the caller's (:func:`vqnet.channel.link.transmit`
in the sweep, a file on disk for ``.vqn``).

The sending order is fixed: the index packets by number, then the colour packet (so the index
packets meet exactly the channel they would meet without it), and with FEC each block of those
followed by its parity packets (:func:`vqnet.fec.protect`). Receivers find the colour and parity
packets by their magic, never by their place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from vqnet.chroma import Chroma, fitting_chroma_packet, read_chroma_packet
from vqnet.fec import FecCode, protect
from vqnet.packets import Layout, packetize

if TYPE_CHECKING:
    import torch

    from vqnet.codec.bundle import Codec

__all__ = ["PacketSettings", "Sent", "send"]


@dataclass(frozen=True)
class PacketSettings:
    """How an image's indices become packets: the payload bound, the layout, the colour packet's
    cells (0 = none; :func:`vqnet.chroma.fitting_chroma_packet`) and the Reed-Solomon code (None = no
    parity)."""

    max_payload: int
    layout: Layout
    chroma_cells: int = 0
    fec: FecCode | None = None


@dataclass(frozen=True)
class Sent:
    """One image as sent: its index grid, its data packets and what goes on the link."""

    K: int
    size: tuple[int, int]  # the image's height and width in pixels
    indices: np.ndarray  # the encoder's (h, w) grid
    packets: list[bytes]  # data packets: the index packets by number, then the colour packet
    colour: Chroma | None  # what the colour packet carries, if one was sent
    wire: list[bytes]  # ``packets`` in sending order, with each FEC block's parity after it

    @property
    def parity_packets(self) -> int:
        return len(self.wire) - len(self.packets)


def send(
    codec: Codec,
    pixels: np.ndarray,
    K: int,
    settings: PacketSettings,
    *,
    image_id: int = 0,
    latent: torch.Tensor | None = None,
) -> Sent:
    """Encode a uint8 (H, W, 3) image at K and packetize it as ``settings`` say.

    ``latent`` is the image's encoder output (:meth:`Codec.encode_latent`) when the caller already
    has it: it is shared by every K, so a sweep over several K encodes each image once.
    """
    indices = codec.quantize(codec.encode_latent(pixels) if latent is None else latent, K)
    packets = packetize(
        indices, codec.codebook(K).prior, settings.max_payload, layout=settings.layout, image_id=image_id
    )
    colour = None
    if settings.chroma_cells:
        packet = fitting_chroma_packet(
            pixels, codec.factor, indices.shape, settings.chroma_cells, settings.max_payload, image_id=image_id
        )
        if packet is not None:
            packets.append(packet)
            colour = read_chroma_packet(packet)[3]
    wire = packets if settings.fec is None else protect(packets, settings.fec, image_id)
    h, w = pixels.shape[:2]
    return Sent(K, (h, w), indices, packets, colour, wire)
