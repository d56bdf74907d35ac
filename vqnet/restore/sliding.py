"""The paper's ``ar`` concealment: taming's sliding-window GPT, teacher-forced on the lost positions.

The procedure is taming's ``scripts/sample_conditional.py`` applied to concealment. Lost positions
are visited in raster order. Each one crops the 16x16 window around it from the *current* grid, so
earlier predictions are already written in. The SOS id is prepended, the GPT reads all but the last
token, and the prediction is the argmax of the logit row that predicts the position's window cell,
taken over the K code logits only. Received positions are never changed.

The result equals the one-at-a-time procedure. Every shortcut below removes only work whose
output is never read, or work that repeats earlier work:

- **Truncation.** The logit row for window cell t depends only on the tokens before it, because
  the GPT is causal. So the input stops at that cell: ``t + 1`` tokens instead of 256.
- **Prefix cache.** Lost positions that share a window share its input prefix. This happens near
  the borders, where the window is clamped, and everywhere on a grid of 16x16 or less. The keys
  and values of that prefix are kept (:class:`_KVStore`), so the next position feeds only the
  tokens after it. Those tokens are final by then, because they precede the position in raster
  order.
- **Only what is read.** The last block, ``ln_f`` and the head run for one token per row, the
  token whose logits are read (:func:`_extend`).
- **Wavefront schedule.** A lost position reads only window cells that come before it in raster
  order. Its input is therefore final once every *lost* cell in that causal context has been
  predicted. Positions are grouped by dependency depth (:func:`wavefront_levels`). Each group
  gets exactly the inputs the raster-order procedure would give it, so the whole group goes
  through one forward pass.
- **Batching across grids.** Each step runs the current group of every grid together. The Linears
  run on all new tokens packed with no padding; attention runs per row. Grids may differ in shape
  and in how many positions they lost.

Only floating-point rounding can differ from one full window at a time, about 1e-6 in float32
(the GEMMs have other shapes). An argmax can therefore differ only where two code logits tie to
within that.

**Our extension for axes shorter than 16.** Upstream does not guard this case, and its rule would
crop outside the grid. On such an axis we use the whole axis as the window (start 0, local = p).
Each input token gets the position id ``r*16 + c``, where (r, c) is the window cell it predicts.
The model is thus asked about the same 2-D cell as in its 16x16 training layout. For a full
16-wide window these ids are upstream's ``arange``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vqnet.restore.decision import bayes_choice
from vqnet.restore.gpt import GPT

WINDOW = 16


def window_start(p: int, L: int, size: int = WINDOW) -> tuple[int, int]:
    """(start, local) of the window along an axis of length ``L`` for position ``p``.

    This is taming's rule: the target normally sits at local index ``size // 2``, and the window is
    clamped at both borders. An axis shorter than ``size`` is taken whole (our extension).
    """
    if not 0 <= p < L:
        raise ValueError(f"position {p} outside an axis of length {L}")
    half = size // 2
    if L < size:
        local = p
    elif p <= half:
        local = p
    elif L - p < half:
        local = size - (L - p)
    else:
        local = half
    return p - local, local


def _axis_windows(L: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised :func:`window_start` for every position of one axis: (starts, locals)."""
    p = np.arange(L, dtype=np.int64)
    if L < size:
        return np.zeros(L, np.int64), p
    half = size // 2
    local = np.where(p <= half, p, np.where(L - p < half, size - (L - p), half))
    return p - local, local


def window_table(H: int, W: int, size: int = WINDOW) -> np.ndarray:
    """(H, W, 4) int64 table of ``(i_start, j_start, local_i, local_j)`` for every grid position.

    The layout is the one used by the fixtures' ``window_table``.
    """
    si, li = _axis_windows(H, size)
    sj, lj = _axis_windows(W, size)
    table = np.empty((H, W, 4), np.int64)
    table[..., 0], table[..., 2] = si[:, None], li[:, None]
    table[..., 1], table[..., 3] = sj[None, :], lj[None, :]
    return table


def wavefront_levels(lost: np.ndarray, size: int = WINDOW) -> np.ndarray:
    """Dependency depth of every lost position, in raster order.

    A position's causal context is made of the window rows above it and the window cells to its
    left. Its level is 0 when no lost position lies in that context. Otherwise it is one more than
    the deepest lost position there. Positions of equal level never read each other, so they can be
    predicted together.
    """
    H, W = lost.shape
    table = window_table(H, W, size)
    w = min(W, size)
    level = np.full((H, W), -1, np.int64)
    for i, j in zip(*np.nonzero(lost)):
        i0, j0 = table[i, j, 0], table[i, j, 1]
        above = level[i0:i, j0 : j0 + w].max(initial=-1)
        left = level[i, j0:j].max(initial=-1)
        level[i, j] = 1 + max(above, left)
    return level[lost]


