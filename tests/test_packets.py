"""Tests for vqnet.packets: packet format, packetizer and lossy depacketizer."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vqnet.entropy import Prior, encode
from vqnet.packets import (
    HEADER_BYTES,
    MAX_GRID,
    MIN_PAYLOAD,
    TRAILER_BYTES,
    Packet,
    PacketError,
    context_refs,
    depacketize,
    packetize,
)

LAYOUTS = ("raster", "interleaved")


def skewed_prior(K: int, seed: int, concentration: float = 0.3) -> Prior:
    """A random skewed prior, floored like a smoothed estimate (no ~0 entries)."""
    d = np.random.default_rng(seed).dirichlet(np.full(K, concentration))
    return Prior(0.99 * d + 0.01 / K)


def sample_grid(prior: Prior, shape: tuple[int, int], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).choice(prior.K, size=shape, p=prior.probs)


PRIORS = {
    "k1024-uniform": Prior.uniform(1024),
    "k1024-skewed": skewed_prior(1024, seed=1),
    "k16-uniform": Prior.uniform(16),
    "k16-skewed": skewed_prior(16, seed=2),
    "k64-context": skewed_prior(64, seed=4).with_context(
        np.random.default_rng(5).integers(0, 50, (64, 64)) + 500 * np.eye(64)
    ),
}


@pytest.fixture(scope="module")
def case() -> tuple[np.ndarray, Prior]:
    prior = PRIORS["k1024-skewed"]
    return sample_grid(prior, (32, 48), seed=3), prior


def parse_all(packets: list[bytes]) -> list[Packet]:
    return [Packet.from_bytes(b) for b in packets]


def with_crc(body: bytes) -> bytes:
    return body + struct.pack("!I", zlib.crc32(body))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("prior_name", sorted(PRIORS))
@pytest.mark.parametrize("max_payload", [MIN_PAYLOAD, 23, 100, 4000])
def test_round_trip_and_payload_bound(layout: str, prior_name: str, max_payload: int) -> None:
    prior = PRIORS[prior_name]
    grid = sample_grid(prior, (32, 48), seed=max_payload)
    packets = packetize(grid, prior, max_payload, layout=layout, image_id=7)
    parsed = parse_all(packets)
    for raw, p in zip(packets, parsed):
        assert len(p.payload) <= max_payload
        assert len(raw) == HEADER_BYTES[layout] + len(p.payload) + TRAILER_BYTES
        assert p.packet_count == len(packets) and p.image_id == 7 and p.K == prior.K
    assert [p.packet_number for p in parsed] == list(range(len(packets)))
    # Together the packets cover every position exactly once.
    covered = np.sort(np.concatenate([p.positions() for p in parsed]))
    np.testing.assert_array_equal(covered, np.arange(grid.size))
    out = depacketize(packets, {prior.K: prior})
    np.testing.assert_array_equal(out.indices, grid)
    assert not out.lost.any()
    assert (out.n_packets_ok, out.n_packets_bad, out.n_packets_expected, out.K) == (
        len(packets),
        0,
        len(packets),
        prior.K,
    )


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_packet_decodes_alone(case: tuple[np.ndarray, Prior], layout: str) -> None:
    grid, prior = case
    packets = packetize(grid, prior, 60, layout=layout)
    assert len(packets) > 4
    for raw, p in zip(packets, parse_all(packets)):
        out = depacketize([raw], lambda k: prior)
        expected_lost = np.ones(grid.size, dtype=bool)
        expected_lost[p.positions()] = False
        np.testing.assert_array_equal(out.lost.ravel(), expected_lost)
        np.testing.assert_array_equal(out.indices.ravel()[p.positions()], grid.ravel()[p.positions()])
        assert np.all(out.indices.ravel()[expected_lost] == 0)
        assert (out.n_packets_ok, out.n_packets_expected) == (1, len(packets))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_lost_mask_matches_dropped_packets(case: tuple[np.ndarray, Prior], layout: str) -> None:
    grid, prior = case
    packets = packetize(grid, prior, 40, layout=layout)
    rng = np.random.default_rng(11)
    for _ in range(5):
        keep = rng.random(len(packets)) < 0.6
        expected_lost = np.zeros(grid.size, dtype=bool)
        for raw, k in zip(packets, keep):
            if not k:
                expected_lost[Packet.from_bytes(raw).positions()] = True
        out = depacketize([p for p, k in zip(packets, keep) if k], {prior.K: prior}, fill=-1)
        np.testing.assert_array_equal(out.lost.ravel(), expected_lost)
        np.testing.assert_array_equal(out.indices[~out.lost], grid[~out.lost])
        assert np.all(out.indices[out.lost] == -1)
        assert out.n_packets_ok == keep.sum() and out.n_packets_bad == 0


def test_interleaved_spreads_a_lost_packet(case: tuple[np.ndarray, Prior]) -> None:
    grid, prior = case
    packets = packetize(grid, prior, 100, layout="interleaved")
    p = Packet.from_bytes(packets[1])
    np.testing.assert_array_equal(p.positions(), 1 + p.packet_count * np.arange(p.n))
    out = depacketize(packets[:1] + packets[2:], {prior.K: prior})
    lost = np.flatnonzero(out.lost)
    assert np.all(np.diff(lost) == p.packet_count)  # scattered, not a contiguous hole


def test_raster_runs_are_greedy(case: tuple[np.ndarray, Prior]) -> None:
    grid, prior = case
    flat = grid.ravel()
    max_payload = 50
    parsed = parse_all(packetize(grid, prior, max_payload, layout="raster"))
    for p in parsed[:-1]:  # one more symbol must not fit, otherwise the packet was not filled
        assert len(encode(flat[p.start : p.start + p.n + 1], prior)) > max_payload
    assert parsed[-1].start + parsed[-1].n == flat.size


def test_interleaved_uses_smallest_packet_count(case: tuple[np.ndarray, Prior]) -> None:
    grid, prior = case
    flat = grid.ravel()
    max_payload = 50
    N = len(packetize(grid, prior, max_payload, layout="interleaved"))
    assert N > 1
    sizes = [len(encode(flat[i :: N - 1], prior)) for i in range(N - 1)]
    assert max(sizes) > max_payload  # N - 1 packets would not fit


def test_packet_count_tracks_payload_and_prior() -> None:
    skewed = skewed_prior(1024, seed=4, concentration=0.1)
    grid = sample_grid(skewed, (32, 48), seed=5)
    for layout in LAYOUTS:
        small = len(packetize(grid, skewed, 16, layout=layout))
        large = len(packetize(grid, skewed, 200, layout=layout))
        uniform = len(packetize(grid, Prior.uniform(1024), 200, layout=layout))
        assert small > 5 * large
        assert uniform > large  # a matched skewed prior needs fewer packets


def test_near_deterministic_prior_is_split_to_stay_decodable() -> None:
    prior = Prior.from_counts(np.array([1e7, 0.0]))
    grid = np.zeros((64, 64), dtype=np.int64)  # 4096 near-free symbols fit one word
    packets = packetize(grid, prior, 2000)
    assert len(packets) >= 2
    out = depacketize(packets, {2: prior})
    assert not out.lost.any() and np.all(out.indices == 0)


def test_one_by_one_grid() -> None:
    prior = Prior.uniform(16)
    for layout in LAYOUTS:
        packets = packetize(np.array([[9]]), prior, MIN_PAYLOAD, layout=layout)
        assert len(packets) == 1
        assert depacketize(packets, {16: prior}).indices.tolist() == [[9]]


def test_documented_byte_layout() -> None:
    prior = Prior.uniform(16)
    grid = np.arange(12).reshape(3, 4)
    raw = packetize(grid, prior, 4000, layout="raster", image_id=0xA1B2C3D4)[0]
    assert raw[:2] == b"VQ" and raw[2] == 1 and raw[3] == 0
    assert struct.unpack("!IHHHHHIIH", raw[4:28]) == (0xA1B2C3D4, 16, 3, 4, 0, 1, 0, 12, len(raw) - 32)
    assert struct.unpack("!I", raw[-4:])[0] == zlib.crc32(raw[:-4])
    raw = packetize(grid, prior, 4000, layout="interleaved")[0]
    assert raw[3] == 1
    assert struct.unpack("!IH", raw[18:24]) == (12, len(raw) - 28)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_bit_flips_are_counted_bad(case: tuple[np.ndarray, Prior], layout: str) -> None:
    grid, prior = case
    packets = packetize(grid, prior, 80, layout=layout)
    rng = np.random.default_rng(12)
    for victim in range(len(packets)):
        raw = bytearray(packets[victim])
        bit = int(rng.integers(len(raw) * 8))
        raw[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(PacketError):
            Packet.from_bytes(bytes(raw))
        out = depacketize(packets[:victim] + [bytes(raw)] + packets[victim + 1 :], {prior.K: prior})
        assert (out.n_packets_ok, out.n_packets_bad) == (len(packets) - 1, 1)
        lost = np.flatnonzero(out.lost)
        np.testing.assert_array_equal(lost, np.sort(Packet.from_bytes(packets[victim]).positions()))


def test_truncation_and_extension_are_bad(case: tuple[np.ndarray, Prior]) -> None:
    grid, prior = case
    raw = packetize(grid, prior, 80)[0]
    for broken in (raw[:-1], raw[:10], b"", raw + b"\x00", raw[:-4] + b"\x00" * 4 + raw[-4:]):
        with pytest.raises(PacketError):
            Packet.from_bytes(broken)


def test_duplicates_and_reordering(case: tuple[np.ndarray, Prior]) -> None:
    grid, prior = case
    packets = packetize(grid, prior, 50, layout="interleaved")
    rng = np.random.default_rng(13)
    shuffled = [packets[i] for i in rng.permutation(len(packets))] + packets[:3] + [bytearray(packets[4])]
    out = depacketize(shuffled, {prior.K: prior})
    np.testing.assert_array_equal(out.indices, grid)
    assert (out.n_packets_ok, out.n_packets_bad) == (len(packets), 0)


def test_conflicting_copy_of_a_packet_is_bad() -> None:
    prior = Prior.uniform(16)
    grid = np.arange(64).reshape(8, 8) % 16
    packets = packetize(grid, prior, 8)
    p = Packet.from_bytes(packets[0])
    forged = Packet(
        layout=p.layout,
        image_id=p.image_id,
        K=p.K,
        h=p.h,
        w=p.w,
        packet_number=0,
        packet_count=p.packet_count,
        n=p.n,
        start=p.start,
        payload=encode(np.full(p.n, 15), prior),
    ).to_bytes()
    out = depacketize(packets + [forged], {16: prior})
    np.testing.assert_array_equal(out.indices, grid)  # the first copy wins
    assert (out.n_packets_ok, out.n_packets_bad) == (len(packets), 1)


def test_overlapping_forged_run_is_bad() -> None:
    prior = Prior.uniform(16)
    grid = np.arange(64).reshape(8, 8) % 16
    packets = packetize(grid, prior, 8)
    p0, p1 = parse_all(packets[:2])
    forged = Packet(
        layout="raster",
        image_id=0,
        K=16,
        h=8,
        w=8,
        packet_number=p1.packet_number,
        packet_count=p1.packet_count,
        n=2,
        start=p0.start,
        payload=encode(np.array([15, 15]), prior),
    ).to_bytes()
    out = depacketize([packets[0], forged], {16: prior})
    assert (out.n_packets_ok, out.n_packets_bad) == (1, 1)
    np.testing.assert_array_equal(out.indices.ravel()[p0.positions()], grid.ravel()[p0.positions()])


def test_mixed_image_ids() -> None:
    prior = PRIORS["k16-skewed"]
    a = sample_grid(prior, (16, 16), seed=20)
    b = sample_grid(prior, (16, 16), seed=21)
    pa = packetize(a, prior, 12, image_id=1)
    pb = packetize(b, prior, 40, image_id=2)
    assert len(pa) > len(pb)
    mixed = [x for pair in zip(pa, pb) for x in pair] + pa[len(pb) :]
    out_b = depacketize(mixed, {16: prior}, image_id=2)
    np.testing.assert_array_equal(out_b.indices, b)
    assert (out_b.n_packets_ok, out_b.n_packets_bad) == (len(pb), len(pa))
    # Without a requested id the majority header (image 1) wins; image 2 is foreign.
    out = depacketize(mixed, {16: prior})
    np.testing.assert_array_equal(out.indices, a)
    assert (out.n_packets_ok, out.n_packets_bad) == (len(pa), len(pb))


def test_nothing_arrived() -> None:
    prior = Prior.uniform(16)
    with pytest.raises(PacketError):
        depacketize([], {16: prior})
    with pytest.raises(PacketError):
        depacketize([b"junk"], {16: prior})
    out = depacketize([b"junk", b""], {16: prior}, shape=(3, 5), fill=7)
    assert out.lost.all() and np.all(out.indices == 7) and out.indices.shape == (3, 5)
    assert (out.n_packets_expected, out.n_packets_ok, out.n_packets_bad, out.K) == (None, 0, 2, None)


def test_wrong_shape_packets_are_bad() -> None:
    prior = Prior.uniform(16)
    packets = packetize(np.zeros((4, 4), dtype=int), prior, 100)
    out = depacketize(packets, {16: prior}, shape=(4, 5))
    assert out.lost.all() and out.n_packets_bad == len(packets)


def test_packets_of_another_k_are_bad_when_k_is_given() -> None:
    packets = packetize(np.zeros((4, 4), dtype=int), Prior.uniform(16), 100)
    out = depacketize(packets, {16: Prior.uniform(16), 32: Prior.uniform(32)}, shape=(4, 4), K=32)
    assert out.lost.all() and out.n_packets_bad == len(packets)
    assert not depacketize(packets, {16: Prior.uniform(16)}, K=16).lost.any()


def test_grid_larger_than_max_grid_is_refused_before_allocation() -> None:
    """A forged 40-byte packet naming a 65535 x 65535 grid (valid CRC) would make the receiver
    allocate 34 GB for the grid; it must be a bad packet instead."""
    body = _raster_body(K=16, h=0xFFFF, w=0xFFFF, start=0, n=16)
    with pytest.raises(PacketError, match="more than"):
        Packet.from_bytes(with_crc(body))
    with pytest.raises(PacketError, match="no valid packet"):
        depacketize([with_crc(body)], {16: Prior.uniform(16)})
    side = int(MAX_GRID**0.5)
    assert Packet.from_bytes(with_crc(_raster_body(h=side, w=side))).h == side  # the bound itself is fine
    with pytest.raises(ValueError, match="more than"):
        packetize(np.zeros((side + 1, side), dtype=int), Prior.uniform(16), 100)


def test_missing_or_mismatched_prior_raises_packet_error() -> None:
    packets = packetize(np.zeros((4, 4), dtype=int), Prior.uniform(16), 100)
    with pytest.raises(PacketError):
        depacketize(packets, {1024: Prior.uniform(1024)})
    with pytest.raises(PacketError):
        depacketize(packets, lambda k: Prior.uniform(32))


def test_wrong_prior_payload_is_bad_not_crash() -> None:
    """A payload that the prior cannot decode (here: stream too long) is a bad packet."""
    prior = Prior.uniform(16)
    body = Packet(
        layout="raster",
        image_id=0,
        K=16,
        h=4,
        w=4,
        packet_number=0,
        packet_count=1,
        n=2,
        payload=encode(np.arange(16), prior),
    ).to_bytes()
    out = depacketize([body], {16: prior})
    assert (out.n_packets_ok, out.n_packets_bad) == (0, 1) and out.lost.all()


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(max_payload=MIN_PAYLOAD - 1),
        dict(max_payload=70_000),
        dict(layout="zigzag"),
        dict(image_id=-1),
        dict(indices=np.zeros(16, dtype=int)),
        dict(indices=np.full((4, 4), 16)),
        dict(indices=np.full((4, 4), -1)),
        dict(indices=np.zeros((4, 4))),
        dict(indices=np.zeros((0, 4), dtype=int)),
    ],
)
def test_packetize_rejects_bad_arguments(kwargs: dict) -> None:
    args = dict(indices=np.zeros((4, 4), dtype=int), prior=Prior.uniform(16), max_payload=100)
    args.update(kwargs)
    with pytest.raises(ValueError):
        packetize(**args)


def _raster_body(
    K: int = 16,
    h: int = 4,
    w: int = 4,
    number: int = 0,
    count: int = 1,
    start: int = 0,
    n: int = 16,
    payload: bytes = b"\x00" * 8,
    magic: bytes = b"VQ",
    version: int = 1,
    layout: int = 0,
) -> bytes:
    return (
        struct.pack("!2sBBIHHHHH", magic, version, layout, 0, K, h, w, number, count)
        + struct.pack("!IIH", start, n, len(payload))
        + payload
    )


@pytest.mark.parametrize(
    "fields",
    [
        dict(magic=b"XX"),
        dict(version=2),
        dict(layout=7),
        dict(K=1),
        dict(h=0),
        dict(w=0),
        dict(count=0),
        dict(number=1, count=1),
        dict(start=10, n=7),  # runs past the 16-position grid
        dict(n=0),
        dict(n=100_000),  # far more symbols than 8 payload bytes can carry
        dict(payload=b"\x00" * 6),  # not whole words
    ],
)
def test_inconsistent_headers_rejected_despite_valid_crc(fields: dict) -> None:
    assert Packet.from_bytes(with_crc(_raster_body())).n == 16  # the baseline is valid
    with pytest.raises(PacketError):
        Packet.from_bytes(with_crc(_raster_body(**fields)))


def test_interleaved_count_must_match_stride() -> None:
    common = struct.pack("!2sBBIHHHHH", b"VQ", 1, 1, 0, 16, 4, 4, 1, 3)
    for n, ok in ((5, True), (6, False), (4, False)):  # positions 1, 4, 7, 10, 13
        raw = with_crc(common + struct.pack("!IH", n, 8) + b"\x00" * 8)
        if ok:
            np.testing.assert_array_equal(Packet.from_bytes(raw).positions(), [1, 4, 7, 10, 13])
        else:
            with pytest.raises(PacketError):
                Packet.from_bytes(raw)


def test_packet_round_trips_through_bytes(case: tuple[np.ndarray, Prior]) -> None:
    grid, prior = case
    for layout in LAYOUTS:
        for raw in packetize(grid, prior, 100, layout=layout):
            assert Packet.from_bytes(raw).to_bytes() == raw


_FUZZ_PRIOR = PRIORS["k16-skewed"]
_FUZZ_PACKETS = {
    layout: packetize(sample_grid(_FUZZ_PRIOR, (8, 12), seed=30), _FUZZ_PRIOR, 12, layout=layout) for layout in LAYOUTS
}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=80), max_size=4))
def test_random_bytes_only_raise_packet_error(items: list[bytes]) -> None:
    for item in items:
        with pytest.raises(PacketError):
            Packet.from_bytes(item)  # random bytes essentially never carry a valid CRC
    out = depacketize(items, {16: _FUZZ_PRIOR}, shape=(8, 12))
    assert out.lost.all() and out.n_packets_bad == len(items)
    with pytest.raises(PacketError):
        depacketize(items, {16: _FUZZ_PRIOR})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    layout=st.sampled_from(LAYOUTS),
    which=st.integers(min_value=0, max_value=1000),
    cut=st.integers(min_value=0, max_value=200),
    flips=st.lists(st.tuples(st.integers(min_value=0, max_value=200), st.integers(1, 255)), max_size=3),
    tail=st.binary(max_size=8),
)
def test_mutated_packets_never_crash(
    layout: str, which: int, cut: int, flips: list[tuple[int, int]], tail: bytes
) -> None:
    packets = _FUZZ_PACKETS[layout]
    raw = bytearray(packets[which % len(packets)])
    for pos, mask in flips:
        raw[pos % len(raw)] ^= mask
    mutated = bytes(raw[:cut]) + tail
    try:
        Packet.from_bytes(mutated)
    except PacketError:
        pass
    out = depacketize([mutated] + packets[1:], {16: _FUZZ_PRIOR}, shape=(8, 12))
    assert out.indices.shape == (8, 12)


def _small_or_any(top: int) -> st.SearchStrategy[int]:
    """Mostly small values (so forged headers are often self-consistent), sometimes extreme."""
    return st.one_of(st.integers(min_value=0, max_value=20), st.integers(min_value=0, max_value=top))


@settings(max_examples=300, deadline=None)
@given(
    layout=st.integers(min_value=0, max_value=2),
    K=_small_or_any(0xFFFF),
    h=_small_or_any(0xFFFF),
    w=_small_or_any(0xFFFF),
    number=_small_or_any(0xFFFF),
    count=_small_or_any(0xFFFF),
    start=_small_or_any(0xFFFFFFFF),
    n=_small_or_any(0xFFFFFFFF),
    payload=st.one_of(st.binary(max_size=16), st.lists(st.binary(min_size=4, max_size=4), max_size=4).map(b"".join)),
)
def test_forged_headers_with_valid_crc_never_crash(
    layout: int, K: int, h: int, w: int, number: int, count: int, start: int, n: int, payload: bytes
) -> None:
    head = struct.pack("!2sBBIHHHHH", b"VQ", 1, layout, 0, K, h, w, number, count)
    fields = struct.pack("!II", start, n) if layout == 0 else struct.pack("!I", n)
    raw = with_crc(head + fields + struct.pack("!H", len(payload)) + payload)
    try:
        p = Packet.from_bytes(raw)
    except PacketError:
        return
    pos = p.positions()
    assert pos.size == p.n and pos.min() >= 0 and pos.max() < p.h * p.w
    out = depacketize([raw], lambda k: Prior.uniform(k))  # a garbage payload may only make it bad
    assert out.n_packets_ok + out.n_packets_bad == 1


@st.composite
def _consistent_forged_packet(draw: st.DrawFn) -> bytes:
    """A header that passes every field check, with a random payload and valid CRC."""
    layout = draw(st.sampled_from(LAYOUTS))
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    count = draw(st.integers(1, 4))
    number = draw(st.integers(0, count - 1))
    payload = b"".join(draw(st.lists(st.binary(min_size=4, max_size=4), min_size=1, max_size=4)))
    if layout == "raster":
        start = draw(st.integers(0, h * w - 1))
        n = draw(st.integers(1, h * w - start))
    else:
        start, n = 0, len(range(number, h * w, count))
        if n == 0:
            number, n = 0, len(range(0, h * w, count))
    return Packet(
        layout=layout,
        image_id=draw(st.integers(0, 2)),
        K=draw(st.sampled_from([2, 16, 1024])),
        h=h,
        w=w,
        packet_number=number,
        packet_count=count,
        n=n,
        payload=payload,
        start=start,
    ).to_bytes()


@settings(max_examples=300, deadline=None)
@given(st.lists(_consistent_forged_packet(), min_size=1, max_size=6))
def test_forged_consistent_packets_never_crash(items: list[bytes]) -> None:
    out = depacketize(items, lambda k: Prior.uniform(k))
    assert out.n_packets_ok + out.n_packets_bad <= len(items)
    assert out.n_packets_expected is not None and out.K in (2, 16, 1024)
    assert np.all((out.indices[~out.lost] >= 0) & (out.indices[~out.lost] < out.K))


def test_context_refs_point_to_left_and_upper_neighbours_in_the_packet() -> None:
    w = 4  # grid positions 0..15, rows of 4
    # run 3..8 of a width-4 grid: left neighbours, and position 7's upper one (3) travels too
    np.testing.assert_array_equal(context_refs(np.arange(3, 9), w).T, [[-1, -1, 1, 2, 3, -1], [-1, -1, -1, -1, 0, 1]])
    np.testing.assert_array_equal(context_refs(np.arange(1, 16, 2), w)[:, 1], [-1, -1, 0, 1, 2, 3, 4, 5])  # N=2
    assert (context_refs(np.arange(1, 16, 2), w)[:, 0] == -1).all()
    np.testing.assert_array_equal(context_refs(np.arange(0, 16, 3), w), -np.ones((6, 2)))  # N=3: none travels
    assert context_refs(np.zeros(0, dtype=np.int64), w).shape == (0, 2)


def correlated_grid(K: int, shape: tuple[int, int], seed: int) -> np.ndarray:
    """Index grids as a VQGAN makes them: mostly a copy of the left or upper neighbour."""
    rng = np.random.default_rng(seed)
    g = np.zeros(shape, dtype=np.int64)
    for i in range(shape[0]):
        for j in range(shape[1]):
            near = [g[i, j - 1]] if j else []
            near += [g[i - 1, j]] if i else []
            g[i, j] = rng.choice(near) if near and rng.random() < 0.7 else rng.integers(K)
    return g


@pytest.mark.parametrize("layout", LAYOUTS)
def test_context_prior_shrinks_packets_that_still_decode_alone(layout: str) -> None:
    from vqnet.training.ladder import neighbour_pairs

    K = 64
    grid = correlated_grid(K, (32, 48), seed=11)
    marginal = Prior.from_indices([grid], K)
    prior = marginal.with_context(neighbour_pairs(correlated_grid(K, (64, 64), seed=12), K))
    iid = packetize(grid, marginal, 1000, layout=layout)
    ctx = packetize(grid, prior, 1000, layout=layout)
    assert sum(map(len, ctx)) < 0.8 * sum(map(len, iid))
    for raw, p in zip(ctx, parse_all(ctx)):
        out = depacketize([raw], {K: prior})
        np.testing.assert_array_equal(out.indices.ravel()[p.positions()], grid.ravel()[p.positions()])
    small = packetize(grid, prior, 40, layout=layout)
    kept = small[::3]
    out = depacketize(kept, {K: prior})
    assert out.lost.any() and np.array_equal(out.indices[~out.lost], grid[~out.lost])
