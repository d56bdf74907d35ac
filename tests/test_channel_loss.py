"""Loss models: statistics against closed forms, netem lines, parsing, factory."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vqnet.channel.loss import (
    Bernoulli,
    FourState,
    GilbertElliott,
    LossModel,
    TraceLoss,
    burst_lengths,
    gap_lengths,
    loss_stats,
    make_loss_model,
)

TC = "tc qdisc add dev eth0 root netem loss"


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def measured(model: LossModel, n: int = 100_000, seed: int = 1) -> dict:
    return loss_stats(model.sample(n, rng(seed)))


# --------------------------------------------------------------------------
# statistics


def test_simple_gilbert_hits_target_loss_and_burst() -> None:
    model = GilbertElliott.simple(loss=0.3, burst=4)
    assert model.r == pytest.approx(0.25)
    assert model.p == pytest.approx(0.3 / (4 * 0.7))
    assert model.expected_loss == pytest.approx(0.3)
    assert model.expected_mean_burst == pytest.approx(4.0)
    stats = measured(model)
    assert stats["loss_rate"] == pytest.approx(0.3, abs=0.01)
    assert stats["mean_burst"] == pytest.approx(4.0, abs=0.2)


def test_bernoulli_loss_and_geometric_bursts() -> None:
    model = Bernoulli(0.3)
    stats = measured(model)
    assert stats["loss_rate"] == pytest.approx(0.3, abs=0.01)
    assert model.expected_mean_burst == pytest.approx(1 / 0.7)
    assert stats["mean_burst"] == pytest.approx(1 / 0.7, abs=0.05)


def test_gilbert_elliott_partial_losses_match_closed_form() -> None:
    p, r, loss_bad, loss_good = 0.05, 0.3, 0.7, 0.02
    model = GilbertElliott(p, r, loss_bad=loss_bad, loss_good=loss_good)
    closed_form = (p * loss_bad + r * loss_good) / (p + r)
    assert model.expected_loss == pytest.approx(closed_form)
    stats = measured(model, n=200_000)
    assert stats["loss_rate"] == pytest.approx(closed_form, abs=0.01)
    assert stats["mean_burst"] == pytest.approx(model.expected_mean_burst, rel=0.05)
    assert model.name == "gilbert_elliott"


def _four_state_matrix(p13: float, p31: float, p32: float, p23: float, p14: float) -> np.ndarray:
    # Straight from reference section 4.2; state 4 returns to 1 w.p. 1.
    return np.array(
        [
            [1 - p13 - p14, 0, p13, p14],
            [0, 1 - p23, p23, 0],
            [p31, p32, 1 - p31 - p32, 0],
            [1, 0, 0, 0],
        ]
    )


def test_four_state_loss_is_pi3_plus_pi4() -> None:
    params = dict(p13=0.05, p31=0.2, p32=0.3, p23=0.4, p14=0.02)
    model = FourState(**params)
    # Independent check: stationary vector as the left eigenvector for 1.
    values, vectors = np.linalg.eig(_four_state_matrix(**params).T)
    pi = np.real(vectors[:, np.argmin(abs(values - 1))])
    pi /= pi.sum()
    np.testing.assert_allclose(model.stationary, pi, atol=1e-12)
    assert model.expected_loss == pytest.approx(pi[2] + pi[3])
    stats = measured(model, n=200_000, seed=3)
    assert stats["loss_rate"] == pytest.approx(pi[2] + pi[3], abs=0.01)
    assert stats["mean_burst"] == pytest.approx(model.expected_mean_burst, rel=0.05)


def test_four_state_defaults_reduce_to_bernoulli() -> None:
    model = FourState(0.2)
    assert model.p31 == pytest.approx(0.8)
    assert (model.p32, model.p23, model.p14) == (0.0, 1.0, 0.0)
    assert model.expected_loss == pytest.approx(0.2)
    assert model.expected_mean_burst == pytest.approx(Bernoulli(0.2).expected_mean_burst)
    stats = measured(model)
    assert stats["loss_rate"] == pytest.approx(0.2, abs=0.01)
    assert stats["mean_burst"] == pytest.approx(1 / 0.8, abs=0.05)


def test_markov_models_start_stationary_so_first_packet_is_unbiased() -> None:
    # netem starts in GOOD (first packet never lost); we must not.
    generator = rng(7)
    model = GilbertElliott.simple(0.3, 4)
    first = [model.sample(1, generator)[0] for _ in range(4000)]
    assert np.mean(first) == pytest.approx(0.3, abs=0.03)


@pytest.mark.parametrize(
    "model",
    [
        Bernoulli(0.3),
        GilbertElliott.simple(0.3, 4),
        GilbertElliott(0.1, 0.4, 0.8, 0.05),
        FourState(0.05, 0.2, 0.3, 0.4, 0.02),
        TraceLoss(np.random.default_rng(0).random(500) < 0.3),
    ],
    ids=lambda m: m.name,
)
def test_same_seed_same_mask_different_seed_different(model: LossModel) -> None:
    a = model.sample(1000, rng(11))
    assert a.dtype == bool and a.shape == (1000,)
    np.testing.assert_array_equal(a, model.sample(1000, rng(11)))
    assert not np.array_equal(a, model.sample(1000, rng(12)))


def test_degenerate_parameters() -> None:
    assert not Bernoulli(0.0).sample(100, rng(0)).any()
    assert Bernoulli(1.0).sample(100, rng(0)).all()
    assert math.isnan(Bernoulli(0.0).expected_mean_burst)
    assert Bernoulli(1.0).expected_mean_burst == math.inf
    never_bad = GilbertElliott(p=0.0, r=0.5)
    assert never_bad.expected_loss == 0.0 and not never_bad.sample(200, rng(0)).any()
    assert len(Bernoulli(0.5).sample(0, rng(0))) == 0
    assert len(FourState(0.5).sample(0, rng(0))) == 0


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: Bernoulli(1.5), "p must be a probability"),
        (lambda: Bernoulli(math.nan), "p must be a probability"),
        (lambda: GilbertElliott(0.0, 0.0), "both be 0"),
        (lambda: GilbertElliott(0.1, 0.2, loss_bad=2.0), "loss_bad"),
        (lambda: FourState(0.6, p14=0.5), "p13 \\+ p14"),
        (lambda: FourState(0.3, p31=0.8, p32=0.3), "p31 \\+ p32"),
        (lambda: FourState(0.0, p31=0.0), "stationary"),
    ],
)
def test_invalid_parameters_raise(build, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


# --------------------------------------------------------------------------
# simple Gilbert feasibility


def test_infeasible_gilbert_names_the_minimum_burst() -> None:
    with pytest.raises(ValueError, match=r"need burst >= 2\.333 packets") as info:
        GilbertElliott.simple(loss=0.7, burst=2)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=r"need burst >= 1 packets"):
        GilbertElliott.simple(loss=0.2, burst=0.9)
    with pytest.raises(ValueError, match=r"loss must be in \[0, 1\)"):
        GilbertElliott.simple(loss=1.0, burst=3)
    with pytest.raises(ValueError, match="loss must be"):
        GilbertElliott.simple(loss=-0.1, burst=3)


def test_gilbert_at_minimum_burst_is_accepted() -> None:
    model = GilbertElliott.simple(loss=0.7, burst=0.7 / 0.3)
    assert model.p == pytest.approx(1.0) and model.p <= 1.0
    assert model.expected_loss == pytest.approx(0.7)


def test_gilbert_at_iid_burst_equals_bernoulli() -> None:
    model = GilbertElliott.simple(loss=0.4, burst=1 / 0.6)
    assert model.p + model.r == pytest.approx(1.0)  # no memory: Bernoulli
    assert model.expected_mean_burst == pytest.approx(Bernoulli(0.4).expected_mean_burst)


# --------------------------------------------------------------------------
# netem lines


@pytest.mark.parametrize(
    "model, line",
    [
        (Bernoulli(0.3), f"{TC} random 30%"),
        (Bernoulli(0.0125), f"{TC} random 1.25%"),
        (GilbertElliott.simple(0.3, 4), f"{TC} gemodel 10.714286% 25%"),
        (GilbertElliott(0.05, 0.3, loss_bad=0.7, loss_good=0.02), f"{TC} gemodel 5% 30% 70% 2%"),
        (FourState(0.05, 0.2, 0.3, 0.4, 0.02), f"{TC} state 5% 20% 30% 40% 2%"),
        (FourState(0.3), f"{TC} state 30% 70% 0% 100% 0%"),
    ],
)
def test_netem_lines(model: LossModel, line: str) -> None:
    assert model.netem() == line


def test_trace_has_no_netem_equivalent() -> None:
    line = TraceLoss(np.array([0, 1])).netem()
    assert line.startswith("#") and "no netem" in line


# --------------------------------------------------------------------------
# traces


def test_trace_replays_a_circular_window_from_a_seeded_offset() -> None:
    trace = np.random.default_rng(5).random(50) < 0.4
    model = TraceLoss(trace)
    assert model.expected_loss == pytest.approx(trace.mean())
    offsets = set()
    for seed in range(8):
        out = model.sample(120, rng(seed))  # longer than the trace: wraps
        matches = [o for o in range(50) if np.array_equal(out, trace[(o + np.arange(120)) % 50])]
        assert matches, "sample is not a circular window of the trace"
        offsets.add(matches[0])
    assert len(offsets) > 1


def test_trace_copies_and_freezes_its_mask() -> None:
    source = np.array([0, 1, 1, 0])
    model = TraceLoss(source)
    source[0] = 1
    assert model.mask.tolist() == [False, True, True, False]
    with pytest.raises(ValueError):
        model.mask[0] = True


def test_trace_mean_burst_is_circular() -> None:
    # sample() wraps, so the trailing loss joins the leading two: one burst of 3.
    assert TraceLoss(np.array([1, 1, 0, 0, 1])).expected_mean_burst == pytest.approx(3.0)
    assert TraceLoss(np.array([1, 0, 1, 0])).expected_mean_burst == pytest.approx(1.0)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("0 1 1 0\n", [0, 1, 1, 0]),
        ("0,1,\n1 , 0\n\n1\n", [0, 1, 1, 0, 1]),
        ("0110\n10\n", [0, 1, 1, 0, 1, 0]),
        ("1\t0\r\n0\r\n", [1, 0, 0]),
    ],
)
def test_trace_file_formats(tmp_path: Path, text: str, expected: list[int]) -> None:
    path = tmp_path / "trace.txt"
    path.write_bytes(text.encode())
    model = TraceLoss.from_file(path)
    assert model.mask.astype(int).tolist() == expected
    assert model.source == str(path)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"0 1\n0 2 1\n", r"trace\.txt:2: expected 0/1 values, got '2'"),
        (b"0 1 x\n", "got 'x'"),
        (b"0.5\n", "got '0.5'"),
        (b"", "no 0/1 values"),
        (b" \n\n , \n", "no 0/1 values"),
        (b"\xff\xfe\x00", "not a UTF-8 text file"),
    ],
)
def test_bad_trace_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "trace.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        TraceLoss.from_file(path)


def test_missing_trace_file_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read loss trace"):
        TraceLoss.from_file(tmp_path / "absent.txt")


def test_trace_rejects_non_binary_arrays() -> None:
    with pytest.raises(ValueError, match="only contain 0"):
        TraceLoss(np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="non-empty"):
        TraceLoss(np.array([], dtype=bool))


# --------------------------------------------------------------------------
# factory


def test_factory_builds_every_kind(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("0 1 1 0")
    assert make_loss_model("bernoulli", loss=0.2) == Bernoulli(0.2)
    assert make_loss_model("gilbert", loss=0.3, burst=4) == GilbertElliott.simple(0.3, 4)
    assert make_loss_model("gilbert_elliott", p=0.1, r=0.5, loss_good=0.01) == GilbertElliott(0.1, 0.5, 1.0, 0.01)
    assert make_loss_model("state", p13=0.1, p31=None) == FourState(0.1)
    assert make_loss_model("state", p13="0.1", p23=0.5) == FourState(0.1, p23=0.5)
    trace = make_loss_model("trace", path=str(path))
    assert isinstance(trace, TraceLoss) and trace.expected_loss == 0.5


@pytest.mark.parametrize(
    "kind, params, message",
    [
        ("wifi", {}, "unknown loss model 'wifi'; choose one of bernoulli, gilbert"),
        ("bernoulli", {"loss": 0.1, "burst": 2}, "does not take burst; it takes loss"),
        ("gilbert", {"loss": 0.3}, "'gilbert' needs burst"),
        ("gilbert", {"loss": "lots", "burst": 2}, "'loss' must be a number"),
        ("gilbert", {"loss": 0.7, "burst": 2}, "need burst >= 2.333"),
        ("state", {}, "needs p13"),
        ("trace", {"path": "/nonexistent/trace.txt"}, "cannot read loss trace"),
    ],
)
def test_factory_errors_are_one_line_value_errors(kind: str, params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        make_loss_model(kind, **params)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------
# mask statistics


def test_runs_and_stats_on_a_hand_made_mask() -> None:
    mask = np.array([1, 1, 0, 1, 0, 0, 1, 1, 1], dtype=bool)
    assert burst_lengths(mask).tolist() == [2, 1, 3]
    assert gap_lengths(mask).tolist() == [1, 2]
    stats = loss_stats(mask)
    assert stats["n_lost"] == 6 and stats["n_bursts"] == 3 and stats["max_burst"] == 3
    assert stats["loss_rate"] == pytest.approx(6 / 9)
    assert stats["mean_burst"] == pytest.approx(2.0)
    assert stats["mean_gap"] == pytest.approx(1.5)


def test_rfc3611_densities_follow_the_definition() -> None:
    # Losses at 2, 7, 9, 10, 16 with Gmin=3: {2} and {16} are isolated (gap),
    # {7, 9, 10} is a burst spanning packets 7..10.
    mask = np.zeros(20, dtype=bool)
    mask[[2, 7, 9, 10, 16]] = True
    stats = loss_stats(mask, gmin=3)
    assert stats["burst_density"] == pytest.approx(3 / 4)
    assert stats["gap_density"] == pytest.approx(2 / 16)
    # With the recommended Gmin=16 all five losses form one burst 2..16.
    stats = loss_stats(mask)
    assert stats["burst_density"] == pytest.approx(5 / 15)
    assert stats["gap_density"] == 0.0


def test_stats_without_losses() -> None:
    stats = loss_stats(np.zeros(10, dtype=bool))
    assert stats["n_bursts"] == 0 and stats["max_burst"] == 0
    assert math.isnan(stats["mean_burst"]) and math.isnan(stats["burst_density"])
    assert stats["gap_density"] == 0.0
    with pytest.raises(ValueError):
        loss_stats(np.zeros(0, dtype=bool))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=200), st.integers(1, 20))
def test_run_lengths_partition_the_mask(bits: list[bool], gmin: int) -> None:
    mask = np.array(bits, dtype=bool)
    bursts, gaps = burst_lengths(mask), gap_lengths(mask)
    assert bursts.sum() == mask.sum() and gaps.sum() == (~mask).sum()
    assert abs(len(bursts) - len(gaps)) <= 1
    assert (bursts > 0).all() and (gaps > 0).all()
    # The RFC bound: a gap holds at most one loss per gmin+1 packets.  It is
    # exact once the trace starts and ends with gmin received packets, since
    # every gap loss then owns the >= gmin receptions before it.
    padded = np.concatenate([np.zeros(gmin, bool), mask, np.zeros(gmin, bool)])
    stats = loss_stats(padded, gmin=gmin)
    assert stats["gap_density"] <= 1 / (gmin + 1) + 1e-12
