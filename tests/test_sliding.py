"""Sliding-window ``ar`` concealment: taming's window rule, the upstream fixture, and equality of the
fast (truncated, cached, wavefront-batched) implementation with the literal one-at-a-time procedure."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import shared_path
from safetensors.torch import load_file

from vqnet.restore.gpt import GPT, GPTConfig, load_gpt_state
from vqnet.restore.sliding import (
    WINDOW,
    ArStep,
    _pick,
    conceal_ar,
    wavefront_levels,
    window_start,
    window_table,
)

K = 16
SOS = K


def random_gpt(seed: int = 0, dtype: torch.dtype = torch.float64) -> GPT:
    """A small causal GPT with weights large enough to give decisive logits (the upstream init's
    N(0, 0.02) would leave near-ties everywhere). float64 so that rounding never flips an argmax
    when comparing differently organised but mathematically equal computations."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=K + 1, block_size=WINDOW * WINDOW, n_layer=2, n_head=2, n_embd=32))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim == 2:
                p.copy_(noise / p.shape[1] ** 0.5)
            elif ".ln" in name or name.startswith("ln_f"):
                p.copy_(1 + 0.1 * noise if name.endswith("weight") else 0.1 * noise)
            else:
                p.copy_(0.1 * noise)
    return model.to(dtype).eval()


def reference_ar(
    model: GPT, grid: np.ndarray, lost: np.ndarray, K: int, sos: int, choose=lambda row: int(row.argmax())
) -> np.ndarray:
    """The procedure literally: raster order, full window crop, one forward per lost position;
    ``choose`` maps the K code logits to the code written (greedy unless told otherwise)."""
    out = np.array(grid, dtype=np.int64, copy=True)
    H, W = out.shape
    h, w = min(H, WINDOW), min(W, WINDOW)
    positions = torch.tensor([r * WINDOW + c for r in range(h) for c in range(w)])
    with torch.no_grad():
        for i, j in zip(*np.nonzero(lost)):
            (i0, li), (j0, lj) = window_start(int(i), H), window_start(int(j), W)
            crop = torch.from_numpy(out[i0 : i0 + h, j0 : j0 + w].reshape(-1))
            seq = torch.cat([torch.tensor([sos]), crop])[:-1]
            out[i, j] = choose(model(seq[None], positions[None])[0, li * w + lj, :K])
    return out


