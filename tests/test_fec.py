"""Reed-Solomon parity across an image's packets: blocks, exact recovery, clean failure, bytes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vqnet.chroma import chroma_packet, measure
from vqnet.entropy import Prior
from vqnet.fec import MAX_N, OVERHEAD, Block, FecCode, is_parity_packet, protect, recover
from vqnet.packets import depacketize, packetize
from vqnet.scenario import ScenarioError, parse_scenario

PRIOR = Prior(0.99 * np.random.default_rng(1).dirichlet(np.full(64, 0.3)) + 0.01 / 64)
GRID = np.random.default_rng(2).choice(64, size=(12, 16), p=PRIOR.probs)
IMAGE_ID = 7


def image_packets() -> list[bytes]:
    """A real image's data packets in sequence order: index packets, then its colour packet."""
    packets = packetize(GRID, PRIOR, 24, layout="interleaved", image_id=IMAGE_ID)
    pixels = np.random.default_rng(3).integers(0, 256, (12 * 16, 16 * 16, 3), dtype=np.uint8)
    return packets + [chroma_packet(measure(pixels, 16, 8, 8), *GRID.shape, image_id=IMAGE_ID)]


DATA = image_packets()


def test_fixed_blocks_keep_their_parity_in_the_short_last_block() -> None:
    assert FecCode(k=8, n=10).blocks(21) == [Block(0, 8, 2), Block(8, 8, 2), Block(16, 5, 2)]


def test_a_parity_ratio_takes_the_longest_blocks_the_code_allows() -> None:
    assert FecCode(parity=0.25).blocks(100) == [Block(0, 100, 25)]
    blocks = FecCode(parity=0.25).blocks(301)  # 301 + 75 > 256: two blocks, sizes differing by at most one
    assert blocks == [Block(0, 151, 38), Block(151, 150, 38)]
    assert all(b.k + b.r <= MAX_N for b in blocks)
    assert FecCode(parity=0.01).blocks(5) == [Block(0, 5, 1)]  # at least one parity packet


@pytest.mark.parametrize(
    "kwargs",
    [dict(k=9, n=8), dict(k=8, n=8), dict(k=8, n=MAX_N + 1), dict(k=8), dict(parity=0.5, k=4, n=6), dict(parity=0.0)],
)
def test_impossible_codes_are_refused(kwargs) -> None:
    with pytest.raises(ValueError):
        FecCode(**kwargs)


def test_sending_order_and_bytes() -> None:
    code = FecCode(k=4, n=6)
    sent = protect(DATA, code, image_id=IMAGE_ID)
    blocks = code.blocks(len(DATA))
    assert len(sent) == len(DATA) + sum(b.r for b in blocks)
    assert [p for p in sent if not is_parity_packet(p)] == DATA  # systematic: data go out unchanged, in order
    at = 0
    for b in blocks:  # each block's data, then its parity, each parity packet as long as the block's longest + 2
        assert sent[at : at + b.k] == DATA[b.first : b.first + b.k]
        width = 2 + max(len(p) for p in DATA[b.first : b.first + b.k])
        assert [len(p) for p in sent[at + b.k : at + b.k + b.r]] == [OVERHEAD + width] * b.r
        at += b.k + b.r


def test_zero_loss_decodes_nothing() -> None:
    out = recover(protect(DATA, FecCode(k=4, n=6), image_id=IMAGE_ID), image_id=IMAGE_ID)
    assert (out.blocks_decoded, out.packets_recovered) == (0, 0)
    assert out.packets == DATA


def block_of(code: FecCode, n_data: int) -> list[tuple[int, range]]:
    """For each sent packet: (its block, the sequence numbers of that block's data packets)."""
    owner: list[tuple[int, range]] = []
    for i, b in enumerate(code.blocks(n_data)):
        owner += [(i, range(b.first, b.first + b.k))] * (b.k + b.r)
    return owner


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(k=st.integers(2, 12), parity=st.integers(1, 6), lost=st.lists(st.booleans(), min_size=64, max_size=64))
def test_recovery_is_exact_with_k_of_a_block_and_leaves_holes_otherwise(k, parity, lost) -> None:
    code = FecCode(k=k, n=k + parity)
    sent = protect(DATA, code, image_id=IMAGE_ID)
    mask = np.resize(np.array(lost), len(sent))
    out = recover([p for p, gone in zip(sent, mask) if not gone], image_id=IMAGE_ID)
    owner = block_of(code, len(DATA))
    got = set(out.packets)
    for i, b in enumerate(code.blocks(len(DATA))):
        arrived = sum(1 for j, (blk, _) in enumerate(owner) if blk == i and not mask[j])
        members = DATA[b.first : b.first + b.k]
        if arrived >= b.k:
            assert all(p in got for p in members)  # byte-exact: the very packets that were sent
        else:
            sent_ok = {p for p, gone in zip(sent, mask) if not gone}
            assert {p for p in members if p in got} == {p for p in members if p in sent_ok}
    assert len(out.packets) == len(set(out.packets)) and got <= set(DATA)


