"""``masked`` concealment: a bidirectional transformer that fills holes in confidence order.

MaskGIT-style: lost positions hold a mask token outside the codebook (id K); every pass predicts all
masked positions at once from the received indices on *every* side, keeps the most confident
ones, and re-masks the rest, so later passes condition on earlier answers. Each pass commits a
cosine-scheduled share of what is still missing (few early, many late).

Grids larger than the 16x16 training window are covered by windows on a stride-8 lattice; each
position is read from the window in which it sits most centrally, so every prediction has context
on all sides wherever the grid allows. Windows narrower than 16 keep the 2-D position ids of the
16x16 layout (``GPT.forward``'s ``pos``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from vqnet.restore.decision import bayes_choice
from vqnet.restore.gpt import GPT

WINDOW = 16
STRIDE = 8


def window_starts(L: int, size: int = WINDOW, stride: int = STRIDE) -> np.ndarray:
    """Window origins along one axis: 0, stride, ... and a last one flush with the end."""
    if L <= size:
        return np.zeros(1, dtype=np.int64)
    starts = list(range(0, L - size + 1, stride))
    if starts[-1] != L - size:
        starts.append(L - size)
    return np.asarray(starts, dtype=np.int64)


def nearest_window(L: int, size: int = WINDOW) -> tuple[np.ndarray, np.ndarray]:
    """For every position on an axis: the window (index into :func:`window_starts`) whose centre
    is closest, and the position's offset inside it."""
    starts = window_starts(L, size)
    span = min(L, size)
    p = np.arange(L)
    centre = starts + (span - 1) / 2
    which = np.abs(p[:, None] - centre[None, :]).argmin(axis=1)
    return which, p - starts[which]


@dataclass
class _Grid:
    """One grid being concealed: its windows and where each position reads its logits."""

    codes: np.ndarray  # (H, W) current grid, mask id at still-missing positions
    missing: np.ndarray  # (H, W) bool, still to be filled
    lost_total: int
    rows: np.ndarray  # window starts along H
    cols: np.ndarray  # window starts along W
    wrow: np.ndarray  # (H,) window index, (H,) offset
    orow: np.ndarray
    wcol: np.ndarray
    ocol: np.ndarray


def _prepare(grid: np.ndarray, lost: np.ndarray, mask_id: int) -> _Grid:
    H, W = grid.shape
    codes = np.array(grid, dtype=np.int64, copy=True)
    codes[lost] = mask_id
    wrow, orow = nearest_window(H)
    wcol, ocol = nearest_window(W)
    return _Grid(codes, lost.copy(), int(lost.sum()), window_starts(H), window_starts(W), wrow, orow, wcol, ocol)


def _position_ids(h: int, w: int) -> torch.Tensor:
    r, c = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return torch.from_numpy((r * WINDOW + c).reshape(-1))