def random_case(shape: tuple[int, int], loss: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A grid of random codes (lost positions pre-filled with random codes, as the reference feeds
    them) and an i.i.d. lost mask."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, K, shape), rng.random(shape) < loss


# --- window rule -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fixture():
    """(meta, io, model) of the sliding_window fixture."""
    folder = shared_path("fixtures", "taming")
    meta = json.loads((folder / "sliding_window.json").read_text())
    cfg = GPTConfig.from_dict(meta["concealment_example"]["model"]["config"])
    model = load_gpt_state(load_file(str(folder / "sliding_window_gpt.safetensors")), cfg)
    return meta, load_file(str(folder / "sliding_window_io.safetensors")), model


def test_window_table_matches_fixture(fixture):
    meta, io, _ = fixture
    H, W = meta["window_rule"]["grid"]
    table = window_table(H, W)
    assert np.array_equal(table, io["window_table"].numpy())
    assert meta["window_rule"]["columns"] == ["i", "j", "i_start", "j_start", "local_i", "local_j"]
    rows = [[i, j, *table[i, j]] for i in range(H) for j in range(W)]
    assert rows == meta["window_rule"]["table"]


def test_window_rule_examples():
    assert window_start(12, 24) == (4, 8)  # interior: 8 before, 7 after
    assert window_start(16, 24) == (8, 8)  # already touches the right edge
    assert window_start(17, 24) == (8, 9)  # clamped
    assert window_start(23, 24) == (8, 15)
    assert window_start(5, 24) == (0, 5)
    assert window_start(9, 16) == (0, 9)  # L == 16: the whole axis
    assert window_start(11, 12) == (0, 11)  # L < 16: our extension, the whole axis


@pytest.mark.parametrize("L", [1, 2, 9, 15, 16, 17, 23, 24, 31, 48])
def test_window_table_agrees_with_scalar_rule_and_stays_inside(L):
    table = window_table(L, 3)
    for p in range(L):
        start, local = window_start(p, L)
        assert (table[p, 0, 0], table[p, 0, 2]) == (start, local)
        assert start >= 0 and start + min(L, WINDOW) <= L and 0 <= local < min(L, WINDOW)
    with pytest.raises(ValueError):
        window_start(L, L)


# --- the upstream fixture ----------------------------------------------------------------------


def _fixture_inputs(fixture) -> tuple[np.ndarray, np.ndarray, int, int]:
    meta, io, _ = fixture
    sos = meta["concealment_example"]["tokens"]["sos_token"]
    return io["grid_input"].numpy(), io["lost_mask"].numpy(), sos, sos  # K == sos == 32


def test_fixture_concealment_step_by_step(fixture):
    _, io, model = fixture
    grid, lost, K_, sos = _fixture_inputs(fixture)
    torch.set_num_threads(1)
    steps: list[ArStep] = []
    (out,) = conceal_ar(model, [(grid, lost)], K=K_, sos=sos, on_step=steps.append)
    assert np.array_equal(out, io["grid_restored"].numpy())
    steps.sort(key=lambda s: (s.i, s.j))
    assert np.array_equal([[s.i, s.j] for s in steps], io["visit_order"].numpy())
    assert np.array_equal([s.window for s in steps], io["visit_windows"].numpy())
    assert np.array_equal([s.pred for s in steps], io["step_pred"].numpy())
    logits = torch.from_numpy(np.stack([s.logits for s in steps]))
    torch.testing.assert_close(logits, io["step_logits"], atol=1e-5, rtol=1e-5)


def test_fixture_ignores_what_lost_positions_hold(fixture):
    _, io, model = fixture
    grid, lost, K_, sos = _fixture_inputs(fixture)
    rng = np.random.default_rng(7)
    for fill in (rng.integers(0, K_, grid.shape), np.full(grid.shape, -1)):
        (out,) = conceal_ar(model, [(np.where(lost, fill, grid), lost)], K=K_, sos=sos)
        assert np.array_equal(out, io["grid_restored"].numpy())


def test_fixture_batched_with_other_grids(fixture):
    _, io, model = fixture
    grid, lost, K_, sos = _fixture_inputs(fixture)
    rng = np.random.default_rng(8)
    others = [(rng.integers(0, K_, s), rng.random(s) < 0.5) for s in [(17, 30), (9, 9), (24, 20)]]
    batch = [others[0], (grid, lost), others[1], others[2]]
    out = conceal_ar(model, batch, K=K_, sos=sos)
    assert np.array_equal(out[1], io["grid_restored"].numpy())
    for got, item in zip([out[0], out[2], out[3]], others):
        assert np.array_equal(got, conceal_ar(model, [item], K=K_, sos=sos)[0])


# --- equality with the one-at-a-time procedure ---------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "loss"),
    [
        ((20, 24), 0.3),
        ((16, 16), 1.0),
        ((18, 33), 0.6),
        ((33, 18), 0.2),
        ((7, 5), 0.5),
        ((3, 40), 0.7),
        ((40, 3), 0.5),
        ((12, 20), 0.9),
        ((1, 1), 1.0),
        ((2, 17), 1.0),
    ],
)
def test_matches_one_at_a_time(shape, loss):
    model = random_gpt()
    grid, lost = random_case(shape, loss, seed=sum(shape))
    (out,) = conceal_ar(model, [(grid, lost)], K=K, sos=SOS)
    assert np.array_equal(out, reference_ar(model, grid, lost, K, SOS))
    assert np.array_equal(out[~lost], grid[~lost])


def test_nothing_lost_is_identity():
    model = random_gpt()
    grid, _ = random_case((20, 24), 0.0, seed=1)
    (out,) = conceal_ar(model, [(grid, np.zeros_like(grid, bool))], K=K, sos=SOS)
    assert np.array_equal(out, grid) and out is not grid


