"""Packet loss processes with Linux ``netem`` semantics.

Every model is a small frozen dataclass that can

* draw a loss mask (``True`` = lost) for ``n`` consecutive packets,
* report its theoretical loss rate and mean loss-burst length, and
* print the ``tc qdisc ... netem loss ...`` line that asks a real Linux link
  for the same process, so simulated results can be checked on a testbed.

Why netem semantics: netem is what people use to reproduce lossy links on
real hardware, and its parameter names (``p``, ``r``, ``1-h``, ``1-k``,
``p13`` ...) are what papers quote.  The maths is implemented from the model
definitions rather than by copying the kernel, whose 4-state generator had
probability-gap bugs for years (see the notes on :class:`FourState`).

All Markov models start from their stationary distribution, so a short trace
(one image is only a handful of packets) is unbiased; the kernel instead
always starts in the good state.
"""

from __future__ import annotations

import math
import re
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "LossModel",
    "Bernoulli",
    "GilbertElliott",
    "FourState",
    "TraceLoss",
    "make_loss_model",
    "burst_lengths",
    "gap_lengths",
    "loss_stats",
    "RFC3611_GMIN",
]

#: RFC 3611 section 4.7.2: "A Gmin value of 16 is RECOMMENDED".
RFC3611_GMIN = 16

_TC_PREFIX = "tc qdisc add dev eth0 root netem loss"


@runtime_checkable
class LossModel(Protocol):
    """What the link simulator needs from a loss process."""

    @property
    def name(self) -> str:
        """Short label for tables and logs (``bernoulli``, ``gilbert`` ...)."""
        ...

    @property
    def expected_loss(self) -> float:
        """Long-run fraction of packets lost."""
        ...

    @property
    def expected_mean_burst(self) -> float:
        """Long-run mean length of a run of consecutive losses (packets).

        ``nan`` when the process never loses, ``inf`` when it loses every
        packet from some point on.
        """
        ...

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Loss mask for ``n`` consecutive packets, ``True`` = lost."""
        ...

    def netem(self) -> str:
        """Equivalent ``tc qdisc add ... netem loss ...`` command line."""
        ...


# --------------------------------------------------------------------------
# helpers shared by the models


def _pct(x: float) -> str:
    """Format a probability as a netem percentage.

    Six decimals of a percent (1e-8 absolute) is finer than anything a test
    bed can measure and stays readable; trailing zeros are stripped so round
    values print as ``25%``.
    """
    return f"{x * 100:.6f}".rstrip("0").rstrip(".") + "%"


def _check_prob(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:  # also rejects nan
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")


def _check_n(n: int) -> None:
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")


def _sample_hmm(
    pi: np.ndarray,
    transition: np.ndarray,
    loss_prob: np.ndarray,
    n: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Sample a hidden-Markov loss process.

    The state for packet 0 is drawn from ``pi``; packet ``t`` is lost with
    ``loss_prob[state_t]`` and then the chain moves to ``state_{t+1}``.  All
    uniforms are drawn in two vectorised calls; only the state update is a
    Python loop, using ``bisect`` on the cumulative transition rows (tens of
    ms per 100k packets), which keeps one exact code path for every Markov
    model instead of a vectorised special case per model.
    """
    _check_n(n)
    if n == 0:
        return np.zeros(0, dtype=bool)
    # Dividing by the row total makes the last bin end at exactly 1.0 (and so
    # does every bin equal to it), so rounding can neither push u past the
    # end nor select a state of probability 0.
    cum_rows = [(row / row[-1]).tolist() for row in np.cumsum(transition, axis=1)]
    cum_pi = np.cumsum(pi)
    cum_pi = (cum_pi / cum_pi[-1]).tolist()
    u_state = rng.random(n).tolist()
    state = bisect_right(cum_pi, u_state[0])
    states = [state]
    for u in u_state[1:]:
        state = bisect_right(cum_rows[state], u)
        states.append(state)
    per_packet = loss_prob[np.asarray(states)]
    # u < 1.0 always and u < 0.0 never, so deterministic states stay exact.
    return rng.random(n) < per_packet


def _hmm_mean_burst(pi: np.ndarray, transition: np.ndarray, loss_prob: np.ndarray) -> float:
    """Mean loss-run length of a stationary hidden-Markov loss process.

    Over a long trace the number of bursts equals the number of
    (received, lost) packet pairs, so mean burst = P(lost) / P(received at t,
    lost at t+1).  This holds for any emission probabilities, so it covers
    Gilbert-Elliott with ``h``/``k`` and the 4-state model alike.
    """
    loss = float(pi @ loss_prob)
    starts = float((pi * (1.0 - loss_prob)) @ transition @ loss_prob)
    if loss == 0.0:
        return math.nan
    return loss / starts if starts > 0.0 else math.inf


