"""The ``vqnet`` command line. It only wires modules together; each stage lives in its own module.

Every user error (bad scenario, missing file, wrong K, refused weights) ends in one ``Error:``
line on stderr and exit code 2; no traceback reaches the user.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import Progress

from vqnet.channel.cli import app as channel_app
from vqnet.chroma import CELLS, MAX_CELLS
from vqnet.cli_errors import OneLineErrors, user_errors
from vqnet.progress import COLUMNS, progress_bar
from vqnet.restore.cli import train_prior_cmd
from vqnet.score_cli import app as score_app

if TYPE_CHECKING:  # the heavy imports stay inside the commands that need them
    import torch

    from vqnet.cluster import RayPool
    from vqnet.codec.bundle import Codec
    from vqnet.images import NamedImage
    from vqnet.journal import Journal
    from vqnet.scenario import Scenario

app = typer.Typer(
    cls=OneLineErrors,
    add_completion=False,
    no_args_is_help=True,
    help="Simulate sending VQGAN-compressed images over lossy links and score what arrives.",
)
app.add_typer(channel_app, name="channel", help="Packet-loss models: measure them, print the netem line.")
app.add_typer(score_app, name="score", help="LPIPS-alex and PSNR of TEST against REF.")
scenario_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Check scenario files, print their schema.")
app.add_typer(scenario_app, name="scenario")
train_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Train models (resumable).")
app.add_typer(train_app, name="train")
train_app.command("prior")(train_prior_cmd)
codebook_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Build the K ladder of a codec.")
app.add_typer(codebook_app, name="codebook")


DEVICE_HELP = "Where to train: cpu, or cuda where a GPU is lent (the same recipe and data, much faster)."
MINUTES_HELP = "Stop after this many minutes of training, with a checkpoint (for a fixed GPU budget)."
#: ``vqnet train vqgan --freeze``: the parts kept fixed (``encoder`` includes quant_conv and the codebook).
FREEZE_CHOICES = ("none", "encoder", "encoder,post_quant_conv")


def check_layout(layout: str) -> str:
    """``--layout``, refused in one line unless the packetizer has it."""
    if layout not in ("raster", "interleaved"):
        raise typer.BadParameter(f"--layout must be raster or interleaved, got {layout!r}")
    return layout


def check_device(device: str) -> str:
    """``--device`` as torch names it (``auto`` resolved), refused in one line when this machine
    has no such device."""
    from vqnet.runtime import resolve_device

    return str(resolve_device(device))


RUN_DEVICE_HELP = (
    "cpu | cuda[:N] | auto (a GPU when one is visible): where the codec, the concealment "
    "transformers and LPIPS run. A GPU's scores match the CPU's only to float tolerance."
)
PRECISION_HELP = (
    "float32 | bf16: the decoder's arithmetic. bf16 is refused where it is not fast (CPUs without "
    "AMX or AVX512-BF16); its tolerance is in docs/performance.md."
)


def cluster_pool(spec: str, sc: Scenario, model: Path | str | None, images: list[NamedImage], codec: Codec) -> RayPool:
    """The Ray workers of ``vqnet run --cluster SPEC``, set up like ``codec`` (device, precision)."""
    from vqnet.cluster import RayPool, parse_cluster

    parse_cluster(spec)  # a malformed spec is refused before Ray is looked for
    return RayPool(spec, sc, None if model is None else Path(model), images, codec.device, codec.precision)


def placed(codec: Codec, device: str, precision: str = "float32") -> Codec:
    """``codec`` moved to ``device`` and set to decode in ``precision``, both checked first
    (:func:`vqnet.runtime.prepare`, which also sets this process up for them)."""
    from vqnet.runtime import prepare

    return codec.to(*prepare(device, precision))


WAIT_HELP = "When another vqnet job is writing to the same output folder, wait for it instead of refusing."


def locked_output(folder: Path, wait: bool) -> Path:
    """Create ``folder`` and hold its lock (:mod:`vqnet.lock`) until the command ends; another job
    there is refused in one line, or waited for with ``--wait``."""
    from typer._click.globals import get_current_context

    from vqnet.lock import locked_folder

    def waiting(holder: str) -> None:
        typer.echo(f"waiting for {folder} ({holder})", err=True)

    return get_current_context().with_resource(locked_folder(folder, wait, waiting))


def scorable(images: list[NamedImage]) -> list[NamedImage]:
    """``images``, refused in one line if LPIPS cannot score one of them (before any coding)."""
    from vqnet.metrics import require_lpips_size

    for image in images:
        require_lpips_size(*image.pixels.shape[:2], f"image {image.name}")
    return images


def note_dropped(journal: Journal) -> None:
    """Say on stderr how many damaged journal lines were not trusted (their units run again)."""
    if journal.dropped:
        typer.echo(
            f"note: {journal.dropped} damaged or repeated line(s) of {journal.path} ignored; their work is done again",
            err=True,
        )


def _photo_views(
    codec: Codec, data: Path, images: int, seed: int, shifts: Sequence[int] = (0,), quiet: bool = False
) -> tuple[list[torch.Tensor], int, str]:
    """Encoder outputs of ``images`` whole training photos (seeded choice) and of their mirror
    images at each shift, cached under ./runs/prior-data (:func:`vqnet.training.photos.photo_views`),
    with a progress bar: what every ``codebook`` command counts code usage and fits priors on.
    Returns the latents as float (1, C, h, w), how many consecutive ones are views of one photo,
    and those views in words for the bundle's provenance."""
    from vqnet.images import choose_photos
    from vqnet.training.photos import photo_views

    files = choose_photos(data, images, seed)
    with progress_bar(len(files) * len(shifts), "encoding photos (cached)", quiet) as advance:
        done = [0]

        def step(i: int, n: int) -> None:
            advance(i - done[0], f"{i}/{n}")
            done[0] = i

        views = photo_views(codec, files, shifts, progress=step)
    return [z.float().unsqueeze(0) for z in views], 2 * len(shifts), f"photo and mirror at shifts {list(shifts)}"


