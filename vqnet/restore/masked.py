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
    for g_i, g in enumerate(grids):
        r, c = np.nonzero(g.missing)
        for wr, wc in set(zip(g.wrow[r].tolist(), g.wcol[c].tolist())):
            h, w = min(WINDOW, g.codes.shape[0]), min(WINDOW, g.codes.shape[1])
            by_shape.setdefault((h, w), []).append((g_i, wr, wc))
    logits: dict[tuple[int, int, int], torch.Tensor] = {}
    for (h, w), wins in by_shape.items():
        batch = np.stack([grids[g].codes[grids[g].rows[wr] : grids[g].rows[wr] + h, grids[g].cols[wc] : grids[g].cols[wc] + w].reshape(-1)
                          for g, wr, wc in wins])
        out = model(torch.from_numpy(batch), _position_ids(h, w))[..., :K].float().softmax(-1)
        for key, o in zip(wins, out):
            logits[key] = o.view(h, w, K)
    result = []
    for g_i, g in enumerate(grids):
        r, c = np.nonzero(g.missing)
        probs = (torch.stack([logits[(g_i, int(g.wrow[i]), int(g.wcol[j]))][g.orow[i], g.ocol[j]] for i, j in zip(r, c)])
                 if len(r) else torch.zeros(0, K))
        result.append((r, c, probs.numpy()))
    return result


def conceal_masked(model: GPT, items: list[tuple[np.ndarray, np.ndarray]], K: int, passes: int = 8,
                   temperature: float | None = None, seed: int = 0,
                   code_cost: np.ndarray | None = None) -> list[np.ndarray]:
    """Fill the lost positions of every ``(grid, lost)`` pair; received positions are untouched.

    Greedy (argmax, confidence = its probability) unless ``temperature`` is given, in which case
    codes are sampled from the tempered distribution with a generator seeded by ``seed``.
    With ``code_cost`` (K x K, ``[i, j]`` = cost of writing code j where the truth is i) each
    position instead takes the code of least expected cost under the predicted distribution
    (minimum Bayes risk): when the model is unsure between several textures, that is the code
    closest to all of them rather than the single most likely one. Confidence stays the top
    probability.
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
            if temperature:
                p = probs ** (1.0 / temperature)
                p /= p.sum(axis=1, keepdims=True)
                pred = np.array([rng.choice(K, p=row) for row in p])
                conf = probs[np.arange(len(pred)), pred]
            else:
                pred = probs.argmax(axis=1) if code_cost is None else (probs @ code_cost).argmin(axis=1)
                conf = probs.max(axis=1)
            keep_masked = int(math.floor(g.lost_total * math.cos(math.pi / 2 * t / passes)))
            n_commit = max(1, len(r) - keep_masked) if t < passes else len(r)
            order = np.argsort(-conf, kind="stable")[:n_commit]
            g.codes[r[order], c[order]] = pred[order]
            g.missing[r[order], c[order]] = False
    return [g.codes for g in grids]