@torch.inference_mode()
def _pass_logits(model: GPT, grids: list[_Grid], K: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """One batched forward over every window that holds a missing position it is responsible for;
    returns per grid (positions r, c, softmax over the K codes)."""
    by_shape: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
    slots = []  # per grid: (window row, window column) -> that window's place in its shape's batch
    for g_i, g in enumerate(grids):
        r, c = np.nonzero(g.missing)
        h, w = min(WINDOW, g.codes.shape[0]), min(WINDOW, g.codes.shape[1])
        wins = by_shape.setdefault((h, w), [])
        slot = np.full((len(g.rows), len(g.cols)), -1, np.int64)
        for wr, wc in set(zip(g.wrow[r].tolist(), g.wcol[c].tolist())):
            slot[wr, wc] = len(wins)
            wins.append((g_i, wr, wc))
        slots.append(slot)
    probs: dict[tuple[int, int], torch.Tensor] = {}
    for (h, w), wins in by_shape.items():
        if not wins:
            continue
        batch = np.stack(
            [
                grids[g]
                .codes[grids[g].rows[wr] : grids[g].rows[wr] + h, grids[g].cols[wc] : grids[g].cols[wc] + w]
                .reshape(-1)
                for g, wr, wc in wins
            ]
        )
        device = model.pos_emb.device
        out = model(torch.from_numpy(batch).to(device), _position_ids(h, w).to(device))[..., :K].float()
        probs[(h, w)] = out.softmax(-1).cpu().view(len(wins), h, w, K).numpy()
    result = []
    for g, slot in zip(grids, slots):
        r, c = np.nonzero(g.missing)
        if not len(r):
            result.append((r, c, np.zeros((0, K), np.float32)))
            continue
        shape = min(WINDOW, g.codes.shape[0]), min(WINDOW, g.codes.shape[1])
        result.append((r, c, probs[shape][slot[g.wrow[r], g.wcol[c]], g.orow[r], g.ocol[c]]))
    return result


def _neighbour_evidence(g: _Grid, r: np.ndarray, c: np.ndarray, log_ratios: np.ndarray) -> np.ndarray:
    """(len(r), K): the sum of ``log_ratios[code]`` over each position's known 4-neighbours
    (received, or filled in an earlier pass)."""
    H, W = g.codes.shape
    out = np.zeros((len(r), log_ratios.shape[1]))
    for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        a, b = r + dr, c + dc
        ok = (a >= 0) & (a < H) & (b >= 0) & (b < W)
        ok[ok] &= ~g.missing[a[ok], b[ok]]
        out[ok] += log_ratios[g.codes[a[ok], b[ok]]]
    return out


def conceal_masked(
    model: GPT,
    items: list[tuple[np.ndarray, np.ndarray]],
    K: int,
    passes: int = 8,
    temperature: float | None = None,
    seed: int = 0,
    neighbour_log_ratios: np.ndarray | None = None,
    code_distances: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Fill the lost positions of every ``(grid, lost)`` pair; received positions are untouched.

    Greedy (argmax, confidence = its probability) unless ``temperature`` is given, in which case
    codes are sampled from the tempered distribution with a generator seeded by ``seed``.
    With ``code_distances`` (K x K, :func:`vqnet.restore.decision.code_distances`) and no
    temperature, each position takes the minimum-Bayes-risk code instead of the argmax, and the
    positions with the lowest risk are committed first.
    With ``neighbour_log_ratios`` (K x K, row c = log p(x | neighbour c) - log p(x), e.g.
    :meth:`vqnet.entropy.Prior.neighbour_log_ratios` scaled by a weight) the transformer's
    log-probabilities get that row added for every known 4-neighbour (a product of experts,
    naive-Bayes style) before the choice and the confidence are taken. Why: the pair statistics
    come from every adjacent pair of the training set, which a small transformer trained for an
    hour on a CPU has not absorbed; it is the same table the entropy coder uses.
    All grids advance together, one batched forward per pass.
    """
    if passes < 1:
        raise ValueError("passes must be >= 1")
    rng = np.random.default_rng(seed)
    grids = [_prepare(np.asarray(g), np.asarray(lost, dtype=bool), K) for g, lost in items]
    for t in range(1, passes + 1):
        if not any(g.missing.any() for g in grids):
            break
        for g, (r, c, probs) in zip(grids, _pass_logits(model, grids, K)):
            if not len(r):
                continue
            if neighbour_log_ratios is not None:
                score = np.log(np.maximum(probs, 1e-30)) + _neighbour_evidence(g, r, c, neighbour_log_ratios)
                probs = np.exp(score - score.max(axis=1, keepdims=True))
                probs /= probs.sum(axis=1, keepdims=True)
            if temperature:
                p = probs ** (1.0 / temperature)
                p /= p.sum(axis=1, keepdims=True)
                pred = np.array([rng.choice(K, p=row) for row in p])
                conf = probs[np.arange(len(pred)), pred]
            elif code_distances is not None:
                pred, risk = bayes_choice(probs, code_distances)
                conf = -risk
            else:
                pred = probs.argmax(axis=1)
                conf = probs.max(axis=1)
            keep_masked = int(math.floor(g.lost_total * math.cos(math.pi / 2 * t / passes)))
            n_commit = max(1, len(r) - keep_masked) if t < passes else len(r)
            order = np.argsort(-conf, kind="stable")[:n_commit]
            g.codes[r[order], c[order]] = pred[order]
            g.missing[r[order], c[order]] = False
    return [g.codes for g in grids]
