"""The bundled weights are checked against vqnet/models/manifest.json before use, and no code path
unpickles arbitrary objects (every torch.load passes weights_only=True)."""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

import pytest
from conftest import tiny_model

from vqnet.codec import bundle
from vqnet.codec.bundle import Codebook, Codec, CodecError, load_codec, save_codec

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    model = tiny_model()
    path = tmp_path_factory.mktemp("m") / "m.safetensors"
    save_codec(Codec(model, {32: Codebook.from_model(model)}), path)
    return path.read_bytes()


@pytest.fixture
def bundled(tmp_path: Path, model_bytes: bytes, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A default model and its manifest in tmp_path, standing in for vqnet/models/."""
    model, manifest = tmp_path / "default.safetensors", tmp_path / "manifest.json"
    model.write_bytes(model_bytes)
    manifest.write_text(json.dumps({"default.safetensors": hashlib.sha256(model_bytes).hexdigest()}))
    monkeypatch.setattr(bundle, "DEFAULT_MODEL", model)
    monkeypatch.setattr(bundle, "MANIFEST", manifest)
    return model, manifest


def test_verified_default_loads(bundled: tuple[Path, Path], model_bytes: bytes) -> None:
    assert load_codec().model_id == hashlib.sha256(model_bytes).hexdigest()[:16]


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_tampered_or_truncated_default_is_refused(bundled: tuple[Path, Path], model_bytes: bytes, damage: str) -> None:
    model, _ = bundled
    data = bytearray(model_bytes)
    if damage == "flip":
        data[len(data) // 2] ^= 0x01  # inside the weights: safetensors itself would load it
    model.write_bytes(bytes(data) if damage == "flip" else bytes(data[:1000]))
    with pytest.raises(
        CodecError,
        match=r"tampered or truncated.*git checkout vqnet/models/default\.safetensors"
        r".*reinstall",
    ):
        load_codec()


def test_missing_default_or_manifest_is_a_clear_error(bundled: tuple[Path, Path]) -> None:
    model, manifest = bundled
    manifest.write_text(json.dumps({"other.safetensors": "0" * 64}))
    with pytest.raises(CodecError, match="no sha256 for default.safetensors"):
        load_codec()
    manifest.write_text("{not json")
    with pytest.raises(CodecError, match="manifest .* is unreadable"):
        load_codec()
    manifest.unlink()
    with pytest.raises(CodecError, match="manifest .* is missing.*reinstall"):
        load_codec()
    model.unlink()
    with pytest.raises(CodecError, match="not found.*git checkout vqnet/models/default.safetensors"):
        load_codec()


def test_explicit_path_is_not_checked_against_the_manifest(
    bundled: tuple[Path, Path], tmp_path: Path, model_bytes: bytes
) -> None:
    _, manifest = bundled
    manifest.unlink()
    (tmp_path / "mine.safetensors").write_bytes(model_bytes)
    assert load_codec(tmp_path / "mine.safetensors").model_id == hashlib.sha256(model_bytes).hexdigest()[:16]


def _torch_load_calls(tree: ast.AST) -> list[ast.Call]:
    """Calls of torch.load / load imported from torch, however they are spelled."""
    aliases = {
        a.asname or a.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "torch"
        for a in node.names
        if a.name == "load"
    }
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and (
            (
                isinstance(node.func, ast.Attribute)
                and node.func.attr == "load"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "torch"
            )
            or (isinstance(node.func, ast.Name) and node.func.id in aliases)
        )
    ]


def test_every_torch_load_passes_weights_only_true() -> None:
    sources = [p for d in ("vqnet", "scripts", "tests") for p in sorted((REPO / d).rglob("*.py"))]
    found = 0
    for path in sources:
        for call in _torch_load_calls(ast.parse(path.read_text(), str(path))):
            found += 1
            kw = {k.arg: k.value for k in call.keywords}
            ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
            assert ok, f"{path.relative_to(REPO)}:{call.lineno}: torch.load without weights_only=True"
    assert found >= 3  # bundle, train and weights load checkpoints: the scan does see them
    bad = ast.parse("import torch\nfrom torch import load as L\ntorch.load(p)\nL(p, weights_only=False)\n")
    assert len(_torch_load_calls(bad)) == 2  # the scanner catches both spellings
