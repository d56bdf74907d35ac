"""The masked concealment model, its training data and training loop, and concealment-model files."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import tiny_model
from vqnet.codec.bundle import Codebook, Codec, CodecError, save_codec
from vqnet.entropy import Prior
from vqnet.images import choose_photos
from vqnet.restore import METHODS, RestoreContext, restore
from vqnet.restore.decision import code_distances
from vqnet.restore.gpt import GPT
from vqnet.restore.masked import conceal_masked, nearest_window, window_starts
from vqnet.restore.store import concealer_path, export_concealer, index_fingerprint, load_concealer
from vqnet.scenario import parse_scenario
from vqnet.sweep import sweep_fingerprint
from vqnet.training.photos import encode_photos, latent_cache
from vqnet.training.prior import PriorTrainConfig, make_batch, train_prior
from vqnet.training.prior_data import (
    StepBatches,
    WindowSampler,
    gilbert_losses,
    index_maps,
    load_maps,
    sample_mask,
    save_maps,
)


def pattern_maps(n: int = 4, h: int = 20, w: int = 24, K: int = 8) -> list[np.ndarray]:
    """Index maps with strong spatial structure (diagonal bands) that a model can learn in seconds."""
    return [((np.add.outer(np.arange(h) // 3, np.arange(w) // 3) + s) % K).astype(np.int16) for s in range(n)]


def tiny_cfg(kind: str, steps: int, K: int = 8, dropout: float = 0.0) -> PriorTrainConfig:
    return PriorTrainConfig(
        kind=kind, K=K, n_layer=2, n_head=2, n_embd=32, steps=steps, batch=8, lr=3e-3, warmup=5, dropout=dropout
    )


@pytest.mark.parametrize("L", [1, 7, 16, 17, 24, 31, 48])
def test_windows_cover_every_position_most_centrally(L: int) -> None:
    starts = window_starts(L)
    span = min(L, 16)
    assert starts[0] == 0 and starts[-1] == max(0, L - 16)
    which, offset = nearest_window(L)
    assert np.array_equal(starts[which] + offset, np.arange(L))
    assert offset.min() >= 0 and offset.max() < span
    if L >= 24:  # interior positions have context on both sides
        assert np.all((offset[4:-4] >= 3) & (offset[4:-4] <= 12))


def test_gilbert_mask_statistics() -> None:
    rng = np.random.default_rng(0)
    flags = gilbert_losses(rng, 200_000, 0.3, 4.0)
    assert abs(flags.mean() - 0.3) < 0.01
    starts = np.flatnonzero(np.diff(flags.astype(int)) == 1)
    assert 3.6 < flags.sum() / len(starts) < 4.4  # mean burst length


def test_sample_mask_shapes_and_ratios() -> None:
    rng = np.random.default_rng(1)
    ratios = [sample_mask(rng, 21, 31).mean() for _ in range(400)]
    assert all(0 <= r <= 1 for r in ratios)
    assert 0.2 < np.mean(ratios) < 0.6 and max(ratios) > 0.7


def test_masked_batch_masks_only_lost_positions() -> None:
    codes = torch.arange(12).view(2, 6) % 5
    masks = torch.tensor([[True, False, False, True, False, False], [False] * 6])
    inputs, targets, counted = make_batch("masked", 5, codes, masks)
    assert torch.equal(inputs[0], torch.tensor([5, 1, 2, 5, 4, 0]))
    assert counted[1].sum() == 1 and (inputs[1] == 5).sum() == 1  # an empty mask still teaches one token
    ar_in, ar_t, ar_c = make_batch("ar", 5, codes, masks)
    assert torch.equal(ar_in[:, 0], torch.tensor([5, 5])) and torch.equal(ar_in[:, 1:], codes[:, :-1]) and ar_c.all()


def test_ar_batch_reads_guesses_only_at_lost_positions() -> None:
    codes = torch.arange(12).view(2, 6) % 5
    masks = torch.tensor([[False, True, False, False, True, False], [False] * 6])
    guesses = torch.full_like(codes, 4)
    inputs, targets, counted = make_batch("ar", 5, codes, masks, guesses)
    assert torch.equal(inputs[0], torch.tensor([5, 0, 4, 2, 3, 4]))  # SOS, then the window shifted by one
    assert torch.equal(inputs[1, 1:], codes[1, :-1]) and torch.equal(targets, codes) and counted.all()


def test_corrupted_context_training_and_fine_tune_start(tmp_path: Path) -> None:
    """``corrupt`` trains (its loss falls although its inputs hold guesses); a fine-tune started
    from those weights starts where they ended, far below a fresh model's first loss."""
    cfg = dataclasses.replace(tiny_cfg("ar", 80), corrupt=True)
    ckpt = train_prior(pattern_maps(), tmp_path / "corrupt", cfg)
    losses = [float(r["loss"]) for r in csv.DictReader((tmp_path / "corrupt" / "log.csv").open())]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    weights = torch.load(ckpt, weights_only=True)["model"]
    tuned = dataclasses.replace(tiny_cfg("ar", 3), lr=1e-6, start="ab" * 32)
    train_prior(pattern_maps(), tmp_path / "tuned", tuned, start_weights=weights)
    first = float(next(csv.DictReader((tmp_path / "tuned" / "log.csv").open()))["loss"])
    assert first < 0.5 * losses[0] and abs(first - np.mean(losses[-5:])) < 0.3 * losses[0]
    with pytest.raises(ValueError, match="go together"):
        train_prior(pattern_maps(), tmp_path / "bad", tiny_cfg("ar", 3), start_weights=weights)


