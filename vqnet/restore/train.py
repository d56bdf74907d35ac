"""Training the concealment transformers on index maps: resumable, logged, deterministic by seed.

Both kinds see 16x16 windows of the training photos' index maps at one K:

- ``ar`` (the paper's): taming's unconditional GPT. The window in raster order, prefixed by an SOS
  id (K), is predicted token by token (next-token cross-entropy on all 256 positions). With
  ``corrupt`` the inputs at sampled lost positions are the model's own guesses (see
  :func:`make_batch`), as they are when the sliding window conceals a grid.
- ``masked`` (ours): the same blocks with full attention (``n_unmasked = block_size``). Lost
  positions, drawn by :func:`vqnet.restore.data.sample_mask` (i.i.d., raster runs, interleaved
  packets in bursts, blocks), are replaced by the mask id (K); cross-entropy on those positions.

A checkpoint holds model, optimiser, step and every RNG state, so ``--resume`` continues the same
curve; it is written atomically every few minutes and at the end.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from vqnet.codec.train import truncate_log
from vqnet.restore.data import WINDOW, StepBatches
from vqnet.restore.gpt import GPT, GPTConfig

Kind = Literal["ar", "masked"]
LOG_FIELDS = ["step", "loss", "accuracy", "lr", "seconds"]


@dataclass(frozen=True)
class PriorTrainConfig:
    """Everything that decides a run's outcome (stored in the checkpoint)."""

    kind: Kind
    K: int
    n_layer: int = 4
    n_head: int = 8
    n_embd: int = 256
    steps: int = 2000
    batch: int = 32
    lr: float = 5e-4
    warmup: int = 100
    weight_decay: float = 0.01
    dropout: float = 0.0  # upstream's embd_pdrop and resid_pdrop: the priors overfit 1,500 photos
    seed: int = 0
    checkpoint_minutes: float = 3.0
    init: Literal["taming", "codes"] = "codes"  # upstream's init, or :func:`init_for_codes`
    corrupt: bool = False  # ``ar``: read own guesses at sampled lost positions (:func:`make_batch`)
    start: str = ""  # sha256 of the concealment file the weights started from ("" = ``init``)
    bf16: bool = False  # bf16 autocast for the forward passes (a GPU's fast path; weights stay float32)

    def gpt_config(self) -> GPTConfig:
        """Vocabulary K+1: the extra id is SOS for ``ar`` and the mask token for ``masked``."""
        block = WINDOW * WINDOW
        return GPTConfig(
            vocab_size=self.K + 1,
            block_size=block,
            n_layer=self.n_layer,
            n_head=self.n_head,
            n_embd=self.n_embd,
            n_unmasked=block if self.kind == "masked" else 0,
            embd_pdrop=self.dropout,
            resid_pdrop=self.dropout,
        )  # attention keeps its fused path


def sincos_2d(h: int, w: int, dim: int) -> torch.Tensor:
    """(h*w, dim) raster-order positions: sin/cos of the row in one half, of the column in the other."""
    quarter = dim // 4
    freqs = 1.0 / (100.0 ** (torch.arange(quarter, dtype=torch.float32) / max(1, quarter)))
    r, c = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    parts = [f(a.reshape(-1, 1) * freqs) for a in (r, c) for f in (torch.sin, torch.cos)]
    out = torch.cat(parts, dim=1)
    return torch.nn.functional.pad(out, (0, dim - out.shape[1]))


