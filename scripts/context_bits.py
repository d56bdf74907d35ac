"""Ideal bits per index under three priors, to size an entropy-model change before building it.

For every position of each image's index grid that has both a left and an upper neighbour:

- ``marginal``: the K-code prior alone;
- ``one neighbour``: the bundle's context table given the left neighbour (what a raster packet
  codes against today, :func:`vqnet.packets.context_refs`);
- ``both, a``: a tempered product of the two neighbours' context rows,
  ``p(x | l, u) ∝ T[l, x]^a · T[u, x]^a · p(x)^(1-2a)``: no new table, one exponent per K.

Ideal bits (−log2 p), not coded bytes: the coder's per-packet overhead and the model quantisation
come on top, and a product needs exact integer arithmetic before it can be coded (encoder and
decoder must compute identical tables on every machine). Usage:

    python scripts/context_bits.py ../shared/data/kodak [--model BUNDLE] [--ks 1024 256 16]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from vqnet.codec.bundle import load_codec
from vqnet.images import load_images

EXPONENTS = (0.5, 0.7, 0.85, 1.0)


def bits(log_probs: np.ndarray, x: np.ndarray) -> float:
    """Mean −log2 of each row's entry at ``x``, rows normalised first."""
    lp = log_probs - log_probs.max(1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(1, keepdims=True))
    return float(-lp[np.arange(len(x)), x].mean() / np.log(2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("images", type=Path)
    ap.add_argument("--model", type=Path, help="Codec bundle (default: the bundled one).")
    ap.add_argument("--ks", type=int, nargs="*", default=[1024, 256, 16])
    args = ap.parse_args()
    codec = load_codec(args.model)
    latents = [codec.encode_latent(im.pixels) for im in load_images(str(args.images))]
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
