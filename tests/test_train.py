"""VQGAN training: the loss falls, and a resumed run continues exactly where it stopped."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from vqnet.codec.model import DDConfig, VQGANConfig
from vqnet.codec.train import TrainConfig, load_checkpoint, train_vqgan

TINY = VQGANConfig(embed_dim=8, n_embed=16, ddconfig=DDConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1,
                                                               attn_resolutions=(), resolution=32, z_channels=16))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Smooth synthetic photos (gradients + blobs), some greyscale and some smaller than the crop."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:56] / 48.0
    for i in range(6):
        c = rng.random((3, 3))
        img = np.stack([c[k, 0] + c[k, 1] * yy + c[k, 2] * xx for k in range(3)], -1)
        img = (np.clip(img / img.max(), 0, 1) * 255).astype(np.uint8)
        if i == 4:
            Image.fromarray(img[..., 0]).save(folder / f"{i}.png")  # greyscale
        elif i == 5:
            Image.fromarray(img[:20, :24]).save(folder / f"{i}.jpg")  # smaller than the crop: upscaled
        else:
            Image.fromarray(img).save(folder / f"{i}.png")
    return folder


def _log(path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_loss_falls(photos, tmp_path):
    cfg = TrainConfig(steps=60, batch=4, crop=32, lr=1e-3, restart_every=10, checkpoint_minutes=60)
    train_vqgan(photos, tmp_path / "run", cfg, TINY)
    l1 = [float(r["l1"]) for r in _log(tmp_path / "run" / "log.csv")]
    assert len(l1) == 60
    assert np.mean(l1[-10:]) < 0.8 * np.mean(l1[:5])


def test_resume_continues_the_same_run(photos, tmp_path):
    cfg = TrainConfig(steps=8, batch=2, crop=32, restart_every=3, checkpoint_minutes=0)
    straight = load_checkpoint(train_vqgan(photos, tmp_path / "a", cfg, TINY))
    half = TrainConfig(steps=4, batch=2, crop=32, restart_every=3, checkpoint_minutes=0)
    train_vqgan(photos, tmp_path / "b", half, TINY)
    with pytest.raises(FileExistsError):
        train_vqgan(photos, tmp_path / "b", cfg, TINY)  # refusing to overwrite without --resume
    resumed = load_checkpoint(train_vqgan(photos, tmp_path / "b", cfg, TINY, resume=True))
    assert resumed["step"] == straight["step"] == 8
    for k, v in straight["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    a, b = _log(tmp_path / "a" / "log.csv"), _log(tmp_path / "b" / "log.csv")
    assert [r["step"] for r in b] == [str(i) for i in range(1, 9)]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