def make_batch(
    kind: Kind, K: int, codes: torch.Tensor, masks: torch.Tensor, guesses: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs, targets, which positions count) for one batch of windows.

    ``guesses`` (``ar`` only) replace the codes at the masked positions in the inputs, never in
    the targets. Why: at concealment every lost position before the current one holds the model's
    own earlier guess, while clean teacher forcing only ever shows it true codes; the more is lost,
    the more its context is its own (often wrong) guesses.
    """
    if kind == "ar":
        sos = torch.full((codes.shape[0], 1), K, dtype=torch.long)
        seen = codes if guesses is None else torch.where(masks, guesses, codes)
        return torch.cat([sos, seen[:, :-1]], 1), codes, torch.ones_like(masks)
    masks = masks.clone()
    empty = ~masks.any(1)
    masks[empty, torch.randint(0, masks.shape[1], (int(empty.sum()),))] = True  # every window teaches something
    return codes.masked_fill(masks, K), codes, masks


def _mixed(model: GPT, bf16: bool) -> torch.autocast:
    return torch.autocast(model.pos_emb.device.type, dtype=torch.bfloat16, enabled=bf16)


def own_guesses(model: GPT, K: int, codes: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """The ``ar`` model's greedy code at every position of clean windows (teacher-forced, one
    batched pass, no gradient): a cheap stand-in for the guesses a concealment run would make."""
    inputs, _, _ = make_batch("ar", K, codes, torch.zeros_like(codes, dtype=torch.bool))
    was_training = model.training
    model.eval()
    with torch.no_grad(), _mixed(model, bf16):
        guesses = model(inputs.to(model.pos_emb.device))[..., :K].argmax(-1).cpu()
    model.train(was_training)
    return guesses


def loss_and_accuracy(
    model: GPT, kind: Kind, K: int, codes: torch.Tensor, masks: torch.Tensor, corrupt: bool = False, bf16: bool = False
) -> tuple[torch.Tensor, float]:
    device = model.pos_emb.device
    guesses = own_guesses(model, K, codes, bf16) if corrupt and kind == "ar" else None
    inputs, targets, counted = (t.to(device) for t in make_batch(kind, K, codes, masks, guesses))
    with _mixed(model, bf16):
        logits = model(inputs)[..., :K]
    sel_logits, sel_targets = logits[counted].float(), targets[counted]
    loss = F.cross_entropy(sel_logits, sel_targets)
    acc = float((sel_logits.argmax(-1) == sel_targets).float().mean())
    return loss, acc


def lr_at(step: int, cfg: PriorTrainConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def _save(path: Path, model: GPT, opt: torch.optim.Optimizer, step: int, cfg: PriorTrainConfig, extra: dict) -> None:
    """Atomically. No numpy generator state: each step's windows come from (seed, step) alone."""
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "step": step,
        "train_config": asdict(cfg),
        "torch_rng": torch.get_rng_state(),
        **extra,
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def init_for_codes(model: GPT, cfg: PriorTrainConfig, code_vectors: torch.Tensor | None) -> None:
    """Start from what is known about the tokens, so the few thousand steps this CPU affords go
    into learning context rather than geometry. Only initial values change; the layout stays
    taming's, and a tied head is stored as an ordinary ``head.weight`` equal to ``tok_emb.weight``.

    - 2-D sine-cosine positions (as MAE) instead of upstream's zeros: with full attention, zero
      positions make every token start identical; a causal model also learns "look left/up" faster.
    - Code embeddings from the codebook (a fixed random projection of the code vectors, at the
      usual 0.02 scale), so similar codes start with similar embeddings and confusions between
      them are the cheap ones.
    - The output head tied to the token embedding (as GPT-2), so predicting a code that the
      context holds - copying a neighbour - works from the first step.
    """
    gen = torch.Generator().manual_seed(cfg.seed)
    with torch.no_grad():
        model.pos_emb.copy_(0.03 * sincos_2d(WINDOW, WINDOW, cfg.n_embd).unsqueeze(0))
        if code_vectors is not None:
            v = code_vectors.float() - code_vectors.float().mean(0)
            proj = torch.randn(v.shape[1], cfg.n_embd, generator=gen) / math.sqrt(v.shape[1])
            e = v @ proj
            model.tok_emb.weight[: cfg.K] = 0.02 * e / e.std()
    model.head.weight = model.tok_emb.weight


