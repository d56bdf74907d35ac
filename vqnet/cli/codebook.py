"""``vqnet codebook kmeans|decoder|priors|finetune``: build and refit the K ladder of a codec."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from vqnet.cli.errors import user_errors
from vqnet.cli.options import DEVICE_HELP, check_device, int_list
from vqnet.cli.recipe import recipe_option
from vqnet.progress import progress_bar

if TYPE_CHECKING:
    import torch

    from vqnet.codec.bundle import Codec

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Build the K ladder of a codec.")


def _photo_views(
    codec: Codec, data: Path, images: int, seed: int, shifts: Sequence[int] = (0,), quiet: bool = False
) -> tuple[list[torch.Tensor], int, str]:
    """Encoder outputs of ``images`` whole training photos (seeded choice) and of their mirror
    images at each shift, cached under ./runs/prior-data (:func:`vqnet.training.photos.photo_views`),
    with a progress bar: what every ``codebook`` command counts code usage and fits priors on.
    Returns the latents as float (1, C, h, w), how many consecutive ones are views of one photo,
    and those views in words for the bundle's provenance."""
    from vqnet.images import choose_photos
    from vqnet.training.photos import photo_views

    files = choose_photos(data, images, seed)
    with progress_bar(len(files) * len(shifts), "encoding photos (cached)", quiet) as advance:
        done = [0]

        def step(i: int, n: int) -> None:
            advance(i - done[0], f"{i}/{n}")
            done[0] = i

        views = photo_views(codec, files, shifts, progress=step)
    return [z.float().unsqueeze(0) for z in views], 2 * len(shifts), f"photo and mirror at shifts {list(shifts)}"


