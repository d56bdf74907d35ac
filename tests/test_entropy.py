"""Tests for vqnet.entropy: static-prior range coding."""

from __future__ import annotations

import constriction
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vqnet.entropy import (
    EntropyError,
    Prior,
    decode,
    encode,
    encoded_size_bits,
    max_symbols,
)

WORD_BITS = 32
# Reference notes section 3: each independent stream costs 1 (at most 2)
# 32-bit words on top of the information content.
MAX_STREAM_OVERHEAD_BITS = 2 * WORD_BITS


def skewed_prior(K: int, seed: int, concentration: float = 0.3) -> Prior:
    """A random skewed prior, floored like a smoothed estimate (no ~0 entries)."""
    d = np.random.default_rng(seed).dirichlet(np.full(K, concentration))
    return Prior(0.99 * d + 0.01 / K)


def sample(prior: Prior, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).choice(prior.K, size=n, p=prior.probs)


@pytest.mark.parametrize("K", [2, 16, 1024, 65535])
@pytest.mark.parametrize("n", [0, 1, 7, 256, 1536])
def test_round_trip(K: int, n: int) -> None:
    for prior in (Prior.uniform(K), skewed_prior(K, seed=K + n)):
        symbols = sample(prior, n, seed=n)
        data = encode(symbols, prior)
        assert len(data) % 4 == 0
        out = decode(data, n, prior)
        assert out.dtype == np.int64
        np.testing.assert_array_equal(out, symbols)


def test_empty_message_is_empty_bytes() -> None:
    prior = Prior.uniform(16)
    assert encode(np.zeros(0, dtype=np.int64), prior) == b""
    assert decode(b"", 0, prior).shape == (0,)


def test_words_are_little_endian() -> None:
    prior = skewed_prior(1024, seed=3)
    symbols = sample(prior, 300, seed=4)
    encoder = constriction.stream.queue.RangeEncoder()
    model = constriction.stream.model.Categorical(prior.probs.astype(np.float32), perfect=False)
    encoder.encode(symbols.astype(np.int32), model)
    expected = encoder.get_compressed().astype("<u4").tobytes()
    assert encode(symbols, prior) == expected


def test_uniform_1024_costs_log2k_plus_stream_overhead() -> None:
    grid = np.random.default_rng(0).integers(0, 1024, size=(16, 16))
    bits = encoded_size_bits(grid.ravel(), Prior.uniform(1024))
    ideal = 256 * 10
    assert bits % WORD_BITS == 0
    assert ideal < bits <= ideal + MAX_STREAM_OVERHEAD_BITS


def test_skewed_prior_beats_uniform_on_matching_data() -> None:
    prior = skewed_prior(1024, seed=5, concentration=0.1)
    symbols = sample(prior, 1536, seed=6)
    skewed_bits = encoded_size_bits(symbols, prior)
    uniform_bits = encoded_size_bits(symbols, Prior.uniform(1024))
    info = float(prior.information_bits(symbols).sum())
    assert skewed_bits < 0.9 * uniform_bits
    # The coder is close to the information content: quantisation plus overhead.
    assert skewed_bits <= 1.01 * info + MAX_STREAM_OVERHEAD_BITS


def test_invalid_symbols_rejected() -> None:
    prior = Prior.uniform(16)
    for bad in (np.array([16]), np.array([-1]), np.array([[1, 2]]), np.array([0.5])):
        with pytest.raises(EntropyError):
            encode(bad, prior)


def test_unseen_codes_stay_codable_after_smoothing() -> None:
    counts = np.zeros(16)
    counts[3] = 1000
    prior = Prior.from_counts(counts)
    assert np.all(prior.probs > 0)
    np.testing.assert_allclose(prior.probs[3], 1000.5 / (1000 + 0.5 * 16))
    symbols = np.arange(16)  # 15 codes never seen in "training"
    np.testing.assert_array_equal(decode(encode(symbols, prior), 16, prior), symbols)


def test_near_deterministic_prior_respects_decode_bound() -> None:
    prior = Prior.from_counts(np.array([1e7, 0.0]), alpha=0.5)
    few = np.zeros(1000, dtype=np.int64)
    np.testing.assert_array_equal(decode(encode(few, prior), 1000, prior), few)
    many = np.zeros(200_000, dtype=np.int64)  # a few bits in total: beyond 512 symbols/byte
    with pytest.raises(EntropyError, match="decodable bound"):
        encode(many, prior)


