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


def tiny_codec(generator=None):
    """:func:`tiny_model` as a one-K codec (K=32) whose codes are spread out, so images use many
    of them, with a uniform-ish prior: what the sweep tests run trials on."""
    import numpy as np
    import torch

    from vqnet.codec.bundle import Codebook, Codec
    from vqnet.entropy import Prior

    model = tiny_model()
    cb = Codebook.from_model(model)
    cb.embedding = torch.randn(32, 8, generator=generator)
    cb.prior = Prior.from_counts(np.arange(32, 0, -1))
    return Codec(model, {32: cb})


def random_images(n: int = 2, size: tuple[int, int] = (40, 52)):
    """``n`` random RGB images named img0, img1, ... (seeded: the same pixels every run)."""
    import numpy as np

    from vqnet.images import NamedImage

    rng = np.random.default_rng(0)
    return [NamedImage(f"img{i}", rng.integers(0, 256, (*size, 3), dtype=np.uint8)) for i in range(n)]


def save_tiny_sweep_inputs(folder, n_images: int, size: tuple[int, int]):
    """A saved tiny codec (``folder/tiny.safetensors``, K=32) and ``n_images`` random photos of
    ``size`` (h, w) in ``folder/images``: what the subprocess sweep tests run ``vqnet run`` on."""
    import numpy as np
    import torch
    from PIL import Image

    from vqnet.codec.bundle import save_codec

    save_codec(tiny_codec(torch.Generator().manual_seed(3)), folder / "tiny.safetensors")
    rng = np.random.default_rng(4)
    (folder / "images").mkdir()
    for i in range(n_images):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / "images" / f"p{i}.png")
