"""Training the VQGAN first stage on this CPU: resumable, logged, deterministic given a seed.

The recipe is taming's (:mod:`vqnet.codec.losses`): L1 + LPIPS-VGG, the codebook/commitment loss,
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

import csv
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
from vqnet.codec.losses import VQGANLoss, reconstruction_loss
from vqnet.codec.model import DDConfig, VQGANConfig, VQModel, grow_decoder
from vqnet.images import list_image_files, load_image


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


def save_checkpoint(
    path: Path,
    model: VQModel,
    opt: torch.optim.Optimizer,
    loss_fn: VQGANLoss,
    opt_d: torch.optim.Optimizer,
    step: int,
    cfg: TrainConfig,
    rng: np.random.Generator,
    gen: torch.Generator,
    usage: torch.Tensor,
) -> None:
    """Atomic write (tmp + rename) so a kill during save never leaves a broken checkpoint."""
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "discriminator": loss_fn.discriminator.state_dict(),
        "disc_optimizer": opt_d.state_dict(),
        "step": step,
        "model_config": model.config.to_dict(),
        "train_config": asdict(cfg),
        "np_rng": rng.bit_generator.state,
        "torch_gen": gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "usage": usage,
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def truncate_log(log_path: Path, step: int) -> None:
    """Drop log rows written after the checkpoint, so a resumed run's log has each step once."""
    if not log_path.exists():
        return
    lines = log_path.read_text().splitlines(keepends=True)
    kept = lines[:1] + [ln for ln in lines[1:] if int(ln.split(",", 1)[0]) <= step]
    log_path.write_text("".join(kept))


def _read_rows(path: Path) -> list[dict[str, str]]:
    """A CSV log's rows (none when it does not exist)."""
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _append_row(path: Path, columns: list[str], row: list) -> None:
    """One row appended to a CSV log (its header first when the file is new)."""
    new = not path.exists()
    with path.open("a", newline="") as fh:
        writer = csv.writer(fh)
        if new:
            writer.writerow(columns)
        writer.writerow(row)


def best_validation(out: Path) -> tuple[int, float]:
    """(step, held-out loss) of the run's ``best.pt``, from ``out/val.csv``."""
    rows = [r for r in _read_rows(out / "val.csv") if r["best"] == "1"]
    if not rows:
        raise CodecError(f"{out / 'val.csv'} holds no validation yet")
    return int(rows[-1]["step"]), float(rows[-1]["loss"])


def load_checkpoint(path: Path) -> dict:
    """Checkpoints hold only tensors and plain containers, so ``weights_only=True`` always suffices."""
    return torch.load(path, map_location="cpu", weights_only=True)


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


def _check_resumable(state: dict, cfg: TrainConfig, model_cfg: VQGANConfig | None, ckpt_path: Path) -> VQGANConfig:
    """The checkpoint's model config, after refusing a resume that could not continue the same run."""
    saved_model_cfg = VQGANConfig.from_dict(state["model_config"])
    if model_cfg is not None and saved_model_cfg != model_cfg:
        raise CodecError(f"{ckpt_path} was trained with a different model config; use another --out")
    if "discriminator" not in state:
        raise CodecError(
            f"{ckpt_path} predates the perceptual/GAN recipe and cannot be resumed under it; "
            f"start a new run from its weights with --init {ckpt_path} --out NEW_FOLDER"
        )
    saved = asdict(TrainConfig(**state["train_config"]))
    changed = [k for k, v in asdict(cfg).items() if k not in _RESUMABLE_CHANGES and saved[k] != v]
    if changed:
        raise CodecError(
            f"{ckpt_path} was trained with other settings ("
            + ", ".join(f"{k}={saved[k]!r}, now {getattr(cfg, k)!r}" for k in changed)
            + "); resume with the same options or use another --out"
        )
    return saved_model_cfg


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


