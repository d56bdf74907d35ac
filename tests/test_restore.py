"""Concealment baselines and the interface contract."""

from __future__ import annotations

import numpy as np
import pytest

from vqnet.entropy import Prior
from vqnet.restore import METHODS, RestoreContext, restore

CTX = RestoreContext(K=16, prior=Prior.from_counts(np.r_[1, 1, 50, np.ones(13)]))


def test_none_fills_most_frequent_and_keeps_received():
    grid = np.arange(20).reshape(4, 5) % 16
    lost = np.zeros((4, 5), bool)
    lost[1, 2] = lost[3, 4] = True
    out = restore("none", grid, lost, CTX)
    assert out[1, 2] == 2 and out[3, 4] == 2
    assert np.array_equal(out[~lost], grid[~lost])


def test_neighbor_copies_nearest_received():
    grid = np.array([[1, 1, 1, 9, 9, 9]] * 3)
    lost = np.zeros_like(grid, bool)
    lost[:, 1] = True  # nearest received: column 0 (dist 1) vs column 3 (dist 2)
    lost[:, 4] = True  # nearest: columns 3 and 5, both 9
    out = restore("neighbor", grid, lost, CTX)
    assert (out[:, 1] == 1).all() and (out[:, 4] == 9).all()


def test_neighbor_with_everything_lost_falls_back():
    out = restore("neighbor", np.zeros((3, 3), int), np.ones((3, 3), bool), CTX)
    assert (out == CTX.prior.most_frequent()).all()


@pytest.mark.parametrize("method", list(METHODS))
def test_no_loss_is_identity(method):
    grid = np.random.default_rng(0).integers(0, 16, (6, 7))
    assert np.array_equal(restore(method, grid, np.zeros_like(grid, bool), CTX), grid)


def test_unknown_method_and_shape_mismatch():
    with pytest.raises(ValueError, match="unknown restoration method"):
        restore("magic", np.zeros((2, 2), int), np.zeros((2, 2), bool), CTX)
    with pytest.raises(ValueError, match="same 2-D shape"):
        restore("none", np.zeros((2, 2), int), np.zeros((2, 3), bool), CTX)


def test_neighbor_beats_none_on_smooth_grids():
    """On a spatially correlated grid, copying a neighbour recovers far more lost indices."""
    rng = np.random.default_rng(3)
    grid = np.repeat(np.repeat(rng.integers(0, 16, (8, 8)), 4, axis=0), 4, axis=1)
    lost = rng.random(grid.shape) < 0.3
    acc = {m: (restore(m, grid, lost, CTX)[lost] == grid[lost]).mean() for m in ("none", "neighbor")}
    assert acc["neighbor"] > acc["none"] + 0.4
