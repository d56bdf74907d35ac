"""Give a bundle's priors pair exponents, tables unchanged: how the bundled model got its own.

Why not ``vqnet codebook priors``: that refits the tables too, which changes the marginal prior
and with it every packet of the scenarios (and issue 4's `ar`-vs-`neighbor` table, see the
README). An exponent only changes how an index is coded when its left *and* upper neighbours share
its packet, so sweep packets stay byte-identical and only `.vqn` files shrink.

Each K's exponent (and each raw rung's) is chosen by :func:`vqnet.codec.ladder.best_pair` on 400
training photos outside the 200 that ``choose_photos(…, 200, seed=0)`` picks, the photos the
bundled K >= 128 tables were fitted on (by ``vqnet codebook decoder --images 200``, before it
added mirror images). Usage (~4 min on 2 cores):

    python scripts/experiments/pair_exponents.py --out runs/pair.safetensors [--model BUNDLE] [--data ../shared/data/train]
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from vqnet.codec.bundle import load_codec, save_codec
from vqnet.codec.ladder import best_pair
from vqnet.images import choose_photos, list_image_files, load_image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="Bundle to write.")
    ap.add_argument("--model", type=Path, default=None, help="Bundle whose priors get exponents (default: bundled).")
    ap.add_argument("--data", default="../shared/data/train", help="Training photos.")
    args = ap.parse_args()

    codec = load_codec(args.model)
    fitted = set(choose_photos(args.data, 200, seed=0))  # what the bundled tables were fitted on
    rest = [f for f in list_image_files(args.data) if f not in fitted]
    held = sorted(np.random.default_rng(1).choice(len(rest), size=400, replace=False).tolist())
    latents = [codec.encode_latent(load_image(rest[i])) for i in held]

    raw_codec = codec.raw_codec() if any(cb.raw for cb in codec.codebooks.values()) else None
    chosen: dict[str, float | None] = {}
    books = {}
    for K, cb in codec.codebooks.items():
        raw = cb.raw
        if raw is not None:
            chosen[f"K{K}.raw"] = best_pair(raw.prior, [raw_codec.quantize(z, K) for z in latents])
            raw = replace(raw, prior=raw.prior.with_pair(chosen[f"K{K}.raw"]))
        chosen[f"K{K}"] = best_pair(cb.prior, [codec.quantize(z, K) for z in latents])
        books[K] = replace(cb, prior=cb.prior.with_pair(chosen[f"K{K}"]), raw=raw)
        print(f"K={K}: exponent {chosen[f'K{K}']}" + (f", raw {chosen[f'K{K}.raw']}" if raw else ""), flush=True)
    codec.codebooks = books
    codec.provenance = codec.provenance | {
        "pair": {
            "exponents": chosen,
            "chosen_on": (
                "best_pair (ideal bits of raster streams) over 400 training photos outside the 200 the K>=128 "
                "priors were fitted on (choose_photos seed 0; held-out draw seed 1); tables unchanged"
            ),
        }
    }
    print(f"wrote {args.out} (sha256 {save_codec(codec, args.out)[:16]})")


if __name__ == "__main__":
    main()