def train_vqgan(
    data: str | Path,
    out: Path,
    cfg: TrainConfig,
    model_cfg: VQGANConfig | None = None,
    resume: bool = False,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    on_load: Callable[[int, int], None] | None = None,
    minutes: float | None = None,
    val: str | Path | None = None,
    val_every: int = 250,
) -> Path:
    """Train (or resume) with taming's recipe and return the checkpoint path. Logs every step to
    ``out/log.csv`` (:data:`LOG_COLUMNS`; GAN columns are NaN before ``disc_start``).

    With ``val`` (a folder of held-out photos, :class:`ValidationSet`) the held-out loss is logged
    to ``out/val.csv`` (:data:`VAL_COLUMNS`) every ``val_every`` steps and at the last one, and
    ``out/best.pt`` is the checkpoint where it was lowest: what ``--init`` or ``vqnet codebook
    decoder --checkpoint`` should take when a long run overfits.

    ``model_cfg`` may be None when the config comes from ``cfg.init`` or, on resume, from the
    checkpoint. A step is taming's two optimiser steps, except that the discriminator scores the
    generator step's reconstruction instead of a second encoder+decoder pass with the updated
    weights (which Lightning's per-optimiser ``training_step`` does): one less forward pass.

    ``minutes`` stops the run early, with a checkpoint, once that much wall time has passed: a
    lent GPU comes with a fixed budget, and ``--resume`` continues from there towards ``steps``.
    Batches and restarts are drawn on the CPU, so ``cfg.device`` changes speed, not the data.
    """
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path, val_path, best_path = out / "checkpoint.pt", out / "log.csv", out / "val.csv", out / "best.pt"
    if val_every < 1:
        raise ValueError("val_every must be >= 1")
    state = None
    if ckpt_path.exists() and not resume:
        raise FileExistsError(f"{ckpt_path} exists; pass --resume to continue it or choose another --out")
    if resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        model_cfg = _check_resumable(state, cfg, model_cfg, ckpt_path)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    init = load_init_model(cfg.init) if cfg.init and state is None else None
    if init is not None and (cfg.decoder_ch or cfg.decoder_res_blocks):
        try:
            init = grow_decoder(init, cfg.decoder_ch, cfg.decoder_res_blocks, seed=cfg.seed)
        except ValueError as exc:
            raise CodecError(f"--decoder-ch/--decoder-blocks: {exc}") from None
    if init is not None and model_cfg is not None and init.config != model_cfg:
        raise CodecError(f"--init {cfg.init} has a different model config than the one asked for")
    model = (init or VQModel(model_cfg or small_config())).to(cfg.device)
    n_embed = model.config.n_embed
    opt = torch.optim.Adam(_trainable(model, cfg), lr=cfg.lr, betas=(0.5, 0.9))
    loss_fn = VQGANLoss(
        perceptual_weight=cfg.perceptual_weight,
        codebook_weight=cfg.codebook_weight,
        disc_weight=cfg.disc_weight,
        disc_start=cfg.disc_start,
        disc_warmup=cfg.disc_warmup,
        disc_layers=cfg.disc_layers,
        disc_ndf=cfg.disc_ndf,
    ).to(cfg.device)
    opt_d = torch.optim.Adam(loss_fn.discriminator.parameters(), lr=cfg.disc_lr or cfg.lr, betas=(0.5, 0.9))
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    # From scratch, usage starts at zero so the first restart re-seeds the whole book on real
    # encoder outputs (a data-dependent init; the default +-1/n init collapses to a few codes).
    # An --init book is already fitted: every code gets a re-seeded code's grace period instead.
    usage = torch.full((n_embed,), 2 * cfg.restart_threshold) if init is not None else torch.zeros(n_embed)
    step = 0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        loss_fn.discriminator.load_state_dict(state["discriminator"])
        opt_d.load_state_dict(state["disc_optimizer"])
        rng.bit_generator.state = state["np_rng"]
        gen.set_state(state["torch_gen"])
        torch.set_rng_state(state["torch_rng"])
        usage = state["usage"]
        step = int(state["step"])
        truncate_log(log_path, step)
        truncate_log(val_path, step)
    else:
        log_path.unlink(missing_ok=True)
        val_path.unlink(missing_ok=True)
        best_path.unlink(missing_ok=True)
    valset = ValidationSet(val, cfg.crop) if val is not None else None
    best = min((float(r["loss"]) for r in _read_rows(val_path)), default=math.inf)
    dataset = CropDataset(data, cfg.crop, progress=on_load)
    stop_at = None if minutes is None else time.monotonic() + 60 * minutes
    model.train()
    loss_fn.train()
    last_save = time.monotonic()
    new_log = not log_path.exists()
    no_disc = {"d_loss": math.nan, "logits_real": math.nan, "logits_fake": math.nan}
    with log_path.open("a", newline="") as fh:
        writer = csv.writer(fh)
        if new_log:
            writer.writerow(LOG_COLUMNS)
        while step < cfg.steps:
            t0 = time.perf_counter()
            x = dataset.batch(rng, cfg.batch).to(cfg.device)
            h, emb_loss, idx, xrec = autoencode(model, x, cfg, encoder_grad=not cfg.freeze_encoder)
            surrogate, row = loss_fn.generator_loss(x, xrec, emb_loss, model.decoder.conv_out.weight, step)
            opt.zero_grad(set_to_none=True)
            surrogate.backward()
            opt.step()
            d_row = no_disc
            if loss_fn.disc_active(step):
                d_loss, d_row = loss_fn.discriminator_loss(x, xrec)
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()
            step += 1
            counts = torch.bincount(idx.flatten().cpu(), minlength=n_embed).float()
            usage.mul_(0.99).add_(0.01 * counts)
            restarted = 0
            if cfg.restart_every and not cfg.freeze_encoder and (step == 1 or step % cfg.restart_every == 0):
                restarted = restart_dead_codes(model, usage, h, cfg.restart_threshold, gen)
            row |= d_row | {
                "perplexity": perplexity(counts),
                "restarted": restarted,
                "seconds": time.perf_counter() - t0,
            }
            writer.writerow([step] + [f"{row[c]:.6g}" for c in LOG_COLUMNS[1:]])
            if on_step:
                on_step(step, row)
            out_of_time = stop_at is not None and time.monotonic() > stop_at
            if valset is not None and (step % val_every == 0 or step == cfg.steps or out_of_time):
                v = valset.loss(model, cfg)
                improved = v["loss"] < best
                if improved:
                    best = v["loss"]
                    save_checkpoint(best_path, model, opt, loss_fn, opt_d, step, cfg, rng, gen, usage)
                _append_row(val_path, VAL_COLUMNS, [step, *(f"{v[c]:.6g}" for c in VAL_COLUMNS[1:-1]), int(improved)])
            if time.monotonic() - last_save > cfg.checkpoint_minutes * 60 or step == cfg.steps or out_of_time:
                fh.flush()
                save_checkpoint(ckpt_path, model, opt, loss_fn, opt_d, step, cfg, rng, gen, usage)
                last_save = time.monotonic()
            if out_of_time:
                break
    return ckpt_path
