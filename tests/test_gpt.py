"""minGPT against the upstream taming fixtures: logits, state_dict layout, checkpoint loading."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import shared_path
from safetensors.torch import load_file

from vqnet.restore.gpt import GPT, GPTConfig, load_gpt_state, load_taming_transformer


@pytest.fixture(scope="module")
def tiny():
    """(model, meta, io) of the tiny_gpt fixture."""
    folder = shared_path("fixtures", "taming")
    meta = json.loads((folder / "tiny_gpt.json").read_text())
    model = load_gpt_state(load_file(str(folder / "tiny_gpt.safetensors")), GPTConfig.from_dict(meta["config"]))
    return model, meta, load_file(str(folder / "tiny_gpt_io.safetensors"))


def test_logits_match_upstream(tiny):
    model, _, io = tiny
    torch.set_num_threads(1)
    with torch.no_grad():
        logits = model(io["idx"])
    torch.testing.assert_close(logits, io["logits"], atol=1e-5, rtol=1e-5)


def test_explicit_arange_positions_equal_default(tiny):
    model, _, io = tiny
    T = io["idx"].shape[1]
    with torch.no_grad():
        assert torch.equal(model(io["idx"], torch.arange(T)), model(io["idx"]))


def test_state_dict_order_matches_tiny(tiny):
    model, meta, _ = tiny
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert ours == [(e["key"], e["shape"]) for e in meta["state_dict_keys"]]


def test_state_dict_matches_example_config():
    official = json.loads(shared_path("fixtures", "taming", "keys_gpt_example.json").read_text())
    with torch.device("meta"):
        model = GPT(GPTConfig.from_dict(official["config"]))
    buffers = {k for k, _ in model.named_buffers()}
    ours = [(k, list(v.shape), "buffer" if k in buffers else "parameter") for k, v in model.state_dict().items()]
    assert ours == [(e["key"], e["shape"], e["kind"]) for e in official["keys"]]
    assert len(ours) == official["num_tensors"]


def test_lightning_checkpoint_loads(tiny, tmp_path):
    """A Net2NetTransformer checkpoint: GPT weights under ``transformer.``, other stages ignored."""
    model, meta, io = tiny
    state = {f"transformer.{k}": v for k, v in model.state_dict().items()}
    state["first_stage_model.encoder.x"] = torch.randn(3, 3)
    state["cond_stage_model.y"] = torch.randn(2)
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "last.ckpt")
    loaded = load_taming_transformer(tmp_path / "last.ckpt", GPTConfig.from_dict(meta["config"]))
    assert not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(io["idx"]), io["logits"], atol=1e-5, rtol=1e-5)


def test_bare_state_dict_loads(tiny, tmp_path):
    model, meta, io = tiny
    torch.save(model.state_dict(), tmp_path / "gpt.pt")
    loaded = load_taming_transformer(tmp_path / "gpt.pt", GPTConfig.from_dict(meta["config"]))
    with torch.no_grad():
        assert torch.equal(loaded(io["idx"]), model(io["idx"]))


def test_wrong_config_is_refused(tiny):
    model, meta, _ = tiny
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_gpt_state(model.state_dict(), GPTConfig.from_dict(dict(meta["config"], n_embd=64)))


def test_too_long_sequence_is_refused(tiny):
    model, _, _ = tiny
    with pytest.raises(ValueError, match="exceeds block_size"):
        model(torch.zeros(1, model.config.block_size + 1, dtype=torch.long))
