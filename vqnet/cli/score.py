"""``vqnet score REF TEST [--json]``: LPIPS-alex and PSNR of one image against a reference."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from vqnet.cli.errors import user_errors


def score_command(
    ref: Annotated[Path, typer.Argument(help="Reference (original) image.")],
    test: Annotated[Path, typer.Argument(help="Image to score, same size as REF.")],
    json_out: Annotated[
        bool,
        typer.Option("--json", help="Print one JSON object; psnr is null for identical images."),
    ] = False,
) -> None:
    """Print LPIPS-alex (v0.1, inputs in [-1,1]) and PSNR of TEST against REF."""
    with user_errors():
        from vqnet.metrics import load_image_rgb, require_lpips_size, score  # lpips loads only when scoring

        pixels = load_image_rgb(ref)
        require_lpips_size(*pixels.shape[:2], str(ref))
        result = score(pixels, load_image_rgb(test))
    if json_out:
        # Strict JSON has no Infinity; null marks identical images.
        psnr = result["psnr"] if result["psnr"] != float("inf") else None
        typer.echo(json.dumps({"lpips_alex": result["lpips_alex"], "psnr": psnr}))
    else:
        typer.echo(f"LPIPS-alex: {result['lpips_alex']:.6f}")
        typer.echo(f"PSNR: {result['psnr']:.3f} dB")
