"""Training recipes (configs/*.yaml): the shipped ones describe the shipped models, a recipe's
values become the options' defaults with flags overriding them, and a bad recipe is one Error line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import tiny_model
from PIL import Image
from safetensors import safe_open
from typer.testing import CliRunner

from vqnet.cli import app
from vqnet.codec.bundle import Codebook, Codec, load_codec, save_codec
from vqnet.codec.model import VQGANConfig
from vqnet.entropy import Prior
from vqnet.restore.gpt import GPTConfig
from vqnet.training.loop import load_checkpoint
from vqnet.training.prior import PriorTrainConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIGS, MODELS = ROOT / "configs", ROOT / "vqnet" / "models"


def _recipe(name: str) -> dict:
    return yaml.safe_load((CONFIGS / name).read_text())


def _metadata(name: str) -> dict[str, str]:
    with safe_open(str(MODELS / name), "pt") as fh:
        return fh.metadata()


@pytest.mark.parametrize(
    ("recipe", "shipped"),
    [
        ("prior-ar-k256-corrupt.yaml", "default.ar.K256.safetensors"),
        ("prior-masked-k256.yaml", "default.masked.K256.safetensors"),
    ],
)
def test_concealer_recipes_are_the_shipped_concealers(recipe, shipped):
    r, meta = _recipe(recipe), _metadata(shipped)
    params = r["model"]["params"]
    cfg = PriorTrainConfig(
        kind=params["kind"],
        K=params["K"],
        n_layer=params["n_layer"],
        n_head=params["n_head"],
        n_embd=params["n_embd"],
        dropout=params["dropout"],
    )
    assert cfg.gpt_config() == GPTConfig.from_dict(json.loads(meta["config"]))
    trained = json.loads(json.loads(meta["provenance"])["train"])  # the shipped file's last stage
    settings = params | r["training"]
    for key in ("steps", "batch", "lr", "init", "corrupt", "dropout"):
        assert settings.get(key, False) == trained[key], key
    default = PriorTrainConfig(kind="ar", K=256)  # the CLI's and the config's defaults: the shipped size
    assert (default.n_layer, default.n_head, default.n_embd) == (params["n_layer"], params["n_head"], params["n_embd"])


def test_vqgan_recipe_is_the_shipped_codec():
    r = _recipe("vqgan-f16.yaml")
    shipped = VQGANConfig.from_dict(json.loads(_metadata("default.safetensors")["config"]))
    assert VQGANConfig.from_dict(r["model"]["params"]) == shipped
    trained = json.loads(_metadata("default.safetensors")["provenance"])["train_config"]
    assert all(r["training"][k] == trained[k] for k in ("steps", "batch", "crop", "lr", "seed"))
    assert _recipe("vqgan-f16-decoder.yaml")["training"]["init"] == "vqnet/models/default.safetensors"


def test_finetune_recipe_is_the_shipped_fine_tuning():
    r = _recipe("finetune-k64.yaml")
    tuned = json.loads(_metadata("default.safetensors")["provenance"])["finetune"]
    assert [int(k) for k in r["model"]["params"]["ks"].split(",")] == tuned["ks"]
    assert r["data"]["images"] == tuned["prior_images"]
    assert all(r["training"][k] == tuned[k] for k in ("steps", "batch", "crop", "lr", "perceptual_weight", "seed"))


@pytest.fixture
def tiny_setup(tmp_path, monkeypatch):
    """A saved tiny codec (K=32), two photos, and the test's folder as the working directory."""
    model = tiny_model()
    save_codec(Codec(model, {32: Codebook.from_model(model, Prior.uniform(32))}), tmp_path / "tiny.safetensors")
    (tmp_path / "photos").mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (72, 72, 3), dtype=np.uint8)).save(tmp_path / "photos" / f"{i}.png")
    monkeypatch.chdir(tmp_path)  # the latent cache goes to ./runs/prior-data
    return tmp_path


def test_a_prior_recipe_sets_the_options_and_flags_override_it(tiny_setup):
    recipe = {
        "model": {
            "target": "vqnet.restore.gpt.GPT",
            "params": {"kind": "masked", "K": 32, "n_layer": 1, "n_head": 2, "n_embd": 16, "dropout": 0.1},
        },
        "data": {"codec": "tiny.safetensors", "data": "photos"},
        "training": {"out": "run", "steps": 3, "batch": 2, "lr": 1.0e-3, "init": "taming"},
    }
    (tiny_setup / "r.yaml").write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(app, ["train", "prior", "--config", "r.yaml", "--steps", "2", "--embd", "32"])
    assert result.exit_code == 0, result.output
    saved = load_checkpoint(tiny_setup / "run" / "checkpoint.pt")["train_config"]
    assert saved["steps"] == 2 and saved["n_embd"] == 32  # the flags
    assert (saved["kind"], saved["K"], saved["n_layer"], saved["n_head"], saved["lr"]) == ("masked", 32, 1, 2, 1e-3)
    assert (saved["dropout"], saved["init"], saved["batch"]) == (0.1, "taming", 2)  # the recipe