@dataclass(frozen=True)
class ArStep:
    """One prediction, as passed to ``conceal_ar``'s ``on_step`` hook (for debugging and fixtures)."""

    item: int
    i: int
    j: int
    window: tuple[int, int, int, int]  # (i_start, j_start, local_i, local_j)
    logits: np.ndarray  # the full vocab row that was read
    pred: int


class _Grid:
    """One grid being concealed: its working copy, window geometry and lost positions (raster order)."""

    def __init__(self, grid: np.ndarray, lost: np.ndarray, K: int, sos: int) -> None:
        lost = np.asarray(lost, dtype=bool)
        if grid.ndim != 2 or grid.shape != lost.shape:
            raise ValueError(f"grid {grid.shape} and lost mask {lost.shape} must be the same 2-D shape")
        self.grid = np.array(grid, dtype=np.int64, copy=True)
        self.sos = sos
        received = self.grid[~lost]
        if received.size and (received.min() < 0 or received.max() >= K):
            raise ValueError(f"received codes must lie in [0, {K})")
        H, W = self.grid.shape
        self.h, self.w = min(H, WINDOW), min(W, WINDOW)
        # The position id of input s is the 16x16-layout index of the window cell it predicts.
        self.positions = (np.arange(self.h)[:, None] * WINDOW + np.arange(self.w)).ravel()
        self.lost_flat = np.flatnonzero(lost)
        self.windows = window_table(H, W).reshape(-1, 4)[self.lost_flat]
        # Input length for each lost position: SOS plus the window cells before it.
        self.lengths = self.windows[:, 2] * self.w + self.windows[:, 3] + 1
        self.levels = wavefront_levels(lost)

    def window_start(self, n: int) -> tuple[int, int]:
        """(i_start, j_start) of the ``n``-th lost position's window, which identifies the window."""
        return int(self.windows[n, 0]), int(self.windows[n, 1])

    def inputs(self, n: int, start: int) -> tuple[np.ndarray, np.ndarray]:
        """Tokens and position ids ``start:`` of the input for the ``n``-th lost position.

        The input is ``[SOS] + window crop`` cut just before the position's own cell.
        """
        i0, j0 = self.windows[n, :2]
        stop = self.lengths[n]
        crop = self.grid[i0 : i0 + self.h, j0 : j0 + self.w].reshape(-1)[max(start - 1, 0) : stop - 1]
        tokens = np.concatenate([[self.sos], crop]) if start == 0 else crop
        return tokens, self.positions[start:stop]


class _KVStore:
    """Keys and values of one window's input prefix, for every layer (see "Prefix cache" above)."""

    def __init__(self, model: GPT, capacity: int) -> None:
        cfg = model.config
        shape = (cfg.n_layer, 2, cfg.n_head, capacity, cfg.n_embd // cfg.n_head)
        self.kv = torch.empty(shape, dtype=model.pos_emb.dtype, device=model.pos_emb.device)
        self.length = 0


class _Stores:
    """The prefix stores of the windows that lost positions still need.

    A store is sized for the longest input its window will feed. It is dropped after the window's
    last lost position. At most about (W - 15) windows are alive per grid at any time (33 for a
    32x48 grid). Each takes ``n_layer * 2 * n_embd * 256`` floats at most: 2 MB for 4 layers of
    256, 150 MB for taming's 48 layers of 1536.
    """

    def __init__(self, model: GPT, grids: list[_Grid]) -> None:
        self.model = model
        self.pending: dict[tuple[int, int, int], int] = {}
        self.capacity: dict[tuple[int, int, int], int] = {}
        for k, g in enumerate(grids):
            for n in range(len(g.lost_flat)):
                key = (k, *g.window_start(n))
                self.pending[key] = self.pending.get(key, 0) + 1
                self.capacity[key] = max(self.capacity.get(key, 0), int(g.lengths[n]))
        self.alive: dict[tuple[int, int, int], _KVStore] = {}

    def take(self, key: tuple[int, int, int]) -> _KVStore:
        """The window's store, created empty the first time; kept only while positions still need it."""
        store = self.alive.get(key) or _KVStore(self.model, self.capacity[key])
        self.pending[key] -= 1
        if self.pending[key]:
            self.alive[key] = store
        else:
            self.alive.pop(key, None)
        return store


class _Plan:
    """What every step of one ``conceal_ar`` call reuses: each block's query, key and value
    weights stacked into one GEMM (:meth:`CausalSelfAttention.fused`; the last block only
    needs keys and values for every token), and the causal masks as slices of one table."""

    def __init__(self, model: GPT) -> None:
        self.model = model
        self.n_head = model.config.n_head
        last = len(model.blocks) - 1
        self.weights = [b.attn.fused("kv" if i == last else "kvq") for i, b in enumerate(model.blocks)]
        size = model.config.block_size
        # seen[a, t]: a query at absolute index a sees the token at t.
        self.seen = torch.ones(size, size, dtype=torch.bool, device=model.pos_emb.device).tril()

    def attend(self, q: torch.Tensor, kv: torch.Tensor, first: int) -> torch.Tensor:
        """Causal attention of queries at absolute indices ``first, first+1, ...`` over (2, H, T,
        hs) ``kv``: the maths of ``CausalSelfAttention`` (scaled dot product, masked softmax)
        in eval mode, for one row."""
        m, T = q.shape[1], kv.shape[2]
        if m == 1 and first == T - 1:  # one query at the end sees everything: no mask needed
            return F.scaled_dot_product_attention(q, kv[0], kv[1])
        return F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=self.seen[first : first + m, :T])


