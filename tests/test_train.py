"""VQGAN training with taming's recipe (the loss falls, a resumed run continues exactly, --init and
--freeze encoder) and codebook fine-tuning (it lowers the loss and leaves the VQGAN alone)."""

from __future__ import annotations

import csv
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from vqnet.cli import app
from vqnet.codec.bundle import Codebook, Codec, CodecError, load_codec, save_codec
from vqnet.codec.model import DDConfig, VQGANConfig, VQModel
from vqnet.images import choose_photos, to_tensor
from vqnet.training.finetune import FinetuneConfig, finetune_ladder, finetune_targets, log_columns
from vqnet.training.ladder import build_ladder
from vqnet.training.loop import ResumeError, load_checkpoint
from vqnet.training.losses import reconstruction_loss
from vqnet.training.photos import encode_photos
from vqnet.training.vqgan import (
    LOG_COLUMNS,
    VAL_COLUMNS,
    CropDataset,
    TrainConfig,
    best_validation,
    load_init_model,
    train_vqgan,
)

TINY = VQGANConfig(
    embed_dim=8,
    n_embed=16,
    ddconfig=DDConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), resolution=32, z_channels=16),
)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Smooth synthetic photos (gradients + blobs), some greyscale and some smaller than the crop."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:56] / 48.0
    for i in range(6):
        c = rng.random((3, 3))
        img = np.stack([c[k, 0] + c[k, 1] * yy + c[k, 2] * xx for k in range(3)], -1)
        img = (np.clip(img / img.max(), 0, 1) * 255).astype(np.uint8)
        if i == 4:
            Image.fromarray(img[..., 0]).save(folder / f"{i}.png")  # greyscale
        elif i == 5:
            Image.fromarray(img[:20, :24]).save(folder / f"{i}.jpg")  # smaller than the crop: upscaled
        else:
            Image.fromarray(img).save(folder / f"{i}.png")
    return folder


