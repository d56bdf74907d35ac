"""Training the VQGAN first stage on this CPU: resumable, logged, deterministic given a seed.

The recipe is taming's (:mod:`vqnet.training.losses`): L1 + LPIPS-VGG, the codebook/commitment loss,
and a PatchGAN with hinge loss and the adaptive weight from ``disc_start`` on; plus dead-code
restarts so the 1024 codes are actually used. LPIPS-VGG dominates the cost of a step on a CPU, so
the intended route is a cheap L1 run (``perceptual_weight=0``, GAN off) followed by a perceptual/GAN
stage started from its weights (``init``) with the encoder frozen (``freeze_encoder``): that trains
only post_quant_conv and the decoder, skips the encoder's backward pass, and leaves every index map
unchanged, so transformers trained on the indices stay valid.

Why checkpoints hold everything (model, discriminator, both optimisers, data RNG, code-usage
statistics, step): a resumed run must continue the same loss curve, not restart Adam's moments or
the data order.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from vqnet.codec.bundle import CodecError, load_codec
from vqnet.codec.model import DDConfig, VQGANConfig, VQModel, grow_decoder
from vqnet.images import list_image_files, load_image
from vqnet.progress import progress_bar
from vqnet.training.loop import ResumeError, TrainingRun, append_row, load_checkpoint, read_rows
from vqnet.training.losses import VQGANLoss, reconstruction_loss


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the outcome of a run (saved in the checkpoint)."""

    steps: int = 4000
    batch: int = 8
    crop: int = 128
    lr: float = 3e-4
    seed: int = 0
    restart_every: int = 50  # dead-code restart period (steps)
    restart_threshold: float = 0.03  # a code used less than this many times per batch (EMA) is dead
    bf16: bool = False  # bf16 autocast is 2-3x faster only on CPUs with avx512_bf16; 25x slower without
    checkpoint_minutes: float = 3.0
    perceptual_weight: float = 1.0  # LPIPS-VGG, as taming; 0 skips the VGG passes (L1 only)
    codebook_weight: float = 1.0
    disc_weight: float = 0.8  # taming's f16-1024 config
    # The GAN starts at this step (0-based), after the L1+LPIPS warm-up: taming's f16-1024 run
    # waits 250k steps, the 16384 one none. Half the default run here; 0 suits --init runs.
    disc_start: int = 2000
    # Steps after disc_start in which only the discriminator learns (0: taming, both at once).
    disc_warmup: int = 0
    disc_lr: float | None = None  # None: ``lr``, as taming (one base rate for both optimisers)
    disc_layers: int = 3
    disc_ndf: int = 64
    # Train only post_quant_conv + decoder (+ discriminator): every index map stays valid.
    freeze_encoder: bool = False
    # Keep post_quant_conv too: the decoder's first conv can absorb any 1x1 change, and ``masked``
    # concealment measures code distances after post_quant_conv, so its choices stay the same.
    freeze_post_quant_conv: bool = False
    init: str | None = None  # codec bundle or training checkpoint the weights start from
    # Grow the --init model's decoder to this base width / res blocks per level first (exactly, so
    # training starts from its quality): more decoder capacity while every index map stays valid.
    decoder_ch: int | None = None
    decoder_res_blocks: int | None = None
    device: str = "cpu"  # "cuda" where a GPU is lent: the same recipe, minutes instead of days


#: Fields a resumed run may change: they do not alter the loss curve up to the saved step (a
#: device only changes the last bits of the arithmetic).
_RESUMABLE_CHANGES = ("steps", "checkpoint_minutes", "init", "device")
LOG_COLUMNS = [
    "step",
    "loss",
    "l1",
    "p_loss",
    "emb_loss",
    "g_loss",
    "d_weight",
    "d_loss",
    "logits_real",
    "logits_fake",
    "perplexity",
    "restarted",
    "seconds",
]
#: ``out/val.csv``: the held-out reconstruction loss (L1 + perceptual_weight * LPIPS-VGG) every
#: ``val_every`` steps; ``best`` is 1 where it was the lowest so far and ``best.pt`` was written.
VAL_COLUMNS = ["step", "loss", "l1", "p_loss", "best"]


