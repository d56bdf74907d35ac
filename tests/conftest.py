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


def save_tiny_sweep_inputs(folder, n_images: int, size: tuple[int, int]):
    """A saved tiny codec (``folder/tiny.safetensors``, K=32) and ``n_images`` random photos of
    ``size`` (h, w) in ``folder/images``: what the subprocess sweep tests run ``vqnet run`` on."""
    import numpy as np
    import torch
    from PIL import Image

    from vqnet.codec.bundle import Codebook, Codec, save_codec
    from vqnet.entropy import Prior

    model = tiny_model()
    cb = Codebook.from_model(model)
    cb.embedding = torch.randn(32, 8, generator=torch.Generator().manual_seed(3))
    cb.prior = Prior.from_counts(np.arange(32, 0, -1))
    save_codec(Codec(model, {32: cb}), folder / "tiny.safetensors")
    rng = np.random.default_rng(4)
    (folder / "images").mkdir()
    for i in range(n_images):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / "images" / f"p{i}.png")
