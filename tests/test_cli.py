"""The `vqnet` command end to end, as a user runs it (real subprocesses, the shipped default model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]


def vqnet(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="120")
    return subprocess.run(
        [sys.executable, "-m", "vqnet", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_help_lists_commands(tmp_path):
    res = vqnet("--help", cwd=tmp_path)
    assert res.returncode == 0
    for cmd in ("run", "encode", "decode", "eval", "channel", "score", "scenario", "train", "codebook"):
        assert cmd in res.stdout


def test_run_small_sweep_writes_table_and_plots(tmp_path):
    (tmp_path / "s.yaml").write_text(
        "name: smoke\nseed: 3\nimages: {names: [chelsea]}\nK: [256]\n"
        "channel: {model: gilbert, loss: [0.1, 0.7], burst: [4]}\nmethods: [none, neighbor]\ntrials: 2\n"
        "examples: {losses: [0.7]}\n"
    )
    res = vqnet("run", "s.yaml", "--quiet", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    folder = tmp_path / "results" / "smoke"
    for name in ("results.csv", "timings.csv", "lpips_vs_loss.png", "examples.png"):
        assert (folder / name).stat().st_size > 0, name
    df = pd.read_csv(folder / "results.csv")
    assert len(df) == 8 and set(df["method"]) == {"none", "neighbor"}
    mean = df.groupby(["method", "target_loss"])["lpips"].mean()
    assert mean["none", 0.7] > mean["none", 0.1]
    assert (df["lpips"] >= df["lossless_lpips"] - 0.05).all()
    first = (folder / "results.csv").read_bytes()
    assert vqnet("run", "s.yaml", "--quiet", cwd=tmp_path).returncode == 0
    assert (folder / "results.csv").read_bytes() == first  # same scenario + seed -> same table


@pytest.mark.parametrize(
    "content,needle",
    [
        ("name: x\nchannel: {model: gilbert, loss: [0.7], burst: [1.5]}\n", "infeasible"),
        ("name: x\ntrials: -1\n", "trials"),
        ("name: x\nK: [999]\n", "K=999"),
        ("name: [\n", "invalid YAML"),
    ],
)
def test_bad_scenario_is_one_line_exit_2_and_writes_nothing(tmp_path, content, needle):
    (tmp_path / "bad.yaml").write_text(content)
    res = vqnet("run", "bad.yaml", cwd=tmp_path)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and needle in lines[0]
    assert "Traceback" not in res.stderr and not (tmp_path / "results").exists()


def test_missing_scenario_file(tmp_path):
    res = vqnet("run", "nope.yaml", cwd=tmp_path)
    assert res.returncode == 2 and "not found" in res.stderr


def test_channel_stats_through_main_cli(tmp_path):
    res = vqnet(
        "channel",
        "stats",
        "--model",
        "gilbert",
        "--loss",
        "0.3",
        "--burst",
        "4",
        "--packets",
        "100000",
        "--seed",
        "1",
        "--json",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert abs(out["loss_rate"] - 0.3) < 0.01 and abs(out["mean_burst"] - 4) < 0.2
    assert out["netem"].endswith("loss gemodel 10.714286% 25%")


def test_scenario_check_and_schema(tmp_path):
    res = vqnet("scenario", "check", str(REPO / "scenarios" / "bursty.yaml"), cwd=tmp_path)
    assert res.returncode == 0 and "ok" in res.stdout
    schema = json.loads(vqnet("scenario", "schema", cwd=tmp_path).stdout)
    assert "channel" in schema["properties"]
