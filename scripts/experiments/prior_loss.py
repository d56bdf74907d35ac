"""Teacher-forced loss of concealment transformers on an image folder's index maps (nats).

Why: comparing weights by LPIPS takes a sweep of tens of minutes; this loss, on the same windows
for every file, takes a minute and is what the README's weight-comparison tables quote. ``ar`` is
scored on clean windows and on windows whose sampled lost positions hold its own greedy guesses
(what ``--corrupt`` trains for); ``masked`` on windows with sampled holes. Photos are split into two
ranges (say tuning and held-out Kodak images) by ``--split``.

Usage: ``python scripts/experiments/prior_loss.py FILE.safetensors [...] --images ../shared/data/kodak --split 8``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from vqnet.codec.bundle import load_codec
from vqnet.codec.photos import photo_views
from vqnet.images import list_image_files
from vqnet.restore.data import WindowSampler, index_maps
from vqnet.restore.store import index_fingerprint, load_concealer_file
from vqnet.restore.train import Kind, loss_and_accuracy


def mean_loss(
    path: Path, kind: Kind, K: int, fingerprint: str, maps: list[np.ndarray], corrupt: bool, batches: int, batch: int
) -> float:
    """Mean loss over ``batches`` seeded batches of windows: the same windows for every file."""
    model, _ = load_concealer_file(path, kind, K, fingerprint)
    model.eval().float()
    sampler, rng = WindowSampler(maps), np.random.default_rng(0)
    losses = []
    for _ in range(batches):
        codes, masks = sampler.batch(rng, batch, with_masks=kind == "masked" or corrupt)
        with torch.no_grad():
            losses.append(float(loss_and_accuracy(model, kind, K, codes, masks, corrupt=corrupt)[0]))
    return float(np.mean(losses))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", type=Path, nargs="+", help="Concealment files (kind read from 'ar'/'masked' in the name).")
    ap.add_argument("--images", type=Path, default=Path("../shared/data/kodak"))
    ap.add_argument("--split", type=int, default=8, help="Photos [0, split) and [split, end), sorted by name.")
    ap.add_argument("--K", type=int, default=256)
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    codec = load_codec(None)
    files = sorted(list_image_files(args.images))
    maps = index_maps(codec, photo_views(codec, files), args.K)
    per = len(maps) // len(files)  # each photo and its mirror
    parts = {
        f"photos {args.split + 1}-{len(files)}": maps[args.split * per :],
        f"photos 1-{args.split}": maps[: args.split * per],
    }
    fingerprint = index_fingerprint(codec, args.K)
    for path in args.files:
        kind: Kind = "masked" if "masked" in path.name else "ar"
        cells = []
        for name, part in parts.items():
            if kind == "ar":
                clean, own = (
                    mean_loss(path, kind, args.K, fingerprint, part, c, args.batches, args.batch) for c in (False, True)
                )
                cells.append(f"{name}: clean {clean:.3f}, own guesses {own:.3f}")
            else:
                cells.append(
                    f"{name}: {mean_loss(path, kind, args.K, fingerprint, part, False, args.batches, args.batch):.3f}"
                )
        print(f"{path}  " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
