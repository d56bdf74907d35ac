"""Pack what a lent GPU machine needs into ``.gpu/`` (git-ignored), within its 64 MiB per call.

Why: the device tool sends only the repository, and at most 64 MiB of it. The 1,500 training photos
are 146 MB and the verified VGG16 trunk of the perceptual loss is 59 MB, so this writes

- ``.gpu/train/NNNN.jpg``: one seeded ``--side``-pixel crop per training photo (photos with a shorter
  side are upscaled first, as ``CropDataset`` does), JPEG at the highest quality that keeps the
  set under ``--budget-mb``;
- ``.gpu/vgg16-fp16.safetensors.xz``: the fp16 rounding of the VGG16 trunk
  (:func:`vqnet.weights.export_vgg16_fp16`; loaded through ``$VQNET_VGG16_FP16``);
- ``.gpu/maps-K<K>.safetensors``: index maps of every whole training photo and its mirror at each
  ``--maps-k`` (``vqnet train prior --maps``), encoded here with the bundled model (or ``--model``),
  whose encoder the GPU run keeps frozen (so the maps stay valid for the model it writes).

Usage: ``python scripts/gpu_pack.py`` then run ``scripts/gpu_train.sh`` on the device (see README).
"""
from __future__ import annotations

import argparse
import io
import lzma
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from vqnet.codec.bundle import load_codec
from vqnet.images import list_image_files, load_image
from vqnet.restore.cli import latent_cache
from vqnet.restore.data import choose_photos, encode_photos, index_maps, save_maps
from vqnet.restore.store import encoder_fingerprint, index_fingerprint
from vqnet.weights import export_vgg16_fp16


def crops(data: Path, side: int, seed: int) -> list[Image.Image]:
    """One random ``side`` x ``side`` crop per photo, drawn by ``seed``."""
    rng = np.random.default_rng(seed)
    out = []
    for f in list_image_files(data):
        img = Image.fromarray(load_image(f))
        w, h = img.size
        if min(w, h) < side:
            s = side / min(w, h)
            img = img.resize((max(side, round(w * s)), max(side, round(h * s))), Image.BICUBIC)
            w, h = img.size
        x, y = int(rng.integers(w - side + 1)), int(rng.integers(h - side + 1))
        out.append(img.crop((x, y, x + side, y + side)))
    return out


def encode_all(images: list[Image.Image], quality: int) -> list[bytes]:
    files = []
    for img in images:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality)
        files.append(buf.getvalue())
    return files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/train"))
    ap.add_argument("--out", type=Path, default=Path(".gpu"))
    ap.add_argument("--side", type=int, default=256)
    ap.add_argument("--budget-mb", type=float, default=19.0, help="Size limit of the packed photos.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--maps-k", type=int, nargs="*", default=[256], help="K whose index maps to pack.")
    ap.add_argument("--shifts", type=int, nargs="*", default=[0],
                    help="Pixel shifts to encode every photo at (0 8: twice the maps, grid moved half a token).")
    ap.add_argument("--maps-only", action="store_true", help="Write only the index maps.")
    ap.add_argument("--model", type=Path, help="Codec bundle whose maps to pack (default: the bundled one).")
    args = ap.parse_args()
    codec = load_codec(args.model)
    files = choose_photos(args.data, None)
    encoder_key = encoder_fingerprint(codec)
    latents = []
    for shift in args.shifts:
        latents += encode_photos(codec, files, latent_cache(encoder_key, files, shift), shift=shift)
    args.out.mkdir(parents=True, exist_ok=True)
    for K in args.maps_k:
        maps = index_maps(codec, latents, K)
        save_maps(args.out / f"maps-K{K}.safetensors", maps, index_fingerprint(codec, K), len(files))
        print(f"K={K}: {len(maps)} index maps of {len(files)} photos and their mirrors, shifts {args.shifts}")
    if args.maps_only:
        return
    images = crops(args.data, args.side, args.seed)
    for quality in range(90, 49, -2):
        files = encode_all(images, quality)
        if sum(map(len, files)) <= args.budget_mb * 1e6:
            break
    train = args.out / "train"
    shutil.rmtree(train, ignore_errors=True)
    train.mkdir(parents=True)
    for i, data in enumerate(files):
        (train / f"{i:04d}.jpg").write_bytes(data)
    print(f"{len(files)} crops of {args.side} px at JPEG quality {quality}: {sum(map(len, files)) / 1e6:.1f} MB")
    vgg = args.out / "vgg16-fp16.safetensors"
    export_vgg16_fp16(vgg)
    (args.out / "vgg16-fp16.safetensors.xz").write_bytes(lzma.compress(vgg.read_bytes()))
    vgg.unlink()


if __name__ == "__main__":
    main()