@pytest.mark.parametrize("kind", ["ar", "masked"])
def test_training_loss_falls(tmp_path: Path, kind: str) -> None:
    train_prior(pattern_maps(), tmp_path, tiny_cfg(kind, 80))
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    first = np.mean([float(r["loss"]) for r in rows[:5]])
    last = np.mean([float(r["loss"]) for r in rows[-5:]])
    # the bidirectional model also predicts windows that are mostly masked, so its loss floor is higher
    assert len(rows) == 80 and last < (0.7 if kind == "ar" else 0.9) * first


@pytest.mark.parametrize("dropout", [0.0, 0.2])  # dropout draws from the RNG state the checkpoint keeps
def test_resume_continues_exactly(tmp_path: Path, dropout: float) -> None:
    maps = pattern_maps()
    train_prior(maps, tmp_path / "straight", tiny_cfg("masked", 8, dropout=dropout))
    train_prior(maps, tmp_path / "split", tiny_cfg("masked", 4, dropout=dropout), extra={"fingerprint": "x"})
    train_prior(
        maps, tmp_path / "split", tiny_cfg("masked", 8, dropout=dropout), resume=True, extra={"fingerprint": "x"}
    )
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    logs = [list(csv.DictReader((tmp_path / d / "log.csv").open())) for d in ("straight", "split")]
    assert [r["loss"] for r in logs[0]] == [r["loss"] for r in logs[1]]
    with pytest.raises(ValueError, match="fingerprint differs"):
        train_prior(
            maps, tmp_path / "split", tiny_cfg("masked", 9, dropout=dropout), resume=True, extra={"fingerprint": "y"}
        )
    with pytest.raises(ValueError, match="other settings"):
        train_prior(maps, tmp_path / "split", tiny_cfg("masked", 9, K=16), resume=True, extra={"fingerprint": "x"})
    with pytest.raises(ValueError, match="other settings"):
        train_prior(
            maps,
            tmp_path / "split",
            tiny_cfg("masked", 9, dropout=dropout + 0.1),
            resume=True,
            extra={"fingerprint": "x"},
        )
    with pytest.raises(FileExistsError):
        train_prior(maps, tmp_path / "split", tiny_cfg("masked", 9))
    state = torch.load(tmp_path / "split" / "checkpoint.pt", weights_only=True)
    torch.save(state | {"np_rng": {}}, tmp_path / "split" / "checkpoint.pt")  # as vqnet wrote them before
    with pytest.raises(ValueError, match="older vqnet"):
        train_prior(
            maps, tmp_path / "split", tiny_cfg("masked", 9, dropout=dropout), resume=True, extra={"fingerprint": "x"}
        )