# --------------------------------------------------------------------------
# models


@dataclass(frozen=True)
class Bernoulli:
    """Independent losses with probability ``p`` (netem ``loss random``)."""

    p: float

    def __post_init__(self) -> None:
        _check_prob("p", self.p)

    @property
    def name(self) -> str:
        return "bernoulli"

    @property
    def expected_loss(self) -> float:
        return float(self.p)

    @property
    def expected_mean_burst(self) -> float:
        # Geometric runs: a loss is followed by another with probability p.
        if self.p == 0.0:
            return math.nan
        return 1.0 / (1.0 - self.p) if self.p < 1.0 else math.inf

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        _check_n(n)
        return rng.random(n) < self.p

    def netem(self) -> str:
        return f"{_TC_PREFIX} random {_pct(self.p)}"


@dataclass(frozen=True)
class GilbertElliott:
    """Two-state Gilbert-Elliott loss (netem ``loss gemodel p r 1-h 1-k``).

    ``p`` = P(GOOD -> BAD), ``r`` = P(BAD -> GOOD), ``loss_bad`` = netem's
    ``1-h`` and ``loss_good`` = netem's ``1-k``.  The defaults
    (``loss_bad=1``, ``loss_good=0``) give the *simple Gilbert* model, where
    the loss pattern is the state sequence itself.

    Order of events, as in the kernel's ``loss_gilb_ell``: for each packet,
    first draw the transition out of the current state (GOOD: to BAD w.p.
    ``p``; BAD: to GOOD w.p. ``r``), then decide the loss with the loss
    probability of the state the packet *started* in (GOOD: ``1-k``, BAD:
    ``1-h``); the new state applies from the next packet.  Because we start
    from the stationary distribution, the other order (move first, then lose
    in the new state) would produce exactly the same distribution of masks;
    the order only matters for the kernel's start-up transient from GOOD,
    which we deliberately avoid.
    """

    p: float
    r: float
    loss_bad: float = 1.0
    loss_good: float = 0.0

    def __post_init__(self) -> None:
        for name in ("p", "r", "loss_bad", "loss_good"):
            _check_prob(name, getattr(self, name))
        if self.p + self.r == 0.0:
            raise ValueError("p and r cannot both be 0: the chain would never mix")

    @classmethod
    def simple(cls, loss: float, burst: float) -> GilbertElliott:
        """Simple Gilbert model with target loss ``L`` and mean burst ``B``.

        Loss runs are geometric with mean ``1/r``, and ``L = p/(p+r)``, so
        ``r = 1/B`` and ``p = L/(B(1-L))``.  ``p <= 1`` requires
        ``B >= L/(1-L)``, and ``r <= 1`` requires ``B >= 1``.  ``B = 1/(1-L)``
        reproduces i.i.d. loss; larger ``B`` is burstier.
        """
        if not 0.0 <= loss < 1.0:
            raise ValueError(f"loss must be in [0, 1), got {loss!r}")
        if not math.isfinite(burst):
            raise ValueError(f"burst must be a finite number of packets, got {burst!r}")
        min_burst = max(1.0, loss / (1.0 - loss))
        # Relative slack so that a burst computed by the caller as L/(1-L)
        # is not rejected for a rounding error; p and r are clipped below.
        if not burst >= min_burst * (1.0 - 1e-12):
            raise ValueError(
                f"mean burst {burst:g} is infeasible for loss {loss:g}: "
                f"need burst >= {min_burst:.4g} packets (max(1, L/(1-L)))"
            )
        return cls(p=min(loss / (burst * (1.0 - loss)), 1.0), r=min(1.0 / burst, 1.0))

    @property
    def is_simple(self) -> bool:
        """True for the simple Gilbert model (all BAD lost, no GOOD lost)."""
        return self.loss_bad == 1.0 and self.loss_good == 0.0

    @property
    def name(self) -> str:
        return "gilbert" if self.is_simple else "gilbert_elliott"

    def _chain(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pi = np.array([self.r, self.p]) / (self.p + self.r)  # [GOOD, BAD]
        transition = np.array([[1.0 - self.p, self.p], [self.r, 1.0 - self.r]])
        return pi, transition, np.array([self.loss_good, self.loss_bad])

    @property
    def expected_loss(self) -> float:
        return (self.p * self.loss_bad + self.r * self.loss_good) / (self.p + self.r)

    @property
    def expected_mean_burst(self) -> float:
        return _hmm_mean_burst(*self._chain())

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return _sample_hmm(*self._chain(), n, rng)

    def netem(self) -> str:
        args = [_pct(self.p), _pct(self.r)]
        if not self.is_simple:
            args += [_pct(self.loss_bad), _pct(self.loss_good)]
        return f"{_TC_PREFIX} gemodel {' '.join(args)}"


@dataclass(frozen=True)
class FourState:
    """netem's 4-state Markov loss model (``loss state p13 p31 p32 p23 p14``).

    States: 1 = received in a gap, 2 = received within a burst, 3 = lost in a
    burst, 4 = isolated loss in a gap.  Transitions 1->3 (``p13``), 1->4
    (``p14``), 3->1 (``p31``), 3->2 (``p32``), 2->3 (``p23``) and 4->1 with
    probability 1; the rest of each row stays put.  A packet is lost when its
    state is 3 or 4, so the loss rate is pi3 + pi4.

    Defaults follow iproute2: ``p31 = 1 - p13``, ``p32 = 0``, ``p23 = 1``,
    ``p14 = 0``, which reduces to Bernoulli(``p13``).

    The kernel's ``loss_4state`` compared its random number against the wrong
    sums of these probabilities until a 2026 fix ("fix probability gaps in
    4-state loss model"), so an older kernel given the same ``tc`` line may
    not match this model exactly.
    """

    p13: float
    p31: float | None = None
    p32: float = 0.0
    p23: float = 1.0
    p14: float = 0.0

    def __post_init__(self) -> None:
        _check_prob("p13", self.p13)
        if self.p31 is None:
            object.__setattr__(self, "p31", 1.0 - self.p13)
        for name in ("p31", "p32", "p23", "p14"):
            _check_prob(name, getattr(self, name))
        if self.p13 + self.p14 > 1.0 + 1e-12:
            raise ValueError(f"p13 + p14 must be <= 1, got {self.p13 + self.p14:g}")
        if self.p31 + self.p32 > 1.0 + 1e-12:
            raise ValueError(f"p31 + p32 must be <= 1, got {self.p31 + self.p32:g}")
        if self._weights().sum() == 0.0:
            raise ValueError(
                "these 4-state parameters have no unique stationary distribution "
                "(the chain splits into separate closed classes)"
            )

    @property
    def _p31(self) -> float:
        assert self.p31 is not None  # filled in by __post_init__; narrows the type
        return self.p31

    @property
    def name(self) -> str:
        return "state"

    def _weights(self) -> np.ndarray:
        # Unnormalised stationary weights of states 1..4, from the balance
        # equations pi1 = pi3*p31/p13, pi2 = pi3*p32/p23, pi4 = pi1*p14,
        # multiplied through by p13*p23 so that zero parameters never divide.
        w1 = self._p31 * self.p23
        return np.array([w1, self.p13 * self.p32, self.p13 * self.p23, w1 * self.p14])

    @property
    def stationary(self) -> np.ndarray:
        """Stationary probabilities of states 1, 2, 3, 4."""
        w = self._weights()
        return w / w.sum()

    def _transition(self) -> np.ndarray:
        p13, p31, p32, p23, p14 = self.p13, self._p31, self.p32, self.p23, self.p14
        return np.array(
            [
                [1.0 - p13 - p14, 0.0, p13, p14],
                [0.0, 1.0 - p23, p23, 0.0],
                [p31, p32, 1.0 - p31 - p32, 0.0],
                [1.0, 0.0, 0.0, 0.0],
            ]
        ).clip(0.0, 1.0)  # 1 - p13 - p14 may round to -1e-17

    _LOSS_PROB = np.array([0.0, 0.0, 1.0, 1.0])  # states 3 and 4 lose

    @property
    def expected_loss(self) -> float:
        pi = self.stationary
        return float(pi[2] + pi[3])

    @property
    def expected_mean_burst(self) -> float:
        return _hmm_mean_burst(self.stationary, self._transition(), self._LOSS_PROB)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return _sample_hmm(self.stationary, self._transition(), self._LOSS_PROB, n, rng)

    def netem(self) -> str:
        args = (self.p13, self._p31, self.p32, self.p23, self.p14)
        return f"{_TC_PREFIX} state {' '.join(_pct(a) for a in args)}"


#: Largest trace file read (64 Mi packets as one character each): a bound on memory and time.
MAX_TRACE_BYTES = 64 << 20


@dataclass(frozen=True, eq=False)
class TraceLoss:
    """Replay of a recorded 0/1 loss trace (1 = lost).

    :meth:`sample` starts at an offset drawn from ``rng`` and wraps around,
    so different seeds see different parts of the trace and ``n`` may exceed
    its length.  Equality is identity (``eq=False``) because the mask is an
    array.
    """

    mask: np.ndarray
    source: str | None = None

    def __post_init__(self) -> None:
        arr = np.asarray(self.mask)
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError("loss trace must be a non-empty 1-D sequence of 0/1")
        if arr.dtype != bool:
            if not np.isin(arr, (0, 1)).all():
                raise ValueError("loss trace may only contain 0 (received) and 1 (lost)")
        mask = arr.astype(bool)  # always a copy we own
        mask.setflags(write=False)
        object.__setattr__(self, "mask", mask)

    @classmethod
    def from_file(cls, path: str | PathLike[str]) -> TraceLoss:
        """Read a trace of 0/1 values separated by whitespace, newlines or
        commas; a token may also be a run of 0/1 characters (``0110``).

        An unreadable file raises :class:`ValueError` too, so callers (the
        scenario loader, the CLI) handle every bad trace in one place.
        """
        if not isinstance(path, (str, PathLike)):
            raise ValueError(f"a loss trace path must be a file name, got {path!r}")
        path = Path(path)
        if path.exists() and not path.is_file():  # a device or pipe may never end
            raise ValueError(f"cannot read loss trace {path}: not a regular file")
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_TRACE_BYTES + 1)
            if len(data) > MAX_TRACE_BYTES:
                raise ValueError(f"loss trace {path} is larger than {MAX_TRACE_BYTES >> 20} MiB")
            text = data.decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not a UTF-8 text file"
            raise ValueError(f"cannot read loss trace {path}: {reason}") from exc
        values: list[str] = []
        for lineno, line in enumerate(text.splitlines(), 1):
            for token in re.split(r"[\s,]+", line):
                if token and not re.fullmatch(r"[01]+", token):
                    raise ValueError(f"{path}:{lineno}: expected 0/1 values, got {token[:20]!r}")
                values.extend(token)
        if not values:
            raise ValueError(f"{path}: loss trace contains no 0/1 values")
        return cls(np.array(values) == "1", source=str(path))

    @property
    def name(self) -> str:
        return "trace"

    @property
    def expected_loss(self) -> float:
        return float(self.mask.mean())

    @property
    def expected_mean_burst(self) -> float:
        # Counted circularly, because sample() wraps around the trace.
        starts = int(np.count_nonzero(~np.roll(self.mask, 1) & self.mask))
        losses = int(np.count_nonzero(self.mask))
        if losses == 0:
            return math.nan
        return losses / starts if starts else math.inf

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        _check_n(n)
        offset = int(rng.integers(self.mask.size))
        return self.mask[(offset + np.arange(n)) % self.mask.size]

    def netem(self) -> str:
        return (
            "# trace replay has no netem loss equivalent "
            "(netem loss models are random processes; fit gemodel or state instead)"
        )


