"""Scenario files: a YAML description of one sweep, validated before anything runs.

Every field has a type, a range and a description (``vqnet scenario schema`` prints the JSON
Schema). Validation errors become one line naming the field, because a sweep that dies after ten
minutes on a typo is worse than one that refuses to start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from vqnet.channel.link import LinkConfig
from vqnet.channel.loss import make_loss_model
from vqnet.channel.mask import IndexMask
from vqnet.errors import VqnetError
from vqnet.fec import MAX_N, FecCode
from vqnet.restore import METHODS


class ScenarioError(VqnetError, ValueError):
    """A scenario that cannot be run; the message is a single line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Images(_Strict):
    source: str | None = Field(
        None, description="Folder, glob or file of images; null = scikit-image's bundled photos (offline)."
    )
    names: list[Literal["astronaut", "chelsea", "coffee", "rocket"]] | None = Field(
        None, description="Which bundled photos to use when source is null (default: all four)."
    )
    limit: int | None = Field(None, ge=1, le=10000, description="Use at most this many images (sorted by name).")


class Fec(_Strict):
    k: int | None = Field(None, ge=1, description="Data packets per Reed-Solomon block (with n).")
    n: int | None = Field(None, ge=2, description=f"Packets per block, data and parity (with k), at most {MAX_N}.")
    parity: float | None = Field(
        None,
        gt=0,
        le=MAX_N - 1,
        description="Instead of k and n: parity packets per data packet, over blocks as long as the code allows.",
    )

    @model_validator(mode="after")
    def _valid_code(self) -> "Fec":
        if self.k == 1:
            raise ValueError("k=1 makes every parity packet a copy of one packet; use k >= 2 or a parity ratio")
        self.code()
        return self

    def code(self) -> FecCode:
        return FecCode(self.k, self.n, self.parity)


class Packets(_Strict):
    max_payload: int = Field(24, ge=8, le=65535, description="Max range-coded bytes per packet (headers come on top).")
    layout: Literal["raster", "interleaved"] = Field(
        "interleaved",
        description="raster: contiguous runs of indices; interleaved: packet i carries positions i, i+N, ...",
    )
    chroma_cells: int = Field(
        0,
        ge=0,
        le=16,
        description="Send the colour packet too (vqnet/chroma.py): block chroma "
        "over this many index cells squared, coarser where it would not fit max_payload; it "
        "crosses the channel like any packet (and counts in bpp). 0 = indices only.",
    )
    fec: Fec | None = Field(
        None,
        description="Reed-Solomon parity across the image's packets (vqnet/fec.py): "
        "{k, n} or {parity: ratio}; parity packets count in bpp. null = none.",
    )


