"""Bjøntegaard deltas of a rate-distortion table (``rd.csv``), and its points as CompressAI results.

The paper's Table 1 reports BD-rate and BD-LPIPS of its codec against classical ones. Here every
vqnet curve (fine-tuned ``vqnet``, K-means ``vqnet-raw``) is compared with every classical codec
in the table, and the fine-tuned curve with its "w/o fine-tune" ancestor, using the maintained
``bjontegaard`` package (FAU Erlangen; PCHIP interpolation by default, which, unlike the classic
cubic fit, needs no more than the two or three points an ``--ks`` subset of the ladder gives):

- ``bd_rate_lpips_pct``: mean rate difference (%) at equal LPIPS over the LPIPS range both curves
  cover; negative: the test codec needs fewer bits. Undefined (empty) when those ranges do not
  overlap, which ``lpips_overlap`` (0–1 of their union) shows.
- ``bd_lpips``: mean LPIPS difference (test − anchor) over the log-rate range both cover;
  negative: the test codec looks closer to the original at the same rate.
- ``bd_rate_psnr_pct`` and ``bd_psnr_db`` likewise for PSNR (higher is better there;
  ``psnr_overlap``); ``rate_overlap`` is the shared part of the two log-rate ranges.

CompressAI's plotting tool (``python -m compressai.utils.plot --results-file A.json B.json -m
lpips``) reads one curve per JSON file, ``{"name", "description", "results": {"bpp": [...],
metric: [...]}}``, so each codec in the table gets its own file.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import bjontegaard
import numpy as np
import pandas as pd

from vqnet.errors import VqnetError

#: Interpolation of each curve ('pchip', 'akima', or 'cubic': the classic fit, 4+ points).
METHOD = "pchip"
#: The learned codec's rows in rd.csv (:mod:`vqnet.evaluate`): fine-tuned, then K-means.
VQNET_LABELS = ("vqnet", "vqnet-raw")
BD_COLUMNS = [
    "test",
    "anchor",
    "points_test",
    "points_anchor",
    "bd_rate_lpips_pct",
    "bd_lpips",
    "bd_rate_psnr_pct",
    "bd_psnr_db",
    "rate_overlap",
    "lpips_overlap",
    "psnr_overlap",
]
#: rd.csv column -> CompressAI's metric name (theirs for PSNR and MS-SSIM, ours elsewhere).
COMPRESSAI_METRICS = {"bpp": "bpp", "lpips": "lpips", "dists": "dists", "psnr": "psnr-rgb", "ms_ssim": "ms-ssim-rgb"}


class RDTableError(VqnetError, ValueError):
    """An RD table this module cannot read; the message is one line for the user."""


def read_rd(path: Path) -> pd.DataFrame:
    """An ``rd.csv`` written by ``vqnet eval``; a missing file or column is an :class:`RDTableError`."""
    try:
        rd = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise RDTableError(f"cannot read RD table {path}: {exc}") from None
    if missing := [c for c in ("codec", "K", "bpp", "lpips", "psnr") if c not in rd.columns]:
        raise RDTableError(f"{path} is not an rd.csv of `vqnet eval` (no column {missing[0]!r})")
    return rd


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    """How much of the union of two value ranges both cover (0–1)."""
    union = max(a.max(), b.max()) - min(a.min(), b.min())
    common = min(a.max(), b.max()) - max(a.min(), b.min())
    return max(common, 0.0) / union if union > 0 else 0.0


def _delta(
    kind: str,
    rate_anchor: np.ndarray,
    dist_anchor: np.ndarray,
    rate_test: np.ndarray,
    dist_test: np.ndarray,
    method: str,
) -> float:
    """``bjontegaard.bd_rate`` (kind "rate") or ``bd_psnr`` (kind "dist", any metric where higher
    is better), each curve sorted along the variable it is interpolated over; NaN where that
    variable repeats a value (no function to interpolate) or the ranges do not overlap."""
    curves = []
    for rate, dist in ((rate_anchor, dist_anchor), (rate_test, dist_test)):
        base = dist if kind == "rate" else rate
        order = np.argsort(base)
        if len(base) < 2 or np.any(np.diff(base[order]) <= 0):
            return math.nan
        curves += [rate[order], dist[order]]
    if overlap(curves[1] if kind == "rate" else curves[0], curves[3] if kind == "rate" else curves[2]) == 0:
        return math.nan
    fn = bjontegaard.bd_rate if kind == "rate" else bjontegaard.bd_psnr
    with warnings.catch_warnings():  # overlap is reported in its own column
        warnings.simplefilter("ignore")
        return float(fn(*curves, method=method, require_matching_points=False, min_overlap=0))


def bd_pair(test: pd.DataFrame, anchor: pd.DataFrame, method: str = METHOD) -> dict:
    """One row of :data:`BD_COLUMNS` (without the names) for two codecs' rows of an RD table."""
    r_a, r_t = anchor["bpp"].to_numpy(float), test["bpp"].to_numpy(float)
    l_a, l_t = anchor["lpips"].to_numpy(float), test["lpips"].to_numpy(float)
    p_a, p_t = anchor["psnr"].to_numpy(float), test["psnr"].to_numpy(float)
    # LPIPS falls as quality rises: the package's deltas assume a metric that rises, so use -LPIPS.
    return {
        "points_test": len(test),
        "points_anchor": len(anchor),
        "bd_rate_lpips_pct": _delta("rate", r_a, -l_a, r_t, -l_t, method),
        "bd_lpips": -_delta("dist", r_a, -l_a, r_t, -l_t, method),
        "bd_rate_psnr_pct": _delta("rate", r_a, p_a, r_t, p_t, method),
        "bd_psnr_db": _delta("dist", r_a, p_a, r_t, p_t, method),
        "rate_overlap": overlap(np.log10(r_a), np.log10(r_t)),
        "lpips_overlap": overlap(l_a, l_t),
        "psnr_overlap": overlap(p_a, p_t),
    }


