"""Figures of a sweep (LPIPS vs loss, mean and 95 % CI per method, and a grid of reconstructions)
and of an evaluation (LPIPS vs bpp per codec, and a grid of one image at every codec and K)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: the sweep runs on servers and in CI
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import stats

from vqnet.evaluate import VQNET, EvalOutput
from vqnet.sweep import SweepOutput


def mean_ci(values: pd.Series, level: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its Student-t confidence interval (0 for a single value)."""
    v = values.dropna().to_numpy(dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan")
    if len(v) == 1:
        return float(v[0]), 0.0
    half = stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return float(v.mean()), float(half)


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Mean LPIPS/PSNR/realized loss per (K, burst, method, target loss), with the LPIPS 95 % CI."""
    keys = ["K", "burst", "method", "target_loss"]
    rows = []
    for key, g in results.groupby(keys, dropna=False, sort=True):
        m, half = mean_ci(g["lpips"])
        rows.append(dict(zip(keys, key)) | {
            "n": len(g), "lpips_mean": m, "lpips_ci95": half, "psnr_mean": g["psnr"].mean(),
            "packet_loss_mean": g["packet_loss"].mean(), "index_loss_mean": g["index_loss"].mean(),
            "lost_index_accuracy": g["lost_index_accuracy"].mean(), "bpp_mean": g["bpp"].mean(),
            "lossless_lpips": g["lossless_lpips"].mean(),
        })
    return pd.DataFrame(rows)


def method_summary(results: pd.DataFrame, timings: pd.DataFrame) -> pd.DataFrame:
    """Per method over the whole sweep: mean LPIPS, top-1 accuracy on lost indices, and the
    concealment time per image (ms, the restore stage alone), the three numbers methods compete on."""
    acc = results.groupby("method", sort=False).agg(lpips_mean=("lpips", "mean"),
                                                     lost_index_accuracy=("lost_index_accuracy", "mean"))
    ms = timings.groupby("method", sort=False)["restore_ms"].mean().rename("restore_ms_per_image")
    return acc.join(ms)


def plot_lpips_vs_loss(results: pd.DataFrame, path: Path, title: str) -> Path:
    """One panel per (K, burst); one curve per method; dashed line: LPIPS with no loss."""
    summary = summarize(results)
    panels = list(summary.groupby(["K", "burst"], dropna=False, sort=True))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    for ax, ((K, burst), g) in zip(axes[0], panels):
        for method, gm in g.groupby("method", sort=False):
            gm = gm.sort_values("target_loss")
            ax.errorbar(gm["target_loss"], gm["lpips_mean"], yerr=gm["lpips_ci95"], marker="o", capsize=3, label=method)
        ax.axhline(g["lossless_lpips"].mean(), color="k", ls="--", lw=1, label="no loss")
        bpp = g["bpp_mean"].mean()
        burst_txt = "" if pd.isna(burst) else f", mean burst {burst:g} pkts"
        ax.set_title(f"K={K}{burst_txt}, {bpp:.3f} bpp", fontsize=10)
        ax.set_xlabel("target packet loss ratio")
        ax.set_ylabel("LPIPS (alex), lower is better")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title + "  (mean, 95 % CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_examples(out: SweepOutput, path: Path) -> Path | None:
    """Rows: methods; columns: original, no loss, then each shown loss ratio."""
    if not out.examples or not out.originals:
        return None
    name = next(iter(out.originals))
    methods = list(dict.fromkeys(m for m, _ in out.examples))
    losses = sorted({loss for _, loss in out.examples if loss is not None}) or [None]
    ncols = 2 + len(losses)
    fig, axes = plt.subplots(len(methods), ncols, figsize=(2.6 * ncols, 2.4 * len(methods)), squeeze=False)
    for r, method in enumerate(methods):
        cells = [("original", out.originals[name]), ("no loss", out.lossless[name])]
        cells += [(f"{method}, loss {loss:g}" if loss is not None else method, out.examples.get((method, loss))) for loss in losses]
        for c, (label, img) in enumerate(cells):
            ax = axes[r][c]
            ax.axis("off")
            if img is not None:
                ax.imshow(img)
                ax.set_title(label, fontsize=8)
    fig.suptitle(f"{name}: reconstructions (trial 0)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_rd(rd: pd.DataFrame, path: Path, title: str) -> Path:
    """LPIPS vs bpp, one curve per codec (points are K, or vqnet's rate at K for classical codecs).

    vqnet is drawn a second time, dashed, at the paper's uniform-coding bpp log2(K)/f², so the
    distance between the two curves is what the paper's rate accounting leaves out.
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for codec, g in rd.groupby("codec", sort=False):
        g = g.sort_values("bpp")
        ax.plot(g["bpp"], g["lpips"], marker="o", label=codec)
        if codec == VQNET:
            ax.plot(g["bpp_uniform_paper"], g["lpips"], marker="o", ls="--", mfc="none", color="grey",
                    label=f"{VQNET} at log2(K)/f² (paper's rate)")
            for _, row in g.iterrows():
                ax.annotate(f"K={row['K']}", (row["bpp"], row["lpips"]), textcoords="offset points",
                            xytext=(4, 4), fontsize=7)
    ax.set_xlabel("bits per pixel (whole file)")
    ax.set_ylabel("LPIPS (alex), lower is better")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_codec_grid(out: EvalOutput, path: Path) -> Path:
    """Rows: K (largest first); columns: the original, then each codec at that K's rate."""
    name = out.original.name
    codecs = list(dict.fromkeys(out.rd["codec"]))
    ks = sorted(set(out.rd["K"]), reverse=True)
    ncols = 1 + len(codecs)
    fig, axes = plt.subplots(len(ks), ncols, figsize=(2.8 * ncols, 2.3 * len(ks)), squeeze=False)
    for r, K in enumerate(ks):
        cells = [("original", out.original.pixels)]
        for codec in codecs:
            ex = out.examples.get((codec, K))
            if ex is None:
                cells.append((f"{codec} K={K}:\nrate not reachable", None))
            else:
                cells.append((f"{codec} K={K}\n{ex.bpp:.4f} bpp, LPIPS {ex.lpips:.3f}", ex.image))
        for ax, (label, img) in zip(axes[r], cells):
            ax.axis("off")
            ax.set_title(label, fontsize=7)
            if img is not None:
                ax.imshow(img)
    fig.suptitle(f"{name}: each codec at vqnet's rate for K")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
