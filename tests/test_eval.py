"""MS-SSIM, classical baselines at a target rate, and `vqnet eval` on a tiny saved codec."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_model
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image
from typer.testing import CliRunner

import vqnet.chroma
import vqnet.evaluate
from vqnet.bdrate import bd_table
from vqnet.chroma import CELLS
from vqnet.classical import ClassicalCoder, ClassicalError, RateError, encode_at_bpp, unavailable_reason
from vqnet.cli import app
from vqnet.codec.bundle import Codebook, Codec, load_codec, save_codec
from vqnet.entropy import Prior
from vqnet.evaluate import IMAGE_COLUMNS, RD_COLUMNS, EvalJournal, eval_fingerprint, evaluate, perplexity
from vqnet.images import load_images
from vqnet.journal import PARTIAL_NAME, JournalError
from vqnet.metrics import ms_ssim
from vqnet.vqn import encode_vqn, write_vqn


def synthetic(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth photo-like image (gradients, a disc, mild noise): compressible, unlike pure noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    disc = ((x - 0.5) ** 2 + (y - 0.4) ** 2 < 0.06) * 90.0
    img = np.stack([200 * x + disc, 150 * y + 40, 120 * (1 - x) + disc / 2], axis=-1)
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


# --- MS-SSIM ---------------------------------------------------------------------------------


def _ms_ssim_reference(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM written out plainly in float64 numpy, as the pytorch_msssim docs describe it."""
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    g /= g.sum()

    def blur(t: np.ndarray) -> np.ndarray:  # valid 11x11 gaussian, rows then columns
        t = sliding_window_view(t, 11, axis=0) @ g
        return sliding_window_view(t, 11, axis=1) @ g

    def pool(t: np.ndarray) -> np.ndarray:  # 2x2 mean; odd sides zero-padded on both ends
        ph, pw = t.shape[0] % 2, t.shape[1] % 2
        t = np.pad(t, ((ph, ph), (pw, pw)))
        h, w = t.shape[0] // 2 * 2, t.shape[1] // 2 * 2
        return t[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))

    weights = [0.0448, 0.2856, 0.3001, 0.2363, 0.1333]
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    per_channel = []
    for ch in range(3):
        x, y = a[..., ch].astype(np.float64), b[..., ch].astype(np.float64)
        value = 1.0
        for level, weight in enumerate(weights):
            mx, my = blur(x), blur(y)
            vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
            cs = (2 * cxy + c2) / (vx + vy + c2)
            if level < 4:
                value *= max(cs.mean(), 0) ** weight
                x, y = pool(x), pool(y)
            else:
                value *= max((cs * (2 * mx * my + c1) / (mx**2 + my**2 + c1)).mean(), 0) ** weight
        per_channel.append(value)
    return float(np.mean(per_channel))


def test_ms_ssim_properties_and_reference_value() -> None:
    a = synthetic(165, 171, 0)  # odd sides exercise the padded pooling
    rng = np.random.default_rng(1)
    noisy = np.clip(a + rng.normal(0, 12, a.shape), 0, 255).astype(np.uint8)
    noisier = np.clip(a + rng.normal(0, 40, a.shape), 0, 255).astype(np.uint8)
    assert ms_ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert 1.0 > ms_ssim(a, noisy) > ms_ssim(a, noisier) > 0.0
    assert ms_ssim(a, noisy) == pytest.approx(ms_ssim(noisy, a), abs=1e-12)
    assert ms_ssim(a, noisier) == pytest.approx(_ms_ssim_reference(a, noisier), abs=1e-9)


def test_ms_ssim_refuses_images_too_small_for_five_scales() -> None:
    a = synthetic(160, 300, 0)
    with pytest.raises(ValueError, match="> 160 px"):
        ms_ssim(a, a)


