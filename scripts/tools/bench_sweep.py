"""Sweep throughput, old code against new: a benchmark to run by hand, not a test.

    python scripts/tools/bench_sweep.py [--baseline REV] [--device cpu|cuda] [--cluster local:2] [--json OUT]

Runs one fixed small scenario (below) with ``vqnet run`` in fresh processes:

1. ``baseline``: the code of git revision REV (default: the last commit before issue 29's work),
   extracted with ``git archive`` into a temporary folder: the previous code, exactly;
2. ``float32``: this checkout, the default path;
3. ``bf16``: this checkout with ``--precision bf16``, where the machine allows it;
4. ``cluster``: this checkout with ``--cluster local:2`` (Ray), where Ray is installed.

For each it prints method-trials per second (rows of results.csv over the sweep's own time, the
``N method-trials in S s`` line, so imports and plotting are left out, as is Ray's start; the
workers' loading of the codec is inside it) and whether its results.csv equals the baseline's
byte for byte (float32 runs must; bf16 ones cannot). Then, in this process, the decoder alone on
one 512 x 512 grid: its FLOPs (torch's FlopCounterMode), its best time of a few in float32 and
bf16, and the achieved GFLOP/s beside this machine's matmul peak (best of a few 2048^3 products)
in the same dtype.

On a shared machine, run it when nothing else does: every figure is a best-of or a whole-run
wall time, and another process on the cores skews them all.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: main before issue 29 ("Sweeps at scale").
DEFAULT_BASELINE = "816df4d"
SCENARIO = """\
name: bench
description: scripts/tools/bench_sweep.py's fixed scenario.
seed: 7
images: {names: [astronaut]}
K: [256]
packets: {max_payload: 24, layout: interleaved, chroma_cells: 2}
channel: {model: gilbert, loss: [0.3, 0.6], burst: [4]}
methods: [none, neighbor, ar, masked]
trials: 1
"""


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown CPU"


def run_sweep(label: str, pythonpath: Path, scenario: Path, out: Path, extra: list[str]) -> dict:
    """One ``vqnet run`` in a fresh process; its method-trials/s, or why it could not run."""
    env = os.environ | {"PYTHONPATH": str(pythonpath)}
    cmd = [sys.executable, "-m", "vqnet", "run", str(scenario), "--out", str(out), "-q", "--fresh", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=pythonpath, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        reason = (proc.stderr.strip().splitlines() or ["exit %d" % proc.returncode])[-1]
        return {"label": label, "skipped": reason}
    found = re.search(r"^(\d+) (?:method-)?trials in ([\d.]+) s$", proc.stdout, re.M)
    if not found:
        return {"label": label, "skipped": "no timing line in its output"}
    rows, seconds = int(found.group(1)), float(found.group(2))
    return {
        "label": label,
        "method_trials": rows,
        "sweep_s": seconds,
        "process_s": round(wall, 1),
        "per_s": rows / seconds,
        "csv": (out / "bench" / "results.csv").read_bytes(),
    }


def matmul_peak(dtype, n: int = 2048, reps: int = 5) -> float:
    import torch

    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(reps))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def decoder_figures(device_name: str, precisions: list[str], reps: int = 3) -> dict:
    """FLOPs of one 512 x 512 decode and its best time and GFLOP/s in each precision."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from vqnet.codec.bundle import load_codec
    from vqnet.images import load_images
    from vqnet.runtime import prepare

    device, _ = prepare(device_name, "float32")
    codec = load_codec().to(device)
    grid = codec.encode(load_images(None, ["astronaut"])[0].pixels, 256)
    with FlopCounterMode(display=False) as counter:
        codec.decode(grid, 256)
    flops = counter.get_total_flops()
    out = {"gflop": flops / 1e9}
    for precision in precisions:
        codec.to(device, precision)
        codec.decode(grid, 256)  # warm-up: oneDNN primitives, allocator
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        best = min(_timed(lambda: (codec.decode(grid, 256), sync())) for _ in range(reps))
        out[precision] = {"decode_s": best, "gflop_per_s": flops / best / 1e9}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default=DEFAULT_BASELINE, help="git revision of the previous code")
    ap.add_argument("--device", default="cpu", help="cpu | cuda: where the new path runs")
    ap.add_argument("--cluster", default="local:2", help="--cluster value of the Ray run ('' to skip it)")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()

    import torch

    from vqnet.runtime import DeviceError, check_precision, resolve_device

    device = resolve_device(args.device)
    try:
        check_precision("bf16", device)
        precisions = ["float32", "bf16"]
    except DeviceError as exc:
        precisions = ["float32"]
        print(f"bf16 skipped: {exc}")
    machine = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"machine: {machine}; load average before: {os.getloadavg()[0]:.2f}")

    with tempfile.TemporaryDirectory(prefix="vqnet-bench-") as tmp:
        tmp = Path(tmp)
        scenario = tmp / "bench.yaml"
        scenario.write_text(SCENARIO)
        old = tmp / "baseline"
        old.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", args.baseline, "vqnet"], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        dev = ["--device", args.device]
        runs = [
            run_sweep(f"baseline ({args.baseline}, serial, float32)", old, scenario, tmp / "o0", []),
            run_sweep(f"new, serial, float32, {device.type}", ROOT, scenario, tmp / "o1", dev),
        ]
        if "bf16" in precisions:
            runs.append(
                run_sweep(
                    f"new, serial, bf16, {device.type}", ROOT, scenario, tmp / "o2", dev + ["--precision", "bf16"]
                )
            )
        if args.cluster:
            runs.append(
                run_sweep(
                    f"new, --cluster {args.cluster}, float32, {device.type}",
                    ROOT,
                    scenario,
                    tmp / "o3",
                    dev + ["--cluster", args.cluster],
                )
            )
    reference = runs[0].get("csv")
    base = runs[0].get("per_s")
    print("\nscenario: 1 image (astronaut 512x512), K=256, 2 losses x 1 trial x 4 methods (none, neighbor, ar, masked)")
    print(f"{'run':48} {'method-trials/s':>16} {'vs baseline':>12} {'sweep s':>8}  results.csv")
    for r in runs:
        if "skipped" in r:
            print(f"{r['label']:48} skipped: {r['skipped']}")
            continue
        same = "= baseline's" if r["csv"] == reference else "differs from the baseline's"
        ratio = f"{r['per_s'] / base:.2f}x" if base else "-"
        print(f"{r['label']:48} {r['per_s']:16.3f} {ratio:>12} {r['sweep_s']:8.1f}  {same}")

    dec = decoder_figures(args.device, precisions)
    print(f"\ndecoder, one 512x512 image: {dec['gflop']:.1f} GFLOP")
    peaks = {}
    for precision in precisions:
        if device.type == "cpu":
            peaks[precision] = matmul_peak(torch.float32 if precision == "float32" else torch.bfloat16)
            peak = f"matmul peak {peaks[precision]:.0f} GFLOP/s, fraction {dec[precision]['gflop_per_s'] / peaks[precision]:.2f}"
        else:
            peak = "matmul peak not measured on a GPU"
        print(
            f"  {precision:8} {dec[precision]['decode_s']:.3f} s = {dec[precision]['gflop_per_s']:.0f} GFLOP/s; {peak}"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "machine": machine,
                    "runs": [{k: v for k, v in r.items() if k != "csv"} for r in runs],
                    "decoder": dec,
                    "matmul_peak": peaks,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
