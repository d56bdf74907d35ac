"""Fine-tuning the reduced codebooks of a ladder, as the paper's code does (``VQ_Frozen``).

For each K below the base size: start from its K-means codebook, keep the encoder and decoder
fixed, and train that K's codebook, quant_conv and post_quant_conv on training crops with the
reconstruction loss (L1 + LPIPS-VGG + codebook loss; no GAN, as upstream's frozen model has none to
train). K-means only places centroids in the latent space; fine-tuning moves them to where the
frozen decoder reconstructs best, which is what the paper's "w/ fine-tune" rows measure.

Why all K train in one loop: the encoder is frozen, so each crop batch is encoded once (no graph)
and that latent serves every K. The fine-tuned rungs keep their K-means ancestors (``Codebook.raw``)
so the ablation can be re-run from the same bundle, and both get their own priors: fine-tuning
changes which codes the encoder's outputs pick.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vqnet.codec.bundle import Codebook, Codec, CodecError
from vqnet.codec.model import VectorQuantizer2, VQModel
from vqnet.training.ladder import fit_prior
from vqnet.training.loop import TrainingRun
from vqnet.training.losses import reconstruction_loss
from vqnet.training.vqgan import CropDataset, perplexity


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that decides the fine-tuned codebooks (saved in the bundle's provenance)."""

    steps: int = 1000
    batch: int = 8
    crop: int = 128
    lr: float = 1e-4
    perceptual_weight: float = 1.0  # LPIPS-VGG, as the paper's repo (taming's loss)
    codebook_weight: float = 1.0
    seed: int = 0
    # bf16 autocast for the frozen encoder, the decoder and the loss (the codebook search stays
    # float32): what a GPU wants for the official 76 M-parameter model; 25x slower on CPUs
    # without avx512_bf16.
    bf16: bool = False


class _Rung(nn.Module):
    """The trainable part of one K: quant_conv -> quantizer (legacy codebook loss) -> post_quant_conv."""

    def __init__(self, cb: Codebook):
        super().__init__()
        e_dim, z_channels = cb.quant_conv_weight.shape[:2]
        self.quant_conv = nn.Conv2d(z_channels, e_dim, 1)
        self.quantize = VectorQuantizer2(cb.K, e_dim)
        self.post_quant_conv = nn.Conv2d(e_dim, z_channels, 1)
        with torch.no_grad():
            self.quant_conv.weight.copy_(cb.quant_conv_weight)
            self.quant_conv.bias.copy_(cb.quant_conv_bias)
            self.quantize.embedding.weight.copy_(cb.embedding)
            self.post_quant_conv.weight.copy_(cb.post_quant_conv_weight)
            self.post_quant_conv.bias.copy_(cb.post_quant_conv_bias)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encoder output -> (decoder input, codebook loss, indices)."""
        quant, emb_loss, idx = self.quantize(self.quant_conv(z))
        return self.post_quant_conv(quant), emb_loss, idx

    def codebook(self, raw: Codebook) -> Codebook:
        """The trained rung as a fine-tuned Codebook (on the CPU, as every Codebook) that remembers
        ``raw`` (prior still raw's)."""

        def take(t: torch.Tensor) -> torch.Tensor:
            return t.detach().cpu().clone()

        return replace(
            raw,
            embedding=take(self.quantize.embedding.weight),
            quant_conv_weight=take(self.quant_conv.weight),
            quant_conv_bias=take(self.quant_conv.bias),
            post_quant_conv_weight=take(self.post_quant_conv.weight),
            post_quant_conv_bias=take(self.post_quant_conv.bias),
            finetuned=True,
            raw=raw,
        )


@contextmanager
def _frozen(model: VQModel) -> Iterator[None]:
    """No parameter gradients for the shared VQGAN (saves the decoder's weight-gradient work);
    the caller's flags are restored afterwards."""
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)


def finetune_targets(codec: Codec, ks: Sequence[int] | None) -> list[int]:
    """The K to fine-tune (default: every K below the base size), refusing any that cannot be."""
    base = codec.model.config.n_embed
    targets = sorted({K for K in codec.ks if K < base} if ks is None else set(ks), reverse=True)
    for K in targets:
        cb = codec.codebook(K)
        if K == base:
            raise CodecError(f"K={K} is the base codebook, trained with the VQGAN; fine-tune the smaller K")
        if cb.finetuned:
            raise CodecError(f"K={K} is already fine-tuned; start from the K-means bundle of `vqnet codebook kmeans`")
    if not targets:
        raise CodecError("the codec has no codebook below its base size to fine-tune")
    return targets


#: Per-K columns of ``log.csv``: ``loss_K64``, ``l1_K64``, ... (:func:`log_columns`).
FIELDS = ("loss", "l1", "p_loss", "emb_loss", "perplexity")


