"""Training the concealment transformers on index maps: resumable, logged, deterministic by seed.

Both kinds see 16x16 windows of the training photos' index maps at one K:

- ``ar`` (the paper's): taming's unconditional GPT. The window in raster order, prefixed by an SOS
  id (K), is predicted token by token (next-token cross-entropy on all 256 positions). With
  ``corrupt`` the inputs at sampled lost positions are the model's own guesses (see
  :func:`make_batch`), as they are when the sliding window conceals a grid.
- ``masked`` (ours): the same blocks with full attention (``n_unmasked = block_size``). Lost
  positions, drawn by :func:`vqnet.training.prior_data.sample_mask` (i.i.d., raster runs, interleaved
  packets in bursts, blocks), are replaced by the mask id (K); cross-entropy on those positions.

A checkpoint (:mod:`vqnet.training.loop`) holds model, optimiser, step and every RNG state, so
``--resume`` continues the same curve; it is written atomically every few minutes and at the end.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from vqnet.restore.gpt import GPT, GPTConfig
from vqnet.training.loop import ResumeError, TrainingRun
from vqnet.training.prior_data import WINDOW, StepBatches

Kind = Literal["ar", "masked"]
LOG_COLUMNS = ["loss", "accuracy", "lr", "seconds"]
#: Settings checkpoints written before they existed lack, with the value those runs had.
_MISSING = {"init": "taming", "corrupt": False, "start": "", "dropout": 0.0, "bf16": False}


@dataclass(frozen=True)
class PriorTrainConfig:
    """Everything that decides a run's outcome (stored in the checkpoint)."""

    kind: Kind
    K: int
    n_layer: int = 4  # the shipped concealers' size (configs/prior-*-k256.yaml)
    n_head: int = 4
    n_embd: int = 128
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


class PriorTrainer:
    """One AdamW step on a batch of windows, and the state a resumed run needs (:class:`TrainingRun`).
    No numpy generator state: each step's windows come from (seed, step) alone."""

    def __init__(self, model: GPT, cfg: PriorTrainConfig, batches: StepBatches):
        self.model, self.cfg, self.batches = model, cfg, batches
        self.opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
        model.train()

    def describe(self, row: dict[str, float]) -> str:
        return f"loss {row['loss']:.3f} acc {row['accuracy']:.3f}"

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "np_rng" in state:
            raise ResumeError(
                "--resume: the checkpoint comes from an older vqnet that drew its windows from one "
                "running generator, so it cannot continue the same way; start a new run "
                "(--start continues an exported concealment file)"
            )
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])

    def step(self, step: int) -> dict[str, float]:
        cfg, model = self.cfg, self.model
        t0 = time.perf_counter()
        lr = lr_at(step, cfg)
        for group in self.opt.param_groups:
            group["lr"] = lr
        codes, masks = self.batches(step)
        loss, acc = loss_and_accuracy(model, cfg.kind, cfg.K, codes, masks, corrupt=cfg.corrupt, bf16=cfg.bf16)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        self.opt.step()
        return {"loss": loss.item(), "accuracy": acc, "lr": lr, "seconds": time.perf_counter() - t0}


def train_prior(
    maps: list[np.ndarray],
    out: Path,
    cfg: PriorTrainConfig,
    resume: bool = False,
    extra: dict | None = None,
    code_vectors: torch.Tensor | None = None,
    device: str = "cpu",
    minutes: float | None = None,
    start_weights: dict[str, torch.Tensor] | None = None,
    workers: int = 0,
    progress: bool = False,
) -> Path:
    """Train (or resume) a concealment transformer in :class:`TrainingRun`; returns the
    checkpoint path. Logs every step to ``out/log.csv`` (:data:`LOG_COLUMNS`).

    ``extra`` (e.g. the codebook fingerprint the index maps came from) is stored in the checkpoint
    and must match on resume, so a run is never continued on other data. ``code_vectors`` (K x d,
    the codebook) seeds the token embeddings (:func:`init_for_codes`). Windows and masks are drawn
    on the CPU, so ``device`` changes speed, not the data. ``minutes`` stops early with a
    checkpoint (a lent GPU's budget is fixed); the learning-rate schedule still follows ``steps``.
    ``start_weights`` (a trained model's state_dict, whose file's sha256 is ``cfg.start``) replace
    the initial weights: a fine-tune. ``workers`` processes draw the batches ahead
    (:class:`vqnet.training.prior_data.StepBatches`): the same run, faster where the model is not
    the bottleneck (a GPU). ``progress`` shows a bar on stderr.
    """
    if (start_weights is None) != (not cfg.start):
        raise ValueError("start_weights and cfg.start (their file's sha256) go together")
    run = TrainingRun(out, asdict(cfg), resume, may_change=["steps"], missing=_MISSING, identity=extra)
    torch.manual_seed(cfg.seed)
    model = GPT(cfg.gpt_config())
    if start_weights is not None:  # untied: a head tied to the embedding would take only one of the two
        model.load_state_dict(start_weights)
    elif cfg.init == "codes":
        init_for_codes(model, cfg, code_vectors)
    model.to(device)
    batches = StepBatches(maps, cfg.seed, cfg.batch, with_masks=cfg.kind == "masked" or cfg.corrupt, workers=workers)
    with batches:
        trainer = PriorTrainer(model, cfg, batches)
        bar = f"training {cfg.kind} K={cfg.K}" if progress else None
        return run.run(trainer, cfg.steps, LOG_COLUMNS, cfg.checkpoint_minutes, minutes, bar=bar)
