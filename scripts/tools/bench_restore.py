"""Benchmark of model-based concealment on this machine's CPU: seconds per 1000 lost tokens and
milliseconds per grid (image), for ``ar`` (the paper's sliding-window GPT) and ``masked`` (ours).

This is not a test. The weights are random, which does not matter for timing: every method
does the same work whatever the weights. Each configuration (one line of output) conceals the
same batch of grids ``--reps`` times and reports the median. The other runs are printed as well,
because a loaded machine makes single runs noisy.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/tools/bench_restore.py --threads 1
    OMP_NUM_THREADS=2 .venv/bin/python scripts/tools/bench_restore.py --threads 2 --layers 4 8 --batch 1 8

``ar``'s cost grows with the number of lost tokens (one prediction each); ``masked`` runs a fixed
number of passes over the windows that hold holes, so its cost is per image. To add a method,
write ``bench_<name>(model, items, K)`` and list it in ``METHODS``.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from vqnet.restore.gpt import GPT, GPTConfig
from vqnet.restore.masked import conceal_masked
from vqnet.restore.sliding import conceal_ar

Items = list[tuple[np.ndarray, np.ndarray]]


def bench_ar(model: GPT, items: Items, K: int) -> None:
    """Greedy sliding-window concealment of every grid in one batched call; the SOS is id K."""
    conceal_ar(model, items, K=K, sos=K)


def bench_masked(model: GPT, items: Items, K: int) -> None:
    """Confidence-ordered masked concealment (default passes) of every grid in one batched call,
    with the neighbour-context evidence and minimum-Bayes-risk choice ``vqnet`` adds (random
    tables of the real shapes)."""
    conceal_masked(
        model, items, K=K, neighbour_log_ratios=random_log_ratios(K), code_distances=np.abs(random_log_ratios(K))
    )


@functools.cache
def random_log_ratios(K: int) -> np.ndarray:
    """(K, K) random numbers: the shape and cost of the real tables."""
    return np.random.default_rng(0).normal(0.0, 1.0, (K, K))


METHODS: dict[str, Callable[[GPT, Items, int], None]] = {"ar": bench_ar, "masked": bench_masked}


def make_model(layers: int, embd: int, heads: int, vocab: int, block: int, causal: bool) -> GPT:
    """A randomly initialised GPT, in eval mode; ``causal=False`` gives the bidirectional variant."""
    torch.manual_seed(0)
    cfg = GPTConfig(
        vocab_size=vocab, block_size=block, n_layer=layers, n_head=heads, n_embd=embd, n_unmasked=0 if causal else block
    )
    return GPT(cfg).eval()


def make_items(shape: tuple[int, int], loss: float, batch: int, K: int, seed: int) -> Items:
    """``batch`` grids of random codes, each with an i.i.d. loss mask of rate ``loss``."""
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, K, shape), rng.random(shape) < loss) for _ in range(batch)]


def time_runs(fn: Callable[[], None], reps: int) -> list[float]:
    """Wall-clock seconds of ``reps`` calls of ``fn``."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def parse_grid(text: str) -> tuple[int, int]:
    """'32x48' -> (32, 48), as (rows, columns)."""
    h, w = text.lower().split("x")
    return int(h), int(w)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")
    p.add_argument("--layers", type=int, nargs="+", default=[4])
    p.add_argument("--embd", type=int, nargs="+", default=[128])
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=257, help="K codes + 1 SOS id")
    p.add_argument("--block", type=int, default=256)
    p.add_argument("--grid", type=parse_grid, nargs="+", default=[(32, 48)], help="rows x columns, e.g. 32x48")
    p.add_argument("--loss", type=float, nargs="+", default=[0.5])
    p.add_argument("--batch", type=int, nargs="+", default=[1], help="grids concealed in one call")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    K = args.vocab - 1
    print(f"torch {torch.__version__}, {args.threads} thread(s); times are per 1000 lost tokens, median of {args.reps}")
    for method, layers, embd in itertools.product(args.methods, args.layers, args.embd):
        model = make_model(layers, embd, args.heads, args.vocab, args.block, causal=method == "ar")
        for grid, loss, batch in itertools.product(args.grid, args.loss, args.batch):
            items = make_items(grid, loss, batch, K, args.seed)
            lost = sum(int(m.sum()) for _, m in items)
            runs = time_runs(lambda: METHODS[method](model, items, K), args.reps)
            per_1000 = [1000 * t / max(lost, 1) for t in runs]
            per_grid_ms = 1000 * statistics.median(runs) / batch
            print(
                f"{method:6s} L{layers} d{embd} h{args.heads} V{args.vocab}  grid {grid[0]}x{grid[1]}"
                f" loss {loss:.2f} batch {batch:2d}  {lost:5d} lost:  {statistics.median(per_1000):7.2f} s/1000 lost"
                f"  {per_grid_ms:8.0f} ms/grid  (runs {' '.join(f'{x:.2f}' for x in per_1000)})",
                flush=True,
            )


if __name__ == "__main__":
    main()
