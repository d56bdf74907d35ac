"""The colour side channel (vqnet/chroma.py): exact round trips, damage detection, fitting the
payload budget, and that it puts back colour the bundled decoder loses."""

from __future__ import annotations

import struct
import zlib
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vqnet.chroma import (
    DECAYS,
    OVERHEAD,
    ChromaError,
    apply,
    chroma_packet,
    fitting_chroma_packet,
    is_chroma_packet,
    measure,
    read_chroma_packet,
    thumbnail_shape,
    to_ycbcr,
)
from vqnet.codec.bundle import load_codec
from vqnet.images import skimage_image
from vqnet.metrics import lpips_distance
from vqnet.vqn import decode_vqn, encode_vqn, read_vqn, write_vqn

F = 16


def _photo() -> np.ndarray:
    return skimage_image("coffee")[:200, :300]  # a red cup on a saucer, a 13x19 grid at f=16


def test_round_trip_is_exact_and_the_header_says_what_it_carries() -> None:
    img = _photo()
    for cells, step in ((1, 4), (2, 8), (3, 12), (16, 64)):
        chroma = measure(img, F, cells, step)
        assert chroma.planes.shape == (2, *thumbnail_shape(13, 19, cells))
        packet = chroma_packet(chroma, 13, 19, image_id=7)
        assert is_chroma_packet(packet) and packet[:3] == b"VC\x01"
        image_id, h, w, back = read_chroma_packet(packet)
        assert (image_id, h, w, back.cells, back.step) == (7, 13, 19, cells, step)
        assert np.array_equal(back.planes, chroma.planes)
        assert (len(packet) - OVERHEAD) % 4 == 0


def test_the_residual_model_follows_the_image() -> None:
    photo = chroma_packet(measure(_photo(), F, 1, 4), 13, 19)
    flat_img = np.full_like(_photo(), 120)
    flat_img[::2] = (140, 100, 100)  # stripes finer than a block: every block has the same chroma
    flat = chroma_packet(measure(flat_img, F, 1, 4), 13, 19)
    # near-zero residuals get a steeper model (a smaller decay) and cost far fewer bytes
    assert flat[13] < photo[13] < len(DECAYS) and len(flat) < len(photo) / 2
    assert read_chroma_packet(flat)[3].planes.any()


def test_measure_averages_blocks_aligned_with_the_grid() -> None:
    img = np.zeros((40, 40, 3), dtype=np.uint8)
    img[:32, :32] = (255, 0, 0)  # the first 32x32 block is pure red, the rest black
    chroma = measure(img, F, 2, 1)
    assert chroma.planes.shape == (2, 2, 2)  # a 3x3 grid, 2x2 cells a sample: 2x2 thumbnail
    cb, cr = chroma.planes[:, 0, 0]
    assert cr == round(0.5 * 255) and cb == round(-0.168736 * 255)  # JPEG's YCbCr of (255, 0, 0), minus 128
    assert not chroma.planes[:, 1, 1].any()  # black (edge padding of black) has no chroma


def test_apply_restores_colour_and_keeps_luminance() -> None:
    red = np.zeros((64, 64, 3), dtype=np.uint8)
    red[...] = (200, 40, 30)
    y = round(0.299 * 200 + 0.587 * 40 + 0.114 * 30)
    grey = np.full_like(red, y)  # what a colour-blind decoder makes of it
    out = apply(grey, measure(red, F, 1, 2), F)
    assert np.abs(out.astype(int) - red).max() <= 3