def test_batch_drawing_workers_change_nothing_but_speed(tmp_path: Path) -> None:
    """Two worker processes drawing the windows ahead give the same run as drawing them in line."""
    maps = pattern_maps()
    for workers in (0, 2):
        train_prior(maps, tmp_path / str(workers), tiny_cfg("masked", 6), workers=workers)
    logs = [[r["loss"] for r in csv.DictReader((tmp_path / d / "log.csv").open())] for d in ("0", "2")]
    assert len(logs[0]) == 6 and logs[0] == logs[1]
    with StepBatches(maps, seed=0, n=5, with_masks=True, workers=2) as ahead:
        drawn = [ahead(step) for step in (3, 4, 5)]
    inline = StepBatches(maps, seed=0, n=5, with_masks=True)
    for step, (codes, masks) in zip((3, 4, 5), drawn):
        assert all(torch.equal(a, b) for a, b in zip((codes, masks), inline(step)))
    assert not torch.equal(drawn[0][1], drawn[1][1])  # each step draws its own masks


def _trained_masked(tmp_path: Path) -> GPT:
    cfg = tiny_cfg("masked", 300)
    ckpt = train_prior(pattern_maps(), tmp_path / "run", cfg)
    model = GPT(cfg.gpt_config())
    model.load_state_dict(torch.load(ckpt, weights_only=True)["model"])
    return model.eval()


def test_masked_concealment_learns_structure_and_keeps_received(tmp_path: Path) -> None:
    model = _trained_masked(tmp_path)
    rng = np.random.default_rng(3)
    grid = pattern_maps(1, 20, 40)[0].astype(np.int64)  # wider than the window: tiles are used
    lost = rng.random(grid.shape) < 0.4
    small = grid[:9, :12]
    out = conceal_masked(model, [(grid, lost), (small, lost[:9, :12]), (grid, np.zeros_like(lost))], K=8)
    assert np.array_equal(out[0][~lost], grid[~lost]) and out[0].min() >= 0 and out[0].max() < 8
    assert np.array_equal(out[2], grid)
    acc = (out[0][lost] == grid[lost]).mean()
    assert acc > 3 / 8  # three times chance after a few seconds of training
    assert np.array_equal(out[1][~lost[:9, :12]], small[~lost[:9, :12]]) and out[1].max() < 8
    again = conceal_masked(model, [(grid, lost)], K=8)[0]
    assert np.array_equal(again, out[0])
    sampled = [conceal_masked(model, [(grid, lost)], K=8, temperature=1.0, seed=s)[0] for s in (5, 5)]
    assert np.array_equal(sampled[0], sampled[1])
    # neighbour evidence: an all-zero table changes nothing; one that makes code 0 overwhelming
    # next to any known code fills every lost position that has a received 4-neighbour with 0
    zero = np.zeros((8, 8))
    assert np.array_equal(conceal_masked(model, [(grid, lost)], K=8, neighbour_log_ratios=zero)[0], out[0])
    pull0 = np.zeros((8, 8))
    pull0[:, 0] = 50.0
    fused = conceal_masked(model, [(grid, lost)], K=8, neighbour_log_ratios=pull0)[0]
    received_next = np.zeros_like(lost)
    for axis, step in ((0, 1), (0, -1), (1, 1), (1, -1)):
        shifted = np.roll(~lost, step, axis=axis)
        edge = [slice(None)] * 2
        edge[axis] = 0 if step == 1 else -1
        shifted[tuple(edge)] = False  # no wrap-around
        received_next |= shifted
    assert (fused[lost & received_next] == 0).all() and np.array_equal(fused[~lost], grid[~lost])
    assert not (out[0][lost & received_next] == 0).all()
    # minimum Bayes risk: under 0-1 loss it is the argmax (same codes, same commit order); with a
    # distance that puts code 3 at the centre of all others, every lost position hedges to 3
    assert np.array_equal(conceal_masked(model, [(grid, lost)], K=8, code_distances=1 - np.eye(8))[0], out[0])
    star = np.full((8, 8), 1e3)
    star[3, :] = star[:, 3] = 1.0
    np.fill_diagonal(star, 0.0)
    hedged = conceal_masked(model, [(grid, lost)], K=8, code_distances=star)[0]
    assert (hedged[lost] == 3).all() and np.array_equal(hedged[~lost], grid[~lost])


