"""How far a bf16 decode lands from the float32 one: pixels and LPIPS, per image and overall.

    python scripts/experiments/bf16_tolerance.py [IMAGES] [--K 256] [--json OUT]

Each image is encoded (float32), quantised at K, and its loss-free grid decoded twice by the
bundled codec: in float32 and under bf16 autocast. Reported: the largest and the mean absolute
difference of the decoder's output in [-1, 1] (before rounding to 8 bits), the share of 8-bit
sub-pixels that differ, and LPIPS-alex against the original in both precisions. A measurement,
not a test; it refuses to run where bf16 is refused (vqnet.runtime).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from vqnet.codec.bundle import load_codec
from vqnet.images import load_images, to_uint8
from vqnet.metrics import lpips_distance
from vqnet.runtime import DeviceError, autocast, prepare


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("images", nargs="?", default="../shared/data/kodak")
    ap.add_argument("--K", type=int, default=256)
    ap.add_argument("--json", help="also write the per-image rows here")
    args = ap.parse_args()
    try:
        device, _ = prepare("cpu", "bf16")
    except DeviceError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    codec = load_codec()
    rows = []
    for image in load_images(args.images):
        h, w = image.pixels.shape[:2]
        grid = torch.as_tensor(codec.encode(image.pixels, args.K))
        z = codec.codebook(args.K).embedding[grid].permute(2, 0, 1).unsqueeze(0)
        with torch.inference_mode():
            f32 = codec.decode_vectors(z, args.K)
            with autocast(device, "bf16"):
                b16 = codec.decode_vectors(z, args.K).float()
        diff = (f32.clamp(-1, 1) - b16.clamp(-1, 1)).abs()
        u32, u16 = to_uint8(f32)[:h, :w], to_uint8(b16)[:h, :w]
        lp32, lp16 = lpips_distance(image.pixels, u32), lpips_distance(image.pixels, u16)
        rows.append(
            {
                "image": image.name,
                "max_abs": diff.max().item(),
                "mean_abs": diff.mean().item(),
                "uint8_changed": float((u32 != u16).mean()),
                "uint8_max": int(np.abs(u32.astype(int) - u16).max()),
                "lpips_f32": lp32,
                "lpips_bf16": lp16,
                "lpips_diff": lp16 - lp32,
            }
        )
        print(json.dumps(rows[-1]))
    d = np.array([r["lpips_diff"] for r in rows])
    print(
        f"{len(rows)} images, K={args.K}: max |pixel diff| {max(r['max_abs'] for r in rows):.4f} on [-1, 1], "
        f"mean {np.mean([r['mean_abs'] for r in rows]):.5f}; 8-bit sub-pixels changed "
        f"{np.mean([r['uint8_changed'] for r in rows]):.1%} (at most {max(r['uint8_max'] for r in rows)} levels); "
        f"LPIPS bf16 - float32: mean {d.mean():+.5f}, mean |.| {np.abs(d).mean():.5f}, max |.| {np.abs(d).max():.5f}"
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
