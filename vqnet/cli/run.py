"""``vqnet run``, ``vqnet summarize`` and ``vqnet report``: a sweep, its statistics, and the doc
tables made from them."""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from vqnet.cli.errors import user_errors
from vqnet.cli.options import (
    PRECISION_HELP,
    RUN_DEVICE_HELP,
    WAIT_HELP,
    locked_output,
    note_dropped,
    placed,
    scorable,
)
from vqnet.progress import progress_bar

if TYPE_CHECKING:
    from vqnet.cluster import RayPool
    from vqnet.codec.bundle import Codec
    from vqnet.images import NamedImage
    from vqnet.scenario import Scenario


def cluster_pool(spec: str, sc: Scenario, model: Path | str | None, images: list[NamedImage], codec: Codec) -> RayPool:
    """The Ray workers of ``vqnet run --cluster SPEC``, set up like ``codec`` (device, precision)."""
    from vqnet.cluster import RayPool, parse_cluster

    parse_cluster(spec)  # a malformed spec is refused before Ray is looked for
    return RayPool(spec, sc, None if model is None else Path(model), images, codec.device, codec.precision)


def run(
    scenario: Annotated[Path, typer.Argument(help="Scenario YAML file (see scenarios/ and `vqnet scenario schema`).")],
    out: Annotated[Path, typer.Option(help="Results root; files go to OUT/<scenario name>/.")] = Path("results"),
    model: Annotated[Path | None, typer.Option(help="Codec bundle to use instead of the scenario's.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    fresh: Annotated[
        bool,
        typer.Option(
            "--fresh", help="Discard OUT/<name>/partial.jsonl of an interrupted run instead of resuming from it."
        ),
    ] = False,
    device: Annotated[str, typer.Option(help=RUN_DEVICE_HELP)] = "cpu",
    precision: Annotated[str | None, typer.Option(help=PRECISION_HELP + " Default: the scenario's.")] = None,
    cluster: Annotated[
        str | None,
        typer.Option(
            help="Run the trials on Ray workers (each loads the codec once): "
            "local[:N] starts N on this machine (default: one per core), "
            "ray://HOST:PORT or auto joins a running cluster. Needs "
            "pip install 'vqnet[ray]'; docs/performance.md."
        ),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help=WAIT_HELP)] = False,
) -> None:
    """Run a sweep: results.csv, summary.csv, timings.csv, lpips_vs_loss.png and examples.png under OUT/<name>/.

    Finished trials are journalled to OUT/<name>/partial.jsonl as they complete; running the same
    command after an interruption skips them and writes the table an uninterrupted run would.
    """
    with user_errors():
        from vqnet.codec.bundle import load_codec
        from vqnet.images import codable_pixels, load_images
        from vqnet.journal import PARTIAL_NAME
        from vqnet.lock import job_folder
        from vqnet.plots import method_summary, plot_examples, plot_lpips_vs_loss
        from vqnet.scenario import load_scenario
        from vqnet.summary import compact_table
        from vqnet.sweep import TrialJournal, count_trials, run_sweep, sweep_fingerprint, sweep_summary, write_results

        sc = load_scenario(scenario)
        codec = placed(load_codec(model or sc.model), device, precision or sc.precision)
        for scheme in sc.protection_schemes():
            codec.codebook(scheme.K)
        images = scorable(load_images(sc.images.source, sc.images.names, sc.images.limit, codable_pixels(codec.factor)))
        folder = locked_output(job_folder(out, sc.name), wait)
        total = count_trials(sc, len(images))
        pool = nullcontext() if cluster is None else cluster_pool(cluster, sc, model or sc.model, images, codec)
        t0 = time.perf_counter()
        with (
            pool as workers,
            TrialJournal.open(folder / PARTIAL_NAME, sweep_fingerprint(sc, codec, images), fresh) as journal,
        ):
            if journal.done:
                bound = "" if isinstance(sc.trials, int) else "at most "
                typer.echo(
                    f"resuming: {len(journal.done)} of {bound}{count_trials(sc, len(images), per_method=False)} trials already done "
                    f"({journal.path})"
                )
            note_dropped(journal)
            with progress_bar(total, f"sweep {sc.name}", quiet) as advance:
                result = run_sweep(sc, codec, images, advance, journal, workers)
        seconds = time.perf_counter() - t0
        summary = sweep_summary(sc, result.results)
        paths = write_results(result, folder, summary)
        journal.discard()
        plot = plot_lpips_vs_loss(
            summary, folder / "lpips_vs_loss.png", f"{sc.name}: {result.results['channel'].iloc[0]} channel"
        )
        examples = plot_examples(result, folder / "examples.png")
        typer.echo(f"\nmodel {codec.model_id}; summary.csv holds every column (docs/results.md)")
        typer.echo(compact_table(summary))
        protection = write_protection(sc, result.results, folder)
        typer.echo("\nper method over all points (accuracy = top-1 on lost indices):")
        typer.echo(method_summary(result.results, result.timings).to_string(float_format=lambda v: f"{v:.4f}"))
        typer.echo(f"\n{len(result.results)} method-trials in {seconds:.1f} s")
        for p in [paths["results"], paths["summary"], paths["timings"], plot, examples, *protection]:
            if p is not None:
                typer.echo(f"wrote {p}")


