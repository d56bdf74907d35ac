"""Scenario files: a YAML description of one sweep, validated before anything runs.

Every field has a type, a range and a description (``vqnet scenario schema`` prints the JSON
Schema). Validation errors become one line naming the field, because a sweep that dies after ten
minutes on a typo is worse than one that refuses to start.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vqnet.channel.loss import make_loss_model
from vqnet.restore import METHODS


class ScenarioError(ValueError):
    """A scenario that cannot be run; the message is a single line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Images(_Strict):
    source: str | None = Field(None, description="Folder, glob or file of images; null = scikit-image's bundled photos (offline).")
    names: list[Literal["astronaut", "chelsea", "coffee", "rocket"]] | None = Field(
        None, description="Which bundled photos to use when source is null (default: all four).")
    limit: int | None = Field(None, ge=1, le=10000, description="Use at most this many images (sorted by name).")


class Packets(_Strict):
    max_payload: int = Field(24, ge=8, le=65535, description="Max range-coded bytes per packet (headers come on top).")
    layout: Literal["raster", "interleaved"] = Field(
        "interleaved", description="raster: contiguous runs of indices; interleaved: packet i carries positions i, i+N, ...")
    chroma_cells: int = Field(0, ge=0, le=16, description="Send the colour packet too (vqnet/chroma.py): block chroma "
                              "over this many index cells squared, coarser where it would not fit max_payload; it "
                              "crosses the channel like any packet (and counts in bpp). 0 = indices only.")


class Channel(_Strict):
    model: Literal["bernoulli", "gilbert", "gilbert_elliott", "state", "trace"] = Field(
        "gilbert", description="Loss process (netem semantics).")
    loss: list[float] = Field(default_factory=list, description="Target packet loss ratios to sweep (bernoulli, gilbert).")
    burst: list[float] = Field(default_factory=list, description="Mean burst lengths in packets to sweep (gilbert only).")
    params: dict[str, float | str] = Field(default_factory=dict, description="Fixed parameters of gilbert_elliott (p, r, loss_bad, loss_good), state (p13, p31, p32, p23, p14) or trace (path).")

    @field_validator("loss")
    @classmethod
    def _loss_range(cls, v: list[float]) -> list[float]:
        for x in v:
            if not 0.0 <= x < 1.0:
                raise ValueError(f"loss ratio {x} is outside [0, 1)")
        return v

    @field_validator("burst")
    @classmethod
    def _burst_range(cls, v: list[float]) -> list[float]:
        for x in v:
            if not 1.0 <= x <= 10000:
                raise ValueError(f"mean burst {x} is outside [1, 10000] packets")
        return v

    @model_validator(mode="after")
    def _axes_match_model(self) -> "Channel":
        if self.model in ("bernoulli", "gilbert") and not self.loss:
            raise ValueError(f"model {self.model} needs a list of loss ratios in 'loss'")
        if self.model == "gilbert" and not self.burst:
            raise ValueError("model gilbert needs a list of mean burst lengths in 'burst'")
        if self.model != "gilbert" and self.burst:
            raise ValueError(f"'burst' applies only to model gilbert, not {self.model}")
        if self.model not in ("bernoulli", "gilbert") and self.loss:
            raise ValueError(f"'loss' cannot be swept for model {self.model}; set its parameters in 'params'")
        if self.model in ("bernoulli", "gilbert") and self.params:
            raise ValueError(f"'params' is not used by model {self.model}; use 'loss'/'burst'")
        for point in self.points():  # every combination must be a valid loss model
            self.loss_model(*point)
        return self

    def points(self) -> list[tuple[float | None, float | None]]:
        """(target loss, burst) pairs of the sweep; (None, None) for fixed-parameter models."""
        if self.model == "gilbert":
            return [(loss, b) for b in self.burst for loss in self.loss]
        if self.model == "bernoulli":
            return [(loss, None) for loss in self.loss]
        return [(None, None)]

    def loss_model(self, loss: float | None, burst: float | None):
        if self.model == "gilbert":
            return make_loss_model("gilbert", loss=loss, burst=burst)
        if self.model == "bernoulli":
            return make_loss_model("bernoulli", loss=loss)
        return make_loss_model(self.model, **self.params)


class Link(_Strict):
    rate_bps: float | None = Field(None, gt=0, description="Link bit rate (bits/s); null = infinite.")
    delay_s: float = Field(0.0, ge=0, le=3600, description="One-way propagation delay (s).")
    jitter_s: float = Field(0.0, ge=0, le=3600, description="Uniform ± jitter on the delay (s), at most delay_s.")
    queue_limit: int | None = Field(None, ge=0, description="Packets that may wait for the transmitter; null = unlimited.")
    deadline_s: float | None = Field(None, gt=0, description="Packets arriving later than this after the first send count as lost.")
    send_interval_s: float | None = Field(None, gt=0, description="Sender pacing between packets (s); null = back-to-back.")

    @model_validator(mode="after")
    def _jitter(self) -> "Link":
        if self.jitter_s > self.delay_s:
            raise ValueError("jitter_s must not exceed delay_s")
        return self


class Examples(_Strict):
    image: str | None = Field(None, description="Image shown in examples.png (default: the first).")
    losses: list[float] = Field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7], description="Target losses shown as columns.")


class Scenario(_Strict):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Names the output folder results/<name>/.")
    description: str = Field("", max_length=2000, description="Free text, copied nowhere.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Root seed; each trial's seed derives from it and the trial's key.")
    images: Images = Field(default_factory=Images, description="Which images to send.")
    model: str | None = Field(None, description="Codec bundle (.safetensors); null = the bundled default model.")
    precision: Literal["float32", "bf16"] = Field(
        "float32", description="The decoder's arithmetic; bf16 only where it is fast (a CPU with AMX or AVX512-BF16, "
        "or a GPU), see docs/performance.md. `vqnet run --precision` overrides it.")
    K: list[int] = Field(default_factory=lambda: [256], min_length=1, description="Codebook sizes to sweep (must exist in the model).")
    packets: Packets = Field(default_factory=Packets, description="Packetisation.")
    channel: Channel = Field(default_factory=lambda: Channel(loss=[0.3], burst=[4.0]), description="Loss process and swept points.")
    link: Link = Field(default_factory=Link, description="simpy link: rate, delay, queue, deadline.")
    methods: list[str] = Field(default_factory=lambda: ["none", "neighbor"], min_length=1, description="Concealment methods.")
    trials: int = Field(3, ge=1, le=1000, description="Independent channel realisations per point.")
    examples: Examples = Field(default_factory=Examples, description="The example-reconstruction grid.")

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, v: list[str]) -> list[str]:
        for m in v:
            if m not in METHODS:
                raise ValueError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
        if len(set(v)) != len(v):
            raise ValueError("methods are listed twice")
        return v

    @field_validator("K")
    @classmethod
    def _k_range(cls, v: list[int]) -> list[int]:
        for k in v:
            if not 2 <= k <= 65535:
                raise ValueError(f"K={k} is outside [2, 65535]")
        return v


def _format_error(source: str, exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{source}: {where}: {msg}{more}"


def parse_scenario(data: object, source: str = "scenario") -> Scenario:
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: expected a mapping of fields at the top level")
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(_format_error(source, exc)) from None


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ScenarioError(f"scenario file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"cannot read scenario {path}: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ScenarioError(f"{path}: invalid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    return parse_scenario(data, str(path))