def log_columns(targets: Sequence[int]) -> list[str]:
    """The fine-tuning log's columns for the rungs ``targets``."""
    return [f"{name}_K{K}" for K in targets for name in FIELDS]


class FinetuneTrainer:
    """One step of every rung on one batch of crops, and the state a resumed run needs
    (:class:`TrainingRun`)."""

    def __init__(self, codec: Codec, targets: Sequence[int], dataset: CropDataset, cfg: FinetuneConfig):
        self.model, self.dataset, self.cfg = codec.model, dataset, cfg
        self.device = self.model.quant_conv.weight.device
        self.rungs = {K: _Rung(codec.codebook(K)).to(self.device) for K in targets}
        self.opts = {K: torch.optim.Adam(r.parameters(), lr=cfg.lr, betas=(0.5, 0.9)) for K, r in self.rungs.items()}
        self.rng = np.random.default_rng(cfg.seed)

    def describe(self, row: dict[str, float]) -> str:
        return " ".join(f"K={K} {row[f'loss_K{K}']:.4f}" for K in self.rungs)

    def state_dict(self) -> dict:
        return {
            "rungs": {str(K): r.state_dict() for K, r in self.rungs.items()},
            "optimizers": {str(K): o.state_dict() for K, o in self.opts.items()},
            "np_rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict) -> None:
        for K, rung in self.rungs.items():
            rung.load_state_dict(state["rungs"][str(K)])
            self.opts[K].load_state_dict(state["optimizers"][str(K)])
        self.rng.bit_generator.state = state["np_rng"]

    def _mixed(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16)

    def step(self, step: int) -> dict[str, float]:
        x = self.dataset.batch(self.rng, self.cfg.batch).to(self.device)
        with torch.no_grad(), self._mixed():
            z = self.model.encoder(x).float()
        row = {}
        for K, rung in self.rungs.items():
            post, emb_loss, idx = rung(z)  # float32: bf16 distances would pick wrong codes
            with self._mixed():
                rec = reconstruction_loss(x, self.model.decoder(post), self.cfg.perceptual_weight)
            loss = rec["nll"].float() + self.cfg.codebook_weight * emb_loss
            self.opts[K].zero_grad(set_to_none=True)
            loss.backward()
            self.opts[K].step()
            values = (loss, rec["l1"], rec["p_loss"], emb_loss)
            row |= {f"{name}_K{K}": v.item() for name, v in zip(FIELDS, values)}
            row[f"perplexity_K{K}"] = perplexity(torch.bincount(idx.flatten().cpu()).float())
        return row


def finetune_ladder(
    codec: Codec,
    dataset: CropDataset,
    prior_latents: Sequence[torch.Tensor],
    cfg: FinetuneConfig,
    out: Path,
    ks: Sequence[int] | None = None,
    resume: bool = False,
    minutes: float | None = None,
    prior_views: int = 1,
    progress: bool = False,
) -> tuple[Codec, int]:
    """Return a new Codec whose rungs ``ks`` (default: all below the base) are fine-tuned, and the
    steps it was trained for.

    Training runs in :class:`TrainingRun` in the run folder ``out`` (checkpoint, ``log.csv`` with
    :func:`log_columns`; ``resume`` continues it). Each fine-tuned rung keeps its K-means codebook
    as ``raw``, and its prior is refit on ``prior_latents`` (encoder outputs of whole photos,
    ``prior_views`` consecutive ones per photo: :func:`~vqnet.training.photos.photo_views`,
    :func:`~vqnet.training.ladder.fit_prior`). Crops are drawn from ``cfg.seed`` on the CPU;
    training runs where ``codec.model`` sits. ``minutes`` ends training early (a lent GPU's budget
    is fixed). ``progress`` shows a bar on stderr.
    """
    if dataset.crop != cfg.crop:
        raise ValueError(f"the dataset makes {dataset.crop}-px crops but the config says {cfg.crop}")
    targets = finetune_targets(codec, ks)
    run = TrainingRun(
        out, asdict(cfg) | {"ks": targets}, resume, may_change=["steps"], identity={"from_model": codec.model_id}
    )
    torch.manual_seed(cfg.seed)
    trainer = FinetuneTrainer(codec, targets, dataset, cfg)
    with _frozen(codec.model):
        bar = f"fine-tuning K={','.join(map(str, targets))}" if progress else None
        run.run(trainer, cfg.steps, log_columns(targets), minutes=minutes, bar=bar)
    codebooks = dict(codec.codebooks)
    for K, rung in trainer.rungs.items():
        tuned = rung.codebook(codec.codebook(K))
        codebooks[K] = replace(tuned, prior=fit_prior(prior_latents, tuned, prior_views))
    return Codec(codec.model, codebooks, provenance=dict(codec.provenance)), run.step