# --------------------------------------------------------------------------
# factory used by scenario files and the CLI


def _as_prob_args(kind: str, params: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in params.items():
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"loss model {kind!r}: parameter {key!r} must be a number, got {value!r}") from None
    return out


# kind -> (builder, required params, optional params, numeric?)
_KINDS: dict[str, tuple[Callable[..., LossModel], tuple[str, ...], tuple[str, ...], bool]] = {
    "bernoulli": (lambda loss: Bernoulli(p=loss), ("loss",), (), True),
    "gilbert": (GilbertElliott.simple, ("loss", "burst"), (), True),
    "gilbert_elliott": (GilbertElliott, ("p", "r"), ("loss_bad", "loss_good"), True),
    "state": (FourState, ("p13",), ("p31", "p32", "p23", "p14"), True),
    "trace": (TraceLoss.from_file, ("path",), (), False),
}


def make_loss_model(kind: str, **params: Any) -> LossModel:
    """Build a loss model from a scenario-file style description.

    Kinds and parameters: ``bernoulli`` (loss), ``gilbert`` (loss, burst),
    ``gilbert_elliott`` (p, r[, loss_bad, loss_good]), ``state`` (p13[, p31,
    p32, p23, p14]), ``trace`` (path).  Parameters whose value is ``None`` are
    treated as omitted, so YAML nulls and unset CLI options mean "default".
    Any problem raises :class:`ValueError` with a one-line message.
    """
    if kind not in _KINDS:
        raise ValueError(f"unknown loss model {kind!r}; choose one of {', '.join(_KINDS)}")
    builder, required, optional, numeric = _KINDS[kind]
    given = {k: v for k, v in params.items() if v is not None}
    unexpected = sorted(set(given) - set(required) - set(optional))
    if unexpected:
        raise ValueError(
            f"loss model {kind!r} does not take {', '.join(unexpected)}; it takes {', '.join(required + optional)}"
        )
    missing = [k for k in required if k not in given]
    if missing:
        raise ValueError(f"loss model {kind!r} needs {', '.join(missing)}")
    return builder(**(_as_prob_args(kind, given) if numeric else given))


