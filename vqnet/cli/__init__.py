"""The ``vqnet`` command line: one module per command group, each only wiring library modules.

Every user error (bad scenario, missing file, wrong K, refused weights) ends in one ``Error:``
line on stderr and exit code 2 (:mod:`vqnet.cli.errors`); no traceback reaches the user. The
heavy imports (torch, the codec) stay inside the commands, so ``vqnet --help`` is quick.
"""

from __future__ import annotations

import typer

from vqnet.cli import channel, codebook, coding, evaluation, run, scenario, score, train
from vqnet.cli.errors import OneLineErrors

app = typer.Typer(
    cls=OneLineErrors,
    add_completion=False,
    no_args_is_help=True,
    help="Simulate sending VQGAN-compressed images over lossy links and score what arrives.",
)
app.command("run")(run.run)
app.command("summarize")(run.summarize_cmd)
app.command("report")(run.report_cmd)
app.command("encode")(coding.encode)
app.command("decode")(coding.decode)
app.command("eval")(evaluation.eval_cmd)
app.command("bd")(evaluation.bd_cmd)
app.command("score")(score.score_command)
app.add_typer(channel.app, name="channel", help="Packet-loss models: measure them, print the netem line.")
app.add_typer(scenario.app, name="scenario")
app.add_typer(train.app, name="train")
app.add_typer(codebook.app, name="codebook")


def main() -> None:  # pragma: no cover - console entry for `python -m vqnet`
    app(prog_name="vqnet")
