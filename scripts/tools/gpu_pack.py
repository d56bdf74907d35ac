"""Pack what a lent GPU machine needs into ``.gpu/`` (git-ignored), within its 64 MiB per call.

Why: the device tool sends only the repository, and at most 64 MiB of it. The 1,500 training photos
are 146 MB and the verified VGG16 trunk of the perceptual loss is 59 MB, so this writes

- ``.gpu/train/NNNN.jpg`` (or ``.webp``, ``--format``): ``--per-photo`` seeded ``--side``-pixel crops
  of every training photo (photos with a shorter side are upscaled first, by ``CropDataset``'s rule), at the highest
  quality that keeps the set under ``--budget-mb``. One crop per photo is too little for more
  than ~2000 GPU steps at batch 32: a 2-block decoder trained 3757 steps on it (80 epochs) lowered
  L1 on those crops from 0.190 to 0.173 but raised it on held-out Kodak crops from 0.174 to 0.179;
  ``--per-photo 2`` doubles the distinct pixels, but one call carries the repository too (~16 MB),
  which leaves ~24 MB beside the VGG16 trunk: ``--per-photo 2 --side 224 --format webp
  --budget-mb 20`` fits (224 px is ``gpu_train.sh``'s training crop, so only flips vary a crop);
- ``.gpu/val/NNNN.jpg`` (``.webp``): one crop of each of ``--val-photos`` photos (evenly spaced through the
  set) held out of ``train/``, for ``vqnet train vqgan --val`` (``scripts/tools/gpu_train.sh`` uses it
  and keeps the checkpoint with the lowest held-out loss);
- ``.gpu/vgg16-fp16.safetensors.xz``: the fp16 rounding of the VGG16 trunk
  (:func:`vqnet.weights.export_vgg16_fp16`; loaded through ``$VQNET_VGG16_FP16``);
- ``.gpu/maps-K<K>.safetensors``: index maps of every whole training photo and its mirror at each
  ``--maps-k`` (``vqnet train prior --maps``), encoded here with the bundled model (or ``--model``),
  whose encoder the GPU run keeps frozen (so the maps stay valid for the model it writes).

Usage: ``python scripts/tools/gpu_pack.py`` then run ``scripts/tools/gpu_train.sh`` on the device (see README).
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
from vqnet.codec.photos import photo_views
from vqnet.codec.train import at_least
from vqnet.images import choose_photos, list_image_files, load_image
from vqnet.restore.data import index_maps, save_maps
from vqnet.restore.store import index_fingerprint
from vqnet.weights import export_vgg16_fp16


def crops(files: list[Path], side: int, seed: int, per_photo: int = 1) -> list[Image.Image]:
    """``per_photo`` random ``side`` x ``side`` crops per photo, drawn by ``seed`` (the first crop of
    each photo is the same whatever ``per_photo`` is)."""
    rng = np.random.default_rng(seed)
    extra = np.random.default_rng([seed, 1])
    out = []
    for f in files:
        img = Image.fromarray(at_least(load_image(f), side))
        w, h = img.size
        for k in range(per_photo):
            draw = rng if k == 0 else extra
            x, y = int(draw.integers(w - side + 1)), int(draw.integers(h - side + 1))
            out.append(img.crop((x, y, x + side, y + side)))
    return out


#: ``--format`` -> (Pillow format, file suffix, save options). WebP keeps ~2 dB more PSNR than
#: JPEG at the same size (2 x 1440 crops of 224 px: 20.2 MB at WebP 60, 32.5 dB; 21.9 MB at JPEG 50,
#: 30.4 dB), which is what lets two crops per photo travel in one call.
FORMATS = {"jpeg": ("JPEG", ".jpg", {}), "webp": ("WEBP", ".webp", {"method": 6})}


def encode_all(images: list[Image.Image], quality: int, fmt: str = "jpeg") -> list[bytes]:
    name, _, options = FORMATS[fmt]
    files = []
    for img in images:
        buf = io.BytesIO()
        img.save(buf, name, quality=quality, **options)
        files.append(buf.getvalue())
    return files


def fit_budget(images: list[Image.Image], budget: float, fmt: str, lowest: int = 40) -> tuple[int, list[bytes]]:
    """The highest quality (bisection; size grows with quality) whose files total at most
    ``budget`` bytes, and those files; SystemExit when even ``lowest`` is too large."""
    files = encode_all(images, lowest, fmt)
    if sum(map(len, files)) > budget:
        raise SystemExit(
            f"error: {len(images)} crops need {sum(map(len, files)) / 1e6:.1f} MB even at {fmt} "
            f"quality {lowest}; raise --budget-mb or lower --per-photo/--side"
        )
    lo, hi = lowest, 95
    while lo < hi:
        mid = (lo + hi + 1) // 2
        trial = encode_all(images, mid, fmt)
        if sum(map(len, trial)) <= budget:
            lo, files = mid, trial
        else:
            hi = mid - 1
    return lo, files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/train"))
    ap.add_argument("--out", type=Path, default=Path(".gpu"))
    ap.add_argument("--side", type=int, default=256)
    ap.add_argument(
        "--per-photo", type=int, default=1, help="Crops per training photo (2: twice the data; raise --budget-mb)."
    )
    ap.add_argument("--budget-mb", type=float, default=19.0, help="Size limit of the packed photos.")
    ap.add_argument(
        "--format",
        choices=sorted(FORMATS),
        default="jpeg",
        help="Crop file format (webp: ~2 dB better at the same size; what --per-photo 2 needs).",
    )
    ap.add_argument("--val-photos", type=int, default=60, help="Photos held out of train/ into val/.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--maps-k", type=int, nargs="*", default=[256], help="K whose index maps to pack.")
    ap.add_argument(
        "--shifts",
        type=int,
        nargs="*",
        default=[0],
        help="Pixel shifts to encode every photo at (0 8: twice the maps, grid moved half a token).",
    )
    ap.add_argument("--maps-only", action="store_true", help="Write only the index maps.")
    ap.add_argument("--model", type=Path, help="Codec bundle whose maps to pack (default: the bundled one).")
    args = ap.parse_args()
    codec = load_codec(args.model)
    files = choose_photos(args.data, None)
    latents = photo_views(codec, files, args.shifts)
    args.out.mkdir(parents=True, exist_ok=True)
    for K in args.maps_k:
        maps = index_maps(codec, latents, K)
        save_maps(args.out / f"maps-K{K}.safetensors", maps, index_fingerprint(codec, K), len(files))
        print(f"K={K}: {len(maps)} index maps of {len(files)} photos and their mirrors, shifts {args.shifts}")
    if args.maps_only:
        return
    photos = list_image_files(args.data)
    held = (
        set(np.linspace(0, len(photos) - 1, args.val_photos).round().astype(int).tolist()) if args.val_photos else set()
    )
    images = crops([f for i, f in enumerate(photos) if i not in held], args.side, args.seed, args.per_photo)
    quality, files = fit_budget(images, args.budget_mb * 1e6, args.format)
    val = encode_all(crops([photos[i] for i in sorted(held)], args.side, args.seed), quality, args.format)
    suffix = FORMATS[args.format][1]
    for name, coded in (("train", files), ("val", val)):
        folder = args.out / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for i, data in enumerate(coded):
            (folder / f"{i:04d}{suffix}").write_bytes(data)
    print(
        f"{len(files)} crops of {args.side} px ({args.per_photo} per photo) at {args.format} quality {quality}: "
        f"{sum(map(len, files)) / 1e6:.1f} MB; {len(val)} held out in val/: {sum(map(len, val)) / 1e6:.1f} MB"
    )
    vgg = args.out / "vgg16-fp16.safetensors"
    export_vgg16_fp16(vgg)
    (args.out / "vgg16-fp16.safetensors.xz").write_bytes(lzma.compress(vgg.read_bytes()))
    vgg.unlink()


if __name__ == "__main__":
    main()
