"""Training recipes: taming-style YAML files (``configs/*.yaml``) that a ``--config`` option of
``vqnet train vqgan|prior`` and ``vqnet codebook finetune`` reads, so a documented run needs no
repeated flags.

A recipe has three sections, as taming's configs do::

    model:                      # what is trained: its class and size
      target: vqnet.restore.gpt.GPT
      params: {kind: ar, K: 256, n_layer: 4, n_head: 4, n_embd: 128, dropout: 0.1}
    data: {data: ../shared/data/train}
    training: {steps: 18000, batch: 128, lr: 1.0e-3, init: taming}

Every value becomes the default of the command's option of that name (click's ``default_map``), so
a flag on the command line still overrides the file. ``target`` names the class the command trains
and is checked, never imported. A ``vqgan`` recipe's ``model.params`` is the whole
:class:`~vqnet.codec.model.VQGANConfig` (taming's ``embed_dim``, ``n_embed``, ``ddconfig``), of
which ``--ch`` and ``--n-embed`` override the two the CLI names. An unknown key, a value of the
wrong type or a missing file is one ``Error:`` line (exit 2), before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
import yaml

# typer >= 0.29 runs on its own copy of click (typer._click), whose errors the CLI prints in one line.
from typer._click import Context, Parameter
from typer._click.exceptions import BadParameter

#: ``ctx.meta`` key of a ``vqgan`` recipe's model config (a plain dict, checked as a VQGANConfig).
MODEL_META = "vqnet.recipe.model"


@dataclass(frozen=True)
class Schema:
    """What one command's recipes may hold: the class trained, and for each section the recipe key
    -> option name (``model_params=None``: the params are a whole model config, kept apart)."""

    target: str
    data: dict[str, str]
    training: dict[str, str]
    model_params: dict[str, str] | None = field(default=None)


def _same(*names: str) -> dict[str, str]:
    return {n: n for n in names}


SCHEMAS = {
    "vqgan": Schema(
        target="vqnet.codec.model.VQModel",
        data=_same("data", "val", "val_every"),
        training=_same(
            "out",
            "steps",
            "batch",
            "crop",
            "lr",
            "perceptual_weight",
            "disc_weight",
            "disc_start",
            "disc_warmup",
            "disc_lr",
            "disc_layers",
            "init",
            "freeze",
            "decoder_ch",
            "decoder_blocks",
            "seed",
            "bf16",
            "device",
            "minutes",
        ),
    ),
    "finetune": Schema(
        target="vqnet.codec.bundle.Codebook",
        model_params=_same("ks"),
        data={"codec": "model"} | _same("data", "images"),
        training=_same("run", "steps", "batch", "crop", "lr", "perceptual_weight", "seed", "bf16", "device", "minutes"),
    ),
    "prior": Schema(
        target="vqnet.restore.gpt.GPT",
        model_params={"kind": "kind", "K": "K", "n_layer": "layers", "n_head": "heads", "n_embd": "embd"}
        | _same("dropout"),
        data={"codec": "model"} | _same("data", "photos", "maps"),
        training=_same("out", "steps", "batch", "lr", "seed", "init", "corrupt", "start", "device", "minutes")
        | _same("workers", "bf16"),
    ),
}


def _kind(param: Parameter) -> tuple[str, tuple[type, ...]]:
    """(words, YAML types) a recipe value for ``param`` must have; a bool is never a number."""
    annotation = param.type_descriptor.annotation
    if annotation is bool:
        return "true or false", (bool,)
    if annotation is int:
        return "an integer", (int,)
    if annotation is float:
        return "a number", (int, float)
    return "a string", (str,)


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise BadParameter(f"no such recipe file: {path}")
    try:
        recipe = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise BadParameter(f"{path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(recipe, dict):
        raise BadParameter(f"{path} must be a mapping with model, data and training sections")
    if unknown := sorted(set(recipe) - {"model", "data", "training"}):
        raise BadParameter(f"{path}: unknown section {unknown[0]!r} (known: model, data, training)")
    return recipe


def _mapping(path: Path, where: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadParameter(f"{path}: {where} must be a mapping, got {value!r}")
    return value


def _model_config(path: Path, params: dict[str, Any]) -> dict[str, Any]:
    """A ``vqgan`` recipe's model params, checked as a VQGANConfig (built again by the command)."""
    from vqnet.codec.model import DDConfig, VQGANConfig

    top = {"embed_dim": 0, "n_embed": 0, "decoder_ch": 0, "decoder_res_blocks": 0, "ddconfig": {}}
    dd = _mapping(path, "model.params.ddconfig", params.get("ddconfig"))
    fields = {f"ddconfig.{k}": v.default for k, v in DDConfig.__dataclass_fields__.items()}
    expected = {k: v for k, v in top.items() if k != "ddconfig"} | fields
    given = {k: v for k, v in params.items() if k != "ddconfig"} | {f"ddconfig.{k}": v for k, v in dd.items()}
    for key, value in given.items():
        if key not in expected:
            raise BadParameter(f"{path}: unknown key model.params.{key}")
        want = expected[key]
        ok = (
            isinstance(value, list) and all(type(v) is int for v in value)
            if isinstance(want, tuple)
            else type(value) is type(want) or (type(want) is float and type(value) is int)
        )
        if not ok:
            raise BadParameter(f"{path}: model.params.{key} must be like {want!r}, got {value!r}")
    try:
        VQGANConfig.from_dict(params)
    except (TypeError, ValueError, KeyError) as exc:
        raise BadParameter(f"{path}: model.params is not a VQGAN config ({exc})") from None
    return params