@app.command()
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


@app.command("summarize")
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


@app.command("report")
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


CHROMA_HELP = (
    "Add the colour packet (vqnet/chroma.py): the image's chroma averaged over blocks of this many "
    "index cells squared (more where the packet would not fit --max-payload), which the receiver puts "
    "back under the decoder's luminance, following its detail. The bundled model decodes almost no "
    "colour without it. 0 = no colour packet."
)


@app.command()
def encode(
    image: Annotated[Path, typer.Argument(help="Image to encode (any format PIL reads).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The .vqn file to write.")],
    K: Annotated[int, typer.Option("--K", help="Codebook size (must exist in the model).")] = 256,
    model: Annotated[Path | None, typer.Option(help="Codec bundle (default: the bundled model).")] = None,
    max_payload: Annotated[int, typer.Option(help="Max range-coded bytes per packet (headers come on top).")] = 24,
    layout: Annotated[str, typer.Option(help="raster | interleaved (see vqnet/packets.py).")] = "interleaved",
    chroma_cells: Annotated[int, typer.Option(min=0, max=MAX_CELLS, help=CHROMA_HELP)] = CELLS,
    device: Annotated[
        str,
        typer.Option(
            help="cpu | cuda[:N] | auto: where the encoder runs (always in float32: the indices are what is sent)."
        ),
    ] = "cpu",
) -> None:
    """Encode an image into a .vqn file of independently decodable packets; print its size and bpp."""
    with user_errors():
        check_layout(layout)
        from vqnet.chroma import is_chroma_packet
        from vqnet.codec.bundle import load_codec
        from vqnet.images import codable_pixels, load_image
        from vqnet.metrics import bpp
        from vqnet.vqn import encode_vqn, write_vqn

        codec = placed(load_codec(model), device)
        pixels = load_image(image, codable_pixels(codec.factor))
        vqn = encode_vqn(codec, pixels, K, max_payload, layout, chroma_cells)  # type: ignore[arg-type]
        data = write_vqn(vqn)
        output.write_bytes(data)
        colour = sum(map(is_chroma_packet, vqn.packets))
        typer.echo(
            f"wrote {output}: {len(data)} bytes, {len(vqn.packets)} packets ({colour} of them colour), "
            f"{bpp(len(data), vqn.height, vqn.width):.4f} bpp ({vqn.width}x{vqn.height}, K={K}, "
            f"model {codec.model_id})"
        )


