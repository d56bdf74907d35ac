"""One job per output folder: a second `vqnet run`/`vqnet eval` on a held folder is refused in one
line naming the holder, or waits with --wait; a holder killed with SIGKILL leaves no stale lock.
Real processes and real flock, the shipped default model on one small image."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from vqnet.cli import app
from vqnet.errors import VqnetError
from vqnet.lock import LOCK_NAME, FolderBusy, job_folder, locked_folder
from vqnet.scenario import ScenarioError, parse_scenario

HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from vqnet.lock import locked_folder
    with locked_folder(Path(sys.argv[1])):
        print("held", flush=True)
        sys.stdin.read()  # holds until the test closes stdin (or kills it)
""")


def _hold(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline() == "held\n"
    return proc


@pytest.fixture
def scenario(tmp_path: Path) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "s.yaml").write_text(
        f"name: lk\nimages: {{source: {tmp_path / 'a.png'}}}\nmethods: [none]\n"
        "channel: {model: bernoulli, loss: [0.3]}\ntrials: 1\n"
    )
    return tmp_path / "s.yaml"


def _run(scenario: Path, *extra: str, **popen: object) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "vqnet", "run", str(scenario), "--out", str(scenario.parent / "out"), "-q", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        **popen,
    )


def test_second_run_is_refused_naming_the_holder_then_runs_after_the_holder_is_killed(scenario):
    holder = _hold(scenario.parent / "out" / "lk")
    refused = _run(scenario)
    _, err = refused.communicate(timeout=300)
    assert refused.returncode == 2 and err.count("\n") == 1
    assert err.startswith("Error: ") and f"pid {holder.pid} " in err and "--wait" in err
    assert not (scenario.parent / "out" / "lk" / "results.csv").exists()
    holder.kill()  # SIGKILL: the kernel drops the lock with the process, the file stays
    holder.wait()
    again = _run(scenario)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert (scenario.parent / "out" / "lk" / "results.csv").is_file()
    assert (scenario.parent / "out" / "lk" / LOCK_NAME).is_file()


def test_wait_blocks_until_the_holder_ends(scenario):
    holder = _hold(scenario.parent / "out" / "lk")
    waiting = _run(scenario, "--wait")
    assert waiting.stderr.readline().startswith(f"waiting for {scenario.parent / 'out' / 'lk'} (pid {holder.pid} ")
    assert waiting.poll() is None and not (scenario.parent / "out" / "lk" / "results.csv").exists()
    holder.stdin.close()  # the holder leaves its `with` block and exits normally
    holder.wait()
    assert waiting.wait(timeout=300) == 0, waiting.stderr.read()
    assert (scenario.parent / "out" / "lk" / "results.csv").is_file()


def test_eval_is_refused_while_its_folder_is_held(tmp_path):
    Image.fromarray(np.zeros((48, 64, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    with locked_folder(tmp_path / "out"):  # flock is per open file: this process conflicts with itself too
        res = CliRunner().invoke(
            app,
            [
                "eval",
                str(tmp_path),
                "--out",
                str(tmp_path / "out"),
                "--no-dists",
                "--classical",
                "none",
                "--ks",
                "16",
                "-q",
            ],
        )
    assert res.exit_code == 2 and f"pid {os.getpid()} " in res.output and "in use by another vqnet job" in res.output
    assert not (tmp_path / "out" / "rd.csv").exists()


def test_lock_is_released_when_the_block_ends_however_it_ends(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with locked_folder(tmp_path / "f"):
            with pytest.raises(FolderBusy):
                with locked_folder(tmp_path / "f"):
                    pass
            raise KeyboardInterrupt
    with locked_folder(tmp_path / "f") as folder:
        assert folder == tmp_path / "f"


@pytest.mark.parametrize("name", ["..", ".", "a/../..", "../x", "/abs"])
def test_an_output_name_that_leaves_out_is_refused(tmp_path, name):
    with pytest.raises(VqnetError, match="outside --out"):
        job_folder(tmp_path / "out", name)
    assert job_folder(tmp_path / "out", "a..b") == tmp_path / "out" / "a..b"


def test_a_killed_holder_never_blocks(tmp_path):
    holder = _hold(tmp_path / "f")
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with locked_folder(tmp_path / "f"):
        pass


@given(st.text(min_size=1, max_size=70))
def test_a_scenario_name_is_refused_or_lands_inside_out(name):
    try:
        parse_scenario({"name": name})
    except ScenarioError:
        return
    folder = job_folder(Path("/results"), name)
    assert folder.parent == Path("/results") and folder.name == name