def _tiny_codec(tmp_path: Path) -> Codec:
    model = tiny_model()
    codec = Codec(model, {32: Codebook.from_model(model, Prior.uniform(32))})
    path = tmp_path / "tiny.safetensors"
    save_codec(codec, path)
    from vqnet.codec.bundle import load_codec

    return load_codec(path)


def test_concealer_files_are_checked_against_the_index_maps(tmp_path: Path) -> None:
    codec = _tiny_codec(tmp_path)
    grid = np.random.default_rng(0).integers(0, 32, (6, 7))
    lost = np.zeros_like(grid, dtype=bool)
    lost[2:4] = True
    ctx = RestoreContext(32, codec.codebook(32).prior, 0, codec)
    with pytest.raises(CodecError, match="vqnet train prior --kind masked --K 32"):
        restore("masked", grid, lost, ctx)
    torch.manual_seed(0)
    for kind in ("ar", "masked"):
        gpt = GPT(tiny_cfg(kind, 1, K=32).gpt_config()).eval()
        export_concealer(gpt, kind, 32, index_fingerprint(codec, 32), concealer_path(codec, kind, 32), {})
        assert concealer_path(codec, kind, 32).name == f"tiny.{kind}.K32.safetensors"
        loaded = load_concealer(codec, kind, 32)
        assert all(torch.equal(v.half(), loaded.state_dict()[k].half()) for k, v in gpt.state_dict().items())
        out = restore(kind, grid, lost, ctx)
        assert np.array_equal(out[~lost], grid[~lost])
    out = restore("ar-mbr", grid, lost, ctx)  # the ar file, another decision rule
    assert np.array_equal(out[~lost], grid[~lost])
    sc = parse_scenario({"name": "t", "K": [32], "methods": ["neighbor", "masked"]})
    before = sweep_fingerprint(sc, codec, [])
    stale = tmp_path / "stale.safetensors"
    export_concealer(gpt, "masked", 32, "0" * 16, stale, {})
    stale.replace(concealer_path(codec, "masked", 32))
    with pytest.raises(CodecError, match="other index maps"):
        load_concealer(codec, "masked", 32)
    # a journal of trials concealed with the old model is not resumed with the new one
    assert sweep_fingerprint(sc, codec, []) != before
    assert set(METHODS) == {"none", "neighbor", "ar", "ar-mbr", "masked"}


def test_index_maps_from_cached_photo_latents(tmp_path: Path) -> None:
    from PIL import Image

    codec = _tiny_codec(tmp_path)
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i, size in enumerate([(72, 80), (40, 40)]):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(photos / f"{i}.png")
    cache = tmp_path / "cache"
    files = choose_photos(photos, None)
    latents = encode_photos(codec, files, cache, shard=1)
    assert len(list(cache.glob("*.safetensors"))) == 2 and len(latents) == 4  # each photo and its mirror image
    (cache / "latents-000001.safetensors").unlink()  # an interrupted run redoes only the missing shard
    again = encode_photos(codec, files, cache, shard=1)
    assert all(torch.equal(a, b) for a, b in zip(latents, again))
    maps = index_maps(codec, latents, 32)
    assert [m.shape for m in maps] == [(18, 20), (18, 20)]  # the 10x10 grids are below one window
    photo = np.asarray(Image.open(photos / "0.png"))
    assert np.array_equal(maps[1], codec.encode(photo[:, ::-1].copy(), 32))
    assert latent_cache("enc", files, 2) != latent_cache("enc", files)  # shifted latents never share a cache
    shifted = index_maps(codec, encode_photos(codec, files, tmp_path / "cache-shift", shift=2), 32)
    assert np.array_equal(shifted[1], codec.encode(photo[:, ::-1][2:, 2:].copy(), 32))
    assert not np.array_equal(shifted[0][:17, :19], maps[0][:17, :19])  # the grid moved: new codes
    codes, masks = WindowSampler(maps).batch(np.random.default_rng(0), 3)
    assert codes.shape == (3, 256) and masks.dtype == torch.bool


