"""Mean L1 through the codes (K=1024) of codec bundles on their GPU training crops and on held-out
Kodak crops: the check that showed a decoder memorising its data (docs/experiment-log.md, run D).

Why: a training log only shows the loss on the crops the run trains on. A run that lowers L1 there
while raising it on photos it never saw has memorised them, and more steps make it worse.

Usage: ``python scripts/experiments/crop_l1.py BUNDLE [BUNDLE ...] [--train .gpu/train] [--every 10]``
(every 10th packed crop; two seeded 256-px crops of each Kodak image).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from vqnet.codec.bundle import load_codec
from vqnet.images import list_image_files, load_image


def kodak_crops(kodak: Path, side: int, seeds: tuple[int, ...] = (0, 1)) -> list[np.ndarray]:
    out = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        for f in list_image_files(kodak):
            img = load_image(f)
            y, x = int(rng.integers(img.shape[0] - side + 1)), int(rng.integers(img.shape[1] - side + 1))
            out.append(img[y : y + side, x : x + side])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+", type=Path)
    ap.add_argument("--train", type=Path, default=Path(".gpu/train"), help="Packed crops (scripts/tools/gpu_pack.py).")
    ap.add_argument("--every", type=int, default=10, help="Use every N-th packed crop.")
    ap.add_argument("--kodak", type=Path, default=Path("../shared/data/kodak"))
    ap.add_argument("--K", type=int, default=1024)
    args = ap.parse_args()
    sets = {
        "training crops": [load_image(f) for f in list_image_files(args.train)[:: args.every]],
        "Kodak crops": kodak_crops(args.kodak, 256),
    }
    torch.set_num_threads(2)
    for path in args.bundles:
        codec = load_codec(path)
        for name, images in sets.items():
            l1 = [
                np.abs(codec.decode(codec.encode(im, args.K), args.K).astype(np.float64) - im).mean() / 127.5
                for im in images
            ]
            print(f"{path} {name} ({len(images)}): L1 {np.mean(l1):.4f}", flush=True)


if __name__ == "__main__":
    main()
