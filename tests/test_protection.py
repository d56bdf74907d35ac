"""Schemes in the sweep: FEC and ARQ in the sender/receiver path, bytes per scheme, the comparison table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import random_images, tiny_codec

from vqnet.codec.bundle import Codec
from vqnet.fec import OVERHEAD
from vqnet.images import NamedImage
from vqnet.plots import plot_protection
from vqnet.protection import COLUMNS, crossovers, scheme_table, winners
from vqnet.scenario import ScenarioError, parse_scenario
from vqnet.sweep import run_sweep


@pytest.fixture(scope="module")
def codec() -> Codec:
    return tiny_codec()


@pytest.fixture(scope="module")
def images() -> list[NamedImage]:
    return random_images()


SCENARIO = {
    "name": "p",
    "seed": 3,
    "trials": 2,
    "packets": {"max_payload": 8, "layout": "interleaved"},
    "channel": {"model": "gilbert", "loss": [0.0, 0.3], "burst": [2]},
    "methods": ["none", "neighbor"],
    "link": {"rate_bps": 64000, "delay_s": 0.01, "deadline_s": 1.0},
    "schemes": [
        {"name": "plain", "K": 32, "methods": ["none"]},
        {"name": "rs", "K": 32, "fec": {"k": 4, "n": 6}},
        {"name": "arq", "K": 32, "arq": {"max_retransmissions": 2}},
    ],
    "examples": {"losses": [0.3]},
}


@pytest.fixture(scope="module")
def results(codec, images) -> pd.DataFrame:
    return run_sweep(parse_scenario(SCENARIO), codec, images).results


def by(results: pd.DataFrame, scheme: str, loss: float) -> pd.DataFrame:
    return results[(results["scheme"] == scheme) & (results["target_loss"] == loss)]


def test_each_scheme_runs_its_own_methods(results) -> None:
    assert set(results[results["scheme"] == "plain"]["method"]) == {"none"}
    assert set(results[results["scheme"] == "rs"]["method"]) == {"none", "neighbor"}
    assert len(results) == 2 * 2 * 2 * (1 + 2 + 2)  # images x losses x trials x methods


def test_schemes_meet_the_same_channel(codec, images) -> None:
    twins = SCENARIO | {"schemes": [{"name": "a", "K": 32}, {"name": "b", "K": 32}], "trials": 1}
    df = run_sweep(parse_scenario(twins), codec, images).results
    a, b = (df[df["scheme"] == s].drop(columns="scheme").reset_index(drop=True) for s in ("a", "b"))
    pd.testing.assert_frame_equal(a, b)


def test_bytes_are_accounted_per_scheme(results) -> None:
    plain, rs, arq = (
        by(results, s, 0.3).set_index(["image", "trial"]).groupby(level=[0, 1]).first() for s in ("plain", "rs", "arq")
    )
    data_packets = plain["n_packets"]
    blocks = -(-data_packets // 4)
    assert (rs["parity_packets"] == 2 * blocks).all() and (rs["n_packets"] == data_packets + rs["parity_packets"]).all()
    assert (rs["bytes_sent"] > plain["bytes_sent"] + rs["parity_packets"] * OVERHEAD).all()  # parity counts in bpp
    assert (rs["bpp"] > plain["bpp"]).all()
    assert (arq["bytes_sent"] == plain["bytes_sent"]).all()  # first sends: the same packets
    assert (arq["retransmissions"] > 0).any()
    assert (arq["bytes_on_wire"] > arq["bytes_sent"]).any() and (arq["bytes_on_wire"] >= arq["bytes_sent"]).all()
    assert np.allclose(results["bpp_on_wire"], results["bytes_on_wire"] * 8 / (40 * 52))
    no_arq = results[results["scheme"] != "arq"]
    assert (no_arq["bytes_on_wire"] == no_arq["bytes_sent"]).all() and (no_arq["retransmissions"] == 0).all()


def test_zero_loss_means_no_repair_and_no_decode(results) -> None:
    clean = results[results["target_loss"] == 0.0]
    assert (clean["retransmissions"] == 0).all() and (clean["packets_recovered"] == 0).all()
    assert (clean["index_loss"] == 0).all() and (clean["lpips"] == clean["lossless_lpips"]).all()


def test_parity_repairs_what_the_channel_took(results) -> None:
    rs = by(results, "rs", 0.3)
    assert (rs["packets_recovered"] > 0).any()
    assert (rs.loc[rs["packets_lost"] == 0, "index_loss"] == 0).all()
    assert ((rs["packets_lost"] > 0) & (rs["index_loss"] == 0)).any()  # losses the receiver never saw


def test_the_comparison_table_and_plot(results, tmp_path) -> None:
    table = scheme_table(results)
    assert list(table.columns) == COLUMNS
    assert list(dict.fromkeys(table["scheme"])) == ["plain", "rs", "arq"]
    assert (table.loc[table["scheme"] == "plain", "method"] == "none").all()
    assert table.loc[table["scheme"] == "plain", "diff"].isna().all()  # the reference scheme
    assert table.loc[table["scheme"] != "plain", "diff"].notna().all()
    w = winners(table)
    assert list(w.index) == [0.0, 0.3] and set(w["best"]) <= {"plain", "rs", "arq"}
    assert all(" -> " in line for line in crossovers(table))
    assert plot_protection(table, tmp_path / "p.png", "t").stat().st_size > 0


@pytest.mark.parametrize(
    "extra, needle",
    [
        ({"K": [32]}, "give K in each scheme instead"),
        ({"packets": {"fec": {"parity": 0.2}}}, "give packets.fec in each scheme instead"),
        ({"schemes": [{"name": "a", "K": 32}, {"name": "a", "K": 32}]}, "same name"),
        ({"schemes": [{"name": "a", "K": 32, "methods": ["masked"]}]}, "not among the scenario's methods"),
        ({"schemes": [{"name": "a", "K": 32, "arq": {"return_delay_s": 2}}]}, "shorter than one round trip"),
        ({"channel": {"model": "mask", "loss": [0.1]}}, "mask channel loses indices"),
    ],
)
def test_bad_schemes_are_one_line_scenario_errors(extra, needle) -> None:
    with pytest.raises(ScenarioError, match=needle) as exc:
        parse_scenario(SCENARIO | extra)
    assert "\n" not in str(exc.value)


def test_summarize_rewrites_the_comparison_from_the_committed_table(tmp_path) -> None:
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "protection").mkdir()
    shutil.copy(root / "results" / "protection" / "results.csv", tmp_path / "protection" / "results.csv")
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "vqnet",
            "summarize",
            str(root / "scenarios" / "protection.yaml"),
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=root,
    )
    assert res.returncode == 0, res.stderr
    assert "between loss" in res.stdout and (tmp_path / "protection" / "protection.png").is_file()
    written = (tmp_path / "protection" / "protection.csv").read_bytes()
    assert written == (root / "results" / "protection" / "protection.csv").read_bytes()


@pytest.mark.parametrize("name", ["kodak-bursty", "protection"])
def test_summarize_reads_both_table_layouts(tmp_path, name) -> None:
    """An unprotected sweep's table (no scheme or protection columns, as committed before FEC) and a
    protected one both give back their committed summary.csv, byte for byte."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    (tmp_path / name).mkdir()
    shutil.copy(root / "results" / name / "results.csv", tmp_path / name / "results.csv")
    res = subprocess.run(
        [sys.executable, "-m", "vqnet", "summarize", str(root / "scenarios" / f"{name}.yaml"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=root,
    )
    assert res.returncode == 0, res.stderr
    assert (tmp_path / name / "summary.csv").read_bytes() == (root / "results" / name / "summary.csv").read_bytes()
