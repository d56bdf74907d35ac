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
* **ARQ** (optional, :class:`ArqConfig`): selective repeat.  The receiver
  acknowledges every copy that arrives, on a return channel with its own
  delay and loss; the sender keeps a timer per packet, started when the packet
  leaves the transmitter (or is tail-dropped), and offers the packet again to
  the FIFO when the timer runs out unacknowledged, up to
  ``max_retransmissions`` times.  A retransmission takes the next slot of the
  channel's loss process (a burst that took a packet may take its copy too)
  and counts in :attr:`TransmissionResult.bytes_retransmitted`.  A copy
  that could not arrive before the deadline even with the least jitter,
  behind the packets already queued, is not sent.

Random numbers are drawn in a fixed order (loss mask for every possible
transmission, then jitter for each, then the return channel's losses), never
inside event callbacks, so a result depends only on the inputs and the
generator's state.  Without ARQ every packet is sent once, and the draws are
the loss mask and jitter of ``n`` transmissions.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import simpy

from vqnet.channel.loss import LossModel, burst_lengths

__all__ = ["ArqConfig", "LinkConfig", "TransmissionResult", "transmit"]

#: Events this close (seconds) count as simultaneous when deciding tail drop.
#: A sender paced at exactly line rate offers packet i at ``i * interval``
#: while the link frees at a running sum of serialisation times; the two
#: differ by float rounding (~1e-16 s), and without this slack that noise
#: decided whether a packet was dropped.  1 ps is far below the
#: serialisation time of one byte at any realistic rate.
_SIMULTANEOUS_S = 1e-12


@dataclass(frozen=True)
class ArqConfig:
    """Selective-repeat retransmission.  Times in seconds.

    ``max_retransmissions``: copies a packet may be sent again, >= 1.
    ``return_delay_s``: one-way delay of the acknowledgements; None = the
    link's ``delay_s``.
    ``return_loss``: probability that an acknowledgement is lost
    (independently), which makes the sender retransmit a packet that had
    arrived.
    ``timeout_s``: how long after a packet left the transmitter the sender
    waits for its acknowledgement; None = the longest round trip
    (``delay_s + jitter_s + return_delay_s``), so that a link without loss
    never retransmits.
    """

    max_retransmissions: int = 3
    return_delay_s: float | None = None
    return_loss: float = 0.0
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        if self.max_retransmissions < 1:
            raise ValueError(f"max_retransmissions must be >= 1, got {self.max_retransmissions!r}")
        if self.return_delay_s is not None and not 0.0 <= self.return_delay_s < math.inf:
            raise ValueError(f"return_delay_s must be >= 0 (or None), got {self.return_delay_s!r}")
        if not 0.0 <= self.return_loss < 1.0:
            raise ValueError(f"return_loss must be in [0, 1), got {self.return_loss!r}")
        if self.timeout_s is not None and not 0.0 < self.timeout_s < math.inf:
            raise ValueError(f"timeout_s must be > 0 (or None), got {self.timeout_s!r}")


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
    ``arq``: retransmission (an :class:`ArqConfig`, or the mapping of its
    fields a scenario file gives); None = every packet is sent once.
    """

    rate_bps: float | None = None
    delay_s: float = 0.0
    jitter_s: float = 0.0
    queue_limit: int | None = None
    deadline_s: float | None = None
    send_interval_s: float | None = None
    arq: ArqConfig | None = None

    def __post_init__(self) -> None:
        if isinstance(self.arq, Mapping):
            object.__setattr__(self, "arq", ArqConfig(**self.arq))
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
            raise ValueError(f"send_interval_s must be >= 0 (or None), got {self.send_interval_s!r}")

    @property
    def return_delay_s(self) -> float:
        """One-way delay of the acknowledgements (ARQ)."""
        arq = self.arq
        return self.delay_s if arq is None or arq.return_delay_s is None else arq.return_delay_s

    @property
    def round_trip_s(self) -> float:
        """Shortest time from a packet leaving the transmitter to its acknowledgement."""
        return self.delay_s - self.jitter_s + self.return_delay_s


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
    are added).  With ARQ, these are the first sends; ``retransmissions``
    counts the copies sent again and ``bytes_retransmitted`` their bytes
    (counted the same way), so :attr:`bytes_on_wire` is the total.
    """

    delivered: np.ndarray
    arrival_s: np.ndarray
    channel_lost: np.ndarray
    queue_dropped: np.ndarray
    late: np.ndarray
    reordered: np.ndarray
    completion_s: float
    bytes_sent: int
    retransmissions: int = 0
    bytes_retransmitted: int = 0

    @property
    def bytes_on_wire(self) -> int:
        """First sends and retransmissions together."""
        return self.bytes_sent + self.bytes_retransmitted

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

    Per packet it records what happened to any of its copies; :func:`transmit`
    turns that into one fate.
    """

    def __init__(
        self,
        env: simpy.Environment,
        sizes: np.ndarray,
        link: LinkConfig,
        wire_loss: np.ndarray,
        propagation_s: np.ndarray,
        ack_lost: np.ndarray,
    ) -> None:
        self.env = env
        self.sizes = sizes
        self.link = link
        self.wire_loss = wire_loss
        self.propagation_s = propagation_s  # first sends by packet, then retransmissions in order
        self.ack_lost = ack_lost  # acknowledgements in the order they are sent
        n = sizes.size
        self.in_link: deque[float] = deque()  # end times of accepted, unfinished packets
        self.n_accepted = 0
        self.queue_dropped = np.zeros(n, dtype=bool)  # some copy was tail-dropped
        self.channel_lost = np.zeros(n, dtype=bool)  # some copy was lost on the wire
        self.arrival_s = np.full(n, np.nan)  # first copy to arrive
        self.arrival_order: list[int] = []
        self.acked_s = np.full(n, np.inf)  # when the sender learns that a copy arrived
        self.copies = np.zeros(n, dtype=np.int64)  # retransmissions of each packet
        self.n_retransmissions = 0
        self.n_acks = 0

    def source(self) -> Generator[simpy.Event, None, None]:
        interval = self.link.send_interval_s
        for i in range(self.sizes.size):
            if interval is not None:
                yield self.env.timeout(i * interval - self.env.now)
            self._offer(i, i)

    def _offer(self, i: int, tx: int) -> None:
        """Offer packet ``i`` to the FIFO; ``tx`` numbers the transmission (propagation draw)."""
        now = self.env.now
        start = self._free_at()
        # One packet is being serialised, len - 1 are waiting; accepting this
        # one makes len waiting, which must not exceed queue_limit.
        limit = self.link.queue_limit
        if limit is not None and len(self.in_link) > limit:
            self.queue_dropped[i] = True
            self._arm_timer(i, now)
            return
        end = start + self._serialisation_s(i)
        self.in_link.append(end)
        self.env.process(self._packet(i, self.n_accepted, tx, end))
        self.n_accepted += 1

    def _free_at(self) -> float:
        """When the transmitter can start on a packet offered now (forgetting finished ones)."""
        now = self.env.now
        while self.in_link and self.in_link[0] <= now + _SIMULTANEOUS_S:
            self.in_link.popleft()
        return self.in_link[-1] if self.in_link else now

    def _serialisation_s(self, i: int) -> float:
        rate = self.link.rate_bps
        return 0.0 if rate is None else 8.0 * float(self.sizes[i]) / rate

    def _packet(self, i: int, wire_index: int, tx: int, end: float) -> Generator[simpy.Event, None, None]:
        yield self.env.timeout(end - self.env.now)  # serialisation finished
        self._arm_timer(i, end)
        if self.wire_loss[wire_index]:
            self.channel_lost[i] = True
            return
        yield self.env.timeout(self.propagation_s[tx])
        if np.isnan(self.arrival_s[i]):
            self.arrival_s[i] = self.env.now
            self.arrival_order.append(i)
        if self.link.arq is not None:
            if not self.ack_lost[self.n_acks]:
                self.acked_s[i] = min(self.acked_s[i], self.env.now + self.link.return_delay_s)
            self.n_acks += 1

    def _arm_timer(self, i: int, since: float) -> None:
        arq = self.link.arq
        if arq is not None and self.copies[i] < arq.max_retransmissions:
            default = self.link.delay_s + self.link.jitter_s + self.link.return_delay_s
            timeout = default if arq.timeout_s is None else arq.timeout_s
            self.env.process(self._timer(i, since + timeout))

    def _timer(self, i: int, fires: float) -> Generator[simpy.Event, None, None]:
        yield self.env.timeout(fires - self.env.now)
        if self.acked_s[i] <= self.env.now + _SIMULTANEOUS_S:
            return
        deadline = self.link.deadline_s
        earliest = self._free_at() + self._serialisation_s(i) + self.link.delay_s - self.link.jitter_s
        if deadline is not None and earliest > deadline + _SIMULTANEOUS_S:
            return  # behind the packets already queued, a copy would arrive late at best
        self.copies[i] += 1
        self._offer(i, self.sizes.size + self.n_retransmissions)
        self.n_retransmissions += 1


def transmit(
    packet_sizes: Sequence[int],
    loss: LossModel,
    link: LinkConfig,
    rng: np.random.Generator,
) -> TransmissionResult:
    """Send packets of the given sizes (bytes) over ``link`` and report
    what arrived and when.  Deterministic given ``rng``'s state: it draws
    ``loss.sample(m, rng)`` first, then ``m`` jitter values if
    ``link.jitter_s > 0``, where ``m`` is the most transmissions there can be
    (``n``, or ``n * (1 + max_retransmissions)`` with ARQ), then with ARQ
    ``m`` uniforms for the acknowledgements' losses.
    """
    sizes = np.asarray(packet_sizes)
    if sizes.ndim != 1 or sizes.size == 0:
        raise ValueError("packet_sizes must be a non-empty 1-D sequence of byte counts")
    if not np.issubdtype(sizes.dtype, np.integer) or (sizes < 0).any():
        raise ValueError("packet sizes must be non-negative integers (bytes)")
    n = sizes.size
    m = n if link.arq is None else n * (1 + link.arq.max_retransmissions)
    wire_loss = np.asarray(loss.sample(m, rng), dtype=bool)
    if wire_loss.shape != (m,):
        raise ValueError(f"loss model returned a mask of shape {wire_loss.shape}, expected ({m},)")
    jitter = rng.uniform(-link.jitter_s, link.jitter_s, m) if link.jitter_s > 0 else np.zeros(m)
    propagation_s = np.maximum(link.delay_s + jitter, 0.0)  # clip -1e-17 rounding only
    ack_lost = rng.random(m) < link.arq.return_loss if link.arq is not None else np.zeros(0, dtype=bool)

    env = simpy.Environment()
    sim = _LinkSim(env, sizes, link, wire_loss, propagation_s, ack_lost)
    env.process(sim.source())
    env.run()

    arrived = ~np.isnan(sim.arrival_s)
    late = np.zeros(n, dtype=bool)
    if link.deadline_s is not None:
        late = arrived & (sim.arrival_s > link.deadline_s)  # on time if exactly at it
    delivered = arrived & ~late
    channel_lost = ~arrived & sim.channel_lost
    order = np.asarray(sim.arrival_order, dtype=np.int64)
    reordered = np.zeros(n, dtype=bool)
    if order.size > 1:
        highest_before = np.maximum.accumulate(order)[:-1]
        reordered[order[1:]] = highest_before > order[1:]
    arrival_s = np.where(delivered, sim.arrival_s, np.nan)
    return TransmissionResult(
        delivered=delivered,
        arrival_s=arrival_s,
        channel_lost=channel_lost,
        queue_dropped=~arrived & ~channel_lost,
        late=late,
        reordered=reordered,
        completion_s=float(np.nanmax(arrival_s)) if delivered.any() else math.nan,
        bytes_sent=int(sizes.sum()),
        retransmissions=sim.n_retransmissions,
        bytes_retransmitted=int((sim.copies * sizes).sum()),
    )