# --- classical baselines -----------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["jpeg", "webp", "avif"])
def test_classical_hits_target_bpp(codec: str) -> None:
    if (reason := unavailable_reason(codec)) is not None:
        pytest.skip(reason)
    img = synthetic(96, 128, 2)
    res = encode_at_bpp(img, codec, 0.4)
    assert res.bpp <= 0.4 and res.bpp == res.n_bytes * 8 / (96 * 128)
    assert res.image.shape == img.shape and res.image.dtype == np.uint8
    assert res.scale in (1.0, 1 / 2, 1 / 3, 1 / 4, 1 / 6, 1 / 8)
    with pytest.raises(RateError, match="cannot reach"):
        encode_at_bpp(img, codec, 0.001)  # less than any container's header


def test_one_coder_at_many_rates_gives_the_answers_of_separate_searches() -> None:
    img = synthetic(96, 128, 5)
    coder = ClassicalCoder(img)
    targets = [0.6, 0.45, 0.3, 0.2]
    shared = [coder.at_bpp("jpeg", t) for t in targets]
    for t, res in zip(targets, shared):
        alone = encode_at_bpp(img, "jpeg", t)
        assert (alone.scale, alone.quality, alone.n_bytes, alone.lpips) == (
            res.scale,
            res.quality,
            res.n_bytes,
            res.lpips,
        )
        assert np.array_equal(alone.image, res.image)
    assert len({(r.scale, r.quality) for r in shared}) > 1  # the rates really differ
    # each (scale, quality) is coded once, however many searches pass through it
    assert len(coder._files) < sum(1 for _ in targets) * 6 * 7


def test_unknown_classical_codec_is_refused() -> None:
    with pytest.raises(ClassicalError, match="unknown classical codec 'jxl'"):
        encode_at_bpp(synthetic(32, 32, 0), "jxl", 1.0)


def test_perplexity_of_uniform_and_peaked_use() -> None:
    assert perplexity(np.full(16, 7)) == pytest.approx(16)
    assert perplexity(np.array([5, 0, 0, 0])) == pytest.approx(1)


# --- vqnet eval ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def codec_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny f=4 codec with two rungs (K=32 and K=8): random, but real files."""
    model = tiny_model()
    base = Codebook.from_model(model)
    books = {}
    for K in (32, 8):
        torch.manual_seed(K)
        books[K] = replace(base, K=K, embedding=torch.randn(K, 8), prior=Prior.from_counts(np.arange(K, 0, -1)))
    path = tmp_path_factory.mktemp("codec") / "tiny.safetensors"
    save_codec(Codec(model, books), path)
    return path


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    Image.fromarray(synthetic(168, 176, 3)).save(folder / "a.png")  # big enough for MS-SSIM
    Image.fromarray(synthetic(48, 64, 4)).save(folder / "b.png")  # too small for it
    return folder