@app.command()
def decode(
    vqn_file: Annotated[Path, typer.Argument(metavar="FILE.vqn", help="A .vqn file, possibly missing packets.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Image to write (format from the suffix).")],
    method: Annotated[
        str,
        typer.Option(
            help="Concealment for missing indices: none | neighbor | ar | ar-mbr | masked "
            "(the last three need that K's transformer beside the codec; "
            "the bundled model has them for K=256)."
        ),
    ] = "neighbor",
    model: Annotated[Path | None, typer.Option(help="Codec bundle the file was made with (default: bundled).")] = None,
    device: Annotated[str, typer.Option(help=RUN_DEVICE_HELP)] = "cpu",
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = "float32",
) -> None:
    """Decode a .vqn file, concealing what missing or damaged packets held; print what was lost."""
    with user_errors():
        from vqnet.codec.bundle import load_codec
        from vqnet.images import require_codable, save_image
        from vqnet.restore import METHODS
        from vqnet.vqn import decode_vqn, read_vqn

        if method not in METHODS:
            raise typer.BadParameter(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
        vqn = read_vqn(vqn_file.read_bytes(), str(vqn_file))
        codec = placed(load_codec(model), device, precision)
        require_codable(vqn.height, vqn.width, str(vqn_file), codec.factor)
        out = decode_vqn(codec, vqn, method)
        save_image(output, out.image)
        got = out.received
        expected = "?" if got.n_packets_expected is None else got.n_packets_expected
        missing = "all" if out.missing is None else out.missing
        typer.echo(
            f"packets: {got.n_packets_ok} present, {missing} missing of {expected}, "
            f"{got.n_packets_bad} corrupt (of {len(vqn.packets)} in the file)"
        )
        typer.echo(
            "colour: "
            + (
                f"from the chroma packet ({out.chroma_cells}x{out.chroma_cells} index cells a sample)"
                if out.chroma_cells
                else "the decoder's own (no intact chroma packet)"
            )
        )
        typer.echo(f"concealed {out.concealed:.1%} of indices with {method}; wrote {output}")


@app.command("eval")
def eval_cmd(
    images: Annotated[Path, typer.Argument(metavar="DIR", help="Folder of images (recursive), e.g. Kodak.")],
    out: Annotated[Path, typer.Option(help="Folder for rd.csv, rd_images.csv, rd.png and grid.png.")] = (
        Path("results/eval")
    ),
    model: Annotated[Path | None, typer.Option(help="Codec bundle (default: the bundled model).")] = None,
    dists: Annotated[
        bool, typer.Option("--dists/--no-dists", help="Score DISTS too (~3 s per Kodak image and codec on a CPU).")
    ] = True,
    classical: Annotated[str, typer.Option(help="Comma-separated baselines (jpeg, webp, avif), or 'none'.")] = (
        "jpeg,webp,avif"
    ),
    max_payload: Annotated[int, typer.Option(help="Max range-coded bytes per packet of the .vqn files.")] = 1000,
    layout: Annotated[
        str,
        typer.Option(
            help="Packet layout of the .vqn files: interleaved (what loss "
            "concealment wants) | raster (long runs: every index can be coded "
            "against its left and upper neighbours, the lower bpp)."
        ),
    ] = ("interleaved"),
    codebooks: Annotated[
        str,
        typer.Option(
            help="finetuned (the stored codebooks, rows 'vqnet') | raw (their "
            "K-means ancestors, rows 'vqnet-raw': the paper's w/o fine-tune "
            "ablation) | both."
        ),
    ] = "finetuned",
    ks: Annotated[str | None, typer.Option(help="Comma-separated K to evaluate (default: the whole ladder).")] = None,
    chroma_cells: Annotated[int, typer.Option(min=0, max=MAX_CELLS, help=CHROMA_HELP)] = CELLS,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    fresh: Annotated[
        bool,
        typer.Option("--fresh", help="Discard OUT/partial.jsonl of an interrupted run instead of resuming from it."),
    ] = False,
    device: Annotated[str, typer.Option(help=RUN_DEVICE_HELP + " DISTS too.")] = "cpu",
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = "float32",
    wait: Annotated[bool, typer.Option("--wait", help=WAIT_HELP)] = False,
) -> None:
    """Rate-distortion report: every K of the codec (bpp of real .vqn files, LPIPS, DISTS, PSNR,
    MS-SSIM, code usage) beside the paper's log2(K)/f² bpp, and classical codecs at the same rates.

    Each finished coding is journalled to OUT/partial.jsonl; running the same command after an
    interruption skips those and writes the tables an uninterrupted run would."""
    with user_errors():
        from vqnet.bdrate import METHOD, format_bd, write_companions
        from vqnet.codec.bundle import load_codec
        from vqnet.evaluate import CODEBOOK_SETS, EvalJournal, count_steps, eval_fingerprint, eval_ladder, evaluate
        from vqnet.images import codable_pixels, load_images
        from vqnet.journal import PARTIAL_NAME
        from vqnet.plots import plot_codec_grid, plot_rd

        check_layout(layout)
        if codebooks not in CODEBOOK_SETS:
            raise typer.BadParameter(f"--codebooks must be one of {', '.join(CODEBOOK_SETS)}, got {codebooks!r}")
        names = [] if classical.strip() == "none" else [c.strip() for c in classical.split(",") if c.strip()]
        codec = placed(load_codec(model), device, precision)
        k_list = eval_ladder(codec, _k_list(ks) if ks else None)
        pixels = scorable(load_images(str(images), max_pixels=codable_pixels(codec.factor)))
        locked_output(out, wait)
        label = images.resolve().name
        total = count_steps(len(pixels), len(k_list), names, codebooks)
        options = dict(
            with_dists=dists,
            classical=names,
            max_payload=max_payload,
            codebooks=codebooks,
            ks=k_list,
            layout=layout,
            chroma_cells=chroma_cells,
        )
        with EvalJournal.open(out / PARTIAL_NAME, eval_fingerprint(codec, pixels, **options), fresh) as journal:
            if journal.done:
                typer.echo(f"resuming: {len(journal.done)} of {total} codings already done ({journal.path})")
            note_dropped(journal)
            with progress_bar(total, f"eval {label}", quiet) as advance:
                result = evaluate(codec, pixels, advance=advance, journal=journal, **options)
        paths = [out / "rd.csv", out / "rd_images.csv"]
        result.rd.to_csv(paths[0], index=False)
        result.per_image.to_csv(paths[1], index=False)
        journal.discard()
        paths += [
            plot_rd(result.rd, out / "rd.png", f"{label}: {len(pixels)} images, model {codec.model_id}"),
            plot_codec_grid(result, out / "grid.png"),
        ]
        description = (
            f"vqnet eval {label}: {len(pixels)} images, model {codec.model_id}, .vqn files ({layout}, "
            f"{max_payload}-byte payloads, colour packet {'off' if not chroma_cells else chroma_cells})"
        )
        bd, companions = write_companions(result.rd, out, description)
        paths += companions
        shown = result.rd.drop(columns=["target_bpp"] + ([] if dists else ["dists"]))
        typer.echo(f"\nmeans over {len(pixels)} images, model {codec.model_id} (f={codec.factor}):")
        typer.echo(shown.to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="-"))
        if len(bd):
            typer.echo(f"\nBjøntegaard deltas ({METHOD} interpolation; negative = test better):")
            typer.echo(format_bd(bd))
        for note in result.notes:
            typer.echo(f"note: {note}")
        for p in paths:
            typer.echo(f"wrote {p}")


