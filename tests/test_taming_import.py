"""Official taming VQGAN checkpoints become vqnet codecs (`vqnet codebook kmeans --config`).

The real ImageNet weights cannot be downloaded here, so the checkpoints are official-shaped:
the key list of ``shared/fixtures/taming/keys_vqgan_f16_16384.json`` (random weights) in
Lightning's layout, ``loss.*`` keys and a ``callbacks`` entry keyed by Lightning's ModelCheckpoint
class included. CI runs the quick path: the same keys at a quarter of the width. The full-size
test is marked ``slow`` (``pytest -m slow``).
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import shared_path
from PIL import Image
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from vqnet.cli import app
from vqnet.codec.bundle import CodecError, load_codec
from vqnet.codec.model import VQGANConfig, VQModel
from vqnet.codec.taming import load_taming_checkpoint

#: The official f16-16384 layout at a quarter of the width (ch 32, z 64, embed_dim 32), codebook
#: kept at 16384 codes so the chunked distance paths run.
QUICK = {"ch": 32, "z_channels": 64, "embed_dim": 32}


def official_keys() -> dict:
    return json.loads(shared_path("fixtures", "taming", "keys_vqgan_f16_16384.json").read_text())


def official_config(official: dict, **width: int) -> dict:
    """The fixture's config as taming's model.yaml has it (``model.params``), narrowed by ``width``."""
    params = json.loads(json.dumps(official["config"]))
    params.pop("quantizer")
    if "embed_dim" in width:
        params["embed_dim"] = width["embed_dim"]
    params["ddconfig"] |= {k: v for k, v in width.items() if k != "embed_dim"}
    params["lossconfig"] = {
        "target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
        "params": {"disc_conditional": False, "disc_in_channels": 3, "disc_start": 0},
    }
    return {"model": {"base_learning_rate": 4.5e-6, "target": "taming.models.vqgan.VQModel", "params": params}}


def lightning_checkpoint(path: Path, model: VQModel, official: dict, full_loss_shapes: bool) -> None:
    """``model`` saved as a taming Lightning ``last.ckpt``: ``loss.*`` keys between ``decoder.*`` and
    ``quantize.*`` (full shapes, or one number each to save time), optimiser state, and a
    ``callbacks`` dict keyed by a class named pytorch_lightning...ModelCheckpoint, as checkpoints of
    that Lightning era pickle it (Lightning itself is not installed, and need not be)."""
    loss = {
        e["key"]: torch.zeros(e["shape"] if full_loss_shapes else [1]) for e in official["checkpoint_loss_keys_derived"]
    }
    sd: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if key.startswith("quantize.") and not any(k.startswith("loss.") for k in sd):
            sd |= loss
        sd[key] = value
    name = "pytorch_lightning.callbacks.model_checkpoint"
    callback = type("ModelCheckpoint", (), {"__module__": name})
    packages = [name.rsplit(".", n)[0] for n in (2, 1, 0)]
    for package in packages:
        sys.modules[package] = types.ModuleType(package)
    sys.modules[name].ModelCheckpoint = callback
    try:
        torch.save(
            {
                "epoch": 3,
                "global_step": 1234,
                "pytorch-lightning_version": "1.0.8",
                "state_dict": sd,
                "callbacks": {callback: {"best_model_score": torch.tensor(0.5), "best_model_path": "x.ckpt"}},
                "optimizer_states": [{"state": {}, "param_groups": [{"lr": 4.5e-6, "params": [0]}]}],
                "lr_schedulers": [],
            },
            path,
        )
    finally:
        for package in packages:
            del sys.modules[package]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Two real training photos (one of them, and its mirror, per --images) and a 256-px test image."""
    folder = tmp_path_factory.mktemp("photos")
    train = sorted(shared_path("data", "train").rglob("*.jpg"))[:2]
    for f in train:
        (folder / f.name).write_bytes(f.read_bytes())
    return folder


