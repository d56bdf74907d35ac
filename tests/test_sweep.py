"""The sweep wiring on a small real codec: determinism, pairing of methods, table contents."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vqnet.codec.bundle import Codebook, Codec
from conftest import tiny_model
from vqnet.entropy import Prior
from vqnet.images import NamedImage
from vqnet.plots import plot_examples, plot_lpips_vs_loss, summarize
from vqnet.scenario import parse_scenario
from vqnet.sweep import RESULT_COLUMNS, run_sweep, trial_seed, write_results


@pytest.fixture(scope="module")
def codec() -> Codec:
    model = tiny_model()
    cb = Codebook.from_model(model)
    cb.embedding = torch.randn(32, 8)  # spread codes so images use many of them
    cb.prior = Prior.from_counts(np.arange(32, 0, -1))
    return Codec(model, {32: cb})


@pytest.fixture(scope="module")
def images() -> list[NamedImage]:
    rng = np.random.default_rng(0)
    return [NamedImage(f"img{i}", rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)) for i in range(2)]


SCENARIO = {
    "name": "t", "seed": 7, "K": [32], "trials": 2, "packets": {"max_payload": 8, "layout": "interleaved"},
    "channel": {"model": "gilbert", "loss": [0.2, 0.6], "burst": [3]}, "methods": ["none", "neighbor"],
    "examples": {"losses": [0.6]},
}


def test_sweep_table_and_pairing(codec, images):
    out = run_sweep(parse_scenario(SCENARIO), codec, images)
    df = out.results
    assert list(df.columns) == RESULT_COLUMNS
    assert len(df) == 2 * 2 * 2 * 2  # images x losses x trials x methods
    assert (df["bytes_sent"] > 0).all() and (df["n_packets"] >= 5).all()
    # bpp counts every byte sent (headers included) over the original pixels
    assert np.allclose(df["bpp"], df["bytes_sent"] * 8 / (40 * 52))
    # both methods see the same channel realisation at each key
    key = ["image", "target_loss", "trial"]
    per_key = df.groupby(key)[["packets_lost", "index_loss"]].nunique()
    assert (per_key == 1).all().all()
    # received indices were not touched: with no lost index the methods agree exactly
    intact = df[df["index_loss"] == 0]
    assert (intact["lpips"] == intact["lossless_lpips"]).all()
    assert set(out.examples) == {("none", 0.6), ("neighbor", 0.6)}


def test_sweep_is_deterministic(codec, images, tmp_path):
    sc = parse_scenario(SCENARIO)
    a = write_results(run_sweep(sc, codec, images), tmp_path / "a")["results"].read_bytes()
    b = write_results(run_sweep(sc, codec, images), tmp_path / "b")["results"].read_bytes()
    assert a == b
    other = parse_scenario(dict(SCENARIO, seed=8))
    c = write_results(run_sweep(other, codec, images), tmp_path / "c")["results"].read_bytes()
    assert c != a


def test_trial_seed_is_stable_and_key_sensitive():
    assert trial_seed(1, "a", 256, 0.1, 4.0, 0) == trial_seed(1, "a", 256, 0.1, 4.0, 0)
    assert trial_seed(1, "a", 256, 0.1, 4.0, 0) != trial_seed(1, "a", 256, 0.1, 4.0, 1)
    assert 0 <= trial_seed(2**32 - 1, "x") < 2**63


def test_plots_and_summary(codec, images, tmp_path):
    out = run_sweep(parse_scenario(SCENARIO), codec, images)
    summary = summarize(out.results)
    assert set(summary["method"]) == {"none", "neighbor"} and (summary["n"] == 4).all()
    assert (summary["lpips_ci95"] >= 0).all()
    png = plot_lpips_vs_loss(out.results, tmp_path / "p.png", "t")
    ex = plot_examples(out, tmp_path / "e.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and ex is not None and ex.stat().st_size > 1000


def test_missing_k_fails_before_work(codec, images):
    from vqnet.codec.bundle import CodecError

    with pytest.raises(CodecError, match="K=64"):
        run_sweep(parse_scenario(dict(SCENARIO, K=[64])), codec, images)