def test_prior_constructors_and_properties() -> None:
    u = Prior.uniform(1024)
    assert u.K == 1024
    assert u.entropy_bits() == pytest.approx(10.0)
    grids = [np.array([[0, 1], [1, 1]]), np.array([2, 1, 1])]
    p = Prior.from_indices(grids, K=4)
    q = Prior.from_counts(np.array([1, 5, 1, 0]))
    np.testing.assert_allclose(p.probs, q.probs)
    assert p.most_frequent() == 1
    assert 0 < p.entropy_bits() < 2
    with pytest.raises(ValueError):
        Prior.from_indices([np.array([4])], K=4)


@pytest.mark.parametrize(
    "probs",
    [
        np.array([1.0]),  # K < 2
        np.array([0.5, 0.5, 0.0]),  # a zero entry
        np.array([0.6, 0.6]),  # does not sum to 1
        np.array([[0.5, 0.5]]),  # wrong rank
        np.array([np.nan, 0.5]),
        np.array([1 - 1e-60, 1e-60]),  # underflows to 0 in float32
        np.array([1, 1]) // 2,  # integer dtype
    ],
)
def test_invalid_priors_rejected(probs: np.ndarray) -> None:
    with pytest.raises(ValueError):
        Prior(probs)


def test_bad_smoothing_rejected() -> None:
    with pytest.raises(ValueError):
        Prior.from_counts(np.ones(4), alpha=0.0)
    with pytest.raises(ValueError):
        Prior.from_counts(np.array([1.0, -1.0, 2.0]))


def test_prior_is_read_only_copy() -> None:
    probs = np.full(4, 0.25)
    prior = Prior(probs)
    probs[0] = 0.9  # mutating the caller's array must not affect the prior
    assert prior.probs[0] == 0.25
    with pytest.raises(ValueError):
        prior.probs[0] = 0.9


def test_safetensors_round_trip_gives_identical_coding() -> None:
    prior = Prior.from_counts(np.random.default_rng(7).integers(0, 50, size=1024))
    arr = prior.to_array()
    assert arr.dtype == np.float32 and arr.shape == (1024,)
    loaded = Prior.from_array(arr)
    symbols = sample(prior, 500, seed=8)
    data = encode(symbols, prior)
    assert encode(symbols, loaded) == data
    np.testing.assert_array_equal(decode(data, 500, loaded), symbols)


def test_decode_rejects_malformed_input() -> None:
    prior = Prior.uniform(1024)
    data = encode(np.arange(100), prior)
    with pytest.raises(EntropyError):
        decode(data[:-1], 100, prior)  # not whole words
    with pytest.raises(EntropyError):
        decode(data, -1, prior)
    with pytest.raises(EntropyError):
        decode(data, max_symbols(len(data)) + 1, prior)  # forged count
    with pytest.raises(EntropyError):
        decode(b"", 5, prior)
    with pytest.raises(EntropyError):
        decode(data, 0, prior)
    with pytest.raises(EntropyError):
        decode(data, 50, prior)  # stream not exhausted: wrong count
    with pytest.raises(EntropyError):
        decode("not bytes", 1, prior)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=64),
    n=st.integers(min_value=-3, max_value=40_000),
    K=st.sampled_from([2, 16, 1024]),
    skewed=st.booleans(),
)
def test_garbage_decode_raises_only_entropy_error(data: bytes, n: int, K: int, skewed: bool) -> None:
    prior = skewed_prior(K, seed=K) if skewed else Prior.uniform(K)
    try:
        out = decode(data, n, prior)
    except EntropyError:
        return
    assert out.shape == (n,)
    assert out.dtype == np.int64
    assert np.all((out >= 0) & (out < K))


def markov_prior(K: int, seed: int, stay: float = 0.6) -> Prior:
    """A marginal plus a context table fitted to a chain that repeats its neighbour often."""
    prior = skewed_prior(K, seed)
    pairs = np.random.default_rng(seed).integers(0, 3, size=(K, K)).astype(np.float64)
    pairs[np.arange(K), np.arange(K)] += 200 * stay
    return prior.with_context(pairs, strength=4.0)