def small_config(ch: int = 32, n_embed: int = 1024, embed_dim: int = 32, z_channels: int = 64) -> VQGANConfig:
    """The f=16 model size that trains at a useful rate on 2 CPU cores (cpu-measurements.md config c)."""
    return VQGANConfig(
        embed_dim=embed_dim,
        n_embed=n_embed,
        ddconfig=DDConfig(
            ch=ch, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=1, attn_resolutions=(16,), z_channels=z_channels
        ),
    )


def at_least(img: np.ndarray, side: int) -> np.ndarray:
    """``img`` upscaled (bicubic) so that its short side is at least ``side``: photos smaller than
    the crop still contribute (training, validation and ``scripts/tools/gpu_pack.py`` all use this rule)."""
    h, w = img.shape[:2]
    if min(h, w) >= side:
        return img
    s = side / min(h, w)
    return np.asarray(Image.fromarray(img).resize((max(side, round(w * s)), max(side, round(h * s))), Image.BICUBIC))


class CropDataset:
    """All training photos held in memory as uint8; random crops + horizontal flips.

    Photos whose short side is below the crop are upscaled (bicubic) rather than skipped, so every
    image in the set contributes. Greyscale files become RGB in ``load_image``.
    """

    def __init__(self, root: str | Path, crop: int, progress: Callable[[int, int], None] | None = None):
        files = list_image_files(root)
        self.images: list[np.ndarray] = []
        for i, f in enumerate(files):
            self.images.append(at_least(load_image(f), crop))
            if progress:
                progress(i + 1, len(files))
        self.crop = crop

    def batch(self, rng: np.random.Generator, n: int) -> torch.Tensor:
        out = np.empty((n, self.crop, self.crop, 3), dtype=np.uint8)
        for k in range(n):
            img = self.images[int(rng.integers(len(self.images)))]
            y = int(rng.integers(img.shape[0] - self.crop + 1))
            x = int(rng.integers(img.shape[1] - self.crop + 1))
            patch = img[y : y + self.crop, x : x + self.crop]
            out[k] = patch[:, ::-1] if rng.random() < 0.5 else patch
        return torch.from_numpy(out).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def autoencode(
    model: VQModel, x: torch.Tensor, cfg: TrainConfig, encoder_grad: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x`` through encoder, codebook and decoder as training runs it: ``(h, emb_loss, idx, xrec)``.
    A frozen encoder needs no graph (``encoder_grad=False``): its outputs and indices are constants."""
    dev_type = torch.device(cfg.device).type
    with torch.set_grad_enabled(encoder_grad), torch.autocast(dev_type, dtype=torch.bfloat16, enabled=cfg.bf16):
        h = model.quant_conv(model.encoder(x))
    # The nearest-code search runs in float32: bf16 distances would pick wrong codes.
    quant, emb_loss, idx = model.quantize(h.float())
    with torch.autocast(dev_type, dtype=torch.bfloat16, enabled=cfg.bf16):
        xrec = model.decode(quant).float()
    return h, emb_loss, idx, xrec


class ValidationSet:
    """Held-out photos, each centre-cropped once to the training crop.

    Why: the training loss cannot show memorisation. A 2-block decoder trained 3757 GPU steps at
    batch 32 on 1500 packed crops (80 epochs) lowered L1 on those crops from 0.190 to 0.173 while
    L1 on held-out Kodak crops rose from 0.174 to 0.179; a loss on photos it never trains on does.
    """

    def __init__(self, root: str | Path, crop: int):
        crops = []
        for f in list_image_files(root):
            img = at_least(load_image(f), crop)
            y, x = (img.shape[0] - crop) // 2, (img.shape[1] - crop) // 2
            crops.append(img[y : y + crop, x : x + crop])
        if not crops:
            raise CodecError(f"no images in the validation folder {root}")
        self.images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2)  # uint8, N 3 H W

    @torch.no_grad()
    def loss(self, model: VQModel, cfg: TrainConfig) -> dict[str, float]:
        """Mean L1, LPIPS-VGG and their training-weighted sum over the set, in eval mode, batch by
        batch; no random numbers are drawn, so validating never changes the run's outcome."""
        totals = {"nll": 0.0, "l1": 0.0, "p_loss": 0.0}
        model.eval()
        for start in range(0, len(self.images), cfg.batch):
            x = self.images[start : start + cfg.batch].to(cfg.device).float().div(127.5).sub(1.0)
            rec = reconstruction_loss(x, autoencode(model, x, cfg, encoder_grad=False)[3], cfg.perceptual_weight)
            for k in totals:
                totals[k] += float(rec[k]) * len(x)
        model.train()
        n = len(self.images)
        return {"loss": totals["nll"] / n, "l1": totals["l1"] / n, "p_loss": totals["p_loss"] / n}


def perplexity(counts: torch.Tensor) -> float:
    """``exp`` of the entropy of a batch's code counts: how many codes it effectively uses."""
    p = counts[counts > 0] / counts.sum()
    return float(torch.exp(-(p * p.log()).sum()))


def restart_dead_codes(
    model: VQModel, usage: torch.Tensor, h: torch.Tensor, threshold: float, gen: torch.Generator
) -> int:
    """Re-seed rarely used codes on encoder outputs from the current batch (+ small noise).

    Without this a 1024-code book trained from scratch collapses to a few dozen live codes, and the
    bitrate the K-means ladder starts from is wasted.
    """
    dead = torch.nonzero(usage < threshold).flatten()
    if dead.numel() == 0:
        return 0
    z = h.detach().permute(0, 2, 3, 1).reshape(-1, h.shape[1]).float()
    # Draws come from the CPU generator whatever the device, so a seed means the same restarts.
    pick = torch.randint(0, z.shape[0], (dead.numel(),), generator=gen).to(z.device)
    noise = torch.randn(dead.numel(), z.shape[1], generator=gen).to(z.device)
    with torch.no_grad():
        model.quantize.embedding.weight[dead.to(z.device)] = z[pick] + 0.01 * z.std() * noise
    usage[dead] = 2 * threshold  # a short grace period: a re-seeded code must win positions soon
    return int(dead.numel())


def best_validation(out: Path) -> tuple[int, float]:
    """(step, held-out loss) of the run's ``best.pt``, from ``out/val.csv``."""
    rows = [r for r in read_rows(out / "val.csv") if r["best"] == "1"]
    if not rows:
        raise CodecError(f"{out / 'val.csv'} holds no validation yet")
    return int(rows[-1]["step"]), float(rows[-1]["loss"])


def load_init_model(path: str | Path) -> VQModel:
    """The VQGAN a run starts from: a codec bundle's base model (``.safetensors``) or the model of a
    ``vqnet train vqgan`` checkpoint. Only the VQGAN is taken; the discriminator starts afresh."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_codec(path).model
    if not path.is_file():
        raise CodecError(f"--init file not found: {path}")
    try:
        state = load_checkpoint(path)
        model = VQModel(VQGANConfig.from_dict(state["model_config"]))
        model.load_state_dict(state["model"])
    except Exception as exc:  # noqa: BLE001 - unpickling, missing keys, shapes: all mean "not a checkpoint"
        raise CodecError(
            f"{path} is neither a codec bundle (.safetensors) nor a vqnet training checkpoint "
            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        ) from None
    return model


def _trainable(model: VQModel, cfg: TrainConfig) -> list[nn.Parameter]:
    """The generator optimiser's parameters; the frozen parts stop needing gradients."""
    frozen = [model.encoder, model.quant_conv, model.quantize] if cfg.freeze_encoder else []
    if cfg.freeze_post_quant_conv:
        frozen.append(model.post_quant_conv)
    for part in frozen:
        part.requires_grad_(False)
    if not cfg.freeze_encoder:
        return [p for p in model.parameters() if p.requires_grad]
    return [p for p in (*model.post_quant_conv.parameters(), *model.decoder.parameters()) if p.requires_grad]


class VQGANTrainer:
    """One step of taming's recipe and the state a resumed run needs (:class:`TrainingRun`)."""

    def __init__(self, model: VQModel, cfg: TrainConfig, fitted_book: bool):
        self.model, self.cfg = model, cfg
        self.opt = torch.optim.Adam(_trainable(model, cfg), lr=cfg.lr, betas=(0.5, 0.9))
        self.loss_fn = VQGANLoss(
            perceptual_weight=cfg.perceptual_weight,
            codebook_weight=cfg.codebook_weight,
            disc_weight=cfg.disc_weight,
            disc_start=cfg.disc_start,
            disc_warmup=cfg.disc_warmup,
            disc_layers=cfg.disc_layers,
            disc_ndf=cfg.disc_ndf,
        ).to(cfg.device)
        self.opt_d = torch.optim.Adam(
            self.loss_fn.discriminator.parameters(), lr=cfg.disc_lr or cfg.lr, betas=(0.5, 0.9)
        )
        self.rng = np.random.default_rng(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        # From scratch, usage starts at zero so the first restart re-seeds the whole book on real
        # encoder outputs (a data-dependent init; the default +-1/n init collapses to a few codes).
        # A fitted book (--init) is already in use: every code gets a re-seeded code's grace period.
        n_embed = model.config.n_embed
        self.usage = torch.full((n_embed,), 2 * cfg.restart_threshold) if fitted_book else torch.zeros(n_embed)
        self.dataset: CropDataset | None = None
        model.train()
        self.loss_fn.train()

    def describe(self, row: dict[str, float]) -> str:
        return (
            f"L1 {row['l1']:.4f} P {row['p_loss']:.3f} vq {row['emb_loss']:.4f} "
            f"D {row['d_loss']:.3f} ppl {row['perplexity']:.0f}"
        )

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "discriminator": self.loss_fn.discriminator.state_dict(),
            "disc_optimizer": self.opt_d.state_dict(),
            "model_config": self.model.config.to_dict(),
            "np_rng": self.rng.bit_generator.state,
            "torch_gen": self.gen.get_state(),
            "usage": self.usage,
        }

    def load_state_dict(self, state: dict) -> None:
        if "discriminator" not in state:
            raise ResumeError(
                "the checkpoint predates the perceptual/GAN recipe and cannot be resumed under it; "
                "start a new run from its weights with --init CHECKPOINT --out NEW_FOLDER"
            )
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.loss_fn.discriminator.load_state_dict(state["discriminator"])
        self.opt_d.load_state_dict(state["disc_optimizer"])
        self.rng.bit_generator.state = state["np_rng"]
        self.gen.set_state(state["torch_gen"])
        self.usage = state["usage"]

    def step(self, step: int) -> dict[str, float]:
        """Taming's two optimiser steps, except that the discriminator scores the generator step's
        reconstruction instead of a second encoder+decoder pass with the updated weights (which
        Lightning's per-optimiser ``training_step`` does): one less forward pass."""
        cfg, model, loss_fn = self.cfg, self.model, self.loss_fn
        t0 = time.perf_counter()
        x = self.dataset.batch(self.rng, cfg.batch).to(cfg.device)
        h, emb_loss, idx, xrec = autoencode(model, x, cfg, encoder_grad=not cfg.freeze_encoder)
        surrogate, row = loss_fn.generator_loss(x, xrec, emb_loss, model.decoder.conv_out.weight, step)
        self.opt.zero_grad(set_to_none=True)
        surrogate.backward()
        self.opt.step()
        d_row = {"d_loss": math.nan, "logits_real": math.nan, "logits_fake": math.nan}
        if loss_fn.disc_active(step):
            d_loss, d_row = loss_fn.discriminator_loss(x, xrec)
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_d.step()
        done = step + 1
        counts = torch.bincount(idx.flatten().cpu(), minlength=model.config.n_embed).float()
        self.usage.mul_(0.99).add_(0.01 * counts)
        restarted = 0
        if cfg.restart_every and not cfg.freeze_encoder and (done == 1 or done % cfg.restart_every == 0):
            restarted = restart_dead_codes(model, self.usage, h, cfg.restart_threshold, self.gen)
        return (
            row
            | d_row
            | {"perplexity": perplexity(counts), "restarted": restarted, "seconds": time.perf_counter() - t0}
        )


def _start_model(cfg: TrainConfig, model_cfg: VQGANConfig | None) -> tuple[VQModel, bool]:
    """A fresh run's model: ``cfg.init``'s (grown as asked) or a new one; and whether its codebook
    is already fitted."""
    init = load_init_model(cfg.init) if cfg.init else None
    if init is not None and (cfg.decoder_ch or cfg.decoder_res_blocks):
        try:
            init = grow_decoder(init, cfg.decoder_ch, cfg.decoder_res_blocks, seed=cfg.seed)
        except ValueError as exc:
            raise CodecError(f"--decoder-ch/--decoder-blocks: {exc}") from None
    if init is not None and model_cfg is not None and init.config != model_cfg:
        raise CodecError(f"--init {cfg.init} has a different model config than the one asked for")
    return init or VQModel(model_cfg or small_config()), init is not None


def train_vqgan(
    data: str | Path,
    out: Path,
    cfg: TrainConfig,
    model_cfg: VQGANConfig | None = None,
    resume: bool = False,
    minutes: float | None = None,
    val: str | Path | None = None,
    val_every: int = 250,
    progress: bool = False,
) -> Path:
    """Train (or resume) with taming's recipe in :class:`TrainingRun` and return the checkpoint
    path. Logs every step to ``out/log.csv`` (:data:`LOG_COLUMNS`; GAN columns are NaN before
    ``disc_start``).

    With ``val`` (a folder of held-out photos, :class:`ValidationSet`) the held-out loss is logged
    to ``out/val.csv`` (:data:`VAL_COLUMNS`) every ``val_every`` steps and at the last one, and
    ``out/best.pt`` is the checkpoint where it was lowest: what ``--init`` or ``vqnet codebook
    decoder --checkpoint`` should take when a long run overfits.

    ``model_cfg`` may be None when the config comes from ``cfg.init`` or, on resume, from the
    checkpoint. ``minutes`` stops the run early, with a checkpoint; ``--resume`` continues from
    there towards ``steps``. Batches and restarts are drawn on the CPU, so ``cfg.device`` changes
    speed, not the data. ``progress`` shows bars on stderr for loading the photos and training.
    """
    if val_every < 1:
        raise ValueError("val_every must be >= 1")
    run = TrainingRun(
        out,
        asdict(cfg),
        resume,
        may_change=_RESUMABLE_CHANGES,
        missing=asdict(TrainConfig()),
        logs=["val.csv"],
        outputs=["best.pt"],
    )
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    if run.state is not None:
        saved_cfg = VQGANConfig.from_dict(run.state["model_config"])
        if model_cfg is not None and saved_cfg != model_cfg:
            raise ResumeError(f"{run.checkpoint} was trained with a different model config; use another --out")
        model, fitted = VQModel(saved_cfg), False
    else:
        model, fitted = _start_model(cfg, model_cfg)
    trainer = VQGANTrainer(model.to(cfg.device), cfg, fitted)
    valset = ValidationSet(val, cfg.crop) if val is not None else None
    val_path = out / "val.csv"
    best = min((float(r["loss"]) for r in read_rows(val_path) if int(r["step"]) <= run.step), default=math.inf)
    with progress_bar(None, "loading photos", quiet=not progress) as advance:
        trainer.dataset = CropDataset(data, cfg.crop, progress=lambda i, n: advance(1, f"{i}/{n}"))

    def validate(step: int, last: bool) -> None:
        nonlocal best
        if valset is None or not (step % val_every == 0 or last):
            return
        v = valset.loss(model, cfg)
        improved = v["loss"] < best
        if improved:
            best = v["loss"]
            run.save(trainer, step, out / "best.pt")
        append_row(val_path, VAL_COLUMNS, [step, *(v[c] for c in VAL_COLUMNS[1:-1]), int(improved)])

    bar = "training" if progress else None
    return run.run(trainer, cfg.steps, LOG_COLUMNS[1:], cfg.checkpoint_minutes, minutes, validate, bar)
