"""Paired statistics of a sweep: summary.csv, and the rule that decides when a point has enough trials.

Every method of a sweep sees the same loss pattern at a given (image, K, point, trial), so methods are
compared *pair by pair*: for a method m and the reference r, each (image, trial) gives one difference
d = LPIPS_m - LPIPS_r, and the 95 % interval of the mean difference is Student's t interval over those
pairs (``scipy.stats.ttest_1samp(...).confidence_interval``). Image-to-image spread, which dwarfs the
differences between methods, cancels in d; two per-method means with their own intervals would
keep it, which is why their intervals overlap where the paired ones do not.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

#: The columns that identify a sweep point (one channel setting for one scheme: K and its protection).
POINT = ["K", "scheme", "channel", "target_loss", "burst"]
#: A pair: the same image under the same loss pattern.
PAIR = ["image", "trial"]

#: summary.csv, in order (docs/results.md describes each column).
SUMMARY_COLUMNS = [
    "K",
    "scheme",
    "channel",
    "target_loss",
    "burst",
    "method",
    "trials",
    "n",
    "stop",
    "packet_loss",
    "index_loss",
    "lpips",
    "lpips_ci95",
    "psnr",
    "dlpips",
    "bpp",
    "reference",
    "diff",
    "diff_lo",
    "diff_hi",
    "wins",
    "losses",
    "ties",
]

LEVEL = 0.95


def with_scheme(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` (results.csv or summary.csv rows) with a ``scheme`` column: its own in a protected
    sweep's tables, else each row's codebook size (``K=256``), the one scheme per K such a sweep runs."""
    return table if "scheme" in table else table.assign(scheme="K=" + table["K"].astype(str))


def mean_interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float, float]:
    """Mean and Student-t interval (lo, hi) of ``values``; (nan, -inf, inf) bounds below two values,
    and the mean itself when they do not vary."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return math.nan, -math.inf, math.inf
    m = float(v.mean())
    if len(v) < 2:
        return m, -math.inf, math.inf
    if np.all(v == v[0]):
        return m, m, m
    ci = stats.ttest_1samp(v, 0.0).confidence_interval(level)
    return m, float(ci.low), float(ci.high)


def paired_differences(g: pd.DataFrame, method: str, reference: str) -> np.ndarray:
    """LPIPS of ``method`` minus the reference's, one value per (image, trial) pair of a point."""
    a = g[g["method"] == method].set_index(PAIR)["lpips"]
    b = g[g["method"] == reference].set_index(PAIR)["lpips"]
    return (a - b.reindex(a.index)).to_numpy(dtype=float)


#: Left out of the stopping rule: no concealment is the floor the methods are measured against, its
#: paired difference is 5-10x theirs and as noisy, and waiting for it would run every point to max.
FLOOR = "none"


def resolved(g: pd.DataFrame, reference: str, precision: float) -> bool:
    """Whether every concealment method's paired-difference interval to ``reference`` at this point is
    at most +-``precision`` wide (the adaptive trials' stopping rule; ``g`` holds one point's rows).
    :data:`FLOOR` is left out unless it is the reference (then every other method is compared to it)."""
    for method in g["method"].unique():
        if method in (reference, FLOOR):
            continue
        _, lo, hi = mean_interval(paired_differences(g, method, reference))
        if not (hi - lo) / 2 <= precision:
            return False
    return True


def summarize(results: pd.DataFrame, reference: str, precision: float | None = None) -> pd.DataFrame:
    """summary.csv: one row per (point, method) of ``results`` (results.csv's rows).

    ``precision`` is the scenario's adaptive target (None for a fixed trial count): a point whose
    intervals meet it stopped on precision, any other ran to max (the rule stops at the first trial
    count that meets it, so the finished point's own rows tell). ``trials`` counts the point's
    distinct trial numbers; ``n`` its (image, trial) pairs. ``scheme`` is a column only when
    ``results`` has one (a protected sweep's), so an unprotected table keeps its summary.csv layout.
    """
    columns = SUMMARY_COLUMNS if "scheme" in results else [c for c in SUMMARY_COLUMNS if c != "scheme"]
    results = with_scheme(results)
    rows = []
    methods = list(dict.fromkeys(results["method"]))
    for point, g in results.groupby(POINT, dropna=False, sort=True):
        n_trials = int(g["trial"].nunique())
        if precision is None:
            stop = "fixed"
        else:
            stop = "precision" if resolved(g, reference, precision) else "max"
        for method in methods:
            gm = g[g["method"] == method]
            if gm.empty:
                continue
            lp, lp_lo, lp_hi = mean_interval(gm["lpips"].to_numpy())
            row = dict(zip(POINT, point)) | {
                "method": method,
                "trials": n_trials,
                "n": len(gm),
                "stop": stop,
                "packet_loss": gm["packet_loss"].mean(),
                "index_loss": gm["index_loss"].mean(),
                "lpips": lp,
                "lpips_ci95": (lp_hi - lp_lo) / 2,
                "psnr": gm["psnr"].mean(),
                "dlpips": (gm["lpips"] - gm["lossless_lpips"]).mean(),
                "bpp": gm["bpp"].mean(),
                "reference": reference,
            }
            if method != reference:
                d = paired_differences(g, method, reference)
                diff, lo, hi = mean_interval(d)
                row |= {
                    "diff": diff,
                    "diff_lo": lo,
                    "diff_hi": hi,
                    "wins": int((d < 0).sum()),
                    "losses": int((d > 0).sum()),
                    "ties": int((d == 0).sum()),
                }
            rows.append(row)
    out = pd.DataFrame(rows, columns=columns)
    return out.replace([math.inf, -math.inf], math.nan)


def verdict(row: pd.Series) -> str:
    """'better', 'worse' or 'no difference resolved' than the reference (lower LPIPS is better)."""
    if row["diff_hi"] < 0:
        return "better"
    if row["diff_lo"] > 0:
        return "worse"
    return "not resolved"


def realised_loss(rows: pd.DataFrame) -> pd.Series:
    """The realised mean loss of summary rows: of packets, or of indices where no packet can be lost
    (the ``mask`` channel, whose packet loss is empty)."""
    return rows["packet_loss"].where(rows["packet_loss"].notna(), rows["index_loss"])


def compact_table(summary: pd.DataFrame) -> str:
    """The table `vqnet run` prints: per point, each method's mean LPIPS and its paired difference
    to the reference with the 95 % interval, and how the point stopped."""
    lines = []
    for (_, scheme, burst), g in with_scheme(summary).groupby(["K", "scheme", "burst"], dropna=False, sort=True):
        ref = g["reference"].iloc[0]
        burst_txt = "" if pd.isna(burst) else f", burst {burst:g}"
        lines.append(f"{scheme}{burst_txt}: mean LPIPS (alex), and LPIPS - {ref} per pair [95 % interval]")
        for loss, gp in g.groupby("target_loss", sort=True):
            first = gp.iloc[0]
            head = f"  loss {loss:<5g} realised {realised_loss(gp).iloc[0]:.3f}  n={first['n']:<3d} {first['stop']:<9s}"
            cells = []
            for _, r in gp.iterrows():
                if r["method"] == ref:
                    cells.append(f"{r['method']} {r['lpips']:.4f}")
                else:
                    cells.append(
                        f"{r['method']} {r['lpips']:.4f} {r['diff']:+.4f} [{r['diff_lo']:+.4f},{r['diff_hi']:+.4f}]"
                    )
            lines.append(head + " | " + " | ".join(cells))
    return "\n".join(lines)