@app.command("kmeans")
def codebook_kmeans(
    checkpoint: Annotated[
        Path,
        typer.Option(
            help="Training checkpoint (checkpoint.pt) of `vqnet train vqgan`, or "
            "an official taming VQGAN (Lightning last.ckpt or a .safetensors "
            "state_dict) with --config."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Codec bundle to write (.safetensors, fp16).")],
    config: Annotated[
        Path | None,
        typer.Option(
            help="The official checkpoint's model.yaml (taming's configs/*.yaml "
            "or the zoo's project.yaml); checked against the weights."
        ),
    ] = None,
    data: Annotated[Path, typer.Option(help="Photos used to count code usage and fit the priors.")] = Path(
        "../shared/data/train"
    ),
    ks: Annotated[
        str, typer.Option(help="Comma-separated codebook sizes (the base size is kept as is).")
    ] = "1024,256,64,16",
    images: Annotated[
        int,
        typer.Option(
            min=1,
            help="How many photos to encode, each with its mirror image "
            "(cached under ./runs/prior-data), for usage counts and "
            "priors.",
        ),
    ] = 300,
    seed: Annotated[int, typer.Option(help="Seed for the photo sample and k-means++.")] = 0,
    device: Annotated[
        str,
        typer.Option(
            help="Where the encoder and the code-usage count run: cpu or cuda (K-means and the priors stay on the CPU)."
        ),
    ] = "cpu",
) -> None:
    """K-means the base codebook into each K (usage-weighted) and fit a range-coding prior per K.

    The base model is a `vqnet train vqgan` checkpoint, or an official taming VQGAN (--config):
    its `loss.*` keys are dropped and the config must match the weights."""
    with user_errors():
        from vqnet.codec.bundle import Codec, CodecError, save_codec
        from vqnet.training.ladder import build_ladder

        k_list = int_list(ks)
        if config is not None:
            from vqnet.codec.taming import load_taming_checkpoint
            from vqnet.weights import sha256_of

            model = load_taming_checkpoint(checkpoint, config)
            origin = {
                "taming_checkpoint": checkpoint.name,
                "checkpoint_sha256": sha256_of(checkpoint),
                "taming_config": model.config.to_dict(),
            }
        elif checkpoint.suffix in (".ckpt", ".safetensors"):
            raise CodecError(f"{checkpoint} looks like an official taming checkpoint: pass its model.yaml as --config")
        else:
            from vqnet.codec.model import VQGANConfig, VQModel
            from vqnet.training.loop import load_checkpoint

            state = load_checkpoint(checkpoint)
            model = VQModel(VQGANConfig.from_dict(state["model_config"])).eval()
            model.load_state_dict(state["model"])
            origin = {"checkpoint_step": int(state["step"]), "train_config": state["train_config"]}
        if bad := [K for K in k_list if not 2 <= K <= model.config.n_embed]:
            raise CodecError(f"--ks {bad[0]}: every K must lie in [2, {model.config.n_embed}] (the base codebook)")
        device = check_device(device)
        model.to(device)
        latents, views, described = _photo_views(Codec(model, {}), data, images, seed)
        model.cpu()
        codec = build_ladder(model, latents, k_list, seed, views, device)
        codec.provenance = origin | {
            "prior_images": images,
            "prior_views": described,
            "data": str(data),
            "kmeans": "usage-weighted",
        }
        sha = save_codec(codec, out)
        for K in codec.ks:
            typer.echo(
                f"K={K}: prior entropy {codec.codebooks[K].prior.entropy_bits():.2f} bits/index (uniform {math.log2(K):.2f})"
            )
        typer.echo(f"wrote {out} (sha256 {sha[:16]})")


@app.command("decoder")
def codebook_decoder(
    model: Annotated[Path, typer.Option(help="Codec bundle whose ladder (codebooks) is kept.")],
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint of a `vqnet train vqgan --freeze encoder` run.")],
    out: Annotated[Path, typer.Option(help="Codec bundle to write.")],
    data: Annotated[Path, typer.Option(help="Photos the priors are refit on.")] = Path("../shared/data/train"),
    images: Annotated[
        int,
        typer.Option(
            min=0,
            help="How many photos to encode, each with its mirror image "
            "(cached), for the priors (0: keep the priors; the index "
            "maps do not change).",
        ),
    ] = 200,
    seed: Annotated[int, typer.Option(help="Seed for the photo sample.")] = 0,
    kmeans_start: Annotated[
        bool,
        typer.Option(
            help="Put fine-tuned rungs back to their K-means codebooks (they were "
            "tuned for the old decoder); fine-tune them again afterwards."
        ),
    ] = False,
) -> None:
    """Swap a fine-tuned decoder into a bundle, keeping every codebook (so every index map and the
    concealment transformers stay valid), and refit each K's prior and context table."""
    with user_errors():
        from vqnet.codec.bundle import load_codec, save_codec
        from vqnet.training.ladder import swap_decoder
        from vqnet.training.vqgan import load_init_model

        codec = load_codec(model)
        if kmeans_start:
            codec = codec.raw_codec()
        new = load_init_model(checkpoint)
        latents, views, described = _photo_views(codec, data, images, seed) if images else (None, 1, "")
        swapped = swap_decoder(codec, new, latents, views)
        swapped.provenance |= {"decoder_checkpoint": str(checkpoint)} | (
            {"prior_images": images, "prior_views": described, "data": str(data)} if images else {}
        )
        sha = save_codec(swapped, out)
        typer.echo(f"wrote {out} (sha256 {sha[:16]}); codebooks kept from {model}")


@app.command("priors")
def codebook_priors(
    model: Annotated[Path, typer.Option(help="Codec bundle whose priors to refit.")],
    out: Annotated[Path, typer.Option(help="Codec bundle to write.")],
    data: Annotated[Path, typer.Option(help="Photos the priors are fitted on (whole photos, no crops).")] = Path(
        "../shared/data/train"
    ),
    images: Annotated[int, typer.Option(min=1, help="How many photos to encode.")] = 1500,
    shifts: Annotated[
        str,
        typer.Option(
            help="Comma-separated pixel shifts to encode every photo (and its mirror) "
            "at: 0,8 doubles the index maps, the f=16 grid moved half a token."
        ),
    ] = "0",
    seed: Annotated[int, typer.Option(help="Seed for the photo sample.")] = 0,
) -> None:
    """Refit every K's range-coding prior and neighbour-context table on whole training photos and
    their mirror images, changing nothing else: index maps, and the concealment transformers
    trained on them, stay valid. For ladders whose priors came from small crops (a GPU run's):
    K=1024's context table needs more neighbour pairs than crops give. Encoder outputs are cached
    under ./runs/prior-data (as `vqnet train prior` does), so another run, or another shift added,
    encodes only what is new."""
    with user_errors():
        from vqnet.codec.bundle import load_codec, save_codec
        from vqnet.training.ladder import refit_priors

        codec = load_codec(model)
        shift_list = sorted(set(int_list(shifts, "--shifts")))
        if not shift_list or shift_list[0] < 0:
            raise typer.BadParameter(f"--shifts must be non-negative pixel counts, got {shifts!r}")
        latents, views, described = _photo_views(codec, data, images, seed, shift_list)
        new = refit_priors(codec, latents, views)
        new.provenance |= {"prior_images": len(latents) // views, "prior_views": described, "data": str(data)}
        sha = save_codec(new, out)
        for K in new.ks:
            prior = new.codebooks[K].prior
            typer.echo(
                f"K={K}: prior entropy {prior.entropy_bits():.2f} bits/index "
                f"(was {codec.codebooks[K].prior.entropy_bits():.2f}); "
                + (f"two neighbours, exponent {prior.pair}" if prior.pair else "one neighbour")
            )
        typer.echo(f"wrote {out} (sha256 {sha[:16]})")


@app.command("finetune")
def codebook_finetune(
    model: Annotated[Path, typer.Option(help="Codec bundle of `vqnet codebook kmeans` to start from.")],
    out: Annotated[Path, typer.Option(help="Codec bundle to write: fine-tuned codebooks, K-means ones kept as raw.")],
    config: Annotated[Path | None, recipe_option("finetune")] = None,
    data: Annotated[
        Path, typer.Option(help="Training photos (crops for fine-tuning; whole photos for the priors).")
    ] = (Path("../shared/data/train")),
    ks: Annotated[
        str | None, typer.Option(help="Comma-separated K to fine-tune (default: every K below the base size).")
    ] = None,
    steps: Annotated[int, typer.Option(min=1, help="Optimiser steps (every K trains on the same crops).")] = 1000,
    batch: Annotated[int, typer.Option(min=1, help="Crops per step.")] = 8,
    crop: Annotated[int, typer.Option(min=16, help="Crop size in pixels (multiple of 16).")] = 128,
    lr: Annotated[float, typer.Option(min=0.0, help="Adam learning rate.")] = 1e-4,
    perceptual_weight: Annotated[
        float, typer.Option(min=0.0, help="Weight of LPIPS-VGG; 0 leaves L1 + codebook loss.")
    ] = 1.0,
    images: Annotated[
        int,
        typer.Option(
            min=1, help="How many photos to encode, each with its mirror image (cached), to refit the priors."
        ),
    ] = 300,
    seed: Annotated[int, typer.Option(help="Seed for the crops and the photo sample.")] = 0,
    run: Annotated[
        Path | None,
        typer.Option(help="Run folder for the checkpoint and log.csv (default runs/finetune-<OUT's name>)."),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue RUN/checkpoint.pt exactly where it stopped.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "cpu",
    minutes: Annotated[
        float | None,
        typer.Option(min=0.0, help="Stop fine-tuning after this many minutes (the steps run are recorded)."),
    ] = None,
    bf16: Annotated[
        bool | None,
        typer.Option(
            "--bf16/--no-bf16",
            help="bf16 autocast for the frozen encoder, "
            "decoder and loss (codebook search in float32). "
            "Default: on with --device cuda, off on the "
            "CPU.",
        ),
    ] = None,
) -> None:
    """Fine-tune each reduced codebook with its quant_conv/post_quant_conv (encoder and decoder
    frozen; L1 + LPIPS-VGG + codebook loss), as the paper does, and refit the priors."""
    with user_errors():
        if crop % 16:
            raise typer.BadParameter("crop must be a multiple of 16")
        from dataclasses import asdict

        from vqnet.codec.bundle import load_codec, save_codec
        from vqnet.training.finetune import FinetuneConfig, finetune_ladder, finetune_targets
        from vqnet.training.loop import read_rows
        from vqnet.training.vqgan import CropDataset

        device = check_device(device)
        codec = load_codec(model)
        codec.model.to(device)
        targets = finetune_targets(codec, None if ks is None else int_list(ks))
        cfg = FinetuneConfig(
            steps=steps,
            batch=batch,
            crop=crop,
            lr=lr,
            perceptual_weight=perceptual_weight,
            seed=seed,
            bf16=device.startswith("cuda") if bf16 is None else bf16,
        )
        run = run or Path("runs") / f"finetune-{out.stem}"
        with progress_bar(None, "loading photos", quiet) as advance:
            dataset = CropDataset(data, crop, progress=lambda i, n: advance(1, f"{i}/{n}"))
        latents, views, described = _photo_views(codec, data, images, seed, quiet=quiet)
        tuned, steps_run = finetune_ladder(
            codec, dataset, latents, cfg, run, targets, resume, minutes, views, progress=not quiet
        )
        tuned.model.cpu()
        history = {K: [float(r[f"loss_K{K}"]) for r in read_rows(run / "log.csv")] for K in targets}
        tuned.provenance["finetune"] = asdict(cfg) | {
            "ks": targets,
            "from_model": codec.model_id,
            "prior_images": images,
            "prior_views": described,
            "data": str(data),
            "steps_run": steps_run,
        }
        sha = save_codec(tuned, out)
        n = max(1, min(10, steps_run))
        for K in targets:
            typer.echo(
                f"K={K}: loss {sum(history[K][:n]) / n:.4f} -> {sum(history[K][-n:]) / n:.4f} "
                f"(mean of first/last {n} steps); prior entropy "
                f"{tuned.codebooks[K].prior.entropy_bits():.2f} bits/index "
                f"(K-means: {tuned.codebooks[K].raw.prior.entropy_bits():.2f})"
            )
        typer.echo(f"wrote {out} (sha256 {sha[:16]})")