class Channel(_Strict):
    model: Literal["bernoulli", "gilbert", "gilbert_elliott", "state", "trace", "mask"] = Field(
        "gilbert",
        description="Loss process (netem semantics), or mask: exactly round(loss x N) of an image's N "
        "indices lost, drawn on the index grid (the paper's mask ratio; packets are still built and counted in bpp).",
    )
    loss: list[float] = Field(
        default_factory=list,
        description="Target loss ratios to sweep: of packets (bernoulli, gilbert) or of indices (mask).",
    )
    burst: list[float] = Field(
        default_factory=list,
        description="Mean burst lengths in packets to sweep (gilbert); "
        "for mask, the mean run length in indices (pattern burst) or the side of the square "
        "holes in index cells (pattern block).",
    )
    pattern: Literal["iid", "burst", "block"] | None = Field(
        None, description="mask only: iid positions, runs along raster order, or square holes (default iid)."
    )
    params: dict[str, float | str] = Field(
        default_factory=dict,
        description="Fixed parameters of gilbert_elliott (p, r, loss_bad, loss_good), state (p13, p31, p32, p23, p14) or trace (path).",
    )

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
        swept = ("bernoulli", "gilbert", "mask")
        sized = self.model == "gilbert" or (self.model == "mask" and self.pattern in ("burst", "block"))
        if self.model in swept and not self.loss:
            raise ValueError(f"model {self.model} needs a list of loss ratios in 'loss'")
        if sized and not self.burst:
            what = "mean burst lengths" if self.model == "gilbert" else f"{self.pattern} sizes (index cells)"
            raise ValueError(f"{self._label()} needs a list of {what} in 'burst'")
        if not sized and self.burst:
            raise ValueError(
                f"'burst' applies only to gilbert and to mask with pattern burst or block, not {self._label()}"
            )
        if self.model not in swept and self.loss:
            raise ValueError(f"'loss' cannot be swept for model {self.model}; set its parameters in 'params'")
        if self.model in swept and self.params:
            raise ValueError(f"'params' is not used by model {self.model}; use 'loss'/'burst'")
        if self.model != "mask" and self.pattern is not None:
            raise ValueError(f"'pattern' applies only to model mask, not {self.model}")
        for point in self.points():  # every combination must be a valid loss model
            self.loss_model(*point)
        return self

    def _label(self) -> str:
        return f"model mask, pattern {self.pattern or 'iid'}" if self.model == "mask" else f"model {self.model}"

    def points(self) -> list[tuple[float | None, float | None]]:
        """(target loss, burst) pairs of the sweep; (None, None) for fixed-parameter models."""
        if self.burst:
            return [(loss, b) for b in self.burst for loss in self.loss]
        if self.loss:
            return [(loss, None) for loss in self.loss]
        return [(None, None)]

    def loss_model(self, loss: float | None, burst: float | None):
        """The packet loss model of a point, or for ``mask`` the :class:`IndexMask`."""
        if self.model == "mask":
            return IndexMask(loss, self.pattern or "iid", burst)
        if self.model == "gilbert":
            return make_loss_model("gilbert", loss=loss, burst=burst)
        if self.model == "bernoulli":
            return make_loss_model("bernoulli", loss=loss)
        return make_loss_model(self.model, **self.params)


class Arq(_Strict):
    max_retransmissions: int = Field(3, ge=1, le=100, description="Times a packet may be sent again.")
    return_delay_s: float | None = Field(
        None, ge=0, le=3600, description="One-way delay of the acknowledgements (s); null = delay_s."
    )
    return_loss: float = Field(0.0, ge=0, lt=1, description="Probability that an acknowledgement is lost.")
    timeout_s: float | None = Field(
        None,
        gt=0,
        le=3600,
        description="Wait for an acknowledgement before sending again (s); null = the longest round trip.",
    )


class Link(_Strict):
    rate_bps: float | None = Field(None, gt=0, description="Link bit rate (bits/s); null = infinite.")
    delay_s: float = Field(0.0, ge=0, le=3600, description="One-way propagation delay (s).")
    jitter_s: float = Field(0.0, ge=0, le=3600, description="Uniform ± jitter on the delay (s), at most delay_s.")
    queue_limit: int | None = Field(
        None, ge=0, description="Packets that may wait for the transmitter; null = unlimited."
    )
    deadline_s: float | None = Field(
        None, gt=0, description="Packets arriving later than this after the first send count as lost."
    )
    send_interval_s: float | None = Field(
        None, gt=0, description="Sender pacing between packets (s); null = back-to-back."
    )
    arq: Arq | None = Field(
        None,
        description="Selective-repeat retransmission over a return channel "
        "(vqnet/channel/link.py); retransmitted bytes count. null = send once.",
    )

    @model_validator(mode="after")
    def _jitter(self) -> "Link":
        if self.jitter_s > self.delay_s:
            raise ValueError("jitter_s must not exceed delay_s")
        self.config(self.arq)
        return self

    def config(self, arq: Arq | None) -> LinkConfig:
        """The simulator's link with ``arq`` (a scheme's, or this link's own); a deadline that ARQ
        cannot meet is refused."""
        link = LinkConfig(**self.model_dump() | {"arq": None if arq is None else arq.model_dump()})
        if arq is not None and self.deadline_s is not None and self.deadline_s < link.round_trip_s:
            raise ValueError(
                f"deadline_s={self.deadline_s:g} is shorter than one round trip "
                f"({link.round_trip_s:g} s), so ARQ could repair nothing in time"
            )
        return link