@pytest.mark.parametrize("name", ["coffee", "rocket", "astronaut"])
def test_colour_follows_the_luma_detail(name: str) -> None:
    # A colour-blind decode that kept the luma exactly: the thumbnail gives the colour of each
    # 32-px block, the luma's detail says where inside it the colour changes. Following the luma
    # must bring the chroma closer to the photo's than the bicubic thumbnail alone.
    img = skimage_image(name)
    grey = np.repeat(np.rint(to_ycbcr(img)[..., :1]).astype(np.uint8), 3, axis=2)
    chroma = measure(img, F, 2, 4)

    def chroma_error(out: np.ndarray) -> float:
        return float(np.sqrt(((to_ycbcr(out) - to_ycbcr(img))[..., 1:] ** 2).mean()))

    assert chroma_error(apply(grey, chroma, F)) < 0.98 * chroma_error(apply(grey, chroma, F, from_luma=False))


def test_damage_is_detected() -> None:
    packet = chroma_packet(measure(_photo(), F, 2, 8), 13, 19)
    for broken in (packet[:-1], packet[:10], packet[:20] + bytes([packet[20] ^ 1]) + packet[21:], b"VQ" + packet[2:]):
        with pytest.raises(ChromaError):
            read_chroma_packet(broken)
    # a forged header (valid CRC) naming a 2048x2048 grid at one cell a sample: refused unread
    forged = struct.pack("!2sBIHHBBBH", b"VC", 1, 0, 2048, 2048, 1, 8, 0, 4) + b"\0" * 4
    with pytest.raises(ChromaError, match="more samples than the payload"):
        read_chroma_packet(forged + struct.pack("!I", zlib.crc32(forged)))
    with pytest.raises(ValueError, match="does not fit"):
        chroma_packet(measure(_photo(), F, 2, 8), 12, 19)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=80), st.integers(0, 79))
def test_reader_never_fails_otherwise(tail: bytes, cut: int) -> None:
    packet = chroma_packet(measure(_photo(), F, 4, 8), 13, 19)
    for data in (tail, packet[:cut] + tail, b"VC\x01" + tail):
        try:
            read_chroma_packet(data)
        except ChromaError:
            pass


def test_fitting_coarsens_the_thumbnail_to_fit_the_payload() -> None:
    img = _photo()
    fine = fitting_chroma_packet(img, F, (13, 19), 1, 1000)
    assert read_chroma_packet(fine)[3].cells == 1
    small = fitting_chroma_packet(img, F, (13, 19), 1, 16)
    assert small is not None and len(small) - OVERHEAD <= 16 and read_chroma_packet(small)[3].cells > 1
    blocks = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)  # random colours a 256-px block
    big = np.repeat(np.repeat(blocks, 256, axis=0), 256, axis=1)
    assert fitting_chroma_packet(big, F, (128, 128), 1, 8) is None


def test_chroma_packet_travels_in_the_vqn_file_and_colours_the_bundled_model() -> None:
    codec = load_codec()
    img = _photo()
    plain = encode_vqn(codec, img, 256, 1000, "interleaved")
    coloured = encode_vqn(codec, img, 256, 1000, "interleaved", chroma_cells=2)
    assert coloured.packets[:-1] == plain.packets and is_chroma_packet(coloured.packets[-1])
    with_colour = decode_vqn(codec, read_vqn(write_vqn(coloured)), "none")
    without = decode_vqn(codec, plain, "none")
    assert with_colour.chroma_cells == 2 and without.chroma_cells is None
    assert with_colour.received.n_packets_bad == 0 and with_colour.missing == 0
    assert lpips_distance(img, with_colour.image) < lpips_distance(img, without.image) - 0.02
    # losing the colour packet loses only the colour, and so does damaging it
    lost = decode_vqn(codec, replace(coloured, packets=coloured.packets[:-1]), "none")
    assert lost.chroma_cells is None and np.array_equal(lost.image, without.image)
    damaged = coloured.packets[-1][:-1] + bytes([coloured.packets[-1][-1] ^ 0xFF])
    hurt = decode_vqn(codec, replace(coloured, packets=(*plain.packets, damaged)), "none")
    assert hurt.chroma_cells is None and hurt.received.n_packets_bad == 0
    assert np.array_equal(hurt.image, without.image)