@app.command("bd")
def bd_cmd(
    rd: Annotated[Path, typer.Argument(metavar="RD.csv", help="An rd.csv written by `vqnet eval`.")],
    method: Annotated[
        str, typer.Option(help="Curve interpolation: pchip (2+ points) | akima | cubic (the classic fit, 4+ points).")
    ] = "pchip",
    description: Annotated[str | None, typer.Option(help="Description in the CompressAI JSON files.")] = None,
) -> None:
    """Bjøntegaard deltas (BD-rate, BD-LPIPS, BD-PSNR) of an existing rd.csv: writes bd.csv and
    compressai/<codec>.json beside it, as `vqnet eval` does after measuring."""
    with user_errors():
        from vqnet.bdrate import RDTableError, bd_from_file, format_bd

        if method not in ("pchip", "akima", "cubic"):
            raise typer.BadParameter(f"--method must be pchip, akima or cubic, got {method!r}")
        try:
            table, paths = bd_from_file(rd, method, description)
        except RDTableError as exc:
            typer.echo(f"Error: {exc}", err=True)
            raise typer.Exit(2) from None
        typer.echo(f"Bjøntegaard deltas of {rd} ({method} interpolation; negative = test better):")
        typer.echo(format_bd(table))
        for p in paths:
            typer.echo(f"wrote {p}")


@scenario_app.command("check")
def scenario_check(file: Annotated[Path, typer.Argument(help="Scenario YAML file.")]) -> None:
    """Validate a scenario, its model's K and its image source (what `run` checks before any
    work), and print how many trials it expands to."""
    with user_errors():
        from vqnet.codec.bundle import load_codec
        from vqnet.images import SKIMAGE_DEFAULTS, list_image_files
        from vqnet.scenario import load_scenario
        from vqnet.sweep import count_trials

        sc = load_scenario(file)
        codec = load_codec(sc.model)
        for scheme in sc.protection_schemes():
            codec.codebook(scheme.K)
        source = sc.images.source
        n = len(list_image_files(source) if source else sc.images.names or SKIMAGE_DEFAULTS)
        n = min(n, sc.images.limit or n)
        typer.echo(f"{file}: ok ({sc.name}: {count_trials(sc, 1)} trials per image, {n} images)")


@scenario_app.command("schema")
def scenario_schema() -> None:
    """Print the JSON Schema of scenario files (every field with its type, range and description)."""
    from vqnet.scenario import Scenario

    typer.echo(json.dumps(Scenario.model_json_schema(), indent=2))