def test_recovered_packets_decode_to_the_whole_grid() -> None:
    sent = protect(DATA, FecCode(parity=0.5), image_id=IMAGE_ID)
    r = len(sent) - len(DATA)
    rng = np.random.default_rng(4)
    drop = set(rng.choice(len(sent), size=r, replace=False).tolist())  # exactly as many losses as parity
    out = recover([p for i, p in enumerate(sent) if i not in drop], image_id=IMAGE_ID)
    assert out.blocks_decoded == 1 and sorted(out.packets) == sorted(DATA)
    got = depacketize([p for p in out.packets if p[:2] == b"VQ"], {64: PRIOR}, shape=GRID.shape, image_id=IMAGE_ID)
    assert not got.lost.any() and (got.indices == GRID).all()


def test_one_loss_too_many_leaves_the_holes_for_concealment() -> None:
    sent = protect(DATA, FecCode(parity=0.25), image_id=IMAGE_ID)
    r = len(sent) - len(DATA)
    kept = sent[r + 1 :]  # the first r + 1 data packets lost
    out = recover(kept, image_id=IMAGE_ID)
    assert (out.blocks_decoded, out.packets_recovered) == (0, 0)
    got = depacketize([p for p in out.packets if p[:2] == b"VQ"], {64: PRIOR}, shape=GRID.shape, image_id=IMAGE_ID)
    assert got.lost.any()


def test_damaged_packets_take_no_part_in_a_decode() -> None:
    sent = protect(DATA, FecCode(k=4, n=7), image_id=IMAGE_ID)
    flipped = [
        bytes([sent[1][0], sent[1][1], sent[1][2] ^ 1]) + sent[1][3:],  # a data packet with a bad CRC
        sent[4][:-1] + bytes([sent[4][-1] ^ 1]),
    ]  # a parity packet with a bad CRC
    damaged = [sent[0], flipped[0], sent[2], flipped[1], sent[5], sent[6]]  # block 0: data 0, 2, parity 1, 2 intact
    out = recover(damaged, image_id=IMAGE_ID)
    assert out.blocks_decoded == 1 and DATA[1] in out.packets and DATA[3] in out.packets


def test_parity_of_another_image_is_ignored() -> None:
    sent = protect(DATA, FecCode(k=4, n=6), image_id=IMAGE_ID + 1)
    out = recover(sent[1:], image_id=IMAGE_ID)
    assert out.blocks_decoded == 0


@pytest.mark.parametrize(
    "fec, needle",
    [
        ({"k": 9, "n": 8}, "k < n"),
        ({"k": 8, "n": 300}, "above the Reed-Solomon limit of 256"),
        ({"k": 1, "n": 3}, "k=1 makes every parity packet a copy"),
        ({"k": 8}, "either k and n, or a parity ratio"),
        ({"parity": 0}, "greater than 0"),
    ],
)
def test_bad_fec_settings_are_one_line_scenario_errors(fec, needle) -> None:
    with pytest.raises(ScenarioError, match=needle) as exc:
        parse_scenario({"name": "x", "packets": {"fec": fec}})
    assert "\n" not in str(exc.value) and "packets.fec" in str(exc.value)


def test_only_the_colour_packets_magic_gives_the_colour_slot() -> None:
    """An intact packet of another kind in a block takes no data packet's place: the lost colour
    packet is rebuilt from parity, not stood in for."""
    import zlib

    sent = protect(DATA, FecCode(k=4, n=7), image_id=IMAGE_ID)
    body = b"XX" + bytes(20)
    stranger = body + zlib.crc32(body).to_bytes(4, "big")
    colour = sent.index(DATA[-1])
    out = recover([stranger, *sent[:colour], *sent[colour + 1 :]], image_id=IMAGE_ID)
    assert DATA[-1] in out.packets and out.packets_recovered == 1