def test_a_vqgan_recipe_gives_the_model_and_ch_overrides_it(tiny_setup):
    model = load_codec(tiny_setup / "tiny.safetensors").model.config.to_dict()
    recipe = {
        "model": {"target": "vqnet.codec.model.VQModel", "params": model},
        "data": {"data": "photos"},
        "training": {"out": "run", "steps": 1, "batch": 2, "crop": 32, "perceptual_weight": 0.0},
    }
    (tiny_setup / "r.yaml").write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(app, ["train", "vqgan", "--config", "r.yaml", "--n-embed", "8"])
    assert result.exit_code == 0, result.output
    state = load_checkpoint(tiny_setup / "run" / "checkpoint.pt")
    trained = VQGANConfig.from_dict(state["model_config"])
    assert trained.n_embed == 8 and trained.ddconfig == VQGANConfig.from_dict(model).ddconfig
    assert state["train_config"]["crop"] == 32 and state["step"] == 1


@pytest.mark.parametrize(
    ("command", "text", "message"),
    [
        ("prior", "training: {stepz: 3}\n", "unknown key training.stepz"),
        ("prior", "training: {steps: many}\n", "training.steps must be an integer, got 'many'"),
        ("prior", "training: {steps: 2.5}\n", "training.steps must be an integer"),
        ("prior", "training: {corrupt: 1}\n", "training.corrupt must be true or false"),
        ("prior", "model: {params: {n_layers: 2}}\n", "unknown key model.params.n_layers"),
        ("prior", "model: {target: vqnet.codec.model.VQModel}\n", "this command trains vqnet.restore.gpt.GPT"),
        ("prior", "optimizer: {lr: 1}\n", "unknown section 'optimizer'"),
        ("prior", "- a list\n", "must be a mapping"),
        ("prior", "training: [1, 2\n", "is not valid YAML"),
        ("prior", "model: {params: {kind: ar, K: 16}}\ntraining: {steps: 0}\n", "Invalid value for '--steps'"),
        ("vqgan", "model: {params: {embed_dim: 8, n_embed: 16, ddconfig: {ch: x}}}\n", "ddconfig.ch must be like"),
        ("vqgan", "model: {params: {embed_dim: 8, n_embed: 16}}\n", "is not a VQGAN config"),
        ("vqgan", "model: {params: {embed_dim: 8, n_embed: 16, ddconfig: {}, lossconfig: {}}}\n", "unknown key"),
        ("vqgan", None, "no such recipe file"),
        ("finetune", "model: {params: {ks: [64, 32]}}\n", "model.params.ks must be a string"),
        ("finetune", "model: {target: vqnet.restore.gpt.GPT}\n", "this command trains vqnet.codec.bundle.Codebook"),
    ],
)
def test_a_bad_recipe_is_one_error_line(tmp_path, command, text, message):
    path = tmp_path / "r.yaml"
    if text is not None:
        path.write_text(text)
    out = ["--out", str(tmp_path / "run")]
    args = (
        ["codebook", "finetune", "--model", "m.safetensors", *out]
        if command == "finetune"
        else ["train", command, *out]
    )
    result = CliRunner().invoke(app, [*args, "--config", str(path)])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert message in lines[0]
    assert not (tmp_path / "run").exists()


#: The command that reads a recipe, by the class it trains.
COMMANDS = {
    "vqnet.restore.gpt.GPT": ["train", "prior"],
    "vqnet.codec.model.VQModel": ["train", "vqgan"],
    "vqnet.codec.bundle.Codebook": ["codebook", "finetune"],
}


@pytest.mark.parametrize("recipe", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_every_shipped_recipe_is_accepted_by_its_command(tmp_path, recipe):
    """Each file in configs/ passes the recipe check; the run then stops, in one line, at the codec
    or photos it names, which do not exist here."""
    command = COMMANDS[_recipe(recipe)["model"]["target"]]
    missing = ["--model", str(tmp_path / "no.safetensors")] if command[1] != "vqgan" else []
    out = tmp_path / ("out.safetensors" if command[1] == "finetune" else "run")
    args = [*command, "--config", str(CONFIGS / recipe), "--data", str(tmp_path / "none"), "--out", str(out)]
    result = CliRunner().invoke(app, [*args, *missing])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "--config" not in lines[0], result.output
    assert "not found" in lines[0] or "no such" in lines[0]