def _import(tmp_path: Path, model: VQModel, official: dict, photos: Path, ks: str, full: bool) -> Path:
    ckpt, config, out = tmp_path / "last.ckpt", tmp_path / "model.yaml", tmp_path / "bundle.safetensors"
    lightning_checkpoint(ckpt, model, official, full_loss_shapes=full)
    config.write_text(yaml.safe_dump(official_config(official, **({} if full else QUICK))))
    result = CliRunner().invoke(
        app,
        [
            "codebook",
            "kmeans",
            "--checkpoint",
            str(ckpt),
            "--config",
            str(config),
            "--out",
            str(out),
            "--data",
            str(photos),
            "--ks",
            ks,
            "--images",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    return out


def _round_trip(tmp_path: Path, bundle: Path, K: int) -> np.ndarray:
    """One 256-px image through a .vqn file and back with the CLI; returns the decoded pixels."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:256, 0:256] / 256.0
    img = np.stack([np.sin(6 * yy + c) * np.cos(4 * xx - c) for c in range(3)], -1)
    img = ((img + 1) * 127.5 + rng.normal(0, 4, img.shape)).clip(0, 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "in.png")
    enc = CliRunner().invoke(
        app,
        [
            "encode",
            str(tmp_path / "in.png"),
            "-o",
            str(tmp_path / "x.vqn"),
            "--K",
            str(K),
            "--model",
            str(bundle),
            "--max-payload",
            "1000",
        ],
    )
    assert enc.exit_code == 0, enc.output
    dec = CliRunner().invoke(
        app, ["decode", str(tmp_path / "x.vqn"), "-o", str(tmp_path / "out.png"), "--model", str(bundle)]
    )
    assert dec.exit_code == 0 and "0 missing" in dec.output, dec.output
    return np.asarray(Image.open(tmp_path / "out.png"))


def _check_bundle(bundle: Path, model: VQModel, ks: list[int]) -> None:
    codec = load_codec(bundle)
    assert codec.ks == sorted(ks, reverse=True)
    assert codec.model.config == model.config and not any(k.startswith("loss.") for k in load_file(str(bundle)))
    for name, value in model.state_dict().items():  # fp16 bundle of exactly the imported weights
        torch.testing.assert_close(codec.model.state_dict()[name], value.half().float(), rtol=0, atol=0)
    for K in ks:
        cb = codec.codebook(K)
        assert cb.embedding.shape == (K, model.config.embed_dim) and cb.prior.context is not None
    assert codec.provenance["taming_checkpoint"] == "last.ckpt" and len(codec.provenance["checkpoint_sha256"]) == 64


def test_quick_official_layout_becomes_a_codec(tmp_path, monkeypatch, photos):
    monkeypatch.chdir(tmp_path)  # the latent cache goes to ./runs/prior-data
    official = official_keys()
    torch.manual_seed(0)
    model = VQModel(VQGANConfig.from_dict(official_config(official, **QUICK))).eval()
    assert list(model.state_dict()) == [e["key"] for e in official["keys"]]  # the official key layout
    bundle = _import(tmp_path, model, official, photos, "64,16", full=False)
    _check_bundle(bundle, model, [64, 16])
    out = _round_trip(tmp_path, bundle, 16)
    assert out.shape == (256, 256, 3)
    # the bundle is a codec like any other: a sweep (scenario's model) and an RD report (--model)
    scenario = {
        "name": "imported",
        "seed": 1,
        "images": {"source": str(tmp_path / "in.png")},
        "model": str(bundle),
        "K": [16],
        "packets": {"max_payload": 24, "layout": "interleaved"},
        "channel": {"model": "gilbert", "loss": [0.3], "burst": [4]},
        "methods": ["neighbor"],
        "trials": 1,
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(scenario))
    run = CliRunner().invoke(app, ["run", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "results"), "-q"])
    assert run.exit_code == 0, run.output
    assert (tmp_path / "results" / "imported" / "results.csv").is_file()
    report = CliRunner().invoke(
        app,
        [
            "eval",
            str(tmp_path / "in.png"),
            "--model",
            str(bundle),
            "--out",
            str(tmp_path / "eval"),
            "--no-dists",
            "--classical",
            "none",
            "-q",
        ],
    )
    assert report.exit_code == 0, report.output
    assert (tmp_path / "eval" / "compressai" / "vqnet.json").is_file()
    # the paper's fine-tune (VQ_Frozen) and a concealment transformer, on the GPU recipe's bf16 path
    tuned = tmp_path / "tuned.safetensors"
    finetune = CliRunner().invoke(
        app,
        [
            "codebook",
            "finetune",
            "--model",
            str(bundle),
            "--out",
            str(tuned),
            "--data",
            str(photos),
            "--ks",
            "16",
            "--steps",
            "2",
            "--batch",
            "2",
            "--crop",
            "64",
            "--perceptual-weight",
            "0",
            "--images",
            "1",
            "--bf16",
            "-q",
        ],
    )
    assert finetune.exit_code == 0, finetune.output
    codec = load_codec(tuned)
    assert codec.codebook(16).finetuned and codec.codebook(16).raw is not None and not codec.codebook(64).finetuned
    assert codec.provenance["finetune"]["bf16"] is True
    prior = CliRunner().invoke(
        app,
        [
            "train",
            "prior",
            "--kind",
            "masked",
            "--K",
            "16",
            "--model",
            str(tuned),
            "--data",
            str(photos),
            "--steps",
            "2",
            "--batch",
            "4",
            "--layers",
            "1",
            "--heads",
            "2",
            "--embd",
            "32",
            "--bf16",
            "--out",
            str(tmp_path / "prior"),
        ],
    )
    assert prior.exit_code == 0, prior.output
    assert (tmp_path / "tuned.masked.K16.safetensors").is_file()


@pytest.mark.slow
def test_full_size_official_checkpoint_becomes_a_codec(tmp_path, monkeypatch, photos):
    """76 M parameters, a 16384 x 256 codebook, the full loss.* keys (2.2 GB peak, ~2.5 min on 2 busy cores)."""
    monkeypatch.chdir(tmp_path)
    official = official_keys()
    torch.manual_seed(0)
    model = VQModel(VQGANConfig.from_dict(official["config"])).eval()
    assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == [
        (e["key"], e["shape"]) for e in official["keys"]
    ]
    bundle = _import(tmp_path, model, official, photos, "256,16", full=True)
    _check_bundle(bundle, model, [256, 16])
    assert _round_trip(tmp_path, bundle, 256).shape == (256, 256, 3)


def test_tiny_fixture_decodes_as_upstream_through_a_bundle(tmp_path, monkeypatch, photos):
    """The tiny taming VQGAN, imported from a Lightning checkpoint: its base rung (K=32, the
    codebook unchanged) encodes and decodes the fixture's inputs as upstream does."""
    monkeypatch.chdir(tmp_path)
    folder = shared_path("fixtures", "taming")
    meta = json.loads((folder / "tiny_vqgan.json").read_text())
    io = load_file(str(folder / "tiny_vqgan_io.safetensors"))
    model = VQModel(VQGANConfig.from_dict(meta["config"])).eval()
    model.load_state_dict(load_file(str(folder / "tiny_vqgan.safetensors")))
    torch.save({"state_dict": model.state_dict() | {"loss.logvar": torch.zeros(())}}, tmp_path / "last.ckpt")
    (tmp_path / "model.yaml").write_text(yaml.safe_dump({"model": {"params": meta["config"]}}))
    out = tmp_path / "tiny.safetensors"
    result = CliRunner().invoke(
        app,
        [
            "codebook",
            "kmeans",
            "--checkpoint",
            str(tmp_path / "last.ckpt"),
            "--config",
            str(tmp_path / "model.yaml"),
            "--out",
            str(out),
            "--data",
            str(photos),
            "--ks",
            "32,8",
            "--images",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    codec = load_codec(out)
    # the bundle stores fp16 weights: run the fixture's float32 model on them for the reference
    reference = VQModel(model.config).eval()
    reference.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    torch.set_num_threads(1)
    for case in ("square", "nonsquare"):
        x = io[f"x_{case}"]
        with torch.no_grad():
            _, _, idx = reference.encode(x)
            want = reference.decode_indices(idx)
        torch.testing.assert_close(idx, io[f"indices_{case}"], rtol=0, atol=0)  # fp16 keeps every code
        torch.testing.assert_close(want, io[f"dec_{case}"], atol=2e-2, rtol=0)
        for b in range(x.shape[0]):
            with torch.no_grad():
                latent = codec.model.encoder(x[b : b + 1])
                grid = torch.as_tensor(codec.quantize(latent, 32))
                got = codec.decode_vectors(codec.codebook(32).embedding[grid].permute(2, 0, 1)[None], 32)
            assert torch.equal(grid, io[f"indices_{case}"][b])
            torch.testing.assert_close(got, want[b : b + 1], atol=5e-5, rtol=1e-4)


def test_safetensors_state_dict_with_config_loads(tmp_path):
    folder = shared_path("fixtures", "taming")
    meta = json.loads((folder / "tiny_vqgan.json").read_text())
    sd = load_file(str(folder / "tiny_vqgan.safetensors"))
    save_file(sd | {"loss.discriminator.main.0.weight": torch.zeros(2, 3, 4, 4)}, str(tmp_path / "m.safetensors"))
    loaded = load_taming_checkpoint(tmp_path / "m.safetensors", {"model": {"params": meta["config"]}})
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in sd.items())


@pytest.mark.parametrize(
    "change, message",
    [
        ({"n_embed": 1024}, "quantize.embedding.weight is [16384, 32] in the checkpoint, [1024, 32] in the config"),
        ({"ddconfig": {"num_res_blocks": 1}}, "unexpected key"),
        ({"ddconfig": {"attn_resolutions": [8]}}, "50 unexpected key(s) (first encoder.down.4.attn.0.norm.weight)"),
        ({"ddconfig": {"attn_resolutions": [16, 32]}}, "missing (first encoder.down.3.attn.0.norm.weight)"),
        ({"ddconfig": {"colour": 3}}, "not a taming VQModel config"),
    ],
)
def test_config_weights_mismatch_is_one_error_line(tmp_path, change, message):
    official = official_keys()
    torch.manual_seed(0)
    model = VQModel(VQGANConfig.from_dict(official_config(official, **QUICK))).eval()
    lightning_checkpoint(tmp_path / "last.ckpt", model, official, full_loss_shapes=False)
    config = official_config(official, **QUICK)
    params = config["model"]["params"]
    params["ddconfig"] |= change.pop("ddconfig", {})
    params |= change
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(
        app,
        [
            "codebook",
            "kmeans",
            "--checkpoint",
            str(tmp_path / "last.ckpt"),
            "--config",
            str(tmp_path / "model.yaml"),
            "--out",
            str(tmp_path / "b.safetensors"),
        ],
    )
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.output
    assert not (tmp_path / "b.safetensors").exists()


def test_official_checkpoint_without_config_is_one_error_line(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "last.ckpt")
    result = CliRunner().invoke(
        app,
        ["codebook", "kmeans", "--checkpoint", str(tmp_path / "last.ckpt"), "--out", str(tmp_path / "b.safetensors")],
    )
    assert result.exit_code == 2 and result.output.startswith("Error: ") and "--config" in result.output


def test_other_pickled_objects_are_refused(tmp_path):
    """Only Lightning's bookkeeping classes become placeholders; any other global is refused."""

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"state_dict": {}, "hparams": Evil()}, tmp_path / "evil.ckpt")
    with pytest.raises(CodecError, match="weights_only"):
        load_taming_checkpoint(tmp_path / "evil.ckpt", VQGANConfig())


def test_lightning_hparams_and_the_legacy_format_load(tmp_path):
    """An ``argparse.Namespace`` of hyper-parameters (read as a placeholder) and torch's pre-1.6
    format (not memory-mappable) both give the state_dict."""
    import argparse

    from vqnet.codec.taming import read_state_dict

    sd = {"encoder.conv_in.bias": torch.arange(3.0)}
    torch.save({"state_dict": sd, "hparams": argparse.Namespace(lr=4.5e-6)}, tmp_path / "hparams.ckpt")
    torch.save({"state_dict": sd}, tmp_path / "legacy.ckpt", _use_new_zipfile_serialization=False)
    for name in ("hparams.ckpt", "legacy.ckpt"):
        assert torch.equal(read_state_dict(tmp_path / name)["encoder.conv_in.bias"], sd["encoder.conv_in.bias"])
