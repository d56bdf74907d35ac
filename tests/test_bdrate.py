"""Bjøntegaard deltas of RD tables (the paper's Table 1) and the CompressAI results files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from vqnet.bdrate import BD_COLUMNS, bd_pair, bd_table, compressai_results
from vqnet.cli import app

COMMITTED = Path(__file__).resolve().parents[1] / "results" / "kodak-eval-colour" / "rd.csv"


def curve(codec: str, bpp: list[float], lpips: list[float], psnr: list[float] | None = None) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "codec": codec,
            "K": [1024, 256, 16][: len(bpp)],
            "bpp": bpp,
            "lpips": lpips,
            "psnr": psnr or [20.0 + 100 * b for b in bpp],
        }
    )


def test_known_shifts_give_known_deltas():
    anchor = curve("jpeg", [0.01, 0.02, 0.04], [0.80, 0.70, 0.62])
    same = bd_pair(curve("vqnet", [0.01, 0.02, 0.04], [0.80, 0.70, 0.62]), anchor)
    assert same["bd_rate_lpips_pct"] == pytest.approx(0, abs=1e-9) and same["bd_lpips"] == pytest.approx(0, abs=1e-12)
    # 20 % fewer bits for the same LPIPS (and PSNR) everywhere: BD-rate -20 %
    cheaper = bd_pair(
        curve("vqnet", [0.008, 0.016, 0.032], [0.80, 0.70, 0.62], [21.0, 22.0, 24.0]),
        anchor.assign(psnr=[21.0, 22.0, 24.0]),
    )
    assert cheaper["bd_rate_lpips_pct"] == pytest.approx(-20.0) and cheaper["bd_rate_psnr_pct"] == pytest.approx(-20.0)
    # LPIPS 0.01 lower at every rate: BD-LPIPS -0.01
    better = bd_pair(curve("vqnet", [0.01, 0.02, 0.04], [0.79, 0.69, 0.61]), anchor)
    assert better["bd_lpips"] == pytest.approx(-0.01) and better["bd_rate_lpips_pct"] < 0


def test_curves_without_a_common_lpips_range_have_no_bd_rate():
    row = bd_pair(
        curve("vqnet", [0.01, 0.02, 0.04], [0.59, 0.57, 0.56]), curve("jpeg", [0.01, 0.02, 0.04], [0.80, 0.70, 0.62])
    )
    assert math.isnan(row["bd_rate_lpips_pct"]) and row["lpips_overlap"] == 0
    assert row["bd_lpips"] < -0.05 and row["rate_overlap"] == 1


def test_table_pairs_every_vqnet_curve_with_every_anchor_and_the_ablation():
    rd = pd.concat(
        [
            curve("vqnet", [0.01, 0.02, 0.04], [0.6, 0.55, 0.5]),
            curve("vqnet-raw", [0.011, 0.02, 0.04], [0.62, 0.55, 0.5]),
            curve("jpeg", [0.01, 0.02, 0.04], [0.8, 0.7, 0.6]),
            curve("avif", [0.01, 0.02, 0.04], [0.7, 0.6, 0.55]),
        ]
    )
    table = bd_table(rd)
    assert list(table.columns) == BD_COLUMNS
    assert list(zip(table["test"], table["anchor"])) == [
        ("vqnet", "jpeg"),
        ("vqnet", "avif"),
        ("vqnet-raw", "jpeg"),
        ("vqnet-raw", "avif"),
        ("vqnet", "vqnet-raw"),
    ]
    assert (table["bd_lpips"] < 0).all()


def test_compressai_results_hold_each_curve_in_rising_rate():
    rd = curve("vqnet", [0.04, 0.02, 0.01], [0.5, 0.55, 0.6]).assign(ms_ssim=[0.7, 0.6, math.nan])
    doc = compressai_results(rd, "test")["vqnet"]
    assert doc["name"] == "vqnet" and doc["description"] == "test"
    assert doc["results"]["bpp"] == [0.01, 0.02, 0.04] and doc["results"]["lpips"] == [0.6, 0.55, 0.5]
    assert doc["results"]["K"] == [16, 256, 1024] and "ms-ssim-rgb" not in doc["results"]  # a gap: left out
    assert "psnr-rgb" in doc["results"]


def test_bd_command_on_the_committed_kodak_table(tmp_path):
    rd = tmp_path / "rd.csv"
    rd.write_bytes(COMMITTED.read_bytes())
    result = CliRunner().invoke(app, ["bd", str(rd)])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "bd.csv")
    assert set(table["anchor"]) == {"jpeg", "webp", "avif", "vqnet-raw"}
    assert (table["bd_lpips"] < 0).all()  # vqnet looks closer to the originals than each at equal rate
    # the committed companions are what this command writes
    committed = pd.read_csv(COMMITTED.parent / "bd.csv")
    assert np.allclose(committed.select_dtypes("number"), table.select_dtypes("number"), equal_nan=True)
    for name in ("vqnet", "vqnet-raw", "jpeg", "webp", "avif"):
        doc = json.loads((tmp_path / "compressai" / f"{name}.json").read_text())
        assert len(doc["results"]["bpp"]) == 3 and len(doc["results"]["lpips"]) == 3


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.csv"], "Error: cannot read RD table missing.csv"),
        (["RD", "--method", "spline"], "--method must be pchip"),
    ],
)
def test_bd_command_user_errors(tmp_path, args, message):
    (tmp_path / "rd.csv").write_text("codec,K\nvqnet,16\n")
    result = CliRunner().invoke(app, ["bd", *[str(tmp_path / "rd.csv") if a == "RD" else a for a in args]])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    bad = CliRunner().invoke(app, ["bd", str(tmp_path / "rd.csv")])
    assert bad.exit_code == 2 and bad.output.startswith("Error: ") and "no column 'bpp'" in bad.output
