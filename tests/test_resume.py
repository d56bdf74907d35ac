"""`vqnet run` killed with SIGKILL mid-sweep and rerun: it skips the journalled trials and writes
the results.csv and summary.csv an uninterrupted run writes, byte for byte (real subprocesses, tiny
saved codec), also with adaptive trials, whose stopping rule reads the journalled rows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from conftest import save_tiny_sweep_inputs

from vqnet.journal import PARTIAL_NAME, read_line

SCENARIO = """\
name: resume
seed: 5
images: {{source: {images}}}
K: [32]
packets: {{max_payload: 8, layout: interleaved}}
channel: {{model: gilbert, loss: [0.1, 0.3, 0.5, 0.7], burst: [3]}}
methods: [none, neighbor]
compare_to: none
trials: {{min: 2, max: 6, precision: 0.02}}
examples: {{losses: [0.3]}}
"""
N_TRIALS = 2 * 4 * 6  # images x losses x max trials; each has one journal line and one row per method


def _command(tmp_path: Path, out: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "vqnet",
        "run",
        str(tmp_path / "s.yaml"),
        "--out",
        str(tmp_path / out),
        "--model",
        str(tmp_path / "tiny.safetensors"),
        "--quiet",
    ]


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="120")


def _setup(tmp_path: Path) -> None:
    save_tiny_sweep_inputs(tmp_path, 2, (40, 52))
    (tmp_path / "s.yaml").write_text(SCENARIO.format(images=json.dumps(str(tmp_path / "images"))))


def _run(tmp_path: Path, out: str) -> subprocess.CompletedProcess:
    res = subprocess.run(_command(tmp_path, out), env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    return res


def test_killed_sweep_resumes_to_the_same_table(tmp_path: Path) -> None:
    _setup(tmp_path)
    clean = _run(tmp_path, "clean")
    assert "resuming" not in clean.stdout
    expected = (tmp_path / "clean" / "resume" / "results.csv").read_bytes()
    expected_summary = (tmp_path / "clean" / "resume" / "summary.csv").read_bytes()
    stops = set(pd.read_csv(tmp_path / "clean" / "resume" / "summary.csv")["stop"])
    assert stops <= {"precision", "max"}
    assert not (tmp_path / "clean" / "resume" / PARTIAL_NAME).exists()  # removed once the tables are written

    partial = tmp_path / "killed" / "resume" / PARTIAL_NAME
    proc = subprocess.Popen(
        _command(tmp_path, "killed"), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300  # a guard against hanging, not a timing assertion
    while not (partial.is_file() and partial.read_bytes().count(b"\n") >= 1 + 3):
        assert proc.poll() is None, f"sweep ended before it could be killed: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "no trial was journalled"
        time.sleep(0.01)
    assert proc.poll() is None, "the sweep finished before the kill; make the scenario longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "resume" / "results.csv").exists()
    data = partial.read_bytes()
    journalled = [read_line(line) for line in data[: data.rfind(b"\n") + 1].splitlines()[1:]]  # minus a torn tail
    assert 3 <= len(journalled) < N_TRIALS

    resumed = _run(tmp_path, "killed")
    assert f"resuming: {len(journalled)} of at most {N_TRIALS} trials already done" in resumed.stdout
    folder = tmp_path / "killed" / "resume"
    assert (folder / "results.csv").read_bytes() == expected
    assert (folder / "summary.csv").read_bytes() == expected_summary
    assert not partial.exists()
    df = pd.read_csv(folder / "results.csv")
    assert len(df) == len(pd.read_csv(tmp_path / "clean" / "resume" / "results.csv"))
    assert not df.duplicated(["image", "target_loss", "trial", "method"]).any()
    # the journalled trials were skipped: their timings are the recorded ones, not new measurements
    timings = pd.read_csv(folder / "timings.csv")
    first = journalled[0]["timings"]
    assert list(timings["restore_ms"][:2]) == [float(f"{t['restore_ms']:.6g}") for t in first]
    assert list(timings["encode_ms"][:2]) == [float(f"{t['encode_ms']:.6g}") for t in first]
