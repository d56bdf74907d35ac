"""``vqnet eval`` and ``vqnet bd``: rate-distortion of a codec's ladder against classical codecs,
and the Bjøntegaard deltas of an rd.csv."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vqnet.chroma import CELLS, MAX_CELLS
from vqnet.cli.errors import user_errors
from vqnet.cli.options import (
    CHROMA_HELP,
    PRECISION_HELP,
    RUN_DEVICE_HELP,
    WAIT_HELP,
    check_layout,
    int_list,
    locked_output,
    note_dropped,
    placed,
    scorable,
)
from vqnet.progress import progress_bar


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
        k_list = eval_ladder(codec, int_list(ks) if ks else None)
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
        from vqnet.bdrate import bd_from_file, format_bd

        if method not in ("pchip", "akima", "cubic"):
            raise typer.BadParameter(f"--method must be pchip, akima or cubic, got {method!r}")
        table, paths = bd_from_file(rd, method, description)
        typer.echo(f"Bjøntegaard deltas of {rd} ({method} interpolation; negative = test better):")
        typer.echo(format_bd(table))
        for p in paths:
            typer.echo(f"wrote {p}")