def bd_table(rd: pd.DataFrame, method: str = METHOD) -> pd.DataFrame:
    """Every vqnet curve of ``rd`` against every classical codec in it, then fine-tuned against
    K-means ("w/o fine-tune") where both are there: :data:`BD_COLUMNS`."""
    curves = {name: rows for name, rows in rd.groupby("codec", sort=False)}
    tests = [name for name in VQNET_LABELS if name in curves]
    pairs = [(t, a) for t in tests for a in curves if a not in VQNET_LABELS]
    if all(name in curves for name in VQNET_LABELS):
        pairs.append(VQNET_LABELS)
    rows = [{"test": t, "anchor": a} | bd_pair(curves[t], curves[a], method) for t, a in pairs]
    return pd.DataFrame(rows).reindex(columns=BD_COLUMNS)


def compressai_results(rd: pd.DataFrame, description: str) -> dict[str, dict]:
    """Each codec's RD points as CompressAI's results JSON, by codec name: points in rising bpp,
    with every metric the table holds for all of them (a metric with a gap is left out: JSON has
    no NaN), and the K each point came from."""
    out = {}
    for name, rows in rd.groupby("codec", sort=False):
        rows = rows.sort_values("bpp")
        results = {
            theirs: [float(v) for v in rows[ours]]
            for ours, theirs in COMPRESSAI_METRICS.items()
            if ours in rows and rows[ours].notna().all()
        }
        results["K"] = [int(k) for k in rows["K"]]
        out[name] = {"name": name, "description": description, "results": results}
    return out


def write_companions(
    rd: pd.DataFrame, folder: Path, description: str, method: str = METHOD
) -> tuple[pd.DataFrame, list[Path]]:
    """Write ``bd.csv`` and ``compressai/<codec>.json`` into ``folder`` (beside rd.csv); return the
    BD table and the paths written."""
    table = bd_table(rd, method)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "bd.csv"]
    table.to_csv(paths[0], index=False, float_format="%.6g")
    (folder / "compressai").mkdir(exist_ok=True)
    for name, doc in compressai_results(rd, description).items():
        paths.append(folder / "compressai" / f"{name}.json")
        paths[-1].write_text(json.dumps(doc, indent=1) + "\n")
    return table, paths


def format_bd(table: pd.DataFrame) -> str:
    """The BD table for a terminal, with what an empty BD-rate means."""
    shown = table.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.4f}")
    lines = [shown]
    if table[["bd_rate_lpips_pct", "bd_rate_psnr_pct"]].isna().any(axis=None):
        lines.append(
            "'-' in a bd_rate column: the two curves share no range of that metric (its overlap is 0), so "
            "no rate compares at equal quality; bd_lpips / bd_psnr_db compare them at equal rate."
        )
    return "\n".join(lines)


def bd_from_file(path: Path, method: str = METHOD, description: str | None = None) -> tuple[pd.DataFrame, list[Path]]:
    """:func:`write_companions` for a committed ``rd.csv``, the files going beside it."""
    return write_companions(read_rd(path), path.parent, description or f"vqnet eval: {path}", method)
