"""The index-mask channel (the paper's exact mask ratio): exact counts and the shape of each pattern."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vqnet.channel.loss import burst_lengths
from vqnet.channel.mask import IndexMask, mean_run


@settings(max_examples=60, deadline=None)
@given(
    loss=st.floats(0.0, 0.99),
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
    pattern=st.sampled_from(["iid", "burst", "block"]),
    size=st.integers(1, 9),
)
def test_exactly_round_r_n_lost(loss, h, w, seed, pattern, size):
    mask = IndexMask(loss, pattern, None if pattern == "iid" else size)
    lost = mask.draw((h, w), np.random.default_rng(seed))
    assert lost.shape == (h, w) and lost.dtype == bool
    assert int(lost.sum()) == round(loss * h * w) == mask.count(h * w)


def test_same_seed_same_mask_and_patterns_differ_in_shape():
    shape = (32, 48)
    draw = lambda m, s: m.draw(shape, np.random.default_rng(s))  # noqa: E731
    iid, burst, block = IndexMask(0.3), IndexMask(0.3, "burst", 8), IndexMask(0.3, "block", 4)
    assert np.array_equal(draw(iid, 1), draw(iid, 1)) and not np.array_equal(draw(iid, 1), draw(iid, 2))
    runs = {m.pattern: np.mean([mean_run(draw(m, s)) for s in range(20)]) for m in (iid, burst, block)}
    assert runs["iid"] < 2 < runs["block"] < runs["burst"]  # iid is scattered; bursts run along rows
    # block holes are squares: a lost cell's 4-neighbourhood is mostly lost too
    b = draw(block, 3)
    padded = np.pad(b, 1)
    neighbours = padded[:-2, 1:-1] & padded[2:, 1:-1]
    assert neighbours[b].mean() > 0.4 > neighbours[draw(iid, 3)].mean()
    assert len(burst_lengths(draw(burst, 4).ravel())) < len(burst_lengths(draw(iid, 4).ravel()))


@pytest.mark.parametrize(
    "args,needle",
    [
        ((1.0,), "outside"),
        ((0.2, "iid", 3), "no burst"),
        ((0.2, "block"), "needs a size"),
        ((0.2, "rows", 2), "not one of"),
    ],
)
def test_bad_masks(args, needle):
    with pytest.raises(ValueError, match=needle):
        IndexMask(*args)
