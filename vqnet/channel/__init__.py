"""Lossy channel: netem-style packet loss models and a simpy link simulator.

Its command, ``vqnet channel``, lives in :mod:`vqnet.cli.channel`, not here, so that
library users do not pay for importing typer.
"""

from vqnet.channel.link import LinkConfig, TransmissionResult, transmit
from vqnet.channel.loss import (
    RFC3611_GMIN,
    Bernoulli,
    FourState,
    GilbertElliott,
    LossModel,
    TraceLoss,
    burst_lengths,
    gap_lengths,
    loss_stats,
    make_loss_model,
)

__all__ = [
    "Bernoulli",
    "FourState",
    "GilbertElliott",
    "LinkConfig",
    "LossModel",
    "RFC3611_GMIN",
    "TraceLoss",
    "TransmissionResult",
    "burst_lengths",
    "gap_lengths",
    "loss_stats",
    "make_loss_model",
    "transmit",
]
