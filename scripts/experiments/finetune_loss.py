"""Which part of the fine-tune's loss moves: L1 + LPIPS-VGG and the codebook term of one K on a
fixed batch of training crops, before and after ``vqnet codebook finetune``'s training loop.

Why: the logged loss (each step on new random crops) rose in every fine-tune run. This separates
the reconstruction, which the decoder's image depends on, from the codebook/commitment term, which
it does not (the decoder sees only the codes). Usage:

    python scripts/experiments/finetune_loss.py --model K-MEANS-BUNDLE [--K 16] [--steps 150] [--lr 1e-4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from vqnet.codec.bundle import Codec, load_codec
from vqnet.codec.finetune import FinetuneConfig, _Rung, finetune_ladder
from vqnet.codec.losses import reconstruction_loss
from vqnet.codec.train import CropDataset


@torch.no_grad()
def components(codec: Codec, K: int, x: torch.Tensor) -> dict[str, float]:
    """Reconstruction (L1 + LPIPS-VGG) and codebook loss of crops ``x`` through K."""
    post, emb_loss, _ = _Rung(codec.codebook(K))(codec.model.encoder(x))
    rec = reconstruction_loss(x, codec.model.decoder(post), 1.0)
    return {"l1 + lpips-vgg": rec["nll"].item(), "l1": rec["l1"].item(), "codebook": emb_loss.item()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="K-means bundle (`vqnet codebook kmeans`).")
    ap.add_argument("--data", type=Path, default=Path("../shared/data/train"))
    ap.add_argument("--K", type=int, default=16)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--lr", type=float, default=1e-4)
    args = ap.parse_args()
    codec = load_codec(args.model)
    cfg = FinetuneConfig(steps=args.steps, batch=8, crop=128, lr=args.lr)
    dataset = CropDataset(args.data, cfg.crop)
    fixed = dataset.batch(np.random.default_rng(123), 16)  # not the training loop's draws (seed 0)
    before = components(codec, args.K, fixed)
    after = components(finetune_ladder(codec, dataset, [], cfg, [args.K]), args.K, fixed)
    for name in before:
        print(f"K={args.K} {name}: {before[name]:.4f} -> {after[name]:.4f} after {args.steps} steps")


if __name__ == "__main__":
    main()
