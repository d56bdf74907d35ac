"""Exact index loss: the paper's masking experiment (Mao et al., DCC 2024, Fig. 5).

A packet channel loses a random *number* of indices, so a point labelled "30 %" scatters around it.
The paper instead masks a fixed fraction of the grid; :class:`IndexMask` draws exactly
``round(loss * N)`` lost positions of an ``N``-cell grid, in one of three shapes:

- ``iid``: positions drawn uniformly without replacement;
- ``burst``: runs along raster order with geometric lengths of mean ``size`` (a packet's worth of
  contiguous indices, as a raster layout loses them);
- ``block``: square holes of ``size`` x ``size`` cells (a region of the picture, as an erased tile).

Runs and squares may overlap and are placed until the count is reached; the last one is cut short
so the count is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from vqnet.channel.loss import burst_lengths

Pattern = Literal["iid", "burst", "block"]
PATTERNS: tuple[str, ...] = ("iid", "burst", "block")


@dataclass(frozen=True)
class IndexMask:
    """Lose exactly ``round(loss * N)`` of a grid's ``N`` indices, in the given pattern."""

    loss: float
    pattern: Pattern = "iid"
    size: float | None = None  # burst: mean run length; block: side of the square holes (cells)

    def __post_init__(self) -> None:
        if not 0.0 <= self.loss < 1.0:
            raise ValueError(f"index loss {self.loss} is outside [0, 1)")
        if self.pattern not in PATTERNS:
            raise ValueError(f"pattern {self.pattern!r} is not one of {', '.join(PATTERNS)}")
        if self.pattern == "iid" and self.size is not None:
            raise ValueError("pattern iid takes no burst/block size")
        if self.pattern != "iid" and (self.size is None or self.size < 1):
            raise ValueError(f"pattern {self.pattern} needs a size >= 1 (the scenario's 'burst')")

    @property
    def name(self) -> str:
        return f"mask-{self.pattern}"

    @property
    def expected_loss(self) -> float:
        return self.loss

    def count(self, n: int) -> int:
        """How many of ``n`` indices are lost: the paper's mask ratio, rounded half to even."""
        return int(round(self.loss * n))

    def draw(self, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
        """A boolean grid of ``shape`` with exactly :meth:`count` ``True`` (lost) cells."""
        h, w = shape
        n = h * w
        need = self.count(n)
        lost = np.zeros(n, dtype=bool)
        if self.pattern == "iid":
            lost[rng.choice(n, size=need, replace=False)] = True
            return lost.reshape(h, w)
        have = 0
        while have < need:
            if self.pattern == "burst":
                start = int(rng.integers(n))
                cells = np.arange(start, min(n, start + int(rng.geometric(1.0 / self.size))))
            else:
                side_y, side_x = min(int(self.size), h), min(int(self.size), w)
                y, x = int(rng.integers(h - side_y + 1)), int(rng.integers(w - side_x + 1))
                cells = ((y + np.arange(side_y))[:, None] * w + x + np.arange(side_x)[None, :]).ravel()
            new = cells[~lost[cells]][: need - have]
            lost[new] = True
            have += len(new)
        return lost.reshape(h, w)


def mean_run(lost: np.ndarray) -> float:
    """Mean length of the runs of lost indices in raster order (nan when nothing is lost)."""
    runs = burst_lengths(np.asarray(lost, dtype=bool).ravel())
    return float(runs.mean()) if len(runs) else float("nan")
