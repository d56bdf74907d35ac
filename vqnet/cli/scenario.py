"""``vqnet scenario check|schema``: validate scenario files, print their JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from vqnet.cli.errors import user_errors

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Check scenario files, print their schema.")


@app.command("check")
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


@app.command("schema")
def scenario_schema() -> None:
    """Print the JSON Schema of scenario files (every field with its type, range and description)."""
    from vqnet.scenario import Scenario

    typer.echo(json.dumps(Scenario.model_json_schema(), indent=2))