def load_recipe(ctx: Context, path: Path, schema: Schema) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(option name -> value, a ``vqgan`` recipe's model params or None) of the recipe at ``path``."""
    recipe = _read(path)
    model = _mapping(path, "model", recipe.get("model"))
    if unknown := sorted(set(model) - {"target", "params"}):
        raise BadParameter(f"{path}: unknown key model.{unknown[0]} (known: target, params)")
    if "target" in model and model["target"] != schema.target:
        raise BadParameter(f"{path}: model.target is {model['target']!r}; this command trains {schema.target}")
    params = _mapping(path, "model.params", model.get("params"))
    sections = {"data": schema.data, "training": schema.training}
    model_config = None
    if schema.model_params is None:
        model_config = _model_config(path, params) if params else None
    else:
        sections = {"model.params": schema.model_params} | sections
    options = {p.name: p for p in ctx.command.params}
    values: dict[str, Any] = {}
    for where, names in sections.items():
        given = params if where == "model.params" else _mapping(path, where, recipe.get(where))
        for key, value in given.items():
            if key not in names:
                raise BadParameter(f"{path}: unknown key {where}.{key} (known: {', '.join(names)})")
            words, types = _kind(options[names[key]])
            if value is not None and (not isinstance(value, types) or (bool not in types and isinstance(value, bool))):
                raise BadParameter(f"{path}: {where}.{key} must be {words}, got {value!r}")
            values[names[key]] = value
    return values, model_config


def recipe_option(command: str) -> Any:
    """The ``--config`` option of the training command ``command`` (a key of :data:`SCHEMAS`): read first (eager), it sets the defaults
    of every other option."""
    schema = SCHEMAS[command]

    def apply(ctx: Context, param: Parameter, path: Path | None) -> Path | None:
        if path is not None:
            values, model_config = load_recipe(ctx, path, schema)
            ctx.default_map = (ctx.default_map or {}) | values
            ctx.meta[MODEL_META] = model_config
        return path

    return typer.Option(
        "--config",
        help="Recipe file (configs/*.yaml): its values are the defaults of the options, which still override it.",
        is_eager=True,
        callback=apply,
        dir_okay=False,
    )