# --------------------------------------------------------------------------
# statistics of a loss mask


def _runs(mask: np.ndarray, value: bool) -> np.ndarray:
    """Lengths of maximal runs equal to ``value``, in order."""
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 1:
        raise ValueError("mask must be 1-D")
    hit = (m == value).astype(np.int8)
    edges = np.diff(np.concatenate(([0], hit, [0])))
    return np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)


def burst_lengths(mask: np.ndarray) -> np.ndarray:
    """Lengths of runs of consecutive losses (``True``), in order."""
    return _runs(mask, True)


def gap_lengths(mask: np.ndarray) -> np.ndarray:
    """Lengths of runs of consecutive received packets (``False``), in order."""
    return _runs(mask, False)


def _rfc3611_densities(mask: np.ndarray, gmin: int) -> tuple[float, float]:
    """RFC 3611 section 4.7.2 burst and gap density, from the definition.

    Losses are clustered so that consecutive losses in one cluster are
    separated by fewer than ``gmin`` received packets.  A cluster with at
    least two losses is a burst (from its first to its last loss); a lone
    loss stays in the gap.  That reading is what makes the RFC's bound "the
    maximum loss rate within a gap is 1/(Gmin+1)" hold (exactly so between
    runs of >= Gmin receptions; the trace's ends do not bound a cluster, so
    a lone loss near the start of a short trace is still a gap loss and can
    exceed it).  We use the
    definition rather than the RFC's Appendix A.2 counter, which is a Markov
    estimate meant for incremental updates and misclassifies edge cases (the
    first loss of a session always counts as a burst).
    """
    n = mask.size
    lost_at = np.flatnonzero(mask)
    if lost_at.size == 0:
        return math.nan, 0.0
    received_between = np.diff(lost_at) - 1
    new_cluster = np.concatenate(([True], received_between >= gmin))
    cluster_id = np.cumsum(new_cluster) - 1
    first = lost_at[new_cluster]
    last = lost_at[np.concatenate((new_cluster[1:], [True]))]
    losses = np.bincount(cluster_id)
    is_burst = losses >= 2
    burst_packets = int((last - first + 1)[is_burst].sum())
    burst_losses = int(losses[is_burst].sum())
    burst_density = burst_losses / burst_packets if burst_packets else math.nan
    gap_packets = n - burst_packets
    gap_density = (lost_at.size - burst_losses) / gap_packets if gap_packets else math.nan
    return burst_density, gap_density