def write_protection(sc, results, folder: Path) -> list[Path]:  # noqa: ANN001 - Scenario, DataFrame (lazy imports)
    """With ``schemes``, the equal-rate comparison (docs/protection.md): protection.csv and .png, and
    the best scheme per loss printed; nothing otherwise."""
    if not sc.schemes:
        return []
    from vqnet.plots import plot_protection
    from vqnet.protection import crossovers, scheme_table, winners
    from vqnet.sweep import FLOAT_FORMAT, as_written

    table = scheme_table(as_written(results))  # as `vqnet summarize` reads it back from results.csv
    table.to_csv(folder / "protection.csv", index=False, float_format=FLOAT_FORMAT)
    plot = plot_protection(table, folder / "protection.png", f"{sc.name}: schemes at about equal bytes")
    typer.echo(
        "\nmean LPIPS of each scheme with its best concealment, the best per loss ('clear': beyond its 95 % interval):"
    )
    typer.echo(winners(table).to_string(float_format=lambda v: f"{v:.4f}"))
    typer.echo("\n".join(crossovers(table)) or "no crossover: one scheme is best at every loss")
    return [folder / "protection.csv", plot]


def summarize_cmd(
    scenario: Annotated[Path, typer.Argument(help="The scenario YAML the results were run from.")],
    out: Annotated[Path, typer.Option(help="Results root; reads OUT/<scenario name>/results.csv.")] = Path("results"),
) -> None:
    """Rewrite summary.csv and lpips_vs_loss.png (with schemes, protection.csv and .png too) of a
    finished sweep from its results.csv, running no trial: the paired statistics of a committed
    table, or of one summarised by an older vqnet."""
    with user_errors():
        import pandas as pd

        from vqnet.plots import plot_lpips_vs_loss
        from vqnet.scenario import ScenarioError, load_scenario
        from vqnet.summary import compact_table
        from vqnet.sweep import PROTECTED_COLUMNS, RESULT_COLUMNS, sweep_summary

        sc = load_scenario(scenario)
        path = out / sc.name / "results.csv"
        try:
            results = pd.read_csv(path)
        except (OSError, ValueError) as exc:
            raise ScenarioError(f"cannot read {path}: {exc}") from None
        if list(results.columns) not in (RESULT_COLUMNS, PROTECTED_COLUMNS):
            raise ScenarioError(f"{path} is not a vqnet results.csv (its columns differ)")
        if sc.schemes and "scheme" not in results:
            raise ScenarioError(
                f"{path} has no scheme column, but {scenario} compares schemes: it is another scenario's table"
            )
        summary = sweep_summary(sc, results)
        summary.to_csv(path.with_name("summary.csv"), index=False, float_format="%.6g")
        plot = plot_lpips_vs_loss(
            summary, path.with_name("lpips_vs_loss.png"), f"{sc.name}: {results['channel'].iloc[0]} channel"
        )
        typer.echo(compact_table(summary))
        protection = write_protection(sc, results, path.parent)
        typer.echo("\n".join(f"wrote {p}" for p in [path.with_name("summary.csv"), plot, *protection]))


def report_cmd(
    files: Annotated[
        list[Path] | None, typer.Argument(help="Markdown files (default: README.md and docs/*.md).")
    ] = None,
    check: Annotated[bool, typer.Option("--check", help="Change nothing; exit 1 if a table is out of date.")] = False,
) -> None:
    """Regenerate the tables marked `<!-- table: ... -->` in the docs from the committed results/."""
    with user_errors():
        from vqnet.report import ReportError, render, update

        paths = files or [Path("README.md"), *sorted(Path("docs").glob("*.md"))]
        for path in paths:
            if not path.is_file():
                raise ReportError(f"{path} is not a file")
        if check:
            stale = [p for p in paths if render(p.read_text(), Path(".")) != p.read_text()]
            for p in stale:
                typer.echo(f"{p}: tables out of date; run `vqnet report`")
            raise typer.Exit(1 if stale else 0)
        for p in update(paths, Path(".")):
            typer.echo(f"updated {p}")
