"""Ideal bits per index under three priors, to size an entropy-model change before building it.

For every position of each image's index grid that has both a left and an upper neighbour:

- ``marginal``: the K-code prior alone;
- ``one neighbour``: the bundle's context table given the left neighbour (what a raster packet
  codes against today, :func:`vqnet.packets.context_refs`);
- ``both, a``: a tempered product of the two neighbours' context rows,
  ``p(x | l, u) ∝ T[l, x]^a · T[u, x]^a · p(x)^(1-2a)``: no new table, one exponent per K.

Ideal bits (−log2 p), not coded bytes: the coder's per-packet overhead and the model quantisation
come on top. ``--coded`` measures those instead, for a bundle whose priors carry pair exponents
(``vqnet codebook priors`` fits them): the bytes of real ``.vqn`` files, headers included, with the
bundle's priors as they are and with their exponents removed, in both packet layouts at 1000- and
24-byte payloads. Usage:

    python scripts/experiments/context_bits.py ../shared/data/kodak [--model BUNDLE] [--ks 1024 256 16] [--coded]
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from vqnet.codec.bundle import Codec, load_codec
from vqnet.images import NamedImage, load_images
from vqnet.vqn import encode_vqn, write_vqn

EXPONENTS = (0.5, 0.7, 0.85, 1.0)


def bits(log_probs: np.ndarray, x: np.ndarray) -> float:
    """Mean −log2 of each row's entry at ``x``, rows normalised first."""
    lp = log_probs - log_probs.max(1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(1, keepdims=True))
    return float(-lp[np.arange(len(x)), x].mean() / np.log(2))


def coded(codec: Codec, images: list[NamedImage], ks: list[int]) -> None:
    """.vqn bits per pixel with each K's pair exponent removed, then as the bundle has it."""
    one = Codec(
        codec.model,
        {K: replace(cb, prior=cb.prior.with_pair(None)) for K, cb in codec.codebooks.items()},
        codec.model_id,
    )
    pixels = sum(im.pixels.shape[0] * im.pixels.shape[1] for im in images)
    for K in ks:
        print(f"K={K}, pair exponent {codec.codebook(K).prior.pair}: bpp with one neighbour -> with the pair")
        for layout, payload in (("raster", 1000), ("interleaved", 1000), ("raster", 24), ("interleaved", 24)):
            size = [
                sum(len(write_vqn(encode_vqn(c, im.pixels, K, payload, layout))) for im in images) for c in (one, codec)
            ]
            print(
                f"  {layout:11s} {payload:4d} B: {8 * size[0] / pixels:.5f} -> {8 * size[1] / pixels:.5f} "
                f"({100 * (size[1] / size[0] - 1):+.1f} %)",
                flush=True,
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("images", type=Path)
    ap.add_argument("--model", type=Path, help="Codec bundle (default: the bundled one).")
    ap.add_argument("--ks", type=int, nargs="*", default=[1024, 256, 16])
    ap.add_argument("--coded", action="store_true", help="Bytes of real .vqn files, one neighbour vs the pair.")
    args = ap.parse_args()
    codec = load_codec(args.model)
    images = load_images(str(args.images))
    if args.coded:
        coded(codec, images, args.ks)
        return
    latents = [codec.encode_latent(im.pixels) for im in images]
    for K in args.ks:
        prior = codec.codebook(K).prior
        if prior.context is None:
            raise SystemExit(f"error: K={K}'s prior has no context table")
        table = prior._table.astype(np.float64)[:K]
        log_t = np.log(table / table.sum(1, keepdims=True))
        log_m = np.log(prior.probs.astype(np.float64))
        grids = [codec.quantize(z, K) for z in latents]
        x = np.concatenate([g[1:, 1:].ravel() for g in grids])
        left = np.concatenate([g[1:, :-1].ravel() for g in grids])
        up = np.concatenate([g[:-1, 1:].ravel() for g in grids])
        one = bits(log_t[left], x)
        row = [f"K={K}: marginal {bits(np.broadcast_to(log_m, (len(x), K)), x):.3f}", f"one neighbour {one:.3f}"]
        for a in EXPONENTS:
            both = bits(a * (log_t[left] + log_t[up]) + (1 - 2 * a) * log_m, x)
            row.append(f"both, a={a}: {both:.3f} ({100 * (both / one - 1):+.1f} %)")
        print("; ".join(row), f"bits/index over {len(x)} positions", flush=True)


if __name__ == "__main__":
    with torch.inference_mode():
        main()