def test_everything_lost_matches_reference():
    model = random_gpt(1)
    grid, _ = random_case((19, 22), 0.0, seed=2)
    lost = np.ones_like(grid, bool)
    (out,) = conceal_ar(model, [(grid, lost)], K=K, sos=SOS)
    assert np.array_equal(out, reference_ar(model, grid, lost, K, SOS))


def test_batch_of_mixed_shapes_matches_singles_and_reference():
    model = random_gpt(2)
    cases = [
        random_case(s, loss, seed=n)
        for n, (s, loss) in enumerate(
            [((20, 24), 0.5), ((6, 9), 1.0), ((24, 20), 0.1), ((16, 16), 0.0), ((17, 40), 0.3)]
        )
    ]
    batched = conceal_ar(model, cases, K=K, sos=SOS)
    for (grid, lost), got in zip(cases, batched):
        assert np.array_equal(got, reference_ar(model, grid, lost, K, SOS))
    assert conceal_ar(model, [], K=K, sos=SOS) == []


def test_float32_matches_reference():
    """The production dtype: equal on these grids (a flip would need a near-tie of ~1e-6)."""
    model = random_gpt(3, dtype=torch.float32)
    torch.set_num_threads(1)
    grid, lost = random_case((20, 24), 0.5, seed=3)
    (out,) = conceal_ar(model, [(grid, lost)], K=K, sos=SOS)
    assert np.array_equal(out, reference_ar(model, grid, lost, K, SOS))


def test_bayes_choice_matches_one_at_a_time_reference():
    """Minimum-Bayes-risk choice keeps the window procedure: each lost position, in raster order,
    takes argmin_j sum_i p(i) d(i, j) from the current grid, batched or not."""
    model = random_gpt(4)
    e = np.random.default_rng(4).normal(size=(K, 3))
    dist = ((e[:, None] - e[None]) ** 2).sum(-1)
    cases = [random_case((20, 24), 0.5, seed=5), random_case((7, 30), 0.8, seed=6)]
    out = conceal_ar(model, cases, K=K, sos=SOS, code_distances=dist)

    def mbr(row: torch.Tensor) -> int:
        return int((row.double().softmax(-1).numpy() @ dist).argmin())

    for (grid, lost), got in zip(cases, out):
        assert np.array_equal(got, reference_ar(model, grid, lost, K, SOS, choose=mbr))
    greedy = conceal_ar(model, cases, K=K, sos=SOS)
    assert any(not np.array_equal(a, b) for a, b in zip(out, greedy))  # the rule does change answers
    zero_one = 1.0 - np.eye(K)  # under 0-1 loss the Bayes choice is the argmax
    assert all(
        np.array_equal(a, b) for a, b in zip(conceal_ar(model, cases, K=K, sos=SOS, code_distances=zero_one), greedy)
    )
    with pytest.raises(ValueError, match="deterministically"):
        conceal_ar(model, cases, K=K, sos=SOS, code_distances=dist, temperature=1.0)
    with pytest.raises(ValueError, match="must be 16 x 16"):
        conceal_ar(model, cases, K=K, sos=SOS, code_distances=dist[:4, :4])


# --- the wavefront schedule --------------------------------------------------------------------


def test_wavefront_levels():
    assert np.array_equal(wavefront_levels(np.ones((1, 20), bool)), np.arange(20))
    lost = np.zeros((20, 24), bool)
    lost[0, 0] = lost[19, 23] = True  # far apart: no dependency
    assert np.array_equal(wavefront_levels(lost), [0, 0])
    lost[19, 8] = True  # (19, 23)'s window starts at column 8, row 4: it now depends on (19, 8)
    assert np.array_equal(wavefront_levels(lost), [0, 0, 1])


