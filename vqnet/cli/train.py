"""``vqnet train vqgan|prior``: train a codec or a concealment transformer (resumable)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress

from vqnet.cli.errors import fail, user_errors
from vqnet.cli.options import DEVICE_HELP, MINUTES_HELP, check_device
from vqnet.cli.recipe import MODEL_META, recipe_option
from vqnet.progress import COLUMNS

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Train models (resumable).")

#: ``vqnet train vqgan --freeze``: the parts kept fixed (``encoder`` includes quant_conv and the codebook).
FREEZE_CHOICES = ("none", "encoder", "encoder,post_quant_conv")


@app.command("vqgan")
def train_vqgan_cmd(
    ctx: typer.Context,
    config: Annotated[Path | None, recipe_option("vqgan")] = None,
    data: Annotated[Path, typer.Option(help="Folder of training photos (recursively).")] = Path("../shared/data/train"),
    out: Annotated[Path, typer.Option(help="Run folder: checkpoint.pt and log.csv.")] = Path("runs/vqgan"),
    steps: Annotated[int, typer.Option(min=1, help="Total optimiser steps (a resumed run continues to this).")] = 4000,
    batch: Annotated[int, typer.Option(min=1, help="Crops per step.")] = 8,
    crop: Annotated[int, typer.Option(min=16, help="Crop size in pixels (multiple of 16).")] = 128,
    ch: Annotated[
        int | None, typer.Option(min=32, help="Base channel count (multiple of 32) (default 32; not with --init).")
    ] = None,
    n_embed: Annotated[
        int | None, typer.Option(min=2, help="Base codebook size (default 1024; not with --init).")
    ] = None,
    lr: Annotated[float, typer.Option(min=0.0, help="Adam learning rate.")] = 3e-4,
    perceptual_weight: Annotated[
        float, typer.Option(min=0.0, help="Weight of LPIPS-VGG; 0 drops it (a much cheaper L1-only step).")
    ] = 1.0,
    disc_weight: Annotated[
        float, typer.Option(min=0.0, help="GAN weight on top of the adaptive weight (taming: 0.8).")
    ] = 0.8,
    disc_start: Annotated[int, typer.Option(min=0, help="Step the PatchGAN starts at (0 suits --init runs).")] = 2000,
    disc_warmup: Annotated[
        int,
        typer.Option(
            min=0,
            help="Steps from --disc-start in which only the "
            "discriminator learns, so the decoder's first GAN "
            "gradients come from a trained one (taming: 0).",
        ),
    ] = 0,
    disc_lr: Annotated[float | None, typer.Option(min=0.0, help="Discriminator learning rate (default: --lr).")] = None,
    disc_layers: Annotated[int, typer.Option(min=1, help="PatchGAN depth (taming: 3, or 2 for f16-16384).")] = 3,
    init: Annotated[
        Path | None,
        typer.Option(
            help="Start from this codec bundle (.safetensors) or training checkpoint; its model config is used."
        ),
    ] = None,
    freeze: Annotated[
        str,
        typer.Option(
            help="none | encoder: keep encoder, quant_conv and codebook fixed and "
            "train post_quant_conv + decoder (index maps stay valid; needs "
            "--init) | encoder,post_quant_conv: the decoder alone (`masked` "
            "concealment then also chooses the same codes)."
        ),
    ] = "none",
    decoder_ch: Annotated[
        int | None,
        typer.Option(
            min=32, help="Widen the --init model's decoder to this base width (a multiple of its own) before training."
        ),
    ] = None,
    decoder_blocks: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Deepen the --init model's decoder to this many "
            "res blocks per level before training. Grown "
            "decoders start out computing the same image and "
            "index maps stay valid; they decode slower (2x "
            "the width: ~3x the time).",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for weights and data order.")] = 0,
    bf16: Annotated[bool, typer.Option(help="bf16 autocast (only faster on CPUs with avx512_bf16).")] = False,
    resume: Annotated[bool, typer.Option(help="Continue OUT/checkpoint.pt exactly where it stopped.")] = False,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "cpu",
    minutes: Annotated[float | None, typer.Option(min=0.0, help=MINUTES_HELP)] = None,
    val: Annotated[
        Path | None,
        typer.Option(
            help="Folder of held-out photos: their loss goes to OUT/val.csv "
            "every --val-every steps and OUT/best.pt keeps the lowest, "
            "for long runs that start to memorise their crops."
        ),
    ] = None,
    val_every: Annotated[int, typer.Option(min=1, help="Steps between two --val measurements.")] = 250,
) -> None:
    """Train the f=16 VQGAN with taming's recipe (L1 + LPIPS-VGG + codebook loss, dead-code restarts,
    PatchGAN with hinge loss from --disc-start on), checkpointing every 3 minutes."""
    with user_errors():
        if crop % 16 or (ch or 32) % 32:
            raise typer.BadParameter("crop must be a multiple of 16 and ch a multiple of 32")
        sizes = {k: v for k, v in (("ch", ch), ("n_embed", n_embed)) if v is not None}
        recipe_model = ctx.meta.get(MODEL_META)
        if init and sizes and recipe_model is None:
            raise typer.BadParameter("--ch and --n-embed come from the --init model; leave them out")
        if freeze not in FREEZE_CHOICES:
            raise typer.BadParameter(f"--freeze must be {' or '.join(FREEZE_CHOICES)}, got {freeze!r}")
        if (decoder_ch or decoder_blocks) and not init:
            raise typer.BadParameter("--decoder-ch/--decoder-blocks grow the --init decoder")
        if freeze != "none" and not (init or resume):
            raise typer.BadParameter(f"--freeze {freeze} needs --init: a random encoder would stay random")
        from vqnet.training.vqgan import TrainConfig, small_config, train_vqgan

        model_cfg = small_config(**sizes) if sizes else None
        if recipe_model is not None:  # the recipe's model, --ch and --n-embed overriding it
            from vqnet.codec.model import VQGANConfig

            model_cfg = VQGANConfig.from_dict(recipe_model)
            model_cfg = replace(
                model_cfg,
                n_embed=n_embed or model_cfg.n_embed,
                ddconfig=replace(model_cfg.ddconfig, ch=ch or model_cfg.ddconfig.ch),
            )

        cfg = TrainConfig(
            steps=steps,
            batch=batch,
            crop=crop,
            lr=lr,
            seed=seed,
            bf16=bf16,
            perceptual_weight=perceptual_weight,
            disc_weight=disc_weight,
            disc_start=disc_start,
            disc_warmup=disc_warmup,
            disc_lr=disc_lr,
            disc_layers=disc_layers,
            freeze_encoder=freeze != "none",
            freeze_post_quant_conv=freeze == "encoder,post_quant_conv",
            init=str(init) if init else None,
            decoder_ch=decoder_ch,
            decoder_res_blocks=decoder_blocks,
            device=check_device(device),
        )
        path = train_vqgan(
            data, out, cfg, model_cfg, resume=resume, minutes=minutes, val=val, val_every=val_every, progress=True
        )
        typer.echo(f"checkpoint: {path}")
        if val is not None:
            from vqnet.training.vqgan import best_validation

            step, loss = best_validation(out)
            typer.echo(f"best held-out loss {loss:.4f} at step {step}: {out / 'best.pt'}")


def default_workers(device: str) -> int:
    """Batch-drawing processes for ``device``: none on the CPU, where the model itself is the slow
    part and needs every core; on a GPU all but two cores, at most 8."""
    if device == "cpu":
        return 0
    return max(1, min(8, (os.cpu_count() or 1) - 2))


@app.command("prior")
def train_prior_cmd(
    kind: Annotated[str, typer.Option(help="ar: the paper's sliding-window GPT; masked: our bidirectional model.")],
    K: Annotated[int, typer.Option("--K", min=2, help="Codebook size of the ladder rung to train for.")],
    config: Annotated[Path | None, recipe_option("prior")] = None,
    model: Annotated[Path | None, typer.Option(help="Codec bundle (default: the bundled model).")] = None,
    data: Annotated[Path, typer.Option(help="Folder of training photos (recursively).")] = Path("../shared/data/train"),
    photos: Annotated[
        int | None, typer.Option(min=1, help="Use this many photos (seeded choice; default all).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder (default runs/prior-KIND-KK).")] = None,
    steps: Annotated[int, typer.Option(min=1, help="Total optimiser steps (a resumed run continues to this).")] = 2000,
    batch: Annotated[int, typer.Option(min=1, help="16x16 windows per step.")] = 32,
    layers: Annotated[int, typer.Option(min=1, help="Transformer blocks.")] = 4,
    heads: Annotated[int, typer.Option(min=1, help="Attention heads.")] = 4,
    embd: Annotated[int, typer.Option(min=8, help="Width (multiple of --heads).")] = 128,
    lr: Annotated[float, typer.Option(min=0.0, help="Peak AdamW learning rate.")] = 5e-4,
    seed: Annotated[int, typer.Option(help="Seed for weights, windows and masks.")] = 0,
    dropout: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=0.9,
            help="Dropout on the embeddings and residual branches while training (upstream's embd_pdrop, resid_pdrop).",
        ),
    ] = 0.0,
    init: Annotated[
        str,
        typer.Option(
            help="codes: 2-D sin-cos positions, code embeddings from the codebook, "
            "head tied to them (learns faster); taming: upstream's init."
        ),
    ] = "codes",
    corrupt: Annotated[
        bool,
        typer.Option(
            help="ar: at sampled lost positions the inputs are the model's own greedy "
            "guesses (targets stay true), as in a concealment run."
        ),
    ] = False,
    start: Annotated[
        Path | None,
        typer.Option(
            help="Start from this concealment file's weights (same kind, K and --layers/--heads/--embd): a fine-tune."
        ),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue OUT/checkpoint.pt exactly where it stopped.")] = False,
    device: Annotated[str, typer.Option(help="Where to train and encode: cpu, or cuda where a GPU is lent.")] = "cpu",
    minutes: Annotated[
        float | None,
        typer.Option(
            min=0.0, help="Stop after this many minutes of training, with a checkpoint (for a fixed GPU budget)."
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Processes that draw the training windows and "
            "masks ahead (the same run, faster). Default: none "
            "with --device cpu, where they would take the model's "
            "cores; up to 8 with cuda, where drawing sets the "
            "pace.",
        ),
    ] = None,
    maps: Annotated[
        Path | None,
        typer.Option(
            help="Index-map file: read when it exists (it must come from this "
            "codec's K), else written after encoding --data. Lets a GPU "
            "machine train on maps encoded elsewhere."
        ),
    ] = None,
    bf16: Annotated[
        bool | None,
        typer.Option(
            "--bf16/--no-bf16",
            help="bf16 autocast for the forward passes. "
            "Default: on with --device cuda, off on the "
            "CPU (where it is slower).",
        ),
    ] = None,
    install: Annotated[
        bool,
        typer.Option(
            "--install",
            help="With the bundled codec: replace its shipped "
            "transformer and manifest entry. Without it the file "
            "goes to OUT beside a copy of the codec.",
        ),
    ] = False,
) -> None:
    """Train a concealment transformer for one K, checkpointing every 3 minutes, then write it in fp16
    beside the codec as <codec>.KIND.K<K>.safetensors.

    The bundled codec's shipped transformers are only replaced with --install (a trial run must not
    overwrite them); otherwise OUT gets the file and a copy of the codec to pass as --model."""
    with user_errors():
        from vqnet.restore import TRANSFORMER_METHODS

        if kind not in TRANSFORMER_METHODS:
            raise typer.BadParameter(f"--kind must be one of {', '.join(TRANSFORMER_METHODS)}")
        if init not in ("codes", "taming"):
            raise typer.BadParameter("--init must be codes or taming")
        if embd % heads:
            raise typer.BadParameter("--embd must be a multiple of --heads")
        if corrupt and kind != "ar":
            raise typer.BadParameter("--corrupt applies to --kind ar only")
        from vqnet.codec.bundle import DEFAULT_MODEL, MANIFEST, CodecError, load_codec
        from vqnet.images import choose_photos
        from vqnet.restore.store import concealer_path, export_concealer, index_fingerprint, load_concealer_file
        from vqnet.training.loop import load_checkpoint
        from vqnet.training.photos import photo_views
        from vqnet.training.prior import PriorTrainConfig, train_prior
        from vqnet.training.prior_data import index_maps, load_maps, save_maps

        codec = load_codec(model)
        codec.codebook(K)
        dest = concealer_path(codec, kind, K)
        bundled = dest.parent == DEFAULT_MODEL.parent
        if install and not bundled:
            raise typer.BadParameter(
                "--install replaces the bundled model's transformer; with --model the file "
                "is written beside that codec anyway"
            )
        device = check_device(device)
        if not (maps and maps.is_file()) and not data.is_dir():
            raise FileNotFoundError(f"training photo folder not found: {data}")
        out = out or Path(f"runs/prior-{kind}-K{K}")
        fingerprint = index_fingerprint(codec, K)
        start_weights, start_sha = None, ""
        if start is not None:
            start_model, start_sha = load_concealer_file(start, kind, K, fingerprint)
            start_weights = start_model.state_dict()
        cfg = PriorTrainConfig(
            kind=kind,
            K=K,
            n_layer=layers,
            n_head=heads,
            n_embd=embd,
            steps=steps,
            batch=batch,
            lr=lr,
            seed=seed,
            init=init,
            corrupt=corrupt,
            start=start_sha,
            dropout=dropout,
            bf16=device.startswith("cuda") if bf16 is None else bf16,
        )
        layout = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "n_unmasked")
        if start is not None and any(getattr(start_model.config, f) != getattr(cfg.gpt_config(), f) for f in layout):
            c = start_model.config
            raise CodecError(
                f"--start {start} has {c.n_layer} layers, {c.n_head} heads, width {c.n_embd}; "
                "pass the same --layers/--heads/--embd"
            )
        with Progress(*COLUMNS) as bar:
            encoding = bar.add_task("encoding photos (cached)", total=None, label="")
            if maps and maps.is_file():
                grids, n_photos = load_maps(maps, fingerprint)
            else:
                files = choose_photos(data, photos, seed)
                codec.model.to(device)
                latents = photo_views(codec, files, progress=lambda i, n: bar.update(encoding, total=n, completed=i))
                codec.model.cpu()  # index maps quantise on the CPU, where the codebooks live
                grids, n_photos = index_maps(codec, latents, K), len(files)
                if maps:
                    save_maps(maps, grids, fingerprint, n_photos)
            bar.update(encoding, label=f"{len(grids)} index maps")
        try:
            ckpt = train_prior(
                grids,
                out,
                cfg,
                resume=resume,
                extra={"fingerprint": fingerprint},
                code_vectors=codec.codebook(K).embedding,
                device=device,
                minutes=minutes,
                start_weights=start_weights,
                workers=default_workers(device) if workers is None else workers,
                progress=True,
            )
        except TimeoutError as exc:  # a lost batch-drawing worker
            raise fail(str(exc)) from None
        state = load_checkpoint(ckpt)
        from vqnet.restore.gpt import GPT

        gpt = GPT(cfg.gpt_config())
        gpt.load_state_dict(state["model"])
        if bundled and not install:
            # A self-contained bundle in OUT: codec copy + transformer, usable as --model at once.
            shutil.copyfile(DEFAULT_MODEL, out / DEFAULT_MODEL.name)
            dest = out / dest.name
        sha = export_concealer(
            gpt,
            kind,
            K,
            fingerprint,
            dest,
            {
                "train": json.dumps(state["train_config"]),
                "data": str(maps or data),
                "photos": n_photos,
                "maps": len(grids),
            },
        )
        if bundled and install:
            entries = json.loads(MANIFEST.read_text())
            entries[dest.name] = sha
            MANIFEST.write_text(json.dumps(entries, indent=2, sort_keys=True) + "\n")
        typer.echo(f"checkpoint: {ckpt}\nwrote {dest} (sha256 {sha[:16]}...)")
        if bundled and not install:
            typer.echo(
                f"use it with --model {out / DEFAULT_MODEL.name}; the bundled one is unchanged "
                "(train with --install to replace it)"
            )
