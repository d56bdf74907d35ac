"""The concealers' faster inference paths hold the same bits as the plain maths, on the real bundled
``ar`` and ``masked`` transformers (docs/performance.md, "Concealment").

What changed is only how the same arithmetic is issued: the query, key and value Linears of a block
run as one GEMM, and ``ar``'s causal masks are slices of one table. Each test compares with
``torch.equal`` (every bit), never with a tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vqnet.codec.bundle import load_codec
from vqnet.restore import RestoreContext, restore
from vqnet.restore.masked import _position_ids
from vqnet.restore.sliding import _Plan

K = 256


@pytest.fixture(scope="module")
def codec():
    return load_codec(None)


@pytest.fixture(scope="module")
def concealers(codec):
    from vqnet.restore.store import load_concealer

    return {kind: load_concealer(codec, kind, K) for kind in ("ar", "masked")}


@pytest.mark.parametrize("kind", ["ar", "masked"])
def test_fused_projections_equal_the_three_linears(concealers, kind):
    """Row counts from 1 (``ar``'s last block reads one token) to a batch of nine 16x16 windows."""
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for block in concealers[kind].blocks:
            attn = block.attn
            for rows in [*range(1, 40), 137, 255, 600, 2304]:
                x = block.ln1(torch.randn(rows, attn.key.in_features, generator=gen))
                k, v, q = F.linear(x, *attn.fused("kvq")).split(attn.key.out_features, dim=1)
                assert torch.equal(k, attn.key(x)) and torch.equal(v, attn.value(x)) and torch.equal(q, attn.query(x))


def test_masked_inference_forward_equals_the_autograd_forward(concealers):
    """With autograd off the model fuses its projections; with it on it runs upstream's three
    Linears. Same logits, bit for bit, for the window shapes and batch sizes ``masked`` uses."""
    model = concealers["masked"]
    rng = np.random.default_rng(1)
    for (h, w), batch in [((16, 16), 1), ((16, 16), 9), ((16, 16), 4), ((12, 16), 3), ((5, 7), 2)]:
        idx = torch.from_numpy(rng.integers(0, K + 1, (batch, h * w)))
        pos = _position_ids(h, w)
        with torch.enable_grad():
            plain = model(idx, pos)
        with torch.inference_mode():
            fused = model(idx, pos)
        assert torch.equal(plain.detach(), fused)


def test_ar_mask_slices_equal_the_formula(concealers):
    plan = _Plan(concealers["ar"])
    for T in (1, 2, 17, 137, 256):
        for m in {1, T // 2 or 1, T}:
            first = T - m
            formula = torch.arange(T) <= first + torch.arange(m)[:, None]
            assert torch.equal(plan.seen[first : first + m, :T], formula)


def random_cases(rng: np.random.Generator, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    cases = []
    for _ in range(n):
        shape = [(32, 32), (32, 48), (24, 20), (12, 40), (5, 7)][rng.integers(5)]
        cases.append((rng.integers(0, K, shape), rng.random(shape) < rng.choice([0.1, 0.3, 0.6, 0.9])))
    return cases


def test_restore_methods_are_deterministic_with_the_bundled_concealers(codec):
    """The sweep's path (``restore``, one BLAS thread inside it): the same grid twice, and the
    received positions untouched."""
    prior = codec.codebook(K).prior
    for grid, lost in random_cases(np.random.default_rng(3), 1):
        ctx = RestoreContext(K, prior, 5, codec)
        for method in ("ar", "masked", "ar-mbr"):
            a, b = restore(method, grid, lost, ctx), restore(method, grid, lost, ctx)
            assert np.array_equal(a, b) and np.array_equal(a[~lost], grid[~lost])