def test_equal_levels_never_read_each_other():
    lost = np.random.default_rng(4).random((30, 40)) < 0.6
    levels = wavefront_levels(lost)
    table = window_table(*lost.shape)
    level_at = np.full(lost.shape, -1)
    level_at[lost] = levels
    for (i, j), lv in zip(zip(*np.nonzero(lost)), levels):
        i0, j0 = table[i, j, :2]
        context = np.concatenate([level_at[i0:i, j0 : j0 + WINDOW].ravel(), level_at[i, j0:j]])
        assert context.max(initial=-1) == lv - 1 if lv else not (context >= 0).any()


# --- sampling ----------------------------------------------------------------------------------


def test_sampling_is_seeded_and_batch_independent():
    model = random_gpt(5)
    cases = [random_case((20, 24), 0.5, seed=n) for n in range(3)]
    kw = dict(K=K, sos=SOS, temperature=1.5, top_k=5)
    a = conceal_ar(model, cases, seed=[11, 12, 13], **kw)
    assert all(np.array_equal(x, y) for x, y in zip(a, conceal_ar(model, cases, seed=[11, 12, 13], **kw)))
    for case, s, got in zip(cases, [11, 12, 13], a):
        assert np.array_equal(got, conceal_ar(model, [case], seed=s, **kw)[0])
    assert not np.array_equal(a[0], conceal_ar(model, cases[:1], seed=99, **kw)[0])
    assert np.array_equal(a[1], conceal_ar(model, cases, seed=11, **kw)[1])  # int seed: grid k gets seed + k


def test_sampling_stays_in_top_k_codes():
    model = random_gpt(6)
    grid, lost = random_case((20, 24), 0.7, seed=6)
    steps: list[ArStep] = []
    conceal_ar(model, [(grid, lost)], K=K, sos=SOS, temperature=3.0, top_k=3, on_step=steps.append)
    for s in steps:
        assert s.pred in np.argsort(s.logits[:K])[-3:]


def test_top_k_one_is_greedy():
    model = random_gpt(7)
    grid, lost = random_case((20, 24), 0.5, seed=7)
    greedy = conceal_ar(model, [(grid, lost)], K=K, sos=SOS)[0]
    assert np.array_equal(conceal_ar(model, [(grid, lost)], K=K, sos=SOS, top_k=1, temperature=2.0)[0], greedy)


def test_pick_draws_from_the_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(40000, 1)
    u = torch.rand(40000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    freq = torch.bincount(_pick(logits, u, 2.0, None), minlength=4).double() / len(u)
    torch.testing.assert_close(freq, torch.softmax(logits[0].double() / 2.0, 0), atol=0.01, rtol=0)
    top2 = torch.bincount(_pick(logits, u, None, 2), minlength=4).double() / len(u)
    torch.testing.assert_close(top2[2:], torch.zeros(2, dtype=torch.double))


# --- refusals ----------------------------------------------------------------------------------


def test_bad_arguments_are_refused():
    model = random_gpt()
    grid, lost = random_case((20, 24), 0.5, seed=0)
    with pytest.raises(ValueError, match="same 2-D shape"):
        conceal_ar(model, [(grid, lost[:, :5])], K=K, sos=SOS)
    with pytest.raises(ValueError, match="received codes"):
        conceal_ar(model, [(np.where(lost, grid, K), lost)], K=K, sos=SOS)
    with pytest.raises(ValueError, match="vocab_size"):
        conceal_ar(model, [(grid, lost)], K=K + 2, sos=SOS)
    with pytest.raises(ValueError, match="temperature"):
        conceal_ar(model, [(grid, lost)], K=K, sos=SOS, temperature=0.0)
    with pytest.raises(ValueError, match="seeds"):
        conceal_ar(model, [(grid, lost)], K=K, sos=SOS, top_k=2, seed=[1, 2])
    with pytest.raises(ValueError, match="eval mode"):
        conceal_ar(model.train(), [(grid, lost)], K=K, sos=SOS)
    short = GPT(GPTConfig(vocab_size=K + 1, block_size=100, n_layer=1, n_head=2, n_embd=8)).eval()
    with pytest.raises(ValueError, match="block_size"):
        conceal_ar(short, [(grid, lost)], K=K, sos=SOS)