class Scheme(_Strict):
    """One way of spending the bytes: a codebook size and its protection, compared with others on the
    same channel (scenarios/protection.yaml)."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.+=,() -]{1,40}$", description="Label in the tables and plots.")
    K: int = Field(..., ge=2, le=65535, description="Codebook size (must exist in the model).")
    fec: Fec | None = Field(None, description="Reed-Solomon parity, as packets.fec; null = none.")
    arq: Arq | None = Field(None, description="Retransmission, as link.arq; null = send once.")
    methods: list[str] | None = Field(
        None,
        min_length=1,
        description="Concealment methods of this scheme, from the "
        "scenario's methods (a K may lack a method's model); null = all of them. A "
        "scheme without compare_to's method has no paired differences in summary.csv.",
    )


class AdaptiveTrials(_Strict):
    """Trials until the answer is clear (as Sionna's sim_ber runs an SNR point until it has seen
    enough errors): a point gets trial t while t < min, or while t < max and some concealment method's
    paired difference to the reference (``none`` aside) still has a 95 % interval wider than
    +-precision over trials 0..t-1."""

    min: int = Field(2, ge=2, le=1000, description="Trials every point gets (at least 2: an interval needs them).")
    max: int = Field(20, ge=2, le=1000, description="Trials a point never exceeds.")
    precision: float = Field(
        0.005,
        gt=0,
        le=1,
        description="Target half-width of every concealment method's 95 % "
        "paired-difference interval (LPIPS) against compare_to (none, the no-concealment floor, "
        "aside).",
    )

    @model_validator(mode="after")
    def _bounds(self) -> "AdaptiveTrials":
        if self.max < self.min:
            raise ValueError(f"max ({self.max}) is below min ({self.min})")
        return self


# A number, or the adaptive bounds; the discriminator picks the branch so an error names only it.
Trials = Annotated[
    Annotated[Annotated[int, Field(ge=1, le=1000, strict=True)], Tag("count")]
    | Annotated[AdaptiveTrials, Tag("adaptive")],
    Discriminator(lambda v: "adaptive" if isinstance(v, dict | AdaptiveTrials) else "count"),
]
_UNION_TAGS = {"count", "adaptive"}


class Examples(_Strict):
    image: str | None = Field(None, description="Image shown in examples.png (default: the first).")
    losses: list[float] = Field(
        default_factory=lambda: [0.1, 0.3, 0.5, 0.7], description="Target losses shown as columns."
    )


class Scenario(_Strict):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Names the output folder results/<name>/.")
    description: str = Field("", max_length=2000, description="Free text, copied nowhere.")
    seed: int = Field(
        0, ge=0, le=2**32 - 1, description="Root seed; each trial's seed derives from it and the trial's key."
    )
    images: Images = Field(default_factory=Images, description="Which images to send.")
    model: str | None = Field(None, description="Codec bundle (.safetensors); null = the bundled default model.")
    precision: Literal["float32", "bf16"] = Field(
        "float32",
        description="The decoder's arithmetic; bf16 only where it is fast (a CPU with AMX or AVX512-BF16, "
        "or a GPU), see docs/performance.md. `vqnet run --precision` overrides it.",
    )
    K: list[int] = Field(
        default_factory=lambda: [256], min_length=1, description="Codebook sizes to sweep (must exist in the model)."
    )
    packets: Packets = Field(default_factory=Packets, description="Packetisation.")
    channel: Channel = Field(
        default_factory=lambda: Channel(loss=[0.3], burst=[4.0]), description="Loss process and swept points."
    )
    link: Link = Field(default_factory=Link, description="simpy link: rate, delay, queue, deadline.")
    methods: list[str] = Field(
        default_factory=lambda: ["none", "neighbor"], min_length=1, description="Concealment methods."
    )
    trials: Trials = Field(
        3,
        description="Independent channel realisations per "
        "point and image: a number, or {min, max, precision} to add trials until "
        "the paired differences are resolved.",
    )
    compare_to: str | None = Field(
        None,
        description="Reference method of the paired differences in summary.csv "
        "(default: neighbor when swept, else the first method).",
    )
    examples: Examples = Field(default_factory=Examples, description="The example-reconstruction grid.")
    schemes: list[Scheme] = Field(
        default_factory=list,
        description="Protection schemes to compare on the same "
        "channel, each its own K, parity and retransmission (instead of K, packets.fec "
        "and link.arq); empty = one scheme per K with packets.fec and link.arq.",
    )

    @field_validator("name")
    @classmethod
    def _stays_inside_out(cls, v: str) -> str:
        if not v.strip("."):  # "." and ".." are the output root and its parent, not a folder in it
            raise ValueError(f"name {v!r} is not a folder name; use letters, digits, '_', '-' or '.'")
        return v

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, v: list[str]) -> list[str]:
        for m in v:
            if m not in METHODS:
                raise ValueError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
        if len(set(v)) != len(v):
            raise ValueError("methods are listed twice")
        return v

    @model_validator(mode="after")
    def _reference_is_swept(self) -> "Scenario":
        if self.compare_to is not None and self.compare_to not in self.methods:
            raise ValueError(f"compare_to {self.compare_to!r} is not one of the methods ({', '.join(self.methods)})")
        return self

    @model_validator(mode="after")
    def _schemes_fit(self) -> "Scenario":
        protected = (
            self.packets.fec is not None
            or self.link.arq is not None
            or any(s.fec is not None or s.arq is not None for s in self.schemes)
        )
        if protected and self.channel.model == "mask":
            raise ValueError(
                "the mask channel loses indices, not packets: packets.fec, link.arq and schemes' "
                "fec/arq do not apply to it"
            )
        if not self.schemes:
            return self
        given = [
            name
            for name, is_set in (
                ("K", "K" in self.model_fields_set),
                ("packets.fec", self.packets.fec),
                ("link.arq", self.link.arq),
            )
            if is_set
        ]
        if given:
            raise ValueError(f"with schemes, give {', '.join(given)} in each scheme instead")
        names = [s.name for s in self.schemes]
        if len(set(names)) != len(names):
            raise ValueError("two schemes have the same name")
        for s in self.schemes:
            unknown = [m for m in s.methods or [] if m not in self.methods]
            if unknown:
                raise ValueError(
                    f"scheme {s.name!r}: methods {', '.join(unknown)} are not among the scenario's methods"
                )
            self.link.config(s.arq)
        return self

    def protection_schemes(self) -> list[Scheme]:
        """The schemes to run: the scenario's, or one per K with packets.fec and link.arq."""
        return self.schemes or [Scheme(name=f"K={K}", K=K, fec=self.packets.fec, arq=self.link.arq) for K in self.K]

    @property
    def protected(self) -> bool:
        """Whether the sweep compares schemes or protects its packets (FEC, ARQ): then its tables carry the
        scheme and protection columns (:data:`vqnet.sweep.PROTECTED_COLUMNS`)."""
        return bool(self.schemes) or self.packets.fec is not None or self.link.arq is not None

    def scheme_methods(self, scheme: Scheme) -> list[str]:
        """A scheme's concealment methods, in the scenario's order."""
        return [m for m in self.methods if scheme.methods is None or m in scheme.methods]

    @property
    def reference(self) -> str:
        """The method every other is compared with, pair by pair."""
        return self.compare_to or ("neighbor" if "neighbor" in self.methods else self.methods[0])

    @property
    def max_trials(self) -> int:
        return self.trials if isinstance(self.trials, int) else self.trials.max

    @field_validator("K")
    @classmethod
    def _k_range(cls, v: list[int]) -> list[int]:
        for k in v:
            if not 2 <= k <= 65535:
                raise ValueError(f"K={k} is outside [2, 65535]")
        return v


def _format_error(source: str, exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"] if p not in _UNION_TAGS) or "(top level)"
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


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader, except that a key given twice in one mapping is an error:
    safe_load keeps the last one silently, so a scenario could run with a value its author
    overrode by accident."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ScenarioError(f"scenario file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"cannot read scenario {path}: {exc}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ScenarioError(f"{path}: invalid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    return parse_scenario(data, str(path))