def train_prior(
    maps: list[np.ndarray],
    out: Path,
    cfg: PriorTrainConfig,
    resume: bool = False,
    extra: dict | None = None,
    code_vectors: torch.Tensor | None = None,
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    device: str = "cpu",
    minutes: float | None = None,
    start_weights: dict[str, torch.Tensor] | None = None,
    workers: int = 0,
) -> Path:
    """Train (or resume) a concealment transformer; returns the checkpoint path.

    ``extra`` (e.g. the codebook fingerprint the index maps came from) is stored in the checkpoint
    and must match on resume, so a run is never continued on other data. ``code_vectors`` (K x d,
    the codebook) seeds the token embeddings (:func:`init_for_codes`). Windows and masks are drawn
    on the CPU, so ``device`` changes speed, not the data. ``minutes`` stops early with a
    checkpoint (a lent GPU's budget is fixed); the learning-rate schedule still follows ``steps``.
    ``start_weights`` (a trained model's state_dict, whose file's sha256 is ``cfg.start``) replace
    the initial weights: a fine-tune. ``workers`` processes draw the batches ahead
    (:class:`vqnet.restore.data.StepBatches`): the same run, faster where the model is not the
    bottleneck (a GPU).
    """
    if (start_weights is None) != (not cfg.start):
        raise ValueError("start_weights and cfg.start (their file's sha256) go together")
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = out / "checkpoint.pt", out / "log.csv"
    extra = extra or {}
    torch.manual_seed(cfg.seed)
    model = GPT(cfg.gpt_config())
    if start_weights is not None:  # untied: a head tied to the embedding would take only one of the two
        model.load_state_dict(start_weights)
    elif cfg.init == "codes":
        init_for_codes(model, cfg, code_vectors)
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    step = 0
    if resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if "np_rng" in state:
            raise ValueError(
                f"--resume: {ckpt_path} comes from an older vqnet that drew its windows from one "
                "running generator, so it cannot continue the same way; start a new run "
                "(--start continues an exported concealment file)"
            )
        saved = (
            {"init": "taming", "corrupt": False, "start": "", "dropout": 0.0, "bf16": False}  # older checkpoints
            | state["train_config"]
        )
        if {k: v for k, v in saved.items() if k != "steps"} != {k: v for k, v in asdict(cfg).items() if k != "steps"}:
            raise ValueError(f"--resume: {ckpt_path} was trained with a different configuration: {saved}")
        for key, value in extra.items():
            if state.get(key) != value:
                raise ValueError(f"--resume: {ckpt_path} was trained on other index maps ({key} differs)")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step = state["step"]
        torch.set_rng_state(state["torch_rng"])
        truncate_log(log_path, step)
    elif ckpt_path.exists():
        raise FileExistsError(f"{ckpt_path} exists; pass --resume to continue it or choose another --out")
    new_log = not log_path.is_file()
    last_save = time.monotonic()
    stop_at = None if minutes is None else last_save + 60 * minutes
    model.train()
    batches = StepBatches(maps, cfg.seed, cfg.batch, with_masks=cfg.kind == "masked" or cfg.corrupt, workers=workers)
    with batches, log_path.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOG_FIELDS)
        if new_log:
            writer.writeheader()
        while step < cfg.steps:
            t0 = time.perf_counter()
            lr = lr_at(step, cfg)
            for group in opt.param_groups:
                group["lr"] = lr
            codes, masks = batches(step)
            loss, acc = loss_and_accuracy(model, cfg.kind, cfg.K, codes, masks, corrupt=cfg.corrupt, bf16=cfg.bf16)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            row = {"step": step, "loss": loss.item(), "accuracy": acc, "lr": lr, "seconds": time.perf_counter() - t0}
            writer.writerow(row)
            fh.flush()
            if on_step:
                on_step(step, row)
            out_of_time = stop_at is not None and time.monotonic() > stop_at
            if time.monotonic() - last_save > 60 * cfg.checkpoint_minutes or step == cfg.steps or out_of_time:
                _save(ckpt_path, model, opt, step, cfg, extra)
                last_save = time.monotonic()
            if out_of_time:
                break
    return ckpt_path
