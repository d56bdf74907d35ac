"""Image loading: names that cannot collide, every bit depth and mode scaled (or refused) right,
and sizes refused before any pixel is decoded."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from vqnet.images import ImageError, codable_pixels, image_names, load_image, load_images, to_rgb

RAMP = np.linspace(0, 1, 64 * 40).reshape(40, 64)  # a greyscale ramp, black to white


def _save(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode).save(path) if mode else Image.fromarray(arr).save(path)
    return path


def test_colliding_stems_get_their_paths_and_unique_stems_keep_theirs(tmp_path):
    rng = np.random.default_rng(0)
    for rel in ("a/x.png", "b/x.png", "x.jpg", "x.png", "y.png"):
        _save(tmp_path / rel, rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    images = load_images(str(tmp_path))
    assert [im.name for im in images] == ["a/x.png", "b/x.png", "x.jpg", "x.png", "y"]
    # each name carries its own file's pixels, so no image's rows can copy another's
    assert len({im.pixels.tobytes() for im in images}) == 5
    assert [im.name for im in load_images(str(tmp_path / "*.png"))] == ["x", "y"]  # unique in that glob


@given(
    st.lists(
        st.sampled_from(["x", "x.png", "y", "a/x", "a/x.png", "b/y", "b/a/x", "z.png"]),
        min_size=1,
        max_size=8,
        unique=True,
    ),
    st.lists(st.sampled_from([".png", ".jpg", ".tif"]), min_size=8, max_size=8),
)
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_image_names_are_distinct_and_keep_unique_stems(tmp_path, stems, suffixes):
    src = tmp_path / "src"  # a folder source (names are relative to it); the files need not exist
    src.mkdir(exist_ok=True)
    files = sorted({src / (s + suf) for s, suf in zip(stems, suffixes)} | {src / (s + ".png") for s in stems})
    names = image_names(files, src)
    assert len(set(names)) == len(files)
    paths = {f.relative_to(src).as_posix() for f in files}
    for f, name in zip(files, names):
        if name != f.stem:  # only a shared stem, or a stem that is another file's path, gives way
            assert name == f.relative_to(src).as_posix()
            assert sum(g.stem == f.stem for g in files) > 1 or f.stem in paths


@pytest.mark.parametrize(
    "write",
    [
        pytest.param(lambda p: _save(p / "g16.png", np.round(RAMP * 65535).astype(np.uint16)), id="16-bit grey png"),
        pytest.param(
            lambda p: tifffile.imwrite(p / "f.tif", RAMP.astype(np.float32)) or p / "f.tif", id="float grey tiff"
        ),
        pytest.param(
            lambda p: (
                tifffile.imwrite(p / "f3.tif", np.dstack([RAMP] * 3).astype(np.float32), photometric="rgb")
                or p / "f3.tif"
            ),
            id="float rgb tiff",
        ),
        pytest.param(
            lambda p: (
                tifffile.imwrite(
                    p / "u16.tif", np.dstack([np.round(RAMP * 65535)] * 3).astype(np.uint16), photometric="rgb"
                )
                or p / "u16.tif"
            ),
            id="16-bit rgb tiff",
        ),
        pytest.param(
            lambda p: _save(p / "la.png", np.dstack([np.round(RAMP * 255)] * 2).astype(np.uint8), "LA"),
            id="grey + alpha",
        ),
        pytest.param(
            lambda p: (
                Image.fromarray(np.round(RAMP * 255).astype(np.uint8)).convert("P").save(p / "p.png") or p / "p.png"
            ),
            id="palette",
        ),
        pytest.param(
            lambda p: (
                Image.fromarray(np.round(RAMP * 255).astype(np.uint8)).convert("CMYK").save(p / "c.jpg", quality=100)
                or p / "c.jpg"
            ),
            id="cmyk jpeg",
        ),
    ],
)
def test_every_bit_depth_and_mode_decodes_to_the_same_ramp(tmp_path, write):
    pixels = load_image(write(tmp_path))
    assert pixels.dtype == np.uint8 and pixels.shape == (40, 64, 3)
    assert np.abs(pixels.astype(int) - np.round(RAMP * 255)[..., None]).max() <= 3  # jpeg's rounding at most


@pytest.mark.parametrize(
    "arr,needle",
    [
        (RAMP.astype(np.float32) * 2, r"float pixels must lie in \[0, 1\]"),
        (np.full((40, 64), np.nan, dtype=np.float32), "NaN"),
        (np.zeros((40, 64), dtype=np.int32) - 5, "int32 pixels have no known range"),
    ],
)
def test_pixels_with_no_known_range_are_refused(tmp_path, arr, needle):
    tifffile.imwrite(tmp_path / "bad.tif", arr)
    with pytest.raises(ImageError, match=needle):
        load_image(tmp_path / "bad.tif")


@given(
    st.sampled_from([np.uint8, np.uint16, np.float32, np.float64, np.bool_]),
    st.sampled_from([(7, 9), (7, 9, 1), (7, 9, 2), (7, 9, 3), (7, 9, 4)]),
    st.integers(0, 2**32 - 1),
)
def test_to_rgb_maps_the_range_of_every_type_onto_0_255(dtype, shape, seed):
    rng = np.random.default_rng(seed)
    unit = rng.random(shape)
    arr = {
        np.uint8: lambda: np.round(unit * 255),
        np.uint16: lambda: np.round(unit * 65535),
        np.bool_: lambda: unit > 0.5,
    }.get(dtype, lambda: unit)().astype(dtype)
    out = to_rgb(arr)
    assert out.dtype == np.uint8 and out.shape == (7, 9, 3)
    grey = unit if len(shape) == 2 else unit[..., 0]
    expected = (grey > 0.5) * 255 if dtype is np.bool_ else np.round(grey * 255)
    assert np.abs(out[..., 0].astype(int) - expected).max() <= 1


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A PNG whose header names width x height, with one tiny data chunk: what a decompression
    bomb looks like to a loader that checks the size only after decoding."""
    _save(path, np.zeros((1, 1, 3), dtype=np.uint8))
    data = bytearray(path.read_bytes())
    ihdr = struct.pack(">II", width, height) + data[24:29]
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    path.write_bytes(bytes(data))
    return path


