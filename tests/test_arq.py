"""Selective-repeat ARQ on the simpy link: repairs, limits, the deadline, acknowledgements, bytes."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from vqnet.channel.link import ArqConfig, LinkConfig, transmit
from vqnet.channel.loss import Bernoulli, GilbertElliott
from vqnet.scenario import ScenarioError, parse_scenario


@dataclass(frozen=True)
class WireLoss:
    """The k-th transmission on the wire is lost when k is in ``lost`` (first sends, then copies)."""

    lost: frozenset[int]
    name = "fixed"
    expected_loss = math.nan
    expected_mean_burst = math.nan

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.isin(np.arange(n), list(self.lost))

    def netem(self) -> str:
        return "# fixed"


def send(sizes, link: LinkConfig, loss=Bernoulli(0.0), seed: int = 0):
    return transmit(sizes, loss, link, np.random.default_rng(seed))


def one_fate_each(result) -> bool:
    return bool(((result.delivered.astype(int) + result.channel_lost + result.queue_dropped + result.late) == 1).all())


def test_zero_loss_means_zero_retransmissions() -> None:
    sizes = [40, 36, 52] * 20
    link = LinkConfig(rate_bps=64_000, delay_s=0.05, jitter_s=0.01, arq=ArqConfig(max_retransmissions=3))
    result = send(sizes, link)
    plain = send(sizes, LinkConfig(rate_bps=64_000, delay_s=0.05, jitter_s=0.01))
    assert result.delivered.all() and result.retransmissions == 0
    assert result.bytes_on_wire == result.bytes_sent == plain.bytes_sent == sum(sizes)
    assert result.bytes_retransmitted == 0


def test_a_lost_packet_is_sent_again_after_the_timeout_and_arrives() -> None:
    delay, back = 0.1, 0.02
    link = LinkConfig(delay_s=delay, arq=ArqConfig(return_delay_s=back))
    result = send([30, 40, 50], link, WireLoss(frozenset({1})))
    assert result.delivered.all() and result.retransmissions == 1 and result.bytes_retransmitted == 40
    assert result.bytes_on_wire == 120 + 40
    # infinite rate: sent at 0, timer runs out at one round trip, the copy takes one more delay
    assert result.arrival_s[1] == pytest.approx(delay + back + delay)
    assert result.arrival_s[0] == pytest.approx(delay)


def test_copies_take_the_next_slots_of_the_loss_process_up_to_the_limit() -> None:
    link = LinkConfig(delay_s=0.01, arq=ArqConfig(max_retransmissions=2))
    result = send([20, 20], link, WireLoss(frozenset({0, 2, 3})))  # packet 0, then its copy, then again
    assert result.retransmissions == 2 and result.bytes_retransmitted == 40
    assert result.channel_lost[0] and result.delivered[1] and one_fate_each(result)
    everything_lost = send([20, 20], link, Bernoulli(0.999999))
    assert everything_lost.retransmissions == 4 and not everything_lost.delivered.any()


def test_a_deadline_shorter_than_a_round_trip_means_no_repair() -> None:
    link = LinkConfig(delay_s=0.1, deadline_s=0.15, arq=ArqConfig())
    result = send([30] * 5, link, WireLoss(frozenset({1, 3})))
    assert result.retransmissions == 0 and result.bytes_on_wire == result.bytes_sent
    assert result.channel_lost.tolist() == [False, True, False, True, False]


def test_a_copy_that_cannot_make_the_deadline_is_not_sent() -> None:
    # 8 kbit/s: packet i leaves the transmitter at (i + 1) * 30 ms; its timer runs out a round trip
    # (0.1 s) later, and a copy takes 30 ms to serialise and 50 ms to arrive.
    link = LinkConfig(rate_bps=8000, delay_s=0.05, deadline_s=0.29, arq=ArqConfig())
    result = send([30] * 4, link, WireLoss(frozenset({0, 3})))
    assert result.delivered[0]  # 0.03 + 0.1 + 0.03 + 0.05 = 0.21 s
    assert result.channel_lost[3]  # 0.12 + 0.1 + 0.03 + 0.05 = 0.30 s: too late, so never sent
    assert result.retransmissions == 1 and result.bytes_retransmitted == 30


@pytest.mark.parametrize("seed", range(12))
def test_a_repair_that_arrives_after_the_deadline_is_late(seed) -> None:
    # As above with +-20 ms of jitter: packet 3's timer runs out at 0.12 + 0.05 + 0.02 + 0.05 s, its
    # copy leaves at 0.27 s and could arrive by 0.30 s, so it is sent; whether it makes 0.31 s
    # depends on its jitter, the 6th draw (first sends 0..3, then copies in order: packet 0's, 3's).
    link = LinkConfig(rate_bps=8000, delay_s=0.05, jitter_s=0.02, deadline_s=0.31, arq=ArqConfig())
    result = send([30] * 4, link, WireLoss(frozenset({0, 3})), seed=seed)
    jitter = np.random.default_rng(seed).uniform(-0.02, 0.02, 16)
    assert result.retransmissions == 2 and result.delivered[0]
    assert result.late[3] == (0.27 + 0.05 + jitter[5] > 0.31) and one_fate_each(result)


def test_a_lost_acknowledgement_costs_a_needless_copy_but_loses_nothing() -> None:
    link = LinkConfig(delay_s=0.01, arq=ArqConfig(max_retransmissions=1, return_loss=0.5))
    result = send([25] * 40, link, seed=3)
    assert result.delivered.all() and 0 < result.retransmissions < 40
    assert result.bytes_retransmitted == 25 * result.retransmissions


def test_without_arq_the_link_draws_what_it_always_drew() -> None:
    loss = GilbertElliott.simple(0.3, 4)
    link = LinkConfig(delay_s=0.02, jitter_s=0.01)
    result = send([30] * 200, link, loss, seed=9)
    rng = np.random.default_rng(9)
    mask = loss.sample(200, rng)
    jitter = rng.uniform(-0.01, 0.01, 200)
    assert (result.channel_lost == mask).all()
    np.testing.assert_allclose(result.arrival_s[~mask], 0.02 + jitter[~mask])
    assert result.retransmissions == 0


def test_arq_is_deterministic_given_the_seed() -> None:
    link = LinkConfig(rate_bps=20_000, delay_s=0.02, jitter_s=0.005, deadline_s=2.0, arq=ArqConfig(return_loss=0.1))
    a, b = (send([30] * 100, link, GilbertElliott.simple(0.3, 4), seed=5) for _ in range(2))
    assert a.retransmissions == b.retransmissions > 0
    assert (a.delivered == b.delivered).all() and np.array_equal(a.arrival_s, b.arrival_s, equal_nan=True)


def test_a_scenario_link_block_becomes_the_config() -> None:
    sc = parse_scenario({"name": "x", "link": {"delay_s": 0.05, "deadline_s": 1, "arq": {"return_delay_s": 0.01}}})
    link = LinkConfig(**sc.link.model_dump())
    assert link.arq == ArqConfig(return_delay_s=0.01) and link.round_trip_s == pytest.approx(0.06)


@pytest.mark.parametrize(
    "link, needle",
    [
        ({"delay_s": 0.1, "deadline_s": 0.15, "arq": {}}, "shorter than one round trip"),
        ({"arq": {"max_retransmissions": 0}}, "greater than or equal to 1"),
        ({"arq": {"return_loss": 1}}, "less than 1"),
    ],
)
def test_bad_arq_settings_are_one_line_scenario_errors(link, needle) -> None:
    with pytest.raises(ScenarioError, match=needle) as exc:
        parse_scenario({"name": "x", "link": link})
    assert "\n" not in str(exc.value)
