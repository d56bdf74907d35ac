"""Probes of what limits the default model's quality, on a few Kodak images at one K (docs/experiment-log.md,
"What limits quality at 0.03 bpp"). Each prints mean LPIPS-alex, PSNR and no-context bits per pixel.

Why a script: these are the measurements behind the negative results in docs/experiment-log.md (none of them ships),
and a number without the code that made it cannot be checked or re-run for a new model.

- ``codes``: the codec as shipped (or ``--model``'s, or, with ``--checkpoint``, with that training
  run's decoder);
- ``continuous``: the encoder's output decoded *before* quantisation (what rate costs at most);
- ``decoder-space``: codes picked by distance after post_quant_conv instead of in the codebook;
- ``refine``: encode-time refinement, Adam on the pre-quantisation latent through the frozen
  decoder with straight-through codes, minimising L1 + LPIPS-VGG (never LPIPS-alex, the metric);
- ``chroma-oracle``: the codes decoded, with the *original's* chroma (block means over
  ``--oracle-block`` px, upsampled bicubically; 1 = every pixel's) put under the decoded luma: what
  colour alone could still buy, at no rate.

Usage: ``python scripts/experiments/quality_probes.py codes continuous [--images kodim02 kodim05 ...] [--K 1024]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vqnet.chroma import apply, measure
from vqnet.codec.bundle import Codec, load_codec
from vqnet.codec.ladder import swap_decoder
from vqnet.codec.losses import reconstruction_loss
from vqnet.codec.model import nearest_code
from vqnet.codec.train import load_init_model
from vqnet.entropy import encoded_size_bits
from vqnet.images import load_image, pad_to_multiple, to_tensor, to_uint8
from vqnet.metrics import lpips_distance, psnr

EVERY_THIRD = [f"kodim{i:02d}" for i in range(2, 25, 3)]  # the 8 images the README's model notes use


def pre_quant(codec: Codec, img: np.ndarray, K: int) -> torch.Tensor:
    """quant_conv(encoder(img)): the latent the codebook search sees, (1, embed_dim, h, w)."""
    cb = codec.codebook(K)
    return F.conv2d(codec.encode_latent(img), cb.quant_conv_weight, cb.quant_conv_bias)


def nearest(h: torch.Tensor, codebook: torch.Tensor, project: torch.Tensor | None = None) -> np.ndarray:
    """Index grid of the codes nearest to ``h``, distances taken after ``project`` (a 1x1 conv) if given."""
    _, c, gh, gw = h.shape
    flat, book = h.detach().permute(0, 2, 3, 1).reshape(-1, c), codebook
    if project is not None:
        flat, book = flat @ project.T, book @ project.T
    return nearest_code(flat, book).view(gh, gw).numpy()


def refine(codec: Codec, img: np.ndarray, K: int, steps: int, lr: float) -> np.ndarray:
    """Codes after ``steps`` Adam steps on the pre-quantisation latent (straight-through)."""
    cb = codec.codebook(K)
    x = to_tensor(pad_to_multiple(img, codec.factor))
    with torch.no_grad():
        h = pre_quant(codec, img, K).clone()
    h.requires_grad_(True)
    opt = torch.optim.Adam([h], lr=lr)
    for _ in range(steps):
        zq = cb.embedding[torch.as_tensor(nearest(h, cb.embedding))].permute(2, 0, 1).unsqueeze(0)
        loss = reconstruction_loss(x, codec.decode_vectors(h + (zq - h).detach(), K), 1.0)["nll"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return nearest(h, cb.embedding)


def probe(codec: Codec, name: str, img: np.ndarray, K: int, args: argparse.Namespace) -> tuple[float, float, float]:
    cb = codec.codebook(K)
    h, w = img.shape[:2]
    if name == "continuous":
        with torch.no_grad():
            out = to_uint8(codec.decode_vectors(pre_quant(codec, img, K), K))[:h, :w]
        return lpips_distance(img, out), psnr(img, out), float("nan")
    if name == "chroma-oracle":  # a thumbnail at step 1 with "cells" of oracle_block px is the block means
        out = apply(
            codec.decode(codec.encode(img, K), K, (h, w)),
            measure(img, args.oracle_block, 1, 1),
            args.oracle_block,
            from_luma=False,
        )
        return lpips_distance(img, out), psnr(img, out), float("nan")
    if name == "codes":
        idx = codec.encode(img, K)
    elif name == "decoder-space":
        idx = nearest(pre_quant(codec, img, K), cb.embedding, cb.post_quant_conv_weight[:, :, 0, 0])
    else:
        idx = refine(codec, img, K, args.steps, args.lr)
    out = codec.decode(idx, K, (h, w))
    return lpips_distance(img, out), psnr(img, out), encoded_size_bits(idx.ravel(), cb.prior) / (h * w)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("probes", nargs="+", choices=["codes", "continuous", "decoder-space", "refine", "chroma-oracle"])
    ap.add_argument("--kodak", type=Path, default=Path("../shared/data/kodak"))
    ap.add_argument("--images", nargs="+", default=EVERY_THIRD)
    ap.add_argument("--K", type=int, default=1024)
    ap.add_argument("--model", type=Path, help="Codec bundle (default: the shipped one).")
    ap.add_argument("--checkpoint", type=Path, help="Use this `vqnet train vqgan --freeze encoder` run's decoder.")
    ap.add_argument("--steps", type=int, default=12, help="refine: Adam steps.")
    ap.add_argument("--lr", type=float, default=0.003, help="refine: Adam rate (codes sit ~0.06 apart).")
    ap.add_argument("--oracle-block", type=int, default=1, help="chroma-oracle: block side in px (1: full).")
    args = ap.parse_args()
    torch.set_num_threads(2)
    codec = load_codec(args.model)
    if args.checkpoint:  # K-means rungs: a decoder swap refuses rungs fine-tuned for the old decoder
        codec = swap_decoder(codec.raw_codec(), load_init_model(args.checkpoint))
    codec.model.requires_grad_(False)
    images = {n: load_image(args.kodak / f"{n}.png") for n in args.images}
    for name in args.probes:
        rows = []
        for n, img in images.items():
            rows.append(probe(codec, name, img, args.K, args))
            print(
                f"  {name} {n}: LPIPS-alex {rows[-1][0]:.4f} PSNR {rows[-1][1]:.2f} bpp {rows[-1][2]:.4f}", flush=True
            )
        lp, ps, bp = np.mean(rows, axis=0)
        print(f"{name} (K={args.K}, {len(rows)} images): LPIPS-alex {lp:.4f} PSNR {ps:.2f} bpp (no context) {bp:.4f}")


if __name__ == "__main__":
    main()
