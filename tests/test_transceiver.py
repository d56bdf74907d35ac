"""The sender and the receiver (vqnet/sender.py, vqnet/receiver.py) on a small real codec: the round
trip, exactly which indices a lost packet takes, the colour packet found by its magic wherever it
lies, and Reed-Solomon recovery exactly when enough of a block arrives."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from conftest import tiny_codec
from hypothesis import given, settings
from hypothesis import strategies as st

from vqnet.chroma import decode_in_colour, is_chroma_packet
from vqnet.codec.bundle import Codec, load_codec, save_codec
from vqnet.fec import FecCode, is_parity_packet
from vqnet.packets import Layout, Packet
from vqnet.receiver import Received, conceal, decode, receive, receive_masked
from vqnet.sender import PacketSettings, Sent, send
from vqnet.vqn import decode_vqn, encode_vqn

K = 32
SIZE = (40, 52)  # the tiny codec has f=4: a 10 x 13 grid
IMAGE_ID = 5
PAYLOAD = 12  # 9 index packets, and the colour packet at 4 x 4 cells a sample


@pytest.fixture(scope="module")
def codec(tmp_path_factory: pytest.TempPathFactory) -> Codec:
    path = tmp_path_factory.mktemp("codec") / "tiny.safetensors"
    save_codec(tiny_codec(), path)  # saved, so it has the model id a .vqn file names
    return load_codec(path)


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (*SIZE, 3), dtype=np.uint8)


def sent_with(codec: Codec, pixels: np.ndarray, layout: Layout = "interleaved", fec: FecCode | None = None) -> Sent:
    return send(codec, pixels, K, PacketSettings(PAYLOAD, layout, chroma_cells=1, fec=fec), image_id=IMAGE_ID)


def same_colour(a: Received | Sent, b: Received | Sent) -> bool:
    return a.colour is not None and b.colour is not None and np.array_equal(a.colour.planes, b.colour.planes)


def index_positions(packet: bytes, shape: tuple[int, int]) -> set[tuple[int, int]]:
    return {divmod(int(i), shape[1]) for i in Packet.from_bytes(packet).positions()}


def lost_positions(received: Received) -> set[tuple[int, int]]:
    return {(int(r), int(c)) for r, c in zip(*np.nonzero(received.lost))}


@pytest.mark.parametrize("layout", ["raster", "interleaved"])
def test_with_no_loss_the_receiver_has_the_encoders_indices(codec, pixels, layout) -> None:
    sent = sent_with(codec, pixels, layout)
    assert np.array_equal(sent.indices, codec.encode(pixels, K)) and sent.size == SIZE
    assert sent.wire == sent.packets and sent.parity_packets == 0 and is_chroma_packet(sent.packets[-1])
    got = receive(codec, sent.wire, K, SIZE, image_id=IMAGE_ID)
    assert np.array_equal(got.indices, sent.indices) and not got.lost.any() and same_colour(got, sent)
    assert got.grid.n_packets_ok == got.grid.n_packets_expected == len(sent.packets) - 1
    assert got.grid.n_packets_bad == 0 and got.packets_recovered == 0
    assert np.array_equal(conceal(codec, got, "neighbor"), sent.indices)
    [image] = decode(codec, got, [got.indices])
    assert np.array_equal(image, decode_in_colour(codec, sent.indices, K, SIZE, sent.colour))


def test_a_given_latent_is_the_images_own(codec, pixels) -> None:
    settings_ = PacketSettings(PAYLOAD, "interleaved", chroma_cells=1)
    again = send(codec, pixels, K, settings_, image_id=IMAGE_ID, latent=codec.encode_latent(pixels))
    assert again.packets == sent_with(codec, pixels).packets


@pytest.mark.parametrize("layout", ["raster", "interleaved"])
def test_the_receiver_reports_exactly_the_indices_of_the_lost_packets(codec, pixels, layout) -> None:
    sent = sent_with(codec, pixels, layout)
    index_packets = [p for p in sent.packets if not is_chroma_packet(p)]
    dropped = set(np.random.default_rng(1).choice(len(index_packets), size=len(index_packets) // 3, replace=False))
    arrived = [p for i, p in enumerate(index_packets) if i not in dropped]
    got = receive(codec, arrived, K, SIZE, image_id=IMAGE_ID)
    shape = sent.indices.shape
    assert lost_positions(got) == set().union(*(index_positions(index_packets[i], shape) for i in dropped))
    assert np.array_equal(got.indices[~got.lost], sent.indices[~got.lost]) and (got.indices[got.lost] == 0).all()
    assert got.grid.n_packets_expected - got.grid.n_packets_ok == len(dropped)
    assert got.colour is None  # it was not among the arrivals


def test_packets_of_another_image_count_as_damaged(codec, pixels) -> None:
    sent = sent_with(codec, pixels)
    other = send(codec, pixels, K, PacketSettings(PAYLOAD, "interleaved", chroma_cells=1), image_id=IMAGE_ID + 1)
    got = receive(codec, other.wire + sent.wire[:3], K, SIZE, image_id=IMAGE_ID)
    assert got.colour is None and got.grid.n_packets_bad == len(other.packets) - 1
    assert lost_positions(got) == {(r, c) for r in range(10) for c in range(13)} - set().union(
        *(index_positions(p, sent.indices.shape) for p in sent.wire[:3])
    )


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_the_colour_packet_is_found_by_its_magic_wherever_it_lies(codec, pixels, where) -> None:
    sent = sent_with(codec, pixels)
    *index_packets, colour = sent.packets
    at = {"first": 0, "middle": len(index_packets) // 2, "last": len(index_packets)}[where]
    packets = [*index_packets[:at], colour, *index_packets[at:]]
    got = receive(codec, packets, K, SIZE, image_id=IMAGE_ID)
    assert same_colour(got, sent) and np.array_equal(got.indices, sent.indices) and not got.lost.any()
    # the same in a .vqn file, whose packets a receiver may get in any order
    vqn = encode_vqn(codec, pixels, K, PAYLOAD, "interleaved", chroma_cells=1)
    moved = replace(vqn, packets=(*vqn.packets[:-1][:at], vqn.packets[-1], *vqn.packets[:-1][at:]))
    assert sent.colour is not None and decode_vqn(codec, moved).chroma_cells == sent.colour.cells == 4
    assert np.array_equal(decode_vqn(codec, moved).image, decode_vqn(codec, vqn).image)


def test_a_damaged_colour_packet_is_as_lost_and_takes_no_index_with_it(codec, pixels) -> None:
    sent = sent_with(codec, pixels)
    colour = bytearray(sent.packets[-1])
    colour[-1] ^= 1  # its CRC no longer matches
    got = receive(codec, [bytes(colour), *sent.packets[:-1]], K, SIZE, image_id=IMAGE_ID)
    assert got.colour is None and not got.lost.any() and got.grid.n_packets_bad == 0


def test_an_index_mask_keeps_the_colour_and_loses_exactly_the_masked_indices(codec, pixels) -> None:
    sent = sent_with(codec, pixels)
    lost = np.random.default_rng(2).random(sent.indices.shape) < 0.4
    got = receive_masked(sent, lost)
    assert np.array_equal(got.lost, lost) and same_colour(got, sent)
    assert np.array_equal(got.indices, np.where(lost, 0, sent.indices))


def wire_blocks(sent: Sent, code: FecCode) -> list[tuple[list[int], list[int]]]:
    """Per block, the wire positions of its data packets and of its parity packets."""
    out, at = [], 0
    for block in code.blocks(len(sent.packets)):
        out.append((list(range(at, at + block.k)), list(range(at + block.k, at + block.k + block.r))))
        at += block.k + block.r
    assert at == len(sent.wire)
    return out


@pytest.fixture(scope="module")
def protected(codec, pixels) -> tuple[Sent, FecCode]:
    code = FecCode(k=4, n=7)
    sent = sent_with(codec, pixels, fec=code)
    assert sent.parity_packets == 3 * len(code.blocks(len(sent.packets))) > 0
    assert [p for p in sent.wire if not is_parity_packet(p)] == sent.packets
    return sent, code


def test_parity_recovers_with_k_of_n_and_not_with_one_fewer(codec, protected) -> None:
    sent, code = protected
    blocks = wire_blocks(sent, code)
    # each block loses n - k of its packets, data first: k arrive, every data packet comes back
    enough = {i for data_at, parity_at in blocks for i in (data_at + parity_at)[: len(parity_at)]}
    got = receive(codec, [p for i, p in enumerate(sent.wire) if i not in enough], K, SIZE, image_id=IMAGE_ID)
    assert (
        not got.lost.any()
        and same_colour(got, sent)
        and got.packets_recovered == sum(min(len(d), len(r)) for d, r in blocks)
    )
    # the first block loses one more: k - 1 arrive, and its lost data packets stay lost
    data_at, parity_at = blocks[0]
    short = enough | {(data_at + parity_at)[len(parity_at)]}
    got = receive(codec, [p for i, p in enumerate(sent.wire) if i not in short], K, SIZE, image_id=IMAGE_ID)
    gone = [sent.wire[i] for i in data_at if i in short]
    assert lost_positions(got) == set().union(*(index_positions(p, sent.indices.shape) for p in gone))
    assert got.packets_recovered == sum(min(len(d), len(r)) for d, r in blocks[1:])


@given(st.data())
@settings(max_examples=40, deadline=None)
def test_parity_recovers_a_block_exactly_when_k_of_its_n_arrive(codec, protected, data) -> None:
    sent, code = protected
    arrived = data.draw(st.lists(st.booleans(), min_size=len(sent.wire), max_size=len(sent.wire)))
    got = receive(codec, [p for p, ok in zip(sent.wire, arrived) if ok], K, SIZE, image_id=IMAGE_ID)
    gone: list[bytes] = []  # data packets the receiver cannot have: missing from blocks with < k arrivals
    rebuilt = 0
    for (data_at, parity_at), block in zip(wire_blocks(sent, code), code.blocks(len(sent.packets))):
        missing = [sent.wire[i] for i in data_at if not arrived[i]]
        if sum(arrived[i] for i in data_at + parity_at) >= block.k:
            rebuilt += len(missing)
        else:
            gone += missing
    assert got.packets_recovered == rebuilt
    shape = sent.indices.shape
    lost = set().union(*(index_positions(p, shape) for p in gone if not is_chroma_packet(p)))
    assert lost_positions(got) == lost
    assert np.array_equal(got.indices[~got.lost], sent.indices[~got.lost])
    assert (got.colour is None) == (sent.packets[-1] in gone)