def markov_chain(prior: Prior, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Symbols where each (but a few starts) is drawn from the context row of the previous one,
    and the matching refs (-1 at the starts)."""
    rng = np.random.default_rng(seed)
    rows = prior.context / prior.context.sum(1, keepdims=True)
    refs = np.arange(n) - 1
    refs[rng.random(n) < 0.05] = -1
    refs[0] = -1
    s = np.zeros(n, dtype=np.int64)
    for i in range(n):
        s[i] = rng.choice(prior.K, p=prior.probs if refs[i] < 0 else rows[s[refs[i]]])
    return s, refs


@pytest.mark.parametrize("K", [2, 16, 1024])
def test_context_round_trip_with_any_earlier_refs(K: int) -> None:
    prior = markov_prior(K, seed=K)
    rng = np.random.default_rng(K)
    n = 700
    symbols = rng.integers(0, K, n)
    refs = np.array([-1] + [int(rng.integers(-1, i)) for i in range(1, n)])  # any earlier symbol, or none
    data = encode(symbols, prior, refs)
    np.testing.assert_array_equal(decode(data, n, prior, refs), symbols)
    assert data != encode(symbols, prior)  # the table was used
    np.testing.assert_array_equal(decode(encode(symbols, prior), n, prior), symbols)  # and is optional


def test_context_coding_costs_its_information_and_beats_the_marginal() -> None:
    prior = markov_prior(256, seed=3)
    symbols, refs = markov_chain(prior, 2000, seed=4)
    bits_ctx, bits_iid = encoded_size_bits(symbols, prior, refs), encoded_size_bits(symbols, prior)
    info = prior.information_bits(symbols, refs).sum()
    assert info <= bits_ctx <= info + MAX_STREAM_OVERHEAD_BITS + 0.01 * info  # 24-bit model rounding
    assert bits_ctx < 0.7 * bits_iid


def test_prior_without_context_ignores_refs() -> None:
    prior = skewed_prior(64, seed=5)
    symbols = sample(prior, 300, seed=6)
    assert encode(symbols, prior, np.arange(300) - 1) == encode(symbols, prior)


def test_bad_refs_rejected() -> None:
    prior = markov_prior(16, seed=7)
    symbols = np.arange(10) % 16
    for refs in (np.arange(10), np.arange(9) - 1, np.full(10, -2), np.arange(10.0) - 1):
        with pytest.raises(EntropyError):
            encode(symbols, prior, refs)
    data = encode(symbols, prior, np.arange(10) - 1)
    with pytest.raises(EntropyError):
        decode(data, 10, prior, np.zeros(10, dtype=np.int64))  # symbol 0 cannot refer to itself


def test_with_context_shrinks_towards_the_marginal_and_stays_codable() -> None:
    prior = Prior.from_counts(np.arange(1, 9))
    pairs = np.zeros((8, 8))
    pairs[0, 3] = 10_000  # a context seen often speaks for itself
    ctx = prior.with_context(pairs)
    rows = ctx.context / ctx.context.sum(1, keepdims=True)
    assert rows[0, 3] > 0.99
    np.testing.assert_allclose(rows[5], prior.probs, atol=1e-4)  # never seen: the marginal
    assert ctx.context.dtype == np.uint16 and ctx.context.min() >= 1
    with pytest.raises(ValueError):
        prior.with_context(np.zeros((7, 7)))
    with pytest.raises(ValueError):
        prior.with_context(pairs, strength=0)
    with pytest.raises(ValueError):
        Prior(prior.probs, np.zeros((8, 8), dtype=np.uint16))  # a zero weight could not be coded


def test_neighbour_log_ratios_say_what_a_neighbour_adds_to_the_marginal() -> None:
    prior = Prior.from_counts(np.arange(1, 9))
    pairs = np.zeros((8, 8))
    pairs[0, 3] = 10_000
    ratios = prior.with_context(pairs).neighbour_log_ratios()
    assert ratios.shape == (8, 8) and ratios[0, 3] == pytest.approx(np.log(0.99 / prior.probs[3]), abs=0.02)
    assert ratios[0, 5] < -3  # after code 0, code 5 is far rarer than its marginal
    np.testing.assert_allclose(ratios[5], 0, atol=1e-3)  # a context never seen says nothing
    with pytest.raises(ValueError, match="no context table"):
        prior.neighbour_log_ratios()


def test_context_table_round_trip_gives_identical_coding() -> None:
    prior = markov_prior(512, seed=9)
    loaded = Prior.from_array(prior.to_array(), prior.context.copy())
    symbols, refs = markov_chain(prior, 800, seed=10)
    data = encode(symbols, prior, refs)
    assert encode(symbols, loaded, refs) == data
    np.testing.assert_array_equal(decode(data, 800, loaded, refs), symbols)


def two_neighbour_grid(K: int, h: int, w: int, seed: int) -> np.ndarray:
    """Each code copies its left or its upper neighbour (45 % each) or is drawn afresh: each
    neighbour alone predicts half of the grid, the two together most of it."""
    rng = np.random.default_rng(seed)
    g = rng.integers(0, K, (h, w))
    for r in range(1, h):
        for c in range(1, w):
            u = rng.random()
            g[r, c] = g[r, c - 1] if u < 0.45 else g[r - 1, c] if u < 0.9 else rng.integers(K)
    return g


def grid_refs(g: np.ndarray) -> np.ndarray:
    """[left, upper] refs of a whole grid coded as one raster stream."""
    h, w = g.shape
    pos = np.arange(h * w)
    return np.stack([np.where(pos % w > 0, pos - 1, -1), np.where(pos >= w, pos - w, -1)], axis=1)


@pytest.mark.parametrize("pair", [0.5, 0.75, 1.0])
def test_pair_coding_round_trips_and_uses_both_neighbours(pair: float) -> None:
    from vqnet.training.ladder import neighbour_pairs

    K = 16
    train = [two_neighbour_grid(K, 24, 24, seed) for seed in range(4)]
    one = Prior.from_counts(sum(np.bincount(g.ravel(), minlength=K) for g in train)).with_context(
        sum(neighbour_pairs(g, K) for g in train)
    )
    both = one.with_pair(pair)
    g = two_neighbour_grid(K, 24, 24, seed=9)
    symbols, refs = g.ravel(), grid_refs(g)
    data = encode(symbols, both, refs)  # rows built for the whole stream at once ...
    np.testing.assert_array_equal(decode(data, symbols.size, both, refs), symbols)  # ... and one at a time
    info_one, info_both = one.information_bits(symbols, refs).sum(), both.information_bits(symbols, refs).sum()
    assert info_both <= 8 * len(data) <= info_both + MAX_STREAM_OVERHEAD_BITS + 0.01 * info_both
    assert info_both < 0.95 * info_one
    # with only one neighbour per symbol the pair prior codes exactly as the one-neighbour prior
    left_only = np.where(refs[:, 0] >= 0, refs[:, 0], refs[:, 1])
    assert encode(symbols, both, left_only) == encode(symbols, one, refs) == encode(symbols, one, left_only)


def test_pair_exponent_is_checked_and_chosen_from_data() -> None:
    from vqnet.training.ladder import best_pair, neighbour_pairs

    K = 16
    train = [two_neighbour_grid(K, 24, 24, seed) for seed in range(4)]
    prior = Prior.from_counts(sum(np.bincount(g.ravel(), minlength=K) for g in train)).with_context(
        sum(neighbour_pairs(g, K) for g in train)
    )
    assert best_pair(prior, [two_neighbour_grid(K, 24, 24, seed=8)]) is not None
    noise = [np.random.default_rng(s).integers(0, K, (24, 24)) for s in range(3)]  # neighbours say nothing
    flat = Prior.from_counts(np.ones(K)).with_context(sum(neighbour_pairs(g, K) for g in noise[:2]))
    assert best_pair(flat, noise[2:]) in (None, 0.5)  # on unseen maps a product of noise rows only adds noise
    with pytest.raises(ValueError, match="pair exponent must be"):
        prior.with_pair(0.6)
    with pytest.raises(ValueError, match="needs a context table"):
        Prior.uniform(K).with_pair(0.5)
    loaded = Prior.from_array(prior.to_array(), prior.context.copy(), 0.75)
    g = train[0]
    assert encode(g.ravel(), loaded, grid_refs(g)) == encode(g.ravel(), prior.with_pair(0.75), grid_refs(g))


def test_context_shrinkage_is_chosen_on_held_out_photos() -> None:
    from vqnet.training.ladder import STRENGTHS, best_context, neighbour_pairs, photo_halves

    K = 16

    def stats(grids: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        return (
            sum(np.bincount(g.ravel(), minlength=K) for g in grids).astype(np.float64),
            sum(neighbour_pairs(g, K) for g in grids),
        )

    noise = [np.random.default_rng(s).integers(0, K, (24, 24)) for s in range(4)]  # neighbours say nothing
    assert best_context(*stats(noise[:2]), noise[2:]) == (STRENGTHS[-1], None)  # back to the marginal
    train = [two_neighbour_grid(K, 24, 24, seed) for seed in range(8)]  # neighbours say a lot, well counted
    strength, pair = best_context(*stats(train), [two_neighbour_grid(K, 24, 24, seed=9)])
    assert strength == STRENGTHS[0] and pair is not None
    # a photo's views (mirror, shifts) stay on one side of the split
    fit, held = photo_halves([np.full((1, 1), i) for i in range(8)], views=2)
    assert [int(g[0, 0]) for g in fit] == [0, 1, 4, 5] and [int(g[0, 0]) for g in held] == [2, 3, 6, 7]
