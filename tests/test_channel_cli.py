"""``vqnet channel stats`` through typer's CliRunner on the sub-app."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vqnet.cli.channel import app

TC = "tc qdisc add dev eth0 root netem loss"


def run(*args: str):
    return CliRunner().invoke(app, ["stats", *args])


def test_gilbert_json_report() -> None:
    result = run(
        "--model", "gilbert", "--loss", "0.3", "--burst", "4",
        "--packets", "100000", "--seed", "1", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert {
        "model", "params", "seed", "gmin", "n_packets", "n_lost", "loss_rate", "n_bursts",
        "mean_burst", "max_burst", "mean_gap", "burst_density", "gap_density",
        "expected_loss", "expected_mean_burst", "netem",
    } <= report.keys()  # fmt: skip
    assert report["model"] == "gilbert"
    assert report["params"]["p"] == pytest.approx(0.3 / 2.8)
    assert report["params"]["r"] == pytest.approx(0.25)
    assert report["n_packets"] == 100_000 and report["seed"] == 1
    assert report["loss_rate"] == pytest.approx(0.3, abs=0.01)
    assert report["mean_burst"] == pytest.approx(4.0, abs=0.2)
    assert report["expected_loss"] == pytest.approx(0.3)
    assert report["expected_mean_burst"] == pytest.approx(4.0)
    assert report["netem"] == f"{TC} gemodel 10.714286% 25%"


def test_text_report_shows_measured_expected_and_netem() -> None:
    result = run("--model", "bernoulli", "--loss", "0.1", "--packets", "2000")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("loss rate") and "0.1 expected" in line for line in lines)
    assert any(line.startswith("mean burst") and "1.11111 expected" in line for line in lines)
    assert lines[-1].endswith(f"{TC} random 10%")


def test_undefined_values_become_json_null() -> None:
    result = run("--model", "bernoulli", "--loss", "0", "--packets", "100", "--json")
    report = json.loads(result.stdout)
    assert report["n_lost"] == 0
    assert report["mean_burst"] is None and report["expected_mean_burst"] is None


@pytest.mark.parametrize(
    "args, fragment",
    [
        (("--model", "gilbert", "--loss", "0.7", "--burst", "2"), "need burst >= 2.333 packets"),
        (("--model", "gilbert", "--loss", "0.3"), "needs burst"),
        (("--model", "bernoulli", "--loss", "0.1", "--p13", "0.2"), "does not take p13"),
        (("--model", "wifi"), "unknown loss model 'wifi'"),
        (("--model", "state", "--p13", "0.6", "--p14", "0.6"), "p13 + p14"),
        (("--model", "bernoulli", "--loss", "0.1", "--packets", "0"), "--packets must be in [1, "),
        (("--model", "bernoulli", "--loss", "0.1", "--packets", "99999999999999"), "--packets must be in [1, "),
        (("--model", "bernoulli", "--loss", "0.1", "--seed", "-1"), "--seed must be >= 0"),
        (("--model", "bernoulli", "--loss", "1"), "--loss must be in [0, 1)"),
        (("--model", "trace", "--trace", "/dev/zero"), "not a regular file"),
    ],
)
def test_bad_parameters_exit_2_with_one_error_line(args: tuple[str, ...], fragment: str) -> None:
    result = run(*args)
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("Error: ") and fragment in lines[0]


def test_other_models_from_the_command_line(tmp_path: Path) -> None:
    trace = tmp_path / "trace.txt"
    trace.write_text("1 1 0 0\n")
    result = run("--model", "trace", "--trace", str(trace), "--packets", "400", "--json")
    report = json.loads(result.stdout)
    assert report["expected_loss"] == 0.5 and report["loss_rate"] == 0.5
    assert report["mean_burst"] == pytest.approx(2.0)
    assert report["params"] == {"source": str(trace)}
    assert report["netem"].startswith("#")

    ge = ("--p", "0.05", "--r", "0.3", "--loss-bad", "0.7", "--loss-good", "0.02")
    report = json.loads(run("--model", "gilbert_elliott", *ge, "--packets", "99", "--json").stdout)
    assert report["netem"] == f"{TC} gemodel 5% 30% 70% 2%"

    state = ("--p13", "0.05", "--p31", "0.2", "--p32", "0.3", "--p23", "0.4", "--p14", "0.02")
    report = json.loads(run("--model", "state", *state, "--packets", "99", "--json").stdout)
    assert report["netem"] == f"{TC} state 5% 20% 30% 40% 2%"


def test_bad_trace_file_is_one_error_line(tmp_path: Path) -> None:
    trace = tmp_path / "trace.txt"
    trace.write_text("0 1 7\n")
    result = run("--model", "trace", "--trace", str(trace))
    assert result.exit_code == 2
    assert result.stderr.strip() == f"Error: {trace}:1: expected 0/1 values, got '7'"


def test_help_texts() -> None:
    top = CliRunner().invoke(app, ["--help"])
    assert top.exit_code == 0 and "stats" in top.stdout
    result = run("--help")
    assert result.exit_code == 0
    for option in ("--model", "--loss", "--burst", "--p13", "--loss-bad", "--trace", "--json"):
        assert option in result.stdout
    assert "netem" in result.stdout