def test_an_image_larger_than_this_machine_codes_is_refused_from_its_header(tmp_path):
    limit = codable_pixels()
    side = int(limit**0.5) + 2
    big = _png_claiming(tmp_path / "big.png", side, side)
    with pytest.raises(ImageError, match=rf"{side}x{side} .* is more than this machine can code"):
        load_image(big, limit)
    # the limit follows the memory: a 24 GB machine codes ~9 Mpx, 128 GB ~28 Mpx, never the format's 67 Mpx
    assert 5e6 < codable_pixels(memory=24 << 30) < codable_pixels(memory=128 << 30) < 1 << 26


def test_run_and_eval_keep_images_with_one_stem_apart(tmp_path):
    """x.png and x.jpg used to share the name x: the second was never coded and copied the first's rows."""
    import pandas as pd
    from typer.testing import CliRunner

    from vqnet.cli import app

    rng = np.random.default_rng(1)
    _save(tmp_path / "img" / "x.png", rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    _save(tmp_path / "img" / "x.jpg", np.full((48, 64, 3), 128, dtype=np.uint8))
    (tmp_path / "s.yaml").write_text(
        f"name: two\nimages: {{source: {tmp_path / 'img'}}}\nmethods: [none]\n"
        "channel: {model: bernoulli, loss: [0.0]}\ntrials: 1\n"
    )
    res = CliRunner().invoke(app, ["run", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "r"), "-q"])
    assert res.exit_code == 0, res.output
    df = pd.read_csv(tmp_path / "r" / "two" / "results.csv").set_index("image")
    assert list(df.index) == ["x.jpg", "x.png"]
    assert df.loc["x.jpg", "lossless_psnr"] != df.loc["x.png", "lossless_psnr"]  # each coded from its own pixels
    res = CliRunner().invoke(
        app,
        [
            "eval",
            str(tmp_path / "img"),
            "--out",
            str(tmp_path / "e"),
            "--ks",
            "16",
            "--classical",
            "none",
            "--no-dists",
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    rows = pd.read_csv(tmp_path / "e" / "rd_images.csv").set_index("image")
    assert list(rows.index) == ["x.jpg", "x.png"] and rows["psnr"].nunique() == 2
