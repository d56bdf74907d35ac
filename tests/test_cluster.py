"""`vqnet run --cluster local:2` (Ray): the serial run's results.csv byte for byte, also when a
worker process is killed mid-sweep; without Ray, one Error line (real subprocesses, tiny codec)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import save_tiny_sweep_inputs
from typer.testing import CliRunner

from vqnet.cli import app
from vqnet.journal import PARTIAL_NAME

# Adaptive trials (2 to 8 per point; here one point stops at 3, two run 8; `none` is the reference,
# since the stopping rule leaves the floor out), so the test also shows that which trials run does
# not depend on the order results come back in.
SCENARIO = """\
name: cl
seed: 11
images: {{source: {images}}}
K: [32]
packets: {{max_payload: 8, layout: interleaved}}
channel: {{model: gilbert, loss: [0.2, 0.4, 0.6], burst: [3]}}
methods: [none, neighbor]
compare_to: none
trials: {{min: 2, max: 8, precision: 0.03}}
"""
# Protection schemes (Reed-Solomon parity, ARQ, a scheme with fewer methods) on the same channel,
# adaptive too: the pool runs scheme trials as it runs K trials.
SCHEMES = """\
name: pr
seed: 5
images: {{source: {images}}}
packets: {{max_payload: 8, layout: interleaved}}
channel: {{model: gilbert, loss: [0.1, 0.5], burst: [3]}}
link: {{delay_s: 0.01}}
methods: [none, neighbor]
compare_to: none
trials: {{min: 2, max: 5, precision: 0.05}}
schemes:
  - {{name: plain, K: 32, methods: [none]}}
  - {{name: rs, K: 32, fec: {{parity: 0.5}}}}
  - {{name: arq, K: 32, arq: {{max_retransmissions: 2}}}}
"""
# A short sweep for the joined clusters, whose workers start inside the timed run.
JOINED = """\
name: jn
seed: 3
images: {{source: {images}}}
K: [32]
packets: {{max_payload: 8, layout: interleaved}}
channel: {{model: gilbert, loss: [0.3], burst: [3]}}
methods: [none, neighbor]
trials: 2
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("cluster")
    save_tiny_sweep_inputs(tmp, 3, (96, 112))
    (tmp / "s.yaml").write_text(SCENARIO.format(images=json.dumps(str(tmp / "images"))))
    (tmp / "p.yaml").write_text(SCHEMES.format(images=json.dumps(str(tmp / "images"))))
    (tmp / "j.yaml").write_text(JOINED.format(images=json.dumps(str(tmp / "images"))))
    return tmp


def _command(tmp: Path, out: str, *extra: str, scenario: str = "s.yaml") -> list[str]:
    return [
        sys.executable,
        "-m",
        "vqnet",
        "run",
        str(tmp / scenario),
        "--out",
        str(tmp / out),
        "--model",
        str(tmp / "tiny.safetensors"),
        "--quiet",
        *extra,
    ]


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="120")