@train_app.command("vqgan")
def train_vqgan_cmd(
    data: Annotated[Path, typer.Option(help="Folder of training photos (recursively).")] = Path("../shared/data/train"),
    out: Annotated[Path, typer.Option(help="Run folder: checkpoint.pt and log.csv.")] = Path("runs/vqgan"),
    steps: Annotated[int, typer.Option(min=1, help="Total optimiser steps (a resumed run continues to this).")] = 4000,
    batch: Annotated[int, typer.Option(min=1, help="Crops per step.")] = 8,
    crop: Annotated[int, typer.Option(min=16, help="Crop size in pixels (multiple of 16).")] = 128,
    ch: Annotated[
        int | None, typer.Option(min=32, help="Base channel count (multiple of 32) (default 32; not with --init).")
    ] = None,
    n_embed: Annotated[
        int | None, typer.Option(min=2, help="Base codebook size (default 1024; not with --init).")
    ] = None,
    lr: Annotated[float, typer.Option(min=0.0, help="Adam learning rate.")] = 3e-4,
    perceptual_weight: Annotated[
        float, typer.Option(min=0.0, help="Weight of LPIPS-VGG; 0 drops it (a much cheaper L1-only step).")
    ] = 1.0,
    disc_weight: Annotated[
        float, typer.Option(min=0.0, help="GAN weight on top of the adaptive weight (taming: 0.8).")
    ] = 0.8,
    disc_start: Annotated[int, typer.Option(min=0, help="Step the PatchGAN starts at (0 suits --init runs).")] = 2000,
    disc_warmup: Annotated[
        int,
        typer.Option(
            min=0,
            help="Steps from --disc-start in which only the "
            "discriminator learns, so the decoder's first GAN "
            "gradients come from a trained one (taming: 0).",
        ),
    ] = 0,
    disc_lr: Annotated[float | None, typer.Option(min=0.0, help="Discriminator learning rate (default: --lr).")] = None,
    disc_layers: Annotated[int, typer.Option(min=1, help="PatchGAN depth (taming: 3, or 2 for f16-16384).")] = 3,
    init: Annotated[
        Path | None,
        typer.Option(
            help="Start from this codec bundle (.safetensors) or training checkpoint; its model config is used."
        ),
    ] = None,
    freeze: Annotated[
        str,
        typer.Option(
            help="none | encoder: keep encoder, quant_conv and codebook fixed and "
            "train post_quant_conv + decoder (index maps stay valid; needs "
            "--init) | encoder,post_quant_conv: the decoder alone (`masked` "
            "concealment then also chooses the same codes)."
        ),
    ] = "none",
    decoder_ch: Annotated[
        int | None,
        typer.Option(
            min=32, help="Widen the --init model's decoder to this base width (a multiple of its own) before training."
        ),
    ] = None,
    decoder_blocks: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Deepen the --init model's decoder to this many "
            "res blocks per level before training. Grown "
            "decoders start out computing the same image and "
            "index maps stay valid; they decode slower (2x "
            "the width: ~3x the time).",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for weights and data order.")] = 0,
    bf16: Annotated[bool, typer.Option(help="bf16 autocast (only faster on CPUs with avx512_bf16).")] = False,
    resume: Annotated[bool, typer.Option(help="Continue OUT/checkpoint.pt exactly where it stopped.")] = False,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "cpu",
    minutes: Annotated[float | None, typer.Option(min=0.0, help=MINUTES_HELP)] = None,
    val: Annotated[
        Path | None,
        typer.Option(
            help="Folder of held-out photos: their loss goes to OUT/val.csv "
            "every --val-every steps and OUT/best.pt keeps the lowest, "
            "for long runs that start to memorise their crops."
        ),
    ] = None,
    val_every: Annotated[int, typer.Option(min=1, help="Steps between two --val measurements.")] = 250,
) -> None:
    """Train the f=16 VQGAN with taming's recipe (L1 + LPIPS-VGG + codebook loss, dead-code restarts,
    PatchGAN with hinge loss from --disc-start on), checkpointing every 3 minutes."""
    with user_errors():
        if crop % 16 or (ch or 32) % 32:
            raise typer.BadParameter("crop must be a multiple of 16 and ch a multiple of 32")
        sizes = {k: v for k, v in (("ch", ch), ("n_embed", n_embed)) if v is not None}
        if init and sizes:
            raise typer.BadParameter("--ch and --n-embed come from the --init model; leave them out")
        if freeze not in FREEZE_CHOICES:
            raise typer.BadParameter(f"--freeze must be {' or '.join(FREEZE_CHOICES)}, got {freeze!r}")
        if (decoder_ch or decoder_blocks) and not init:
            raise typer.BadParameter("--decoder-ch/--decoder-blocks grow the --init decoder")
        if freeze != "none" and not (init or resume):
            raise typer.BadParameter(f"--freeze {freeze} needs --init: a random encoder would stay random")
        from vqnet.training.vqgan import TrainConfig, small_config, train_vqgan

        cfg = TrainConfig(
            steps=steps,
            batch=batch,
            crop=crop,
            lr=lr,
            seed=seed,
            bf16=bf16,
            perceptual_weight=perceptual_weight,
            disc_weight=disc_weight,
            disc_start=disc_start,
            disc_warmup=disc_warmup,
            disc_lr=disc_lr,
            disc_layers=disc_layers,
            freeze_encoder=freeze != "none",
            freeze_post_quant_conv=freeze == "encoder,post_quant_conv",
            init=str(init) if init else None,
            decoder_ch=decoder_ch,
            decoder_res_blocks=decoder_blocks,
            device=check_device(device),
        )
        with Progress(*COLUMNS) as bar:
            loading = bar.add_task("loading photos", total=None, label="")
            training = bar.add_task("training", total=steps, label="")

            def on_load(i: int, n: int) -> None:
                bar.update(loading, total=n, completed=i)

            def on_step(step: int, row: dict[str, float]) -> None:
                label = (
                    f"L1 {row['l1']:.4f} P {row['p_loss']:.3f} vq {row['emb_loss']:.4f} "
                    f"D {row['d_loss']:.3f} ppl {row['perplexity']:.0f}"
                )
                bar.update(training, completed=step, label=label)

            path = train_vqgan(
                data,
                out,
                cfg,
                small_config(**sizes) if sizes else None,
                resume=resume,
                on_step=on_step,
                on_load=on_load,
                minutes=minutes,
                val=val,
                val_every=val_every,
            )
        typer.echo(f"checkpoint: {path}")
        if val is not None:
            from vqnet.training.vqgan import best_validation

            step, loss = best_validation(out)
            typer.echo(f"best held-out loss {loss:.4f} at step {step}: {out / 'best.pt'}")


