"""Markdown tables in README.md and docs/ generated from committed results, so they cannot drift.

A document marks a generated table with a pair of comments naming what goes between them::

    <!-- table: verdict results/kodak24-bursty -->
    ...rewritten by `vqnet report`...
    <!-- end table -->

``verdict FOLDER`` is each concealment method against the reference, per loss point (paired mean
difference, 95 % interval, wins/losses); ``damage FOLDER`` is each method's mean LPIPS and its damage
against the loss-free decode (dLPIPS); ``csv FILE [COLUMNS...]`` copies columns of any committed csv.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from vqnet.errors import VqnetError
from vqnet.summary import realised_loss, verdict

_BLOCK = re.compile(r"(<!-- table: (?P<spec>[^>]*?) -->\n)(?P<body>.*?)(<!-- end table -->)", re.S)


class ReportError(VqnetError, ValueError):
    """A table marker that names no known table or no readable results; one line for the user."""


def _markdown(df: pd.DataFrame) -> str:
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(df[c]) else "---" for c in df.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body]) + "\n"


def _summary(root: Path, folder: str) -> pd.DataFrame:
    path = root / folder / "summary.csv"
    try:
        return pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise ReportError(f"cannot read {path}: {exc}") from None


def verdict_table(root: Path, folder: str) -> str:
    s = _summary(root, folder)
    ref = s["reference"].iloc[0]
    methods = [m for m in dict.fromkeys(s["method"]) if m not in (ref, "none")]
    rows = []
    for (K, loss), g in s.groupby(["K", "target_loss"], sort=True):
        row = {
            "K": K,
            "loss": f"{loss:g}",
            "realised": f"{realised_loss(g).iloc[0]:.3f}",
            "pairs": int(g["n"].iloc[0]),
            "stop": g["stop"].iloc[0],
            ref: f"{g[g['method'] == ref]['lpips'].iloc[0]:.4f}",
        }
        for m in methods:
            r = g[g["method"] == m].iloc[0]
            row[f"{m} - {ref}"] = (
                f"{r['diff']:+.4f} [{r['diff_lo']:+.4f}, {r['diff_hi']:+.4f}] "
                f"{int(r['wins'])}/{int(r['losses'])} {'**' + verdict(r) + '**' if verdict(r) != 'not resolved' else 'not resolved'}"
            )
        rows.append(row)
    return _markdown(pd.DataFrame(rows))


def damage_table(root: Path, folder: str) -> str:
    s = _summary(root, folder)
    methods = list(dict.fromkeys(s["method"]))
    rows = []
    for (K, loss), g in s.groupby(["K", "target_loss"], sort=True):
        row = {"K": K, "loss": f"{loss:g}", "realised": f"{realised_loss(g).iloc[0]:.3f}", "pairs": int(g["n"].iloc[0])}
        for m in methods:
            r = g[g["method"] == m].iloc[0]
            row[m] = f"{r['lpips']:.4f} (+{r['dlpips']:.4f})"
        rows.append(row)
    return _markdown(pd.DataFrame(rows))


def csv_table(root: Path, file: str, *columns: str) -> str:
    path = root / file
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise ReportError(f"cannot read {path}: {exc}") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ReportError(f"{path} has no column {', '.join(missing)}")
    df = df[list(columns)] if columns else df
    return _markdown(df.map(lambda v: f"{v:.4g}" if isinstance(v, float) else v))


TABLES: dict[str, Callable[..., str]] = {"verdict": verdict_table, "damage": damage_table, "csv": csv_table}


def render(text: str, root: Path) -> str:
    """``text`` with every marked table regenerated from the results under ``root``."""

    def one(m: re.Match) -> str:
        kind, *args = m["spec"].split()
        if kind not in TABLES:
            raise ReportError(f"unknown table {kind!r} (choose from {', '.join(TABLES)})")
        return m.group(1) + TABLES[kind](root, *args) + m.group(4)

    return _BLOCK.sub(one, text)


def update(paths: list[Path], root: Path) -> list[Path]:
    """Rewrite the marked tables of ``paths`` in place; returns the files that changed."""
    changed = []
    for path in paths:
        old = path.read_text()
        new = render(old, root)
        if new != old:
            path.write_text(new)
            changed.append(path)
    return changed