def test_train_prior_cli_writes_a_checked_model_beside_the_codec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image
    from typer.testing import CliRunner

    from vqnet.cli import app

    codec = _tiny_codec(tmp_path)
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (72, 72, 3), dtype=np.uint8)).save(photos / f"{i}.png")
    monkeypatch.chdir(tmp_path)  # the latent cache goes to ./runs/prior-data
    args = [
        "train",
        "prior",
        "--kind",
        "masked",
        "--K",
        "32",
        "--model",
        str(codec.path),
        "--data",
        str(photos),
        "--steps",
        "3",
        "--batch",
        "2",
        "--layers",
        "1",
        "--heads",
        "2",
        "--embd",
        "16",
        "--out",
        "run",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "checkpoint.pt").is_file() and list((tmp_path / "runs" / "prior-data").iterdir())
    assert load_concealer(codec, "masked", 32).config.n_layer == 1
    again = CliRunner().invoke(app, args)  # the run folder exists and --resume was not given
    assert again.exit_code == 2 and "Error:" in again.output and "Traceback" not in again.output
    bad = CliRunner().invoke(app, args[:3] + ["wrong"] + args[4:])
    assert bad.exit_code == 2 and "--kind must be one of" in bad.output
    masked_corrupt = CliRunner().invoke(app, args[:-1] + ["run-x", "--corrupt"])
    assert masked_corrupt.exit_code == 2 and "--kind ar only" in masked_corrupt.output
    # --start: a fine-tune of the file just written; its layout must match, and it must be one
    tune = CliRunner().invoke(app, args[:-1] + ["run-t", "--start", str(concealer_path(codec, "masked", 32))])
    assert tune.exit_code == 0, tune.output
    wide = [a if a != "16" else "32" for a in args[:-1]]
    mismatch = CliRunner().invoke(app, wide + ["run-w", "--start", str(concealer_path(codec, "masked", 32))])
    assert mismatch.exit_code == 2 and "pass the same --layers" in mismatch.output
    wrong_kind = CliRunner().invoke(
        app, args[:3] + ["ar"] + args[4:-1] + ["run-k", "--start", str(concealer_path(codec, "masked", 32))]
    )
    assert wrong_kind.exit_code == 2 and "is not a ar concealment model" in wrong_kind.output
    # --maps: written after encoding, then enough without any photo folder (a GPU machine's case)
    maps = tmp_path / "maps.safetensors"
    first = CliRunner().invoke(app, args[:-1] + ["run-a", "--maps", str(maps)])
    assert first.exit_code == 0, first.output
    no_photos = [a if a != str(photos) else str(tmp_path / "absent") for a in args[:-1]]
    second = CliRunner().invoke(app, no_photos + ["run-b", "--maps", str(maps)])
    assert second.exit_code == 0, second.output
    grids, n = load_maps(maps, index_fingerprint(codec, 32))
    assert n == 2 and len(grids) == 4  # two photos and their mirrors
    save_maps(maps, grids, "another-fingerprint", n)
    foreign = CliRunner().invoke(app, no_photos + ["run-c", "--maps", str(maps)])
    assert foreign.exit_code == 2 and "another codebook" in foreign.output and "Traceback" not in foreign.output