def _log(path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_loss_falls_with_the_full_recipe(photos, tmp_path):
    cfg = TrainConfig(
        steps=30, batch=4, crop=32, lr=1e-3, disc_lr=1e-4, restart_every=10, disc_start=15, checkpoint_minutes=60
    )
    train_vqgan(photos, tmp_path / "run", cfg, TINY)
    log = _log(tmp_path / "run" / "log.csv")
    assert list(log[0]) == LOG_COLUMNS and len(log) == 30
    col = {k: np.array([float(r[k]) for r in log]) for k in LOG_COLUMNS}
    nll = col["l1"] + col["p_loss"]  # perceptual_weight 1
    assert nll[10:15].mean() < 0.8 * nll[:5].mean()  # L1 + LPIPS-VGG warm-up
    assert nll[15:].mean() < nll[:5].mean()  # the GAN (adaptive weight ~0.1-0.3 here) does not undo it
    assert col["d_loss"][-5:].mean() < 0.8  # the discriminator learns: 1 is chance for the hinge loss
    gan = np.stack([col[k] for k in ("g_loss", "d_loss", "logits_real", "d_weight")], axis=1)
    assert np.isnan(gan[:15, :3]).all() and (gan[:15, 3] == 0).all()  # the GAN starts at step index 15
    assert np.isfinite(gan[15:]).all() and (gan[15:, 3] > 0).all()


def test_resume_continues_the_same_run(photos, tmp_path):
    cfg = TrainConfig(steps=8, batch=2, crop=32, restart_every=3, disc_start=2, checkpoint_minutes=0)
    straight = load_checkpoint(train_vqgan(photos, tmp_path / "a", cfg, TINY))
    train_vqgan(photos, tmp_path / "b", replace(cfg, steps=4), TINY)
    with pytest.raises(FileExistsError):
        train_vqgan(photos, tmp_path / "b", cfg, TINY)  # refusing to overwrite without --resume
    with pytest.raises(ResumeError, match="disc_weight=0.8, now 0.5"):
        train_vqgan(photos, tmp_path / "b", replace(cfg, disc_weight=0.5), TINY, resume=True)
    resumed = load_checkpoint(train_vqgan(photos, tmp_path / "b", cfg, TINY, resume=True))
    assert resumed["step"] == straight["step"] == 8
    for part in ("model", "discriminator"):
        for k, v in straight[part].items():
            assert torch.equal(v, resumed[part][k]), (part, k)
    a, b = _log(tmp_path / "a" / "log.csv"), _log(tmp_path / "b" / "log.csv")
    assert [r["step"] for r in b] == [str(i) for i in range(1, 9)]
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [r["d_loss"] for r in a] == [r["d_loss"] for r in b] and b[-1]["d_loss"] != "nan"

    # a checkpoint from before the GAN recipe is refused, pointing at --init
    old = {k: v for k, v in resumed.items() if k not in ("discriminator", "disc_optimizer")}
    torch.save(old, tmp_path / "b" / "checkpoint.pt")
    with pytest.raises(ResumeError, match="--init"):
        train_vqgan(photos, tmp_path / "b", replace(cfg, steps=9), TINY, resume=True)


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    """A codec bundle of a (random) TINY model: what --init usually points at."""
    torch.manual_seed(1)
    model = VQModel(TINY)
    path = tmp_path_factory.mktemp("bundle") / "tiny.safetensors"
    save_codec(Codec(model, {16: Codebook.from_model(model)}), path)
    return path


@pytest.mark.parametrize("post_quant_conv", [False, True])
def test_freeze_encoder_keeps_every_index_map(photos, tiny_bundle, tmp_path, post_quant_conv):
    start = load_codec(tiny_bundle).model.state_dict()
    cfg = TrainConfig(
        steps=3,
        batch=2,
        crop=32,
        disc_start=0,
        restart_every=1,
        checkpoint_minutes=60,
        freeze_encoder=True,
        freeze_post_quant_conv=post_quant_conv,
        init=str(tiny_bundle),
    )
    after = load_checkpoint(train_vqgan(photos, tmp_path / "run", cfg))  # config from the bundle
    assert VQGANConfig.from_dict(after["model_config"]) == TINY
    fixed = ("encoder.", "quant_conv.", "quantize.") + (("post_quant_conv.",) if post_quant_conv else ())
    for k, v in start.items():
        assert torch.equal(v, after["model"][k]) == k.startswith(fixed), k
    assert all(r["restarted"] == "0" for r in _log(tmp_path / "run" / "log.csv"))


def test_disc_warmup_logs_the_discriminator_before_the_generator_term(photos, tiny_bundle, tmp_path):
    cfg = TrainConfig(
        steps=5,
        batch=2,
        crop=32,
        disc_start=1,
        disc_warmup=2,
        checkpoint_minutes=60,
        perceptual_weight=0.0,
        freeze_encoder=True,
        init=str(tiny_bundle),
    )
    rows = _log(train_vqgan(photos, tmp_path / "run", cfg).parent / "log.csv")
    d_on = [r["d_loss"] != "nan" for r in rows]
    g_on = [r["g_loss"] != "nan" for r in rows]
    assert d_on == [False, True, True, True, True] and g_on == [False, False, False, True, True]


def test_init_from_a_training_checkpoint(photos, tiny_bundle, tmp_path):
    model = load_init_model(tiny_bundle)
    ckpt = tmp_path / "run" / "checkpoint.pt"
    train_vqgan(
        photos, tmp_path / "run", TrainConfig(steps=1, batch=2, crop=32, perceptual_weight=0.0, init=str(tiny_bundle))
    )
    assert _log(tmp_path / "run" / "log.csv")[0]["restarted"] == "0"  # a fitted book is not re-seeded at step 1
    again = load_init_model(ckpt)
    assert again.config == model.config
    assert torch.equal(again.decoder.conv_out.weight, load_checkpoint(ckpt)["model"]["decoder.conv_out.weight"])
    with pytest.raises(CodecError, match="different model config"):
        train_vqgan(photos, tmp_path / "other", TrainConfig(steps=1, init=str(ckpt)), replace(TINY, n_embed=8))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CodecError, match="neither a codec bundle"):
        load_init_model(tmp_path / "junk.pt")


def test_train_cli_with_init_and_freeze(photos, tiny_bundle, tmp_path):
    out = tmp_path / "run"
    args = [
        "train",
        "vqgan",
        "--data",
        str(photos),
        "--out",
        str(out),
        "--steps",
        "2",
        "--batch",
        "2",
        "--crop",
        "32",
        "--disc-start",
        "1",
        "--perceptual-weight",
        "0",
        "--init",
        str(tiny_bundle),
        "--freeze",
        "encoder,post_quant_conv",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    saved = load_checkpoint(out / "checkpoint.pt")["train_config"]
    assert saved["freeze_encoder"] is True and saved["freeze_post_quant_conv"] is True
    assert _log(out / "log.csv")[-1]["d_loss"] != "nan"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--freeze", "encoder"], "--freeze encoder needs --init"),
        (["--freeze", "decoder"], "--freeze must be none or encoder or encoder,post_quant_conv"),
        (["--init", "BUNDLE", "--ch", "64"], "--ch and --n-embed come from the --init model"),
        (["--init", "missing.pt"], "--init file not found"),
    ],
)
def test_train_cli_user_errors_are_one_line(photos, tiny_bundle, tmp_path, args, message):
    args = [str(tiny_bundle) if a == "BUNDLE" else a for a in args]
    result = CliRunner().invoke(app, ["train", "vqgan", "--data", str(photos), "--out", str(tmp_path / "r"), *args])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