def _k_list(value: str, option: str = "--ks") -> list[int]:
    """``--ks 256,64,16`` -> [256, 64, 16] (any comma-separated integer option, named ``option``)."""
    try:
        return [int(k) for k in value.split(",") if k.strip()]
    except ValueError:
        raise typer.BadParameter(f"{option} must be comma-separated integers, got {value!r}") from None


@codebook_app.command("kmeans")
def codebook_kmeans(
    checkpoint: Annotated[
        Path,
        typer.Option(
            help="Training checkpoint (checkpoint.pt) of `vqnet train vqgan`, or "
            "an official taming VQGAN (Lightning last.ckpt or a .safetensors "
            "state_dict) with --config."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Codec bundle to write (.safetensors, fp16).")],
    config: Annotated[
        Path | None,
        typer.Option(
            help="The official checkpoint's model.yaml (taming's configs/*.yaml "
            "or the zoo's project.yaml); checked against the weights."
        ),
    ] = None,
    data: Annotated[Path, typer.Option(help="Photos used to count code usage and fit the priors.")] = Path(
        "../shared/data/train"
    ),
    ks: Annotated[
        str, typer.Option(help="Comma-separated codebook sizes (the base size is kept as is).")
    ] = "1024,256,64,16",
    images: Annotated[
        int,
        typer.Option(
            min=1,
            help="How many photos to encode, each with its mirror image "
            "(cached under ./runs/prior-data), for usage counts and "
            "priors.",
        ),
    ] = 300,
    seed: Annotated[int, typer.Option(help="Seed for the photo sample and k-means++.")] = 0,
    device: Annotated[
        str,
        typer.Option(
            help="Where the encoder and the code-usage count run: cpu or cuda (K-means and the priors stay on the CPU)."
        ),
    ] = "cpu",
) -> None:
    """K-means the base codebook into each K (usage-weighted) and fit a range-coding prior per K.

    The base model is a `vqnet train vqgan` checkpoint, or an official taming VQGAN (--config):
    its `loss.*` keys are dropped and the config must match the weights."""
    with user_errors():
        from vqnet.codec.bundle import Codec, CodecError, save_codec
        from vqnet.training.ladder import build_ladder

        k_list = _k_list(ks)
        if config is not None:
            from vqnet.codec.taming import load_taming_checkpoint
            from vqnet.weights import sha256_of

            model = load_taming_checkpoint(checkpoint, config)
            origin = {
                "taming_checkpoint": checkpoint.name,
                "checkpoint_sha256": sha256_of(checkpoint),
                "taming_config": model.config.to_dict(),
            }
        elif checkpoint.suffix in (".ckpt", ".safetensors"):
            raise CodecError(f"{checkpoint} looks like an official taming checkpoint: pass its model.yaml as --config")
        else:
            from vqnet.codec.model import VQGANConfig, VQModel
            from vqnet.training.loop import load_checkpoint

            state = load_checkpoint(checkpoint)
            model = VQModel(VQGANConfig.from_dict(state["model_config"])).eval()
            model.load_state_dict(state["model"])
            origin = {"checkpoint_step": int(state["step"]), "train_config": state["train_config"]}
        if bad := [K for K in k_list if not 2 <= K <= model.config.n_embed]:
            raise CodecError(f"--ks {bad[0]}: every K must lie in [2, {model.config.n_embed}] (the base codebook)")
        model.to(check_device(device))
        latents, views, described = _photo_views(Codec(model, {}), data, images, seed)
        model.cpu()
        codec = build_ladder(model, latents, k_list, seed, views, device)
        codec.provenance = origin | {
            "prior_images": images,
            "prior_views": described,
            "data": str(data),
            "kmeans": "usage-weighted",
        }
        sha = save_codec(codec, out)
        for K in codec.ks:
            typer.echo(
                f"K={K}: prior entropy {codec.codebooks[K].prior.entropy_bits():.2f} bits/index (uniform {math.log2(K):.2f})"
            )
        typer.echo(f"wrote {out} (sha256 {sha[:16]})")


@codebook_app.command("decoder")
def codebook_decoder(
    model: Annotated[Path, typer.Option(help="Codec bundle whose ladder (codebooks) is kept.")],
    checkpoint: Annotated[Path, typer.Option(help="Checkpoint of a `vqnet train vqgan --freeze encoder` run.")],
    out: Annotated[Path, typer.Option(help="Codec bundle to write.")],
    data: Annotated[Path, typer.Option(help="Photos the priors are refit on.")] = Path("../shared/data/train"),
    images: Annotated[
        int,
        typer.Option(
            min=0,
            help="How many photos to encode, each with its mirror image "
            "(cached), for the priors (0: keep the priors; the index "
            "maps do not change).",
        ),
    ] = 200,
    seed: Annotated[int, typer.Option(help="Seed for the photo sample.")] = 0,
    kmeans_start: Annotated[
        bool,
        typer.Option(
            help="Put fine-tuned rungs back to their K-means codebooks (they were "
            "tuned for the old decoder); fine-tune them again afterwards."
        ),
    ] = False,
) -> None:
    """Swap a fine-tuned decoder into a bundle, keeping every codebook (so every index map and the
    concealment transformers stay valid), and refit each K's prior and context table."""
    with user_errors():
        from vqnet.codec.bundle import load_codec, save_codec
        from vqnet.training.ladder import swap_decoder
        from vqnet.training.vqgan import load_init_model

        codec = load_codec(model)
        if kmeans_start:
            codec = codec.raw_codec()
        new = load_init_model(checkpoint)
        latents, views, described = _photo_views(codec, data, images, seed) if images else (None, 1, "")
        swapped = swap_decoder(codec, new, latents, views)
        swapped.provenance |= {"decoder_checkpoint": str(checkpoint)} | (
            {"prior_images": images, "prior_views": described, "data": str(data)} if images else {}
        )
        sha = save_codec(swapped, out)
        typer.echo(f"wrote {out} (sha256 {sha[:16]}); codebooks kept from {model}")


@codebook_app.command("priors")
def codebook_priors(
    model: Annotated[Path, typer.Option(help="Codec bundle whose priors to refit.")],
    out: Annotated[Path, typer.Option(help="Codec bundle to write.")],
    data: Annotated[Path, typer.Option(help="Photos the priors are fitted on (whole photos, no crops).")] = Path(
        "../shared/data/train"
    ),
    images: Annotated[int, typer.Option(min=1, help="How many photos to encode.")] = 1500,
    shifts: Annotated[
        str,
        typer.Option(
            help="Comma-separated pixel shifts to encode every photo (and its mirror) "
            "at: 0,8 doubles the index maps, the f=16 grid moved half a token."
        ),
    ] = "0",
    seed: Annotated[int, typer.Option(help="Seed for the photo sample.")] = 0,
) -> None:
    """Refit every K's range-coding prior and neighbour-context table on whole training photos and
    their mirror images, changing nothing else: index maps, and the concealment transformers
    trained on them, stay valid. For ladders whose priors came from small crops (a GPU run's):
    K=1024's context table needs more neighbour pairs than crops give. Encoder outputs are cached
    under ./runs/prior-data (as `vqnet train prior` does), so another run, or another shift added,
    encodes only what is new."""
    with user_errors():
        from vqnet.codec.bundle import load_codec, save_codec
        from vqnet.training.ladder import refit_priors

        codec = load_codec(model)
        shift_list = sorted(set(_k_list(shifts, "--shifts")))
        if not shift_list or shift_list[0] < 0:
            raise typer.BadParameter(f"--shifts must be non-negative pixel counts, got {shifts!r}")
        latents, views, described = _photo_views(codec, data, images, seed, shift_list)
        new = refit_priors(codec, latents, views)
        new.provenance |= {"prior_images": len(latents) // views, "prior_views": described, "data": str(data)}
        sha = save_codec(new, out)
        for K in new.ks:
            prior = new.codebooks[K].prior
            typer.echo(
                f"K={K}: prior entropy {prior.entropy_bits():.2f} bits/index "
                f"(was {codec.codebooks[K].prior.entropy_bits():.2f}); "
                + (f"two neighbours, exponent {prior.pair}" if prior.pair else "one neighbour")
            )
        typer.echo(f"wrote {out} (sha256 {sha[:16]})")


@codebook_app.command("finetune")
def codebook_finetune(
    model: Annotated[Path, typer.Option(help="Codec bundle of `vqnet codebook kmeans` to start from.")],
    out: Annotated[Path, typer.Option(help="Codec bundle to write: fine-tuned codebooks, K-means ones kept as raw.")],
    data: Annotated[
        Path, typer.Option(help="Training photos (crops for fine-tuning; whole photos for the priors).")
    ] = (Path("../shared/data/train")),
    ks: Annotated[
        str | None, typer.Option(help="Comma-separated K to fine-tune (default: every K below the base size).")
    ] = None,
    steps: Annotated[int, typer.Option(min=1, help="Optimiser steps (every K trains on the same crops).")] = 1000,
    batch: Annotated[int, typer.Option(min=1, help="Crops per step.")] = 8,
    crop: Annotated[int, typer.Option(min=16, help="Crop size in pixels (multiple of 16).")] = 128,
    lr: Annotated[float, typer.Option(min=0.0, help="Adam learning rate.")] = 1e-4,
    perceptual_weight: Annotated[
        float, typer.Option(min=0.0, help="Weight of LPIPS-VGG; 0 leaves L1 + codebook loss.")
    ] = 1.0,
    images: Annotated[
        int,
        typer.Option(
            min=1, help="How many photos to encode, each with its mirror image (cached), to refit the priors."
        ),
    ] = 300,
    seed: Annotated[int, typer.Option(help="Seed for the crops and the photo sample.")] = 0,
    run: Annotated[
        Path | None,
        typer.Option(help="Run folder for the checkpoint and log.csv (default runs/finetune-<OUT's name>)."),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue RUN/checkpoint.pt exactly where it stopped.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "cpu",
    minutes: Annotated[
        float | None,
        typer.Option(min=0.0, help="Stop fine-tuning after this many minutes (the steps run are recorded)."),
    ] = None,
    bf16: Annotated[
        bool | None,
        typer.Option(
            "--bf16/--no-bf16",
            help="bf16 autocast for the frozen encoder, "
            "decoder and loss (codebook search in float32). "
            "Default: on with --device cuda, off on the "
            "CPU.",
        ),
    ] = None,
) -> None:
    """Fine-tune each reduced codebook with its quant_conv/post_quant_conv (encoder and decoder
    frozen; L1 + LPIPS-VGG + codebook loss), as the paper does, and refit the priors."""
    with user_errors():
        if crop % 16:
            raise typer.BadParameter("crop must be a multiple of 16")
        from dataclasses import asdict

        from vqnet.codec.bundle import load_codec, save_codec
        from vqnet.training.finetune import FinetuneConfig, finetune_ladder, finetune_targets
        from vqnet.training.loop import read_rows
        from vqnet.training.vqgan import CropDataset

        codec = load_codec(model)
        codec.model.to(check_device(device))
        targets = finetune_targets(codec, None if ks is None else _k_list(ks))
        cfg = FinetuneConfig(
            steps=steps,
            batch=batch,
            crop=crop,
            lr=lr,
            perceptual_weight=perceptual_weight,
            seed=seed,
            bf16=device.startswith("cuda") if bf16 is None else bf16,
        )
        run = run or Path("runs") / f"finetune-{out.stem}"
        with progress_bar(None, "loading photos", quiet) as advance:
            dataset = CropDataset(data, crop, progress=lambda i, n: advance(1, f"{i}/{n}"))
        latents, views, described = _photo_views(codec, data, images, seed, quiet=quiet)
        with progress_bar(steps, f"fine-tuning K={','.join(map(str, targets))}", quiet) as advance:
            done = 0  # steps the bar shows: a resumed run starts further on

            def on_step(step: int, row: dict[str, float]) -> None:
                nonlocal done
                advance(step - done, " ".join(f"K={K} {row[f'loss_K{K}']:.4f}" for K in targets))
                done = step

            tuned, steps_run = finetune_ladder(
                codec, dataset, latents, cfg, run, targets, resume, on_step, minutes, views
            )
        tuned.model.cpu()
        history = {K: [float(r[f"loss_K{K}"]) for r in read_rows(run / "log.csv")] for K in targets}
        tuned.provenance["finetune"] = asdict(cfg) | {
            "ks": targets,
            "from_model": codec.model_id,
            "prior_images": images,
            "prior_views": described,
            "data": str(data),
            "steps_run": steps_run,
        }
        sha = save_codec(tuned, out)
        n = max(1, min(10, steps_run))
        for K in targets:
            typer.echo(
                f"K={K}: loss {sum(history[K][:n]) / n:.4f} -> {sum(history[K][-n:]) / n:.4f} "
                f"(mean of first/last {n} steps); prior entropy "
                f"{tuned.codebooks[K].prior.entropy_bits():.2f} bits/index "
                f"(K-means: {tuned.codebooks[K].raw.prior.entropy_bits():.2f})"
            )
        typer.echo(f"wrote {out} (sha256 {sha[:16]})")


def main() -> None:  # pragma: no cover - console entry for `python -m vqnet`
    app(prog_name="vqnet")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