def _extend(plan: _Plan, tokens: list[np.ndarray], positions: list[np.ndarray], stores: list[_KVStore]) -> torch.Tensor:
    """Logits after the last new token of each row; each row's new keys and values join its store.

    This is ``GPT.forward`` in eval mode, reorganised so that no work is spent on what the answer
    does not read. The Linears run on the new tokens of all rows packed together, with no padding.
    Attention runs per row over the stored prefix plus the new tokens. The last block, ``ln_f`` and
    the head run only where the logits are read; the last block still needs keys and values for
    every new token.
    """
    model = plan.model
    device = model.pos_emb.device
    sizes = [len(t) for t in tokens]
    ends = np.cumsum(sizes)
    last = torch.as_tensor(ends - 1, device=device)
    idx = torch.as_tensor(np.concatenate(tokens), device=device)
    pos = torch.as_tensor(np.concatenate(positions), device=device)
    x = model.drop(model.tok_emb(idx) + model.pos_emb[0][pos])
    n_head, C = plan.n_head, x.shape[1]
    for layer, block in enumerate(model.blocks):
        h = block.ln1(x)
        final = layer == len(model.blocks) - 1
        if final:
            k, v = F.linear(h, *plan.weights[layer]).split(C, dim=1)
            h, x = h[last], x[last]
            q = block.attn.query(h)
        else:
            k, v, q = F.linear(h, *plan.weights[layer]).split(C, dim=1)
        rows = []
        for b, (n, store) in enumerate(zip(sizes, stores)):
            c, m = store.length, 1 if final else n
            new = slice(ends[b] - n, ends[b])
            kv = store.kv[layer, :, :, : c + n]
            kv[0, :, c:] = k[new].view(n, n_head, -1).transpose(0, 1)
            kv[1, :, c:] = v[new].view(n, n_head, -1).transpose(0, 1)
            qb = q[b : b + 1] if final else q[new]
            y = plan.attend(qb.view(m, n_head, -1).transpose(0, 1), kv, c + n - m)
            rows.append(y.transpose(0, 1).reshape(m, -1))
        x = x + block.attn.resid_drop(block.attn.proj(torch.cat(rows)))
        x = x + block.mlp(block.ln2(x))
    for n, store in zip(sizes, stores):
        store.length += n
    return model.head(model.ln_f(x))


