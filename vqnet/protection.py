"""The equal-rate comparison of a sweep's schemes (scenarios/protection.yaml): each scheme with its
best concealment, its bytes, and its paired difference to the first scheme at every loss.

Schemes send different packets, so they never see the same loss pattern; what they share is the
image and the channel. Pairs are therefore (image, trial): the difference of a scheme's LPIPS to
the first scheme's on the same image at the same trial number cancels the image-to-image spread
(which dwarfs the differences), as in :mod:`vqnet.summary`, and its 95 % interval is Student's t
over those pairs.
"""

from __future__ import annotations

import math

import pandas as pd

from vqnet.summary import PAIR, mean_interval

#: Per-trial columns of results.csv that protection.csv gives as means per (scheme, loss).
MEANS = [
    "packet_loss",
    "index_loss",
    "packets_recovered",
    "retransmissions",
    "bytes_sent",
    "bytes_on_wire",
    "bpp_on_wire",
]
#: protection.csv, in order.
COLUMNS = [
    "scheme",
    "K",
    "method",
    "target_loss",
    "n",
    *MEANS,
    "lpips",
    "lpips_ci95",
    "reference",
    "diff",
    "diff_lo",
    "diff_hi",
]


def best_methods(results: pd.DataFrame) -> dict[str, str]:
    """Each scheme's concealment method with the lowest mean LPIPS over its whole sweep."""
    means = results.groupby(["scheme", "method"], sort=False)["lpips"].mean()
    return {scheme: str(g.idxmin()[1]) for scheme, g in means.groupby(level=0, sort=False)}


def scheme_table(results: pd.DataFrame) -> pd.DataFrame:
    """One row per (scheme, target loss): the scheme's best method, what it cost on the wire (means
    per image), its LPIPS with the 95 % interval, and its paired difference to the first scheme
    (that scheme's best method too)."""
    best = best_methods(results)
    schemes = list(best)
    chosen = pd.concat([results[(results["scheme"] == s) & (results["method"] == m)] for s, m in best.items()])
    reference = schemes[0]
    rows = []
    for scheme in schemes:
        for loss, g in chosen[chosen["scheme"] == scheme].groupby("target_loss", sort=True):
            lp, lo, hi = mean_interval(g["lpips"].to_numpy())
            row = {
                "scheme": scheme,
                "K": int(g["K"].iloc[0]),
                "method": best[scheme],
                "target_loss": loss,
                "n": len(g),
                "lpips": lp,
                "lpips_ci95": (hi - lo) / 2,
                "reference": reference,
            }
            row |= {c: g[c].mean() for c in MEANS}
            if scheme != reference:
                ref = chosen[(chosen["scheme"] == reference) & (chosen["target_loss"] == loss)].set_index(PAIR)["lpips"]
                d = (g.set_index(PAIR)["lpips"] - ref.reindex(g.set_index(PAIR).index)).to_numpy(dtype=float)
                row |= dict(zip(("diff", "diff_lo", "diff_hi"), mean_interval(d)))
            rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS).replace([math.inf, -math.inf], math.nan)


def winners(table: pd.DataFrame) -> pd.DataFrame:
    """Per target loss: each scheme's mean LPIPS (columns in the table's scheme order), the scheme
    with the lowest, and whether the next best is within the winner's 95 % interval ('tie')."""
    order = list(dict.fromkeys(table["scheme"]))
    wide = table.pivot(index="target_loss", columns="scheme", values="lpips")[order]
    ci = table.pivot(index="target_loss", columns="scheme", values="lpips_ci95")[order]
    out = wide.copy()
    out["best"] = wide.idxmin(axis=1)
    second = wide.apply(lambda r: r.nsmallest(2).iloc[-1], axis=1)
    out["margin"] = second - wide.min(axis=1)
    out["clear"] = [m > ci.loc[loss, b] for loss, m, b in zip(out.index, out["margin"], out["best"])]
    return out


def crossovers(table: pd.DataFrame) -> list[str]:
    """Where the best scheme changes as the loss grows, one line each ('between 0.1 and 0.2: A -> B')."""
    w = winners(table)
    lines = []
    previous = None
    for loss, best in w["best"].items():
        if previous is not None and best != previous[1]:
            lines.append(f"between loss {previous[0]:g} and {loss:g}: {previous[1]} -> {best}")
        previous = (loss, best)
    return lines
