"""``vqnet channel`` commands: inspect loss models before using them.

``stats`` samples a model, measures what it produced and prints it next to
the theory and the ``tc ... netem`` line, so a scenario's loss settings can
be sanity-checked (and reproduced on a Linux testbed) in one command.
"""

from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from vqnet.channel.loss import RFC3611_GMIN, LossModel, loss_stats, make_loss_model
from vqnet.cli.errors import fail

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True, add_completion=False)


# The callback makes this a group, so ``stats`` keeps its name both
# standalone and when mounted as ``vqnet channel``.
@app.callback()
def _channel() -> None:
    """Packet-loss channel models (netem semantics)."""


#: Most packets one ``stats`` call samples (~20 bytes each while measuring): 1 GB at most.
MAX_PACKETS = 50_000_000

_GE = "Gilbert-Elliott (--model gilbert_elliott)"
_STATE = "4-state (--model state)"


def _jsonable(value: Any) -> Any:
    # JSON has no nan/inf: null stands for "undefined" (nan, e.g. no bursts)
    # and for an infinite mean burst (every packet lost).
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.6g}"


def _model_params(model: LossModel) -> dict[str, Any]:
    """Resolved scalar parameters (e.g. p and r of a Gilbert model given as
    loss and burst), skipping arrays such as a trace's mask."""
    return {
        f.name: getattr(model, f.name)
        for f in fields(model)  # type: ignore[arg-type]  # every model is a dataclass
        if not isinstance(getattr(model, f.name), np.ndarray)
    }


@app.command()
def stats(
    model: Annotated[
        str,
        typer.Option(
            help="Loss model: bernoulli, gilbert, gilbert_elliott, state or trace.",
        ),
    ] = "gilbert",
    loss: Annotated[
        float | None,
        typer.Option(help="Target loss rate in [0, 1) (bernoulli, gilbert)."),
    ] = None,
    burst: Annotated[
        float | None,
        typer.Option(help="Mean loss-burst length in packets (gilbert); >= max(1, L/(1-L))."),
    ] = None,
    p: Annotated[float | None, typer.Option(help="P(GOOD -> BAD) per packet.", rich_help_panel=_GE)] = None,
    r: Annotated[float | None, typer.Option(help="P(BAD -> GOOD) per packet.", rich_help_panel=_GE)] = None,
    loss_bad: Annotated[
        float | None,
        typer.Option(help="Loss probability in BAD (netem 1-h); default 1.", rich_help_panel=_GE),
    ] = None,
    loss_good: Annotated[
        float | None,
        typer.Option(help="Loss probability in GOOD (netem 1-k); default 0.", rich_help_panel=_GE),
    ] = None,
    p13: Annotated[float | None, typer.Option(help="P(gap -> burst loss).", rich_help_panel=_STATE)] = None,
    p31: Annotated[
        float | None,
        typer.Option(help="P(burst loss -> gap); default 1-p13.", rich_help_panel=_STATE),
    ] = None,
    p32: Annotated[
        float | None,
        typer.Option(help="P(burst loss -> burst receive); default 0.", rich_help_panel=_STATE),
    ] = None,
    p23: Annotated[
        float | None,
        typer.Option(help="P(burst receive -> burst loss); default 1.", rich_help_panel=_STATE),
    ] = None,
    p14: Annotated[
        float | None,
        typer.Option(help="P(gap -> isolated loss); default 0.", rich_help_panel=_STATE),
    ] = None,
    trace: Annotated[
        Path | None,
        typer.Option(help="0/1 loss trace file, 1 = lost (--model trace).", metavar="FILE"),
    ] = None,
    packets: Annotated[int, typer.Option(help="Number of packets to sample.")] = 100_000,
    seed: Annotated[int, typer.Option(help="Seed for numpy's default_rng.")] = 0,
    gmin: Annotated[int, typer.Option(help="RFC 3611 Gmin for burst/gap density.")] = RFC3611_GMIN,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")] = False,
) -> None:
    """Sample a loss model and compare measured with theoretical statistics.

    Prints the measured loss rate and mean burst length (runs of consecutive
    losses), their theoretical values, RFC 3611 burst/gap densities, and the
    equivalent `tc qdisc ... netem loss ...` command.

    Example: vqnet channel stats --model gilbert --loss 0.3 --burst 4 --seed 1
    """
    params: dict[str, Any] = {
        "loss": loss, "burst": burst, "p": p, "r": r, "loss_bad": loss_bad,
        "loss_good": loss_good, "p13": p13, "p31": p31, "p32": p32, "p23": p23,
        "p14": p14, "path": trace,
    }  # fmt: skip
    if not 1 <= packets <= MAX_PACKETS:
        raise fail(f"--packets must be in [1, {MAX_PACKETS:,}], got {packets}")
    if seed < 0:
        raise fail(f"--seed must be >= 0, got {seed}")
    if loss is not None and not 0 <= loss < 1:
        raise fail(f"--loss must be in [0, 1), got {loss}")
    if gmin < 1:
        raise fail(f"--gmin must be >= 1, got {gmin}")
    try:
        loss_model = make_loss_model(model, **params)
    except ValueError as exc:
        raise fail(str(exc)) from None

    mask = loss_model.sample(packets, np.random.default_rng(seed))
    measured = loss_stats(mask, gmin=gmin)
    report: dict[str, Any] = {
        "model": loss_model.name,
        "params": _model_params(loss_model),
        "seed": seed,
        "gmin": gmin,
        **measured,
        "expected_loss": loss_model.expected_loss,
        "expected_mean_burst": loss_model.expected_mean_burst,
        "netem": loss_model.netem(),
    }
    if as_json:
        typer.echo(json.dumps({k: _jsonable(v) for k, v in report.items()}))
        return

    params_text = ", ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in report["params"].items())
    typer.echo(f"model          {loss_model.name} ({params_text})")
    typer.echo(f"packets        {packets} (seed {seed})")
    typer.echo(f"loss rate      {_fmt(measured['loss_rate'])} measured, {_fmt(loss_model.expected_loss)} expected")
    typer.echo(
        f"mean burst     {_fmt(measured['mean_burst'])} measured, "
        f"{_fmt(loss_model.expected_mean_burst)} expected "
        f"(max {measured['max_burst']}, {measured['n_bursts']} bursts)"
    )
    typer.echo(
        f"RFC 3611       burst density {_fmt(measured['burst_density'])}, "
        f"gap density {_fmt(measured['gap_density'])} (Gmin {gmin})"
    )
    typer.echo(f"netem          {loss_model.netem()}")
