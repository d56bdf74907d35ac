"""simpy link: timing, tail drop, deadline, jitter, and where channel loss lands."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from vqnet.channel.link import LinkConfig, transmit
from vqnet.channel.loss import Bernoulli, GilbertElliott

NO_LOSS = Bernoulli(0.0)


@dataclass(frozen=True)
class FixedLoss:
    """Loss model stub: the k-th packet on the wire gets pattern[k]."""

    pattern: tuple[bool, ...]
    name = "fixed"
    expected_loss = math.nan
    expected_mean_burst = math.nan

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.array(self.pattern[:n], dtype=bool)

    def netem(self) -> str:
        return "# fixed"


def send(sizes, link: LinkConfig, loss=NO_LOSS, seed: int = 0):
    return transmit(sizes, loss, link, np.random.default_rng(seed))


def assert_one_fate_per_packet(result) -> None:
    fates = result.delivered.astype(int) + result.channel_lost + result.queue_dropped + result.late
    assert (fates == 1).all()


def test_infinite_rate_without_loss_delivers_everything_after_the_delay() -> None:
    result = send([100, 2000, 7], LinkConfig(delay_s=0.03))
    assert result.delivered.all()
    np.testing.assert_allclose(result.arrival_s, 0.03)
    assert not result.reordered.any()
    assert result.n_sent == 3 and result.n_delivered == 3
    assert result.packet_loss_ratio == 0.0
    assert result.completion_s == pytest.approx(0.03)
    assert result.bytes_sent == 2107
    assert result.burst_lengths.size == 0 and math.isnan(result.mean_burst)


def test_finite_rate_back_to_back_serialises_in_order() -> None:
    size, rate, delay = 1000, 1e6, 0.01
    result = send([size] * 6, LinkConfig(rate_bps=rate, delay_s=delay))
    expected = (np.arange(6) + 1) * size * 8 / rate + delay
    np.testing.assert_allclose(result.arrival_s, expected)
    assert result.completion_s == pytest.approx(expected[-1])


def test_mixed_sizes_queue_behind_each_other() -> None:
    sizes = np.array([1500, 40, 800, 1200])
    result = send(sizes, LinkConfig(rate_bps=8e5, delay_s=0.002))
    np.testing.assert_allclose(result.arrival_s, np.cumsum(sizes) * 8 / 8e5 + 0.002)


def test_paced_sender_below_line_rate_never_queues() -> None:
    size, rate, interval = 500, 1e6, 0.01  # 4 ms serialisation every 10 ms
    result = send([size] * 5, LinkConfig(rate_bps=rate, delay_s=0.001, send_interval_s=interval))
    np.testing.assert_allclose(result.arrival_s, np.arange(5) * interval + 0.004 + 0.001)


def test_queue_limit_drops_the_tail_of_a_burst() -> None:
    result = send([1000] * 10, LinkConfig(rate_bps=1e6, delay_s=0.01, queue_limit=3))
    # One packet in service plus three waiting are accepted, the rest dropped.
    assert result.queue_dropped.tolist() == [False] * 4 + [True] * 6
    assert result.delivered.tolist() == [True] * 4 + [False] * 6
    np.testing.assert_allclose(result.arrival_s[:4], (np.arange(4) + 1) * 0.008 + 0.01)
    assert np.isnan(result.arrival_s[4:]).all()
    assert result.burst_lengths.tolist() == [6]
    assert result.bytes_sent == 10_000  # dropped packets were still offered
    assert_one_fate_per_packet(result)


def test_bufferless_link_keeps_only_the_first_of_a_burst() -> None:
    result = send([1000] * 4, LinkConfig(rate_bps=1e6, queue_limit=0))
    assert result.delivered.tolist() == [True, False, False, False]


@pytest.mark.parametrize("rate, size", [(3e6, 1234), (1.1e6, 333), (2.9e6, 1500)])
def test_pacing_at_exactly_line_rate_fits_a_bufferless_link(rate: float, size: int) -> None:
    # A departure and an arrival at the same instant must not cause a drop,
    # even when i*interval and the sum of serialisation times differ by
    # float rounding (they do for these rates).
    link = LinkConfig(rate_bps=rate, queue_limit=0, send_interval_s=size * 8 / rate)
    result = send([size] * 200, link)
    assert not result.queue_dropped.any()


def test_channel_loss_indexes_packets_on_the_wire_not_packets_offered() -> None:
    # Bufferless link offered packets twice as fast as it serialises: every
    # odd packet is tail-dropped, so the wire carries 0, 2, 4, 6, 8 and the
    # loss pattern (k-th transmitted packet) must land on those.
    link = LinkConfig(rate_bps=1e6, queue_limit=0, send_interval_s=0.004)
    loss = FixedLoss((False, True, False, True, True) + (False,) * 5)
    result = send([1000] * 10, link, loss=loss)
    assert result.queue_dropped.tolist() == [False, True] * 5
    assert np.flatnonzero(result.channel_lost).tolist() == [2, 6, 8]
    assert np.flatnonzero(result.delivered).tolist() == [0, 4]
    assert_one_fate_per_packet(result)


def test_loss_mask_is_sampled_first_from_the_generator() -> None:
    model = GilbertElliott.simple(0.3, 3)
    result = send([200] * 500, LinkConfig(delay_s=0.01, jitter_s=0.005), loss=model, seed=4)
    expected = model.sample(500, np.random.default_rng(4))
    np.testing.assert_array_equal(result.channel_lost, expected)
    np.testing.assert_array_equal(result.delivered, ~expected)
    assert result.packet_loss_ratio == pytest.approx(expected.mean())


def test_deadline_turns_late_packets_into_losses() -> None:
    link = LinkConfig(rate_bps=1e6, delay_s=0.01, deadline_s=0.035)
    result = send([1000] * 6, link)  # arrivals at 18, 26, 34, 42, 50, 58 ms
    assert result.delivered.tolist() == [True] * 3 + [False] * 3
    assert result.late.tolist() == [False] * 3 + [True] * 3
    assert np.isnan(result.arrival_s[3:]).all()
    assert result.completion_s == pytest.approx(0.034)
    assert result.packet_loss_ratio == pytest.approx(0.5)
    assert_one_fate_per_packet(result)


def test_jitter_reorders_but_delivers_everything() -> None:
    link = LinkConfig(delay_s=0.05, jitter_s=0.04)
    result = send([500] * 50, link, seed=2)
    assert result.delivered.all()
    assert result.reordered.any()
    assert ((result.arrival_s >= 0.01) & (result.arrival_s <= 0.09)).all()
    # Reordered = arrived after some higher-numbered packet.
    order = np.argsort(result.arrival_s, kind="stable")
    later_than_a_successor = [bool((order[:k] > order[k]).any()) for k in range(order.size)]
    assert result.reordered[order].tolist() == later_than_a_successor


def test_same_seed_same_result_different_seed_different() -> None:
    link = LinkConfig(rate_bps=2e6, delay_s=0.02, jitter_s=0.01, queue_limit=5, send_interval_s=0.001)
    a = send([700] * 200, link, loss=Bernoulli(0.2), seed=9)
    b = send([700] * 200, link, loss=Bernoulli(0.2), seed=9)
    c = send([700] * 200, link, loss=Bernoulli(0.2), seed=10)
    np.testing.assert_array_equal(a.delivered, b.delivered)
    np.testing.assert_array_equal(a.arrival_s, b.arrival_s)
    assert not np.array_equal(a.delivered, c.delivered)
    assert_one_fate_per_packet(a)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rate_bps": 0.0}, "rate_bps"),
        ({"delay_s": -1.0}, "delay_s"),
        ({"delay_s": 0.01, "jitter_s": 0.02}, "jitter_s"),
        ({"queue_limit": -1}, "queue_limit"),
        ({"deadline_s": math.nan}, "deadline_s"),
        ({"send_interval_s": -0.1}, "send_interval_s"),
    ],
)
def test_invalid_link_config(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LinkConfig(**kwargs)


@pytest.mark.parametrize("sizes", [[], [100, -1], [1.5, 2.0]])
def test_invalid_packet_sizes(sizes: list) -> None:
    with pytest.raises(ValueError, match="packet"):
        send(sizes, LinkConfig())
