"""Discrete-event model of one lossy, rate-limited link (simpy).

Pipeline for every packet, in simulated seconds from t = 0, the instant the
sender offers the first packet::

    source (pacing) -> tail-drop FIFO -> serialisation at rate_bps
        -> channel loss (loss model) -> propagation (delay +- jitter) -> sink

* The **source** offers packet ``i`` at ``i * send_interval_s`` (an absolute
  schedule, so rounding cannot accumulate), or all at t = 0 when
  ``send_interval_s`` is None, which overflows a small queue, as a burst of
  back-to-back packets does on a real interface.
* The **FIFO** holds at most ``queue_limit`` packets waiting behind the one
  being serialised; an arrival that finds it full is dropped (tail drop).
* **Serialisation** takes ``8 * size / rate_bps`` seconds (0 when the rate is
  infinite, in which case nothing ever waits and nothing is tail-dropped).
* The **loss model** decides, per packet that finished serialisation, whether
  the channel destroys it.  Its mask is sampled up front and indexed by
  transmission order, so tail drops do not advance the channel state: the
  channel only sees packets that were actually on the wire.
* **Propagation** adds ``delay_s`` plus jitter drawn uniformly from
  ``[-jitter_s, +jitter_s]`` independently per packet.  Uniform because it is
  bounded (no truncation needed to keep delays non-negative) and its only
  parameter reads directly as "up to +-x ms"; independent jitter can reorder
  packets, which is recorded in :attr:`TransmissionResult.reordered`.
* The **sink** records arrival times; with a deadline, packets arriving after
  ``deadline_s`` count as lost ("late"), as for a decoder that must show the
  image by then.

Random numbers are drawn in a fixed order (loss mask for all packets, then
jitter for all packets), never inside event callbacks, so a result depends
only on the inputs and the generator's state.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Generator, Sequence
from dataclasses import dataclass

import numpy as np
import simpy

from vqnet.channel.loss import LossModel, burst_lengths

__all__ = ["LinkConfig", "TransmissionResult", "transmit"]

#: Events this close (seconds) count as simultaneous when deciding tail drop.
#: A sender paced at exactly line rate offers packet i at ``i * interval``
#: while the link frees at a running sum of serialisation times; the two
#: differ by float rounding (~1e-16 s), and without this slack that noise
#: decided whether a packet was dropped.  1 ps is far below the
#: serialisation time of one byte at any realistic rate.
_SIMULTANEOUS_S = 1e-12


@dataclass(frozen=True)
class LinkConfig:
    """Link parameters.  Times in seconds, rate in bits per second.

    ``rate_bps``: serialisation rate, None = infinite (no queueing).
    ``delay_s``: one-way propagation delay.
    ``jitter_s``: half-width of the uniform jitter added to ``delay_s``; at
    most ``delay_s`` so that no packet arrives before it was sent.
    ``queue_limit``: packets that may wait behind the one being serialised
    (0 = no buffer); None = unbounded.
    ``deadline_s``: packets arriving later than this after the first packet
    was offered are counted as lost ("late"); None = no deadline.
    ``send_interval_s``: sender pacing; None = all packets offered at t = 0.
    """

    rate_bps: float | None = None
    delay_s: float = 0.0
    jitter_s: float = 0.0
    queue_limit: int | None = None
    deadline_s: float | None = None
    send_interval_s: float | None = None

    def __post_init__(self) -> None:
        if self.rate_bps is not None and not 0.0 < self.rate_bps < math.inf:
            raise ValueError(f"rate_bps must be > 0 and finite (or None), got {self.rate_bps!r}")
        if not 0.0 <= self.delay_s < math.inf:
            raise ValueError(f"delay_s must be >= 0, got {self.delay_s!r}")
        if not 0.0 <= self.jitter_s <= self.delay_s:
            raise ValueError(
                f"jitter_s must be in [0, delay_s={self.delay_s:g}] so that delays stay "
                f"non-negative, got {self.jitter_s!r}"
            )
        if self.queue_limit is not None and self.queue_limit < 0:
            raise ValueError(f"queue_limit must be >= 0 (or None), got {self.queue_limit!r}")
        if self.deadline_s is not None and not self.deadline_s >= 0.0:
            raise ValueError(f"deadline_s must be >= 0 (or None), got {self.deadline_s!r}")
        if self.send_interval_s is not None and not 0.0 <= self.send_interval_s < math.inf:
            raise ValueError(
                f"send_interval_s must be >= 0 (or None), got {self.send_interval_s!r}"
            )


@dataclass(frozen=True, eq=False)
class TransmissionResult:
    """Fate of every packet, indexed in the sender's original order.

    Exactly one of ``delivered``, ``channel_lost``, ``queue_dropped`` and
    ``late`` is True for each packet.  ``arrival_s`` is the sink arrival
    time of delivered packets and ``nan`` for all others (late ones too).
    ``reordered`` marks packets that reached the sink (late or not) after a
    packet with a higher index (RFC 4737's definition).  ``completion_s`` is
    the arrival time of the last delivered packet (``nan`` if none).
    ``bytes_sent`` is the sum of the sizes of all packets the sender offered
    to the link, tail-dropped ones included: what the sender spent, not
    what the wire carried; sizes are whatever the caller passed (no headers
    are added).
    """

    delivered: np.ndarray
    arrival_s: np.ndarray
    channel_lost: np.ndarray
    queue_dropped: np.ndarray
    late: np.ndarray
    reordered: np.ndarray
    completion_s: float
    bytes_sent: int

    @property
    def n_sent(self) -> int:
        """Packets offered by the sender (all of them)."""
        return int(self.delivered.size)

    @property
    def n_delivered(self) -> int:
        return int(np.count_nonzero(self.delivered))

    @property
    def packet_loss_ratio(self) -> float:
        """1 - delivered/sent, counting drops, channel losses and late packets."""
        return 1.0 - self.n_delivered / self.n_sent

    @property
    def burst_lengths(self) -> np.ndarray:
        """Runs of consecutive undelivered packets, in sender order."""
        return burst_lengths(~self.delivered)

    @property
    def mean_burst(self) -> float:
        """Mean of :attr:`burst_lengths`; ``nan`` when every packet arrived."""
        bursts = self.burst_lengths
        return float(bursts.mean()) if bursts.size else math.nan


class _LinkSim:
    """The simpy processes of one :func:`transmit` call.

    Why the FIFO is a deque of scheduled serialisation end times and not a
    ``simpy.Resource``/``Store``: whether an arrival at time t sees a packet
    that finishes at the same t as still queued depends on the order in
    which simpy created the two events.  With packets paced exactly at line
    rate and ``queue_limit=0``, a Resource-based check dropped every second
    packet.  Scheduling each accepted packet's end time on arrival (the
    Lindley recursion of a FIFO server) makes "a departure at t frees its
    slot for an arrival at t" hold by construction; simpy then plays out
    the schedule, propagation and delivery.
    """

    def __init__(
        self,
        env: simpy.Environment,
        sizes: np.ndarray,
        link: LinkConfig,
        wire_loss: np.ndarray,
        propagation_s: np.ndarray,
    ) -> None:
        self.env = env
        self.sizes = sizes
        self.link = link
        self.wire_loss = wire_loss
        self.propagation_s = propagation_s
        n = sizes.size
        self.in_link: deque[float] = deque()  # end times of accepted, unfinished packets
        self.n_accepted = 0
        self.queue_dropped = np.zeros(n, dtype=bool)
        self.channel_lost = np.zeros(n, dtype=bool)
        self.arrival_s = np.full(n, np.nan)
        self.arrival_order: list[int] = []

    def source(self) -> Generator[simpy.Event, None, None]:
        interval = self.link.send_interval_s
        for i in range(self.sizes.size):
            if interval is not None:
                yield self.env.timeout(i * interval - self.env.now)
            self._offer(i)

    def _offer(self, i: int) -> None:
        now = self.env.now
        while self.in_link and self.in_link[0] <= now + _SIMULTANEOUS_S:
            self.in_link.popleft()
        # One packet is being serialised, len - 1 are waiting; accepting this
        # one makes len waiting, which must not exceed queue_limit.
        limit = self.link.queue_limit
        if limit is not None and len(self.in_link) > limit:
            self.queue_dropped[i] = True
            return
        rate = self.link.rate_bps
        serialisation_s = 0.0 if rate is None else 8.0 * float(self.sizes[i]) / rate
        start = self.in_link[-1] if self.in_link else now
        end = start + serialisation_s
        self.in_link.append(end)
        self.env.process(self._packet(i, self.n_accepted, end))
        self.n_accepted += 1

    def _packet(self, i: int, wire_index: int, end: float) -> Generator[simpy.Event, None, None]:
        yield self.env.timeout(end - self.env.now)  # serialisation finished
        if self.wire_loss[wire_index]:
            self.channel_lost[i] = True
            return
        yield self.env.timeout(self.propagation_s[i])
        self.arrival_s[i] = self.env.now
        self.arrival_order.append(i)


def transmit(
    packet_sizes: Sequence[int],
    loss: LossModel,
    link: LinkConfig,
    rng: np.random.Generator,
) -> TransmissionResult:
    """Send packets of the given sizes (bytes) over ``link`` and report
    what arrived and when.  Deterministic given ``rng``'s state: it draws
    ``loss.sample(n, rng)`` first, then ``n`` jitter values if
    ``link.jitter_s > 0``.
    """
    sizes = np.asarray(packet_sizes)
    if sizes.ndim != 1 or sizes.size == 0:
        raise ValueError("packet_sizes must be a non-empty 1-D sequence of byte counts")
    if not np.issubdtype(sizes.dtype, np.integer) or (sizes < 0).any():
        raise ValueError("packet sizes must be non-negative integers (bytes)")
    n = sizes.size
    wire_loss = np.asarray(loss.sample(n, rng), dtype=bool)
    if wire_loss.shape != (n,):
        raise ValueError(f"loss model returned a mask of shape {wire_loss.shape}, expected ({n},)")
    jitter = rng.uniform(-link.jitter_s, link.jitter_s, n) if link.jitter_s > 0 else np.zeros(n)
    propagation_s = np.maximum(link.delay_s + jitter, 0.0)  # clip -1e-17 rounding only

    env = simpy.Environment()
    sim = _LinkSim(env, sizes, link, wire_loss, propagation_s)
    env.process(sim.source())
    env.run()

    arrived = ~np.isnan(sim.arrival_s)
    late = np.zeros(n, dtype=bool)
    if link.deadline_s is not None:
        late = arrived & (sim.arrival_s > link.deadline_s)  # on time if exactly at it
    delivered = arrived & ~late
    order = np.asarray(sim.arrival_order, dtype=np.int64)
    reordered = np.zeros(n, dtype=bool)
    if order.size > 1:
        highest_before = np.maximum.accumulate(order)[:-1]
        reordered[order[1:]] = highest_before > order[1:]
    arrival_s = np.where(delivered, sim.arrival_s, np.nan)
    return TransmissionResult(
        delivered=delivered,
        arrival_s=arrival_s,
        channel_lost=sim.channel_lost,
        queue_dropped=sim.queue_dropped,
        late=late,
        reordered=reordered,
        completion_s=float(np.nanmax(arrival_s)) if delivered.any() else math.nan,
        bytes_sent=int(sizes.sum()),
    )