@pytest.fixture(scope="module")
def serial(setup) -> bytes:
    res = subprocess.run(_command(setup, "serial"), env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    return (setup / "serial" / "cl" / "results.csv").read_bytes()


def _actors(root: int) -> list[int]:
    """Ray actor processes (their title names the actor class) under process ``root``."""
    parent = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent[int(entry.name)] = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found = []
    for pid in parent:
        p = pid
        while p in parent and p != root:
            p = parent[p]
        if p == root and pid != root:
            try:
                if b"_Worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(pid)
            except OSError:
                continue
    return found


def test_cluster_gives_the_serial_table(setup, serial):
    pytest.importorskip("ray")
    res = subprocess.run(
        _command(setup, "ray", "--cluster", "local:2"), env=_env(), capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr
    assert (setup / "ray" / "cl" / "results.csv").read_bytes() == serial
    trials = pd.read_csv(io.BytesIO(serial)).groupby("target_loss")["trial"].max()
    assert trials.min() < trials.max()  # the adaptive rule stopped some points early


def test_cluster_runs_protection_schemes_as_the_serial_sweep(setup):
    pytest.importorskip("ray")
    tables = []
    for out, extra in (("pr-serial", ()), ("pr-ray", ("--cluster", "local:2"))):
        res = subprocess.run(
            _command(setup, out, *extra, scenario="p.yaml"), env=_env(), capture_output=True, text=True, timeout=600
        )
        assert res.returncode == 0, res.stderr
        tables.append([(setup / out / "pr" / f).read_bytes() for f in ("results.csv", "protection.csv")])
    assert tables[0] == tables[1]
    results = pd.read_csv(io.BytesIO(tables[0][0]))
    assert list(dict.fromkeys(results["scheme"])) == ["plain", "rs", "arq"]
    assert results["packets_recovered"].sum() > 0 and results["retransmissions"].sum() > 0
    trials = results.groupby(["scheme", "target_loss"])["trial"].max()
    assert trials.min() < trials.max()  # the adaptive rule stopped some points early


def test_killed_worker_still_gives_the_complete_serial_table(setup, serial):
    pytest.importorskip("ray")
    partial = setup / "kill" / "cl" / PARTIAL_NAME
    proc = subprocess.Popen(
        _command(setup, "kill", "--cluster", "local:2"),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300  # a guard against hanging, not a timing assertion
    while not (partial.is_file() and partial.read_bytes().count(b"\n") >= 1 + 2):
        assert proc.poll() is None, f"sweep ended before a worker could be killed: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "no trial was journalled"
        time.sleep(0.01)
    victims = _actors(proc.pid)
    assert victims and proc.poll() is None, "no worker to kill, or the sweep finished first"
    os.kill(victims[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert (setup / "kill" / "cl" / "results.csv").read_bytes() == serial
    assert not partial.exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    """A real Ray head on this machine (``ray start --head``, with a Ray Client server), as a user
    would leave one for ``--cluster auto`` or ``ray://``: (GCS address, client address). Token
    authentication is off for it (Ray 2.5x turns it on by default; the drivers then need the
    token file). Stopped at the end by killing its process group: ``ray stop`` would stop every
    Ray instance on the machine, other sessions' included."""
    pytest.importorskip("ray")
    ray_cli = Path(sys.executable).with_name("ray")
    if not ray_cli.is_file():
        pytest.skip("the ray command is not installed beside this Python")
    gcs, client = _free_port(), _free_port()
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = dict(_env(), RAY_AUTH_MODE="disabled")
    head = subprocess.Popen(
        [
            str(ray_cli),
            "start",
            "--head",
            f"--port={gcs}",
            f"--ray-client-server-port={client}",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp}",
        ],
        env=env,
        start_new_session=True,  # the head's daemons stay in this process group
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, err = head.communicate(timeout=120)
        assert head.returncode == 0, err
        yield f"127.0.0.1:{gcs}", f"ray://127.0.0.1:{client}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


def test_joined_cluster_gives_the_serial_table(setup, ray_head):
    """``--cluster auto`` (RAY_ADDRESS names the head) and ``--cluster ray://`` (Ray Client) join
    a running cluster, ship this checkout's vqnet to its workers, and write the serial table."""
    gcs, client = ray_head
    env = dict(_env(), RAY_AUTH_MODE="disabled", RAY_ADDRESS=gcs)
    runs = {"serial": (), "auto": ("--cluster", "auto")}
    if importlib.util.find_spec("grpc") is not None:  # Ray Client is the `ray[client]` extra
        runs["client"] = ("--cluster", client)
    tables = []
    for out, extra in runs.items():
        res = subprocess.run(
            _command(setup, out, *extra, scenario="j.yaml"), env=env, capture_output=True, text=True, timeout=300
        )
        assert res.returncode == 0, res.stderr
        tables.append((setup / out / "jn" / "results.csv").read_bytes())
    assert all(t == tables[0] for t in tables[1:])


def test_without_ray_cluster_is_one_error_line(setup, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where Ray is not installed
    result = CliRunner().invoke(app, _command(setup, "noray", "--cluster", "local:2")[3:])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0] == "Error: --cluster needs Ray, an optional extra: pip install 'vqnet[ray]'"
    bad = CliRunner().invoke(app, _command(setup, "noray", "--cluster", "local:0")[3:])
    assert bad.exit_code == 2 and "--cluster must be local, local:N" in bad.output
