"""Figures of a sweep (LPIPS vs loss with paired differences, and a grid of reconstructions)
and of an evaluation (LPIPS vs bpp per codec, and a grid of one image at every codec and K)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: the sweep runs on servers and in CI
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from vqnet.evaluate import VQNET, EvalOutput
from vqnet.summary import realised_loss, with_scheme
from vqnet.sweep import SweepOutput


def method_summary(results: pd.DataFrame, timings: pd.DataFrame) -> pd.DataFrame:
    """Per method over the whole sweep: mean LPIPS, top-1 accuracy on lost indices, and the
    concealment time per image (ms, the restore stage alone), the three numbers methods compete on."""
    acc = results.groupby("method", sort=False).agg(
        lpips_mean=("lpips", "mean"), lost_index_accuracy=("lost_index_accuracy", "mean")
    )
    ms = timings.groupby("method", sort=False)["restore_ms"].mean().rename("restore_ms_per_image")
    return acc.join(ms)


def plot_lpips_vs_loss(summary: pd.DataFrame, path: Path, title: str) -> Path:
    """One column per (scheme, burst). Top: mean LPIPS per method (95 % t interval) and the loss-free
    LPIPS; bottom: each method's paired difference to the reference (95 % interval of the mean
    over (image, trial) pairs) around a zero line: below zero is better than the reference. ``none``
    (no concealment) is left out of the bottom panel when it is not the reference: it is a floor
    many times further off than the methods differ, and would flatten their intervals to dots.

    The x axis is the target loss; each tick also shows the realised mean loss of that point
    (packets, or indices for the mask channel), since a few short bursty trials stray from it.
    """
    panels = list(with_scheme(summary).groupby(["K", "scheme", "burst"], dropna=False, sort=True))
    fig, axes = plt.subplots(
        2,
        len(panels),
        figsize=(max(7.0, 5.6 * len(panels)), 7.4),
        squeeze=False,
        sharex="col",
        gridspec_kw={"height_ratios": [3, 2]},
    )
    for col, ((_, scheme, burst), g) in enumerate(panels):
        top, bottom = axes[0][col], axes[1][col]
        methods = list(dict.fromkeys(g["method"]))
        ref = g["reference"].iloc[0]
        step = np.diff(sorted(g["target_loss"].unique())).min() if g["target_loss"].nunique() > 1 else 0.1
        others = [m for m in methods if m not in (ref, "none")]
        for i, method in enumerate(methods):
            gm = g[g["method"] == method].sort_values("target_loss")
            colour = f"C{i}"
            top.errorbar(
                gm["target_loss"], gm["lpips"], yerr=gm["lpips_ci95"], marker="o", capsize=3, label=method, color=colour
            )
            if method in others:
                shift = (others.index(method) - (len(others) - 1) / 2) * step * 0.08
                x = gm["target_loss"] + shift
                yerr = np.vstack([gm["diff"] - gm["diff_lo"], gm["diff_hi"] - gm["diff"]])
                bottom.errorbar(x, gm["diff"], yerr=yerr, marker="o", capsize=3, color=colour, label=method, ls="-")
        per_point = g.drop_duplicates("target_loss")
        top.axhline((g["lpips"] - g["dlpips"]).mean(), color="k", ls="--", lw=1, label="no loss")
        bottom.axhline(0.0, color="k", lw=1)
        realised = realised_loss(per_point)
        ticks = per_point["target_loss"].to_numpy()
        bottom.set_xticks(ticks, [f"{t:g}\n({r:.2f})" for t, r in zip(ticks, realised)], fontsize=8)
        what = "index" if per_point["packet_loss"].isna().all() else "packet"
        bottom.set_xlabel(f"target {what} loss ratio (realised mean)")
        burst_txt = "" if pd.isna(burst) else f", burst {burst:g}"
        top.set_title(
            f"{scheme}{burst_txt}, {g['bpp'].mean():.3f} bpp, n={int(g['n'].min())}-{int(g['n'].max())} pairs",
            fontsize=10,
        )
        top.set_ylabel("LPIPS (alex), lower is better")
        bottom.set_ylabel(f"LPIPS - {ref} (paired)")
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
    fig.suptitle(
        f"{title}\nmeans with 95 % intervals; bottom: paired difference, same image and loss pattern", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_protection(table: pd.DataFrame, path: Path, title: str) -> Path:
    """The equal-rate comparison (:func:`vqnet.protection.scheme_table`): LPIPS vs target loss, one
    curve per scheme with its best concealment (95 % t interval), and in the legend the bytes it put
    on the wire per image (mean; a range where retransmissions make it grow with the loss)."""
    fig, ax = plt.subplots(figsize=(7.2, 4.8))
    schemes = list(table.groupby("scheme", sort=False))
    losses = sorted(table["target_loss"].unique())
    step = np.diff(losses).min() if len(losses) > 1 else 0.1
    for i, (scheme, g) in enumerate(schemes):
        g = g.sort_values("target_loss")
        lo, hi = g["bytes_on_wire"].min(), g["bytes_on_wire"].max()
        cost = f"{lo:.0f} B" if hi - lo < 0.01 * hi else f"{lo:.0f}-{hi:.0f} B"
        dodge = (i - (len(schemes) - 1) / 2) * step * 0.06  # keeps overlapping intervals apart
        ax.errorbar(
            g["target_loss"] + dodge,
            g["lpips"],
            yerr=g["lpips_ci95"],
            marker="o",
            capsize=3,
            color=f"C{i}",
            label=f"{scheme} ({g['method'].iloc[0]}): {cost}/image",
        )
    ax.set_xlabel("target packet loss ratio")
    ax.set_ylabel("LPIPS (alex), lower is better")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
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
        cells += [
            (f"{method}, loss {loss:g}" if loss is not None else method, out.examples.get((method, loss)))
            for loss in losses
        ]
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
            ax.plot(
                g["bpp_uniform_paper"],
                g["lpips"],
                marker="o",
                ls="--",
                mfc="none",
                color="grey",
                label=f"{VQNET} at log2(K)/f² (paper's rate)",
            )
            for _, row in g.iterrows():
                ax.annotate(
                    f"K={row['K']}", (row["bpp"], row["lpips"]), textcoords="offset points", xytext=(4, 4), fontsize=7
                )
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