def test_eval_command_writes_report(codec_path: Path, image_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    result = CliRunner().invoke(
        app,
        ["eval", str(image_dir), "--model", str(codec_path), "--out", str(out), "--classical", "jpeg,webp", "--quiet"],
    )
    assert result.exit_code == 0, result.output
    assert "MS-SSIM left out for 1 of 2 images" in result.output
    for name in ("rd.csv", "rd_images.csv", "rd.png", "grid.png"):
        assert (out / name).stat().st_size > 0

    rd = pd.read_csv(out / "rd.csv")
    assert list(rd.columns) == RD_COLUMNS
    assert sorted(zip(rd["codec"], rd["K"])) == [(c, K) for c in ("jpeg", "vqnet", "webp") for K in (8, 32)]
    vq = rd[rd["codec"] == "vqnet"].set_index("K")
    assert np.allclose(vq["bpp_uniform_paper"], [math.log2(K) / 16 for K in vq.index])  # f = 4
    assert ((vq["code_usage"] > 0) & (vq["code_usage"] <= 1)).all()
    assert ((vq["perplexity"] >= 1) & (vq["perplexity"] <= vq.index)).all()
    assert rd[["lpips", "dists", "psnr", "ms_ssim"]].notna().all().all()

    per_image = pd.read_csv(out / "rd_images.csv")
    assert list(per_image.columns) == IMAGE_COLUMNS
    # vqnet's rate is the whole .vqn file, colour packet included: what `vqnet encode` would write.
    codec, img = load_codec(codec_path), np.array(Image.open(image_dir / "a.png"))
    row = per_image[(per_image["image"] == "a") & (per_image["codec"] == "vqnet") & (per_image["K"] == 8)]
    coded = encode_vqn(codec, img, 8, 1000, "interleaved", chroma_cells=CELLS)
    assert row["bytes"].item() == len(write_vqn(coded)) > len(write_vqn(encode_vqn(codec, img, 8, 1000, "interleaved")))
    # every classical coding stays within its target, vqnet's mean rate at that K
    classical = per_image[per_image["codec"] != "vqnet"]
    assert (classical["bpp"] <= classical["target_bpp"]).all()
    assert np.allclose(classical.groupby("K")["target_bpp"].first().sort_index(), vq["bpp"].sort_index())
    # Table 1 beside rd.csv: vqnet against each classical codec, and the RD points for CompressAI's tools
    bd = pd.read_csv(out / "bd.csv")
    assert list(zip(bd["test"], bd["anchor"])) == [("vqnet", "jpeg"), ("vqnet", "webp")]
    assert np.allclose(bd["bd_lpips"], bd_table(rd)["bd_lpips"], rtol=1e-5, equal_nan=True)
    assert "Bjøntegaard deltas" in result.output and "bd_lpips" in result.output
    doc = json.loads((out / "compressai" / "vqnet.json").read_text())
    assert doc["name"] == "vqnet" and doc["results"]["bpp"] == sorted(vq["bpp"]) and doc["results"]["K"] == [8, 32]
    assert set(doc["results"]) == {"bpp", "lpips", "dists", "psnr-rgb", "ms-ssim-rgb", "K"}


def test_eval_without_dists_or_baselines(codec_path: Path, image_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "eval",
            str(image_dir),
            "--model",
            str(codec_path),
            "--out",
            str(tmp_path),
            "--no-dists",
            "--classical",
            "none",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    rd = pd.read_csv(tmp_path / "rd.csv")
    assert set(rd["codec"]) == {"vqnet"} and rd["dists"].isna().all()
    raster = CliRunner().invoke(
        app,
        [
            "eval",
            str(image_dir),
            "--model",
            str(codec_path),
            "--out",
            str(tmp_path / "r"),
            "--no-dists",
            "--classical",
            "none",
            "--quiet",
            "--layout",
            "raster",
        ],
    )
    assert raster.exit_code == 0, raster.output
    other = pd.read_csv(tmp_path / "r" / "rd.csv")  # same indices, so the same images, other packets
    assert (other["lpips"] == rd["lpips"]).all() and not (other["bpp"] == rd["bpp"]).all()
    bad = CliRunner().invoke(app, ["eval", str(image_dir), "--model", str(codec_path), "--layout", "zigzag", "-q"])
    assert bad.exit_code == 2 and "--layout must be raster or interleaved" in bad.output


def test_eval_ks_restricts_the_ladder(finetuned_path: Path, image_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "eval",
            str(image_dir),
            "--model",
            str(finetuned_path),
            "--out",
            str(tmp_path),
            "--ks",
            "8",
            "--codebooks",
            "both",
            "--no-dists",
            "--classical",
            "none",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    rd = pd.read_csv(tmp_path / "rd.csv")
    assert sorted(zip(rd["codec"], rd["K"])) == [("vqnet", 8), ("vqnet-raw", 8)]
    bad = CliRunner().invoke(app, ["eval", str(image_dir), "--model", str(finetuned_path), "--ks", "8,x", "-q"])
    assert bad.exit_code == 2 and "--ks must be comma-separated integers" in bad.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing-folder"], "Error: no such image file or folder: missing-folder"),
        (["IMAGES", "--classical", "jpeg,jxl"], "Error: unknown classical codec 'jxl'"),
        (["IMAGES", "--max-payload", "1"], "Error: max_payload 1 is outside"),
        (["IMAGES", "--ks", "8,12"], "Error: model has no codebook with K=12"),
    ],
)
def test_eval_user_errors_are_one_line(
    codec_path: Path, image_dir: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    args = [str(image_dir) if a == "IMAGES" else a for a in args]
    result = CliRunner().invoke(app, ["eval", *args, "--model", str(codec_path), "--out", str(tmp_path), "-q"])
    assert result.exit_code == 2
    assert result.output.strip().startswith(message) and "Traceback" not in result.output


@pytest.fixture(scope="module")
def finetuned_path(codec_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny codec with K=8 'fine-tuned' (shifted codes, its own prior) and its K-means book kept."""
    codec = load_codec(codec_path)
    raw = codec.codebooks[8]
    codec.codebooks[8] = replace(
        raw, embedding=raw.embedding * 0.5, prior=Prior.from_counts(np.arange(1, 9)), finetuned=True, raw=raw
    )
    path = tmp_path_factory.mktemp("finetuned") / "ft.safetensors"
    save_codec(codec, path)
    return path


def test_eval_both_codebook_sets_reproduces_the_ablation(finetuned_path: Path, image_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "eval",
            str(image_dir),
            "--model",
            str(finetuned_path),
            "--out",
            str(tmp_path),
            "--codebooks",
            "both",
            "--classical",
            "jpeg",
            "--no-dists",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    rd = pd.read_csv(tmp_path / "rd.csv").set_index(["codec", "K"])
    assert sorted(rd.index) == [(c, K) for c in ("jpeg", "vqnet", "vqnet-raw") for K in (8, 32)]
    metrics = ["bpp", "lpips", "psnr", "code_usage", "perplexity"]
    assert rd.loc[("vqnet", 32), metrics].equals(rd.loc[("vqnet-raw", 32), metrics])  # never fine-tuned: one book
    assert rd.loc[("vqnet", 8), "lpips"] != rd.loc[("vqnet-raw", 8), "lpips"]
    assert rd.loc[("jpeg", 8), "target_bpp"] == pytest.approx(rd.loc[("vqnet", 8), "bpp"])  # rates follow 'vqnet'
    # the raw rows are real .vqn files coded with the raw codebook and its own prior
    per_image = pd.read_csv(tmp_path / "rd_images.csv")
    row = per_image[(per_image["image"] == "a") & (per_image["codec"] == "vqnet-raw") & (per_image["K"] == 8)]
    raw = load_codec(finetuned_path).raw_codec()
    img = np.array(Image.open(image_dir / "a.png"))
    assert row["bytes"].item() == len(write_vqn(encode_vqn(raw, img, 8, 1000, "interleaved", chroma_cells=CELLS)))


def test_eval_raw_codebooks_need_a_finetuned_bundle(codec_path: Path, image_dir: Path, tmp_path: Path) -> None:
    for choice, message in [
        ("raw", "keeps no codebooks from before fine-tuning"),
        ("kmeans", "--codebooks must be one of finetuned, raw, both"),
    ]:
        result = CliRunner().invoke(
            app,
            ["eval", str(image_dir), "--model", str(codec_path), "--out", str(tmp_path), "--codebooks", choice, "-q"],
        )
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


# --- resuming an evaluation ---------------------------------------------------------------------


def test_eval_resumes_from_a_torn_journal_with_the_same_tables(
    finetuned_path: Path, image_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    codec, images = load_codec(finetuned_path), load_images(str(image_dir))
    options = dict(with_dists=False, classical=["jpeg"], max_payload=1000, codebooks="both", ks=[32, 8])
    fp = eval_fingerprint(codec, images, **options)
    with EvalJournal.open(tmp_path / "a" / PARTIAL_NAME, fp) as journal:
        full = evaluate(codec, images, journal=journal, **options)
    lines = (tmp_path / "a" / PARTIAL_NAME).read_bytes().splitlines(keepends=True)
    assert len(lines) == 1 + 2 * 2 * 3  # fingerprint + images x K x (vqnet, vqnet-raw, jpeg)
    partial = tmp_path / "b" / PARTIAL_NAME
    partial.parent.mkdir()
    partial.write_bytes(b"".join(lines[:6]) + lines[6][:30])  # killed while writing the sixth coding
    coded = []
    real = vqnet.evaluate._code_vqnet
    monkeypatch.setattr(vqnet.evaluate, "_code_vqnet", lambda c, item, *a: coded.append(item.name) or real(c, item, *a))
    with EvalJournal.open(partial, fp) as journal:
        assert len(journal.done) == 5
        resumed = evaluate(codec, images, journal=journal, **options)
    pd.testing.assert_frame_equal(resumed.per_image, full.per_image)
    pd.testing.assert_frame_equal(resumed.rd, full.rd)
    assert set(resumed.examples) == set(full.examples)  # the first image is recoded for the grid
    for key, ex in full.examples.items():
        assert np.array_equal(resumed.examples[key].image, ex.image)
    assert partial.read_bytes().endswith(b"\n") and len(partial.read_bytes().splitlines()) == len(lines)
    coded.clear()
    with EvalJournal.open(partial, fp) as journal:  # complete: only the grid's image is coded again
        again = evaluate(codec, images, journal=journal, **options)
    assert set(coded) == {images[0].name}
    pd.testing.assert_frame_equal(again.per_image, full.per_image)
    other = eval_fingerprint(codec, images, **options | {"ks": [8]})
    with pytest.raises(JournalError, match="another model, image set or set of options.*--fresh"):
        EvalJournal.open(partial, other)
    # rows scored with the colour packet depend on its step, which no option names
    coloured = eval_fingerprint(codec, images, **options | {"chroma_cells": 2})
    monkeypatch.setattr(vqnet.chroma, "STEP", vqnet.chroma.STEP + 1)
    assert eval_fingerprint(codec, images, **options | {"chroma_cells": 2}) != coloured
    assert eval_fingerprint(codec, images, **options) == fp


def test_eval_command_resumes_and_removes_its_journal(codec_path: Path, image_dir: Path, tmp_path: Path) -> None:
    args = ["eval", str(image_dir), "--model", str(codec_path), "--no-dists", "--classical", "webp", "-q"]
    clean = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "clean")])
    assert clean.exit_code == 0, clean.output and not (tmp_path / "clean" / PARTIAL_NAME).exists()
    codec, images = load_codec(codec_path), load_images(str(image_dir))
    options = dict(
        with_dists=False, classical=["webp"], max_payload=1000, codebooks="finetuned", ks=[32, 8], chroma_cells=CELLS
    )  # the command's defaults
    with EvalJournal.open(tmp_path / "killed" / PARTIAL_NAME, eval_fingerprint(codec, images, **options)) as journal:
        full = evaluate(codec, images, journal=journal, **options)
    resumed = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "killed")])
    assert resumed.exit_code == 0, resumed.output
    assert f"resuming: {len(full.per_image)} of 8 codings already done" in resumed.output
    assert (tmp_path / "killed" / "rd.csv").read_bytes() == (tmp_path / "clean" / "rd.csv").read_bytes()
    assert not (tmp_path / "killed" / PARTIAL_NAME).exists()
    (tmp_path / "killed" / PARTIAL_NAME).write_text("not json\n")
    bad = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "killed")])
    assert bad.exit_code == 2 and "is not an eval journal" in bad.output and "--fresh" in bad.output
    assert CliRunner().invoke(app, [*args, "--out", str(tmp_path / "killed"), "--fresh"]).exit_code == 0