# --- codebook fine-tuning ------------------------------------------------------------------------


def _photo_latents(model: VQModel, photos, cache) -> list[torch.Tensor]:
    """Encoder outputs of 6 of the photos and their mirror images, as the codebook commands fit on."""
    return [z.float().unsqueeze(0) for z in encode_photos(Codec(model, {}), choose_photos(photos, 6, 0), cache)]


@pytest.fixture(scope="module")
def ladder(photos, tiny_bundle, tmp_path_factory):
    """The TINY bundle's model with a K-means ladder 16 -> 4 (priors fitted on the photos)."""
    model = load_codec(tiny_bundle).model
    return build_ladder(model, _photo_latents(model, photos, tmp_path_factory.mktemp("latents")), [16, 4], views=2)


def _recon_loss(codec: Codec, K: int, x: torch.Tensor) -> float:
    """L1 + LPIPS-VGG of reconstructing crops ``x`` through K (the loss fine-tuning lowers)."""
    imgs = [((x[i].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy() for i in range(len(x))]
    rec = torch.stack([to_tensor(codec.decode(codec.encode(img, K), K))[0] for img in imgs])
    return reconstruction_loss(x, rec, 1.0)["nll"].item()


def test_finetune_lowers_the_loss_and_keeps_the_vqgan(photos, ladder, tmp_path):
    dataset = CropDataset(photos, 32)
    held_out = dataset.batch(np.random.default_rng(99), 8)
    before = {k: v.clone() for k, v in ladder.model.state_dict().items()}
    cfg = FinetuneConfig(steps=25, batch=4, crop=32, lr=3e-2)
    tuned, done = finetune_ladder(
        ladder, dataset, _photo_latents(ladder.model, photos, tmp_path), cfg, tmp_path / "run", prior_views=2
    )
    log = _log(tmp_path / "run" / "log.csv")
    assert done == 25 and [r["step"] for r in log] == [str(i) for i in range(1, 26)]
    assert list(log[0]) == ["step", *log_columns([4])]  # every K below the base, by default
    for k, v in tuned.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.requires_grad for p in tuned.model.parameters())  # the caller's model is left as it was
    cb = tuned.codebooks[4]
    assert cb.finetuned and not tuned.codebooks[16].finetuned and tuned.codebooks[16].raw is None
    assert cb.raw is ladder.codebooks[4] and not torch.equal(cb.embedding, cb.raw.embedding)
    assert _recon_loss(tuned, 4, held_out) < 0.97 * _recon_loss(tuned.raw_codec(), 4, held_out)  # 1.33 vs 1.41
    assert cb.prior.probs.sum() == pytest.approx(1.0)

    with pytest.raises(CodecError, match="already fine-tuned"):
        finetune_targets(tuned, [4])
    with pytest.raises(CodecError, match="base codebook"):
        finetune_targets(ladder, [16])
    with pytest.raises(CodecError, match="no codebook with K=8"):
        finetune_targets(ladder, [8])


def test_finetune_cli_writes_a_bundle_with_raw_codebooks(photos, ladder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the latent cache goes to ./runs/prior-data
    save_codec(ladder, tmp_path / "kmeans.safetensors")
    out = tmp_path / "ft.safetensors"
    result = CliRunner().invoke(
        app,
        [
            "codebook",
            "finetune",
            "--model",
            str(tmp_path / "kmeans.safetensors"),
            "--out",
            str(out),
            "--data",
            str(photos),
            "--steps",
            "2",
            "--batch",
            "2",
            "--crop",
            "32",
            "--images",
            "3",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "K=4: loss" in result.output
    tuned = load_codec(out)
    assert tuned.codebooks[4].finetuned and tuned.codebooks[4].raw is not None
    assert tuned.provenance["finetune"]["ks"] == [4] and tuned.provenance["finetune"]["steps"] == 2
    assert tuned.provenance["finetune"]["prior_views"] == "photo and mirror at shifts [0]"
    again = CliRunner().invoke(
        app, ["codebook", "finetune", "--model", str(out), "--out", str(out), "--data", str(photos), "--quiet"]
    )
    assert again.exit_code == 2 and "already fine-tuned" in again.output


def test_minutes_end_a_run_with_a_checkpoint_that_resumes(photos, tmp_path):
    cfg = TrainConfig(steps=50, batch=2, crop=32, disc_start=0, checkpoint_minutes=60, perceptual_weight=0.0)
    ckpt = train_vqgan(photos, tmp_path / "r", cfg, TINY, minutes=0.0)
    assert load_checkpoint(ckpt)["step"] == 1  # the first step past the budget ends the run, saved
    ckpt = train_vqgan(photos, tmp_path / "r", replace(cfg, steps=3), TINY, resume=True)
    assert load_checkpoint(ckpt)["step"] == 3 and len(_log(tmp_path / "r" / "log.csv")) == 3


def test_decoder_swap_can_restart_finetuned_rungs_from_kmeans(photos, ladder, tmp_path, monkeypatch):
    """The GPU route: retrain the decoder (encoder frozen), put it into the bundle with its fine-tuned
    rungs back at K-means (--kmeans-start) and the priors kept (--images 0), then fine-tune again."""
    monkeypatch.chdir(tmp_path)  # the latent cache goes to ./runs/prior-data
    kmeans = tmp_path / "kmeans.safetensors"
    save_codec(ladder, kmeans)
    tuned = tmp_path / "ft.safetensors"
    result = CliRunner().invoke(
        app,
        [
            "codebook",
            "finetune",
            "--model",
            str(kmeans),
            "--out",
            str(tuned),
            "--data",
            str(photos),
            "--steps",
            "9",
            "--batch",
            "2",
            "--crop",
            "32",
            "--images",
            "3",
            "--minutes",
            "0",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    assert load_codec(tuned).provenance["finetune"]["steps_run"] == 1
    ckpt = train_vqgan(
        photos,
        tmp_path / "dec",
        TrainConfig(steps=1, batch=2, crop=32, perceptual_weight=0.0, freeze_encoder=True, init=str(kmeans)),
    )
    args = [
        "codebook",
        "decoder",
        "--model",
        str(tuned),
        "--checkpoint",
        str(ckpt),
        "--out",
        str(tmp_path / "swapped.safetensors"),
        "--images",
        "0",
    ]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2 and "fine-tuned for the old decoder" in refused.output
    result = CliRunner().invoke(app, [*args, "--kmeans-start"])
    assert result.exit_code == 0, result.output
    swapped, start = load_codec(tmp_path / "swapped.safetensors"), load_codec(kmeans)
    new_decoder = load_checkpoint(ckpt)["model"]["decoder.conv_out.weight"]
    assert torch.equal(swapped.model.decoder.conv_out.weight, new_decoder.half().float())
    for K in (16, 4):
        cb = swapped.codebooks[K]
        assert not cb.finetuned and torch.equal(cb.embedding, start.codebooks[K].embedding)
        assert np.array_equal(cb.prior.probs, start.codebooks[K].prior.probs)  # --images 0 keeps the priors


def test_codebook_kmeans_fits_on_cached_photos_and_their_mirrors(photos, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the latent cache goes to ./runs/prior-data
    ckpt = train_vqgan(photos, tmp_path / "run", TrainConfig(steps=1, batch=2, crop=32, perceptual_weight=0.0), TINY)
    out = tmp_path / "kmeans.safetensors"
    args = [
        "codebook",
        "kmeans",
        "--checkpoint",
        str(ckpt),
        "--out",
        str(out),
        "--data",
        str(photos),
        "--ks",
        "16,4",
        "--images",
        "6",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    codec = load_codec(out)
    assert codec.ks == [16, 4] and codec.provenance["prior_views"] == "photo and mirror at shifts [0]"
    cache = list((tmp_path / "runs" / "prior-data").iterdir())
    assert len(cache) == 1
    # the ladder is what build_ladder makes of those photos and their mirror images (read back from
    # the cache), each photo held out with its mirror
    model = load_init_model(ckpt)
    latents = _photo_latents(model, photos, cache[0])
    expected, unmirrored = (build_ladder(model, latents, [16, 4], views=2), build_ladder(model, latents[::2], [16, 4]))
    for K in (16, 4):
        got, want = codec.codebooks[K].prior, expected.codebooks[K].prior
        assert np.allclose(got.probs, want.probs, rtol=1e-6, atol=0)
        assert np.array_equal(got.context, want.context) and got.pair == want.pair
    assert not np.allclose(codec.codebooks[4].prior.probs, unmirrored.codebooks[4].prior.probs, rtol=1e-3, atol=0)
    stamp = cache[0].stat().st_mtime_ns
    assert CliRunner().invoke(app, [*args, "--out", str(tmp_path / "again.safetensors")]).exit_code == 0
    assert cache[0].stat().st_mtime_ns == stamp and load_codec(tmp_path / "again.safetensors").ks == [16, 4]


def test_codebook_priors_refits_every_prior_and_nothing_else(photos, ladder, tmp_path, monkeypatch):
    from vqnet.restore.store import index_fingerprint

    monkeypatch.chdir(tmp_path)  # the latent cache goes to ./runs/prior-data
    kmeans, tuned, refit = (tmp_path / f"{n}.safetensors" for n in ("kmeans", "ft", "refit"))
    save_codec(ladder, kmeans)
    result = CliRunner().invoke(
        app,
        [
            "codebook",
            "finetune",
            "--model",
            str(kmeans),
            "--out",
            str(tuned),
            "--data",
            str(photos),
            "--steps",
            "2",
            "--batch",
            "2",
            "--crop",
            "32",
            "--images",
            "1",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    caches = tmp_path / "runs" / "prior-data"
    finetune_cache = set(caches.iterdir())  # its one photo's latents: a cache of another photo list
    result = CliRunner().invoke(
        app,
        [
            "codebook",
            "priors",
            "--model",
            str(tuned),
            "--out",
            str(refit),
            "--data",
            str(photos),
            "--images",
            "4",
            "--shifts",
            "4,0",
        ],
    )
    assert result.exit_code == 0, result.output
    before, after = load_codec(tuned), load_codec(refit)
    assert after.provenance["prior_images"] == 4
    assert after.provenance["prior_views"] == "photo and mirror at shifts [0, 4]"
    assert len(set(caches.iterdir()) - finetune_cache) == 2  # one cache per shift, reused next time
    for k, v in before.model.state_dict().items():
        assert torch.equal(v, after.model.state_dict()[k]), k
    for K, cb in before.codebooks.items():
        new = after.codebooks[K]
        assert torch.equal(cb.embedding, new.embedding) and cb.finetuned == new.finetuned
        assert index_fingerprint(after, K) == index_fingerprint(before, K)  # transformers stay valid
        assert new.prior.context is not None and not np.array_equal(new.prior.probs, cb.prior.probs)
        if cb.raw is not None:  # the "w/o fine-tune" ablation's own prior is refit too
            assert not np.array_equal(new.raw.prior.probs, cb.raw.prior.probs)
    missing = CliRunner().invoke(
        app, ["codebook", "priors", "--model", str(tmp_path / "nope.safetensors"), "--out", str(refit)]
    )
    assert missing.exit_code == 2 and "Traceback" not in missing.output
    bad = CliRunner().invoke(app, ["codebook", "priors", "--model", str(tuned), "--out", str(refit), "--shifts", "-8"])
    assert bad.exit_code == 2 and "--shifts must be non-negative" in bad.output


def test_device_option_is_checked_in_one_line(photos, tmp_path):
    for device, message in (("cuda", "no CUDA GPU is visible"), ("tpu", "--device must be cpu or cuda")):
        if device == "cuda" and torch.cuda.is_available():
            continue
        result = CliRunner().invoke(
            app, ["train", "vqgan", "--data", str(photos), "--out", str(tmp_path / "r"), "--device", device]
        )
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_decoder_growth_options_start_from_the_init_model_and_resume(photos, tiny_bundle, tmp_path):
    out = tmp_path / "wide"
    args = [
        "train",
        "vqgan",
        "--data",
        str(photos),
        "--out",
        str(out),
        "--batch",
        "2",
        "--crop",
        "32",
        "--disc-start",
        "100",
        "--perceptual-weight",
        "0",
        "--init",
        str(tiny_bundle),
        "--freeze",
        "encoder",
        "--decoder-ch",
        "64",
        "--decoder-blocks",
        "2",
    ]
    result = CliRunner().invoke(app, [*args, "--steps", "2"])
    assert result.exit_code == 0, result.output
    state = load_checkpoint(out / "checkpoint.pt")
    assert VQGANConfig.from_dict(state["model_config"]) == replace(TINY, decoder_ch=64, decoder_res_blocks=2)
    assert state["model"]["decoder.conv_out.weight"].shape[1] == 64
    start = load_codec(tiny_bundle).model.state_dict()
    assert all(torch.equal(start[k], state["model"][k]) for k in start if k.startswith("encoder."))
    result = CliRunner().invoke(app, [*args, "--steps", "3", "--resume"])
    assert result.exit_code == 0, result.output
    assert [r["step"] for r in _log(out / "log.csv")] == ["1", "2", "3"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--decoder-blocks", "2"], "--decoder-ch/--decoder-blocks grow the --init decoder"),
        (["--init", "BUNDLE", "--decoder-ch", "80"], "a multiple of its current ch=32"),
    ],
)
def test_decoder_ch_errors_are_one_line(photos, tiny_bundle, tmp_path, args, message):
    args = [str(tiny_bundle) if a == "BUNDLE" else a for a in args]
    result = CliRunner().invoke(
        app,
        ["train", "vqgan", "--data", str(photos), "--out", str(tmp_path / "r"), "--steps", "1", "--crop", "32", *args],
    )
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_validation_logs_the_held_out_loss_keeps_the_best_and_changes_nothing(photos, tmp_path):
    cfg = TrainConfig(steps=6, batch=2, crop=32, lr=1e-3, restart_every=2, disc_start=100, checkpoint_minutes=60)
    plain = train_vqgan(photos, tmp_path / "plain", cfg, TINY)
    watched = train_vqgan(photos, tmp_path / "val", cfg, TINY, val=photos, val_every=2)
    # validating draws no random numbers: the same run, step for step
    untimed = [{k: r[k] for k in LOG_COLUMNS if k != "seconds"} for r in _log(tmp_path / "plain" / "log.csv")]
    assert untimed == [{k: r[k] for k in LOG_COLUMNS if k != "seconds"} for r in _log(tmp_path / "val" / "log.csv")]
    assert not (tmp_path / "plain" / "val.csv").exists() and not (tmp_path / "plain" / "best.pt").exists()
    rows = _log(tmp_path / "val" / "val.csv")
    assert list(rows[0]) == VAL_COLUMNS and [r["step"] for r in rows] == ["2", "4", "6"]
    losses = [float(r["loss"]) for r in rows]
    assert all(abs(float(r["l1"]) + float(r["p_loss"]) - float(r["loss"])) < 1e-4 for r in rows)  # weight 1
    lowest = [loss < min(losses[:i], default=np.inf) for i, loss in enumerate(losses)]
    assert [r["best"] == "1" for r in rows] == lowest and lowest[0]
    best = load_checkpoint(tmp_path / "val" / "best.pt")
    step, loss = best_validation(tmp_path / "val")
    assert best["step"] == step == int(rows[int(np.argmin(losses))]["step"]) and loss == min(losses)
    assert load_checkpoint(watched)["step"] == load_checkpoint(plain)["step"] == 6

    # a resumed run logs each validation once, as the uninterrupted one did
    train_vqgan(photos, tmp_path / "resumed", replace(cfg, steps=4), TINY, val=photos, val_every=2)
    train_vqgan(photos, tmp_path / "resumed", cfg, TINY, resume=True, val=photos, val_every=2)
    assert _log(tmp_path / "resumed" / "val.csv") == rows


def test_validation_cli_reports_the_best_and_refuses_an_empty_folder(photos, tiny_bundle, tmp_path):
    base = [
        "train",
        "vqgan",
        "--data",
        str(photos),
        "--init",
        str(tiny_bundle),
        "--freeze",
        "encoder",
        "--batch",
        "2",
        "--crop",
        "32",
        "--perceptual-weight",
        "0",
    ]
    res = CliRunner().invoke(
        app, [*base, "--steps", "2", "--out", str(tmp_path / "run"), "--val", str(photos), "--val-every", "1"]
    )
    assert res.exit_code == 0, res.output
    assert "best held-out loss" in res.output and (tmp_path / "run" / "best.pt").exists()
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(
        app, [*base, "--steps", "1", "--out", str(tmp_path / "run2"), "--val", str(tmp_path / "empty")]
    )
    assert res.exit_code != 0 and "no images" in res.output and "Traceback" not in res.output
