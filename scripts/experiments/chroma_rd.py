"""Rate and LPIPS-alex of `.vqn` files with and without the colour packet, at several thumbnail
settings: the measurement behind the *Colour* table in docs/colour.md and the defaults in vqnet/chroma.py.

Each image is coded once per K (index packets as `vqnet eval` makes them) and the colour packet
of every setting is added to those packets, so the rows differ only by their colour packet. A
setting ``cells:step:bicubic`` stops the receiver at the bicubic thumbnail (the plain-thumbnail receiver,
without the luma's detail).

Usage: ``python scripts/experiments/chroma_rd.py ../shared/data/kodak [--ks 1024 256 64 16]
[--settings 2:8:bicubic 2:8 2:4 2:3 1:8] [--max-payload 1000]``
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import torch

from vqnet.chroma import apply, fitting_chroma_packet, read_chroma_packet
from vqnet.codec.bundle import load_codec
from vqnet.images import load_images
from vqnet.metrics import bpp, lpips_distance
from vqnet.vqn import decode_vqn, encode_vqn, write_vqn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("images")
    ap.add_argument("--ks", type=int, nargs="+", default=[1024, 256, 64, 16])
    ap.add_argument(
        "--settings",
        nargs="+",
        default=["2:8:bicubic", "2:8", "2:4", "2:3", "1:8"],
        help="cells:step or cells:step:bicubic",
    )
    ap.add_argument("--max-payload", type=int, default=1000)
    ap.add_argument("--model", help="Codec bundle (default: the bundled one).")
    args = ap.parse_args()
    torch.set_num_threads(2)
    codec = load_codec(args.model)
    settings = [(int(s.split(":")[0]), int(s.split(":")[1]), s) for s in args.settings]
    rows: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for item in load_images(args.images):
        img, (h, w) = item.pixels, item.pixels.shape[:2]
        for K in args.ks:
            plain = encode_vqn(codec, img, K, args.max_payload, "interleaved")
            grid = (-(-h // codec.factor), -(-w // codec.factor))
            decoded = decode_vqn(codec, plain, "none")
            rows.setdefault((K, "none"), []).append(
                (bpp(len(write_vqn(plain)), h, w), lpips_distance(img, decoded.image))
            )
            for cells, step, label in settings:
                colour = fitting_chroma_packet(img, codec.factor, grid, cells, args.max_payload, step)
                chroma = read_chroma_packet(colour)[3]
                assert chroma.cells == cells, "the packet did not fit: raise --max-payload"
                out = apply(decoded.image, chroma, codec.factor, from_luma=not label.endswith(":bicubic"))
                vqn = replace(plain, packets=(*plain.packets, colour))
                rows.setdefault((K, label), []).append((bpp(len(write_vqn(vqn)), h, w), lpips_distance(img, out)))
        print(item.name, flush=True)
    print("K  colour(cells:step)  bpp  lpips")
    for (K, label), values in rows.items():
        mean = np.mean(values, axis=0)
        print(f"{K} {label} {mean[0]:.5f} {mean[1]:.4f}")


if __name__ == "__main__":
    main()
