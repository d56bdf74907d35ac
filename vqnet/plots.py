"""Figures of a sweep: LPIPS vs loss (mean and 95 % CI per method) and a grid of reconstructions."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: the sweep runs on servers and in CI
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import stats

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
