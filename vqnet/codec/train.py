"""Training the VQGAN first stage on this CPU: resumable, logged, deterministic given a seed.

Scope (the end-to-end simulator's default model): L1 reconstruction + taming's codebook/commitment
loss, with dead-code restarts so the 1024 codes are actually used. The perceptual (LPIPS-VGG) and
PatchGAN terms of the full taming recipe are left to the default-VQGAN issue: on 2 cores each
LPIPS-VGG step costs ~3x a whole L1 step (shared/notes/cpu-measurements.md).

Why checkpoints hold everything (model, optimiser, data RNG, code-usage statistics, step): a
resumed run must continue the same loss curve, not restart Adam's moments or the data order.
"""
from __future__ import annotations

import csv
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vqnet.codec.model import DDConfig, VQGANConfig, VQModel
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


def small_config(ch: int = 32, n_embed: int = 1024, embed_dim: int = 32, z_channels: int = 64) -> VQGANConfig:
    """The f=16 model size that trains at a useful rate on 2 CPU cores (cpu-measurements.md config c)."""
    return VQGANConfig(
        embed_dim=embed_dim,
        n_embed=n_embed,
        ddconfig=DDConfig(ch=ch, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=1, attn_resolutions=(16,), z_channels=z_channels),
    )


class CropDataset:
    """All training photos held in memory as uint8; random crops + horizontal flips.

    Photos whose short side is below the crop are upscaled (bicubic) rather than skipped, so every
    image in the set contributes. Greyscale files become RGB in ``load_image``.
    """

    def __init__(self, root: str | Path, crop: int, progress: Callable[[int, int], None] | None = None):
        files = list_image_files(root)
        self.images: list[np.ndarray] = []
        for i, f in enumerate(files):
            img = load_image(f)
            h, w = img.shape[:2]
            if min(h, w) < crop:
                s = crop / min(h, w)
                img = np.asarray(Image.fromarray(img).resize((max(crop, round(w * s)), max(crop, round(h * s))), Image.BICUBIC))
            self.images.append(img)
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


def restart_dead_codes(model: VQModel, usage: torch.Tensor, h: torch.Tensor, threshold: float, gen: torch.Generator) -> int:
    """Re-seed rarely used codes on encoder outputs from the current batch (+ small noise).

    Without this a 1024-code book trained from scratch collapses to a few dozen live codes, and the
    bitrate the K-means ladder starts from is wasted.
    """
    dead = torch.nonzero(usage < threshold).flatten()
    if dead.numel() == 0:
        return 0
    z = h.detach().permute(0, 2, 3, 1).reshape(-1, h.shape[1]).float()
    pick = torch.randint(0, z.shape[0], (dead.numel(),), generator=gen)
    noise = 0.01 * z.std() * torch.randn(dead.numel(), z.shape[1], generator=gen)
    with torch.no_grad():
        model.quantize.embedding.weight[dead] = z[pick] + noise
    usage[dead] = 2 * threshold  # a short grace period: a re-seeded code must win positions soon
    return int(dead.numel())


def save_checkpoint(path: Path, model: VQModel, opt: torch.optim.Optimizer, step: int, cfg: TrainConfig,
                    rng: np.random.Generator, gen: torch.Generator, usage: torch.Tensor) -> None:
    """Atomic write (tmp + rename) so a kill during save never leaves a broken checkpoint."""
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
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


def _truncate_log(log_path: Path, step: int) -> None:
    """Drop log rows written after the checkpoint, so a resumed run's log has each step once."""
    if not log_path.exists():
        return
    lines = log_path.read_text().splitlines(keepends=True)
    kept = lines[:1] + [ln for ln in lines[1:] if int(ln.split(",", 1)[0]) <= step]
    log_path.write_text("".join(kept))


def load_checkpoint(path: Path) -> dict:
    """Checkpoints hold only tensors and plain containers, so ``weights_only=True`` always suffices."""
    return torch.load(path, map_location="cpu", weights_only=True)


def train_vqgan(
    data: str | Path,
    out: Path,
    cfg: TrainConfig,
    model_cfg: VQGANConfig,
    resume: bool = False,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    on_load: Callable[[int, int], None] | None = None,
) -> Path:
    """Train (or resume) and return the checkpoint path. Logs every step to ``out/log.csv``."""
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = out / "checkpoint.pt", out / "log.csv"
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    model = VQModel(model_cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.5, 0.9))
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    # Usage starts at zero so the first restart re-seeds the whole book on real encoder outputs
    # (a data-dependent init); the default +-1/n init sits far from h and collapses to a few codes.
    usage = torch.zeros(model_cfg.n_embed)
    step = 0
    if resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        if VQGANConfig.from_dict(state["model_config"]) != model_cfg:
            raise ValueError(f"{ckpt_path} was trained with a different model config; use another --out")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["np_rng"]
        gen.set_state(state["torch_gen"])
        torch.set_rng_state(state["torch_rng"])
        usage = state["usage"]
        step = int(state["step"])
        _truncate_log(log_path, step)
    elif ckpt_path.exists() and not resume:
        raise FileExistsError(f"{ckpt_path} exists; pass --resume to continue it or choose another --out")
    else:
        log_path.unlink(missing_ok=True)
    dataset = CropDataset(data, cfg.crop, progress=on_load)
    model.train()
    last_save = time.monotonic()
    new_log = not log_path.exists()
    with log_path.open("a", newline="") as fh:
        writer = csv.writer(fh)
        if new_log:
            writer.writerow(["step", "loss", "l1", "emb_loss", "perplexity", "restarted", "seconds"])
        while step < cfg.steps:
            t0 = time.perf_counter()
            x = dataset.batch(rng, cfg.batch)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                h = model.quant_conv(model.encoder(x))
            # The nearest-code search runs in float32: bf16 distances would pick wrong codes.
            quant, emb_loss, idx = model.quantize(h.float())
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                xrec = model.decode(quant)
            l1 = F.l1_loss(xrec.float(), x)
            loss = l1 + emb_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            counts = torch.bincount(idx.flatten(), minlength=model_cfg.n_embed).float()
            usage.mul_(0.99).add_(0.01 * counts)
            p = counts / counts.sum()
            perplexity = float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))
            restarted = 0
            if cfg.restart_every and (step == 1 or step % cfg.restart_every == 0):
                restarted = restart_dead_codes(model, usage, h, cfg.restart_threshold, gen)
            row = {"loss": loss.item(), "l1": l1.item(), "emb_loss": emb_loss.item(), "perplexity": perplexity,
                   "restarted": restarted, "seconds": time.perf_counter() - t0}
            writer.writerow([step] + [f"{v:.6g}" for v in row.values()])
            if on_step:
                on_step(step, row)
            if time.monotonic() - last_save > cfg.checkpoint_minutes * 60 or step == cfg.steps:
                fh.flush()
                save_checkpoint(ckpt_path, model, opt, step, cfg, rng, gen, usage)
                last_save = time.monotonic()
    return ckpt_path