def loss_stats(mask: np.ndarray, gmin: int = RFC3611_GMIN) -> dict[str, float | int]:
    """Summary of a loss mask (``True`` = lost).

    Keys: ``n_packets``, ``n_lost``, ``loss_rate``, ``n_bursts``,
    ``mean_burst`` and ``max_burst`` (runs of consecutive losses; mean is
    ``nan`` without losses), ``mean_gap`` (runs of receptions), and the RFC
    3611 ``burst_density`` / ``gap_density`` for ``gmin`` (``nan`` when there
    is no burst / no gap period).  Both views are reported because with
    interleaved packetisation the consecutive-run view understates how
    clustered losses are.
    """
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 1 or m.size == 0:
        raise ValueError("mask must be a non-empty 1-D array")
    if gmin < 1:
        raise ValueError(f"gmin must be >= 1, got {gmin}")
    bursts = burst_lengths(m)
    gaps = gap_lengths(m)
    burst_density, gap_density = _rfc3611_densities(m, gmin)
    return {
        "n_packets": int(m.size),
        "n_lost": int(m.sum()),
        "loss_rate": float(m.mean()),
        "n_bursts": int(bursts.size),
        "mean_burst": float(bursts.mean()) if bursts.size else math.nan,
        "max_burst": int(bursts.max()) if bursts.size else 0,
        "mean_gap": float(gaps.mean()) if gaps.size else math.nan,
        "burst_density": burst_density,
        "gap_density": gap_density,
    }