def _pick(
    logits: torch.Tensor,
    u: torch.Tensor | None,
    temperature: float | None,
    top_k: int | None,
    distances: np.ndarray | None = None,
) -> torch.Tensor:
    """Code choice from (B, K) code logits: argmax (or, with ``distances``, the minimum-Bayes-risk
    code of :mod:`vqnet.restore.decision`), or one draw per row by inverse CDF at ``u``.

    Drawing from pre-assigned uniforms, rather than from a shared generator stream, makes a
    position's draw independent of the batch and of the schedule it ran in.
    """
    if u is None:
        if distances is not None:
            return torch.from_numpy(bayes_choice(torch.softmax(logits.double(), dim=-1).cpu().numpy(), distances)[0])
        return logits.argmax(dim=-1)
    if temperature is not None:
        logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    cdf = torch.softmax(logits, dim=-1).cumsum(dim=-1)
    target = (u.to(cdf) * cdf[:, -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_max(logits.shape[-1] - 1)


def _uniforms(counts: list[int], seed: int | Sequence[int]) -> list[torch.Tensor]:
    """One uniform per lost position of each grid, from a torch.Generator per grid.

    An int ``seed`` gives grid k the seed ``seed + k``. A sequence gives one seed per grid, so a
    batched run can reproduce each grid's stand-alone result.
    """
    seeds = [seed + k for k in range(len(counts))] if isinstance(seed, int) else list(seed)
    if len(seeds) != len(counts):
        raise ValueError(f"got {len(seeds)} seeds for {len(counts)} grids")
    return [
        torch.rand(n, generator=torch.Generator().manual_seed(int(s)), dtype=torch.float64)
        for n, s in zip(counts, seeds)
    ]


def _check(
    model: GPT, K: int, sos: int, temperature: float | None, top_k: int | None, code_distances: np.ndarray | None
) -> None:
    """Refuse settings under which the result would not be taming's procedure."""
    cfg = model.config
    if not 0 < K <= cfg.vocab_size or not 0 <= sos < cfg.vocab_size:
        raise ValueError(
            f"need 0 < K <= vocab_size and 0 <= sos < vocab_size (K={K}, sos={sos}, vocab={cfg.vocab_size})"
        )
    if cfg.block_size < WINDOW * WINDOW:
        raise ValueError(f"block_size {cfg.block_size} is smaller than the {WINDOW}x{WINDOW} window")
    if cfg.n_unmasked or cfg.n_layer < 1:
        raise ValueError("the sliding window needs a causal GPT (n_unmasked=0) with at least one layer")
    if model.training:
        raise ValueError("put the GPT in eval mode: dropout would make concealment random")
    if temperature is not None and temperature <= 0 or top_k is not None and top_k < 1:
        raise ValueError("temperature must be > 0 and top_k >= 1")
    if code_distances is not None and (temperature is not None or top_k is not None):
        raise ValueError("code_distances chooses deterministically; drop temperature/top_k to use it")
    if code_distances is not None and np.shape(code_distances) != (K, K):
        raise ValueError(f"code_distances must be {K} x {K}, got {np.shape(code_distances)}")


def conceal_ar(
    model: GPT,
    items: Sequence[tuple[np.ndarray, np.ndarray]],
    K: int,
    sos: int,
    temperature: float | None = None,
    top_k: int | None = None,
    seed: int | Sequence[int] = 0,
    on_step: Callable[[ArStep], None] | None = None,
    code_distances: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Fill the lost positions of every ``(grid, lost)`` pair with the sliding-window GPT.

    The method is greedy (argmax over the first ``K`` logits) unless ``temperature`` or ``top_k``
    is given; then it samples, deterministically for a given ``seed`` (see :func:`_uniforms`).
    ``code_distances`` (K x K) replaces the argmax with the minimum-Bayes-risk choice
    (:mod:`vqnet.restore.decision`): our decision rule on the paper's model and window procedure.
    Lost positions may hold any placeholder, because they are never read before they are
    predicted. ``on_step`` sees every prediction, in schedule order rather than raster order.
    Returns new int64 grids, and the received positions are unchanged.
    """
    _check(model, K, sos, temperature, top_k, code_distances)
    grids = [_Grid(g, m, K, sos) for g, m in items]
    sampling = temperature is not None or top_k is not None
    uniforms = _uniforms([len(g.lost_flat) for g in grids], seed) if sampling else None

    # Every lost position as (grid, n-th lost), grouped by wavefront level: one forward per level.
    todo = [(k, n) for k, g in enumerate(grids) for n in range(len(g.lost_flat))]
    levels = np.array([grids[k].levels[n] for k, n in todo], dtype=np.int64)
    order = np.argsort(levels, kind="stable")
    steps = np.split(order, np.flatnonzero(np.diff(levels[order])) + 1) if len(order) else []
    stores = _Stores(model, grids)
    with torch.inference_mode():
        plan = _Plan(model)
        for step in steps:
            rows = [todo[r] for r in step]
            row_stores = [stores.take((k, *grids[k].window_start(n))) for k, n in rows]
            inputs = [grids[k].inputs(n, store.length) for (k, n), store in zip(rows, row_stores)]
            logits = _extend(plan, [t for t, _ in inputs], [p for _, p in inputs], row_stores)
            u = None if uniforms is None else torch.stack([uniforms[k][n] for k, n in rows])
            preds = _pick(logits[:, :K], u, temperature, top_k, code_distances).cpu().numpy()
            for b, (k, n) in enumerate(rows):
                g = grids[k]
                g.grid.flat[g.lost_flat[n]] = preds[b]
                if on_step is not None:
                    i, j = divmod(int(g.lost_flat[n]), g.grid.shape[1])
                    window = tuple(int(v) for v in g.windows[n])
                    on_step(ArStep(k, i, j, window, logits[b].cpu().numpy(), int(preds[b])))
    return [g.grid for g in grids]