def test_train_prior_leaves_the_bundled_transformer_alone_without_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trial run on the bundled codec must not overwrite the shipped transformer (nor its manifest
    entry): it writes a self-contained bundle to OUT instead; --install replaces the shipped one."""
    import json

    from typer.testing import CliRunner

    import vqnet.codec.bundle as bundle
    import vqnet.restore.store as store
    from vqnet.cli import app
    from vqnet.training.prior_data import save_maps
    from vqnet.weights import sha256_of

    models = tmp_path / "models"
    models.mkdir()
    default = models / "default.safetensors"
    model = tiny_model()
    save_codec(Codec(model, {32: Codebook.from_model(model, Prior.uniform(32))}), default)
    manifest = models / "manifest.json"
    manifest.write_text(json.dumps({default.name: sha256_of(default)}) + "\n")
    for module in (bundle, store):
        monkeypatch.setattr(module, "DEFAULT_MODEL", default)
        monkeypatch.setattr(module, "MANIFEST", manifest)
    codec = bundle.load_codec(None)
    maps = tmp_path / "maps.safetensors"
    save_maps(maps, pattern_maps(), index_fingerprint(codec, 32), 2)
    monkeypatch.chdir(tmp_path)
    args = [
        "train",
        "prior",
        "--kind",
        "masked",
        "--K",
        "32",
        "--maps",
        str(maps),
        "--steps",
        "2",
        "--batch",
        "2",
        "--layers",
        "1",
        "--heads",
        "2",
        "--embd",
        "16",
        "--out",
    ]
    before = sorted(p.name for p in models.iterdir()), manifest.read_text()
    trial = CliRunner().invoke(app, args + ["run"])
    assert trial.exit_code == 0, trial.output
    assert (sorted(p.name for p in models.iterdir()), manifest.read_text()) == before
    assert "the bundled one is unchanged" in trial.output
    copy = bundle.load_codec(tmp_path / "run" / "default.safetensors")
    assert load_concealer(copy, "masked", 32).config.n_layer == 1
    installed = CliRunner().invoke(app, args + ["run-i", "--install"])
    assert installed.exit_code == 0, installed.output
    assert json.loads(manifest.read_text())["default.masked.K32.safetensors"] == sha256_of(
        models / "default.masked.K32.safetensors"
    )
    assert load_concealer(bundle.load_codec(None), "masked", 32).config.n_layer == 1
    elsewhere = CliRunner().invoke(
        app, args + ["run-e", "--install", "--model", str(tmp_path / "run" / "default.safetensors")]
    )
    assert elsewhere.exit_code == 2 and "--install replaces the bundled" in elsewhere.output


def test_index_map_files_round_trip_and_name_their_codebook(tmp_path: Path) -> None:
    maps = pattern_maps()
    save_maps(tmp_path / "small.safetensors", maps, "abc", 2)
    wide = maps + [np.full((16, 17), 300, dtype=np.int16)]  # a code above 255 needs int16
    save_maps(tmp_path / "wide.safetensors", wide, "abc", 3)
    for path, expected, photos in ((tmp_path / "small.safetensors", maps, 2), (tmp_path / "wide.safetensors", wide, 3)):
        got, n = load_maps(path, "abc")
        assert n == photos and len(got) == len(expected)
        assert all(g.dtype == np.int16 and np.array_equal(g, e) for g, e in zip(got, expected))
    assert (tmp_path / "small.safetensors").stat().st_size < (tmp_path / "wide.safetensors").stat().st_size / 1.5
    with pytest.raises(CodecError, match="another codebook"):
        load_maps(tmp_path / "small.safetensors", "xyz")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(CodecError, match="cannot read index maps"):
        load_maps(tmp_path / "junk.safetensors", "abc")


def test_autoregressive_batches_skip_the_masks() -> None:
    sampler = WindowSampler(pattern_maps())
    codes, masks = sampler.batch(np.random.default_rng(0), 6, with_masks=False)
    assert codes.shape == masks.shape == (6, 256) and bool(masks.all())
    _, drawn = sampler.batch(np.random.default_rng(0), 6)
    assert not bool(drawn.all())


def test_transformer_methods_need_the_codec() -> None:
    grid = np.zeros((4, 4), dtype=np.int64)
    lost = np.eye(4, dtype=bool)
    for kind in ("ar", "masked"):
        with pytest.raises(ValueError, match="needs the codec"):
            restore(kind, grid, lost, RestoreContext(8, Prior.uniform(8)))


def test_bundled_concealer_is_checked_against_the_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from vqnet.codec import bundle
    from vqnet.restore import store

    codec = _tiny_codec(tmp_path)
    default = codec.path.with_name("default.safetensors")
    codec.path.replace(default)
    codec.path = default
    manifest = tmp_path / "manifest.json"
    for module in (bundle, store):
        monkeypatch.setattr(module, "DEFAULT_MODEL", default)
        monkeypatch.setattr(module, "MANIFEST", manifest)
    gpt = GPT(tiny_cfg("ar", 1, K=32).gpt_config()).eval()
    sha = export_concealer(gpt, "ar", 32, index_fingerprint(codec, 32), concealer_path(codec, "ar", 32), {})
    manifest.write_text(json.dumps({"default.ar.K32.safetensors": sha}))
    assert load_concealer(codec, "ar", 32).config.n_layer == 2
    manifest.write_text(json.dumps({"default.ar.K32.safetensors": "0" * 64}))
    with pytest.raises(CodecError, match="does not match the weights manifest"):
        load_concealer(codec, "ar", 32)


def test_shipped_models_are_in_the_manifest_and_conceal_a_photo() -> None:
    import json

    from vqnet.codec.bundle import DEFAULT_MODEL, MANIFEST, load_codec
    from vqnet.images import skimage_image
    from vqnet.weights import sha256_of

    entries = json.loads(MANIFEST.read_text())
    shipped = sorted(p.name for p in DEFAULT_MODEL.parent.glob("*.safetensors"))
    assert shipped == sorted(entries) and all(sha256_of(DEFAULT_MODEL.parent / n) == entries[n] for n in shipped)
    codec = load_codec()
    grid = codec.encode(skimage_image("astronaut")[:256, :320], 256)
    lost = np.zeros(grid.shape, dtype=bool)
    lost[np.arange(grid.size).reshape(grid.shape) % 7 < 3] = True
    ctx = RestoreContext(256, codec.codebook(256).prior, 0, codec)
    out = {m: restore(m, grid, lost, ctx) for m in ("none", "ar", "ar-mbr", "masked")}
    hits = {m: (o[lost] == grid[lost]).mean() for m, o in out.items()}
    for kind in ("ar", "masked"):
        assert np.array_equal(out[kind][~lost], grid[~lost]) and out[kind].max() < 256
        # the exact code, well above chance (1/256) and above the prior's most frequent code
        assert hits[kind] > 0.03 and hits[kind] > hits["none"]
    # both decision rules land closer to the true codes, as the decoder sees them, than the prior's
    # most frequent code. (ar-mbr was also closer than ar until ar was fine-tuned on its own
    # argmax guesses, --corrupt: MBR's hedged codes are not what that model learnt to read.)
    dist = code_distances(codec.codebook(256))
    miss = {m: dist[o[lost], grid[lost]].mean() for m, o in out.items()}
    assert np.array_equal(out["ar-mbr"][~lost], grid[~lost]) and max(miss["ar-mbr"], miss["ar"]) < miss["none"]


def test_sweep_refuses_a_missing_transformer_before_any_trial(tmp_path: Path) -> None:
    from vqnet.images import NamedImage
    from vqnet.scenario import parse_scenario
    from vqnet.sweep import run_sweep

    codec = _tiny_codec(tmp_path)
    sc = parse_scenario(
        {"name": "t", "K": [32], "methods": ["neighbor", "masked"], "channel": {"model": "bernoulli", "loss": [0.3]}}
    )
    calls: list[int] = []
    image = NamedImage("x", np.zeros((32, 32, 3), dtype=np.uint8))
    with pytest.raises(CodecError, match="no masked concealment model for K=32"):
        run_sweep(sc, codec, [image], advance=lambda n, label: calls.append(n))
    assert calls == []
