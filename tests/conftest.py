"""Shared test helpers: where ../shared is, and skipping cleanly when it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test with the reason if it is not there."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not found: these tests need the read-only ../shared folder beside the repo")
    return p


def tiny_model():
    """A randomly initialised f=4 VQModel (the shape of the taming tiny fixture): fast enough for
    tests that exercise wiring rather than image quality."""
    import torch

    from vqnet.codec.model import DDConfig, VQGANConfig, VQModel

    torch.manual_seed(0)
    cfg = VQGANConfig(
        embed_dim=8,
        n_embed=32,
        ddconfig=DDConfig(
            ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,), resolution=32, z_channels=16
        ),
    )
    return VQModel(cfg).eval()
