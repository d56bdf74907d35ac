"""The minimum-Bayes-risk code choice shared by the ``ar`` and ``masked`` concealment methods."""

from __future__ import annotations

import numpy as np
import torch

from tests.conftest import tiny_model
from vqnet.codec.bundle import Codebook
from vqnet.restore.decision import bayes_choice, code_distances


def test_code_distances_are_decoder_side_squared_distances() -> None:
    cb = Codebook.from_model(tiny_model())
    d = code_distances(cb)
    assert d.shape == (32, 32) and np.allclose(d, d.T) and np.allclose(np.diag(d), 0, atol=1e-9)
    with torch.no_grad():  # what the decoder's first layer sees for two codes, bias included
        e = (
            torch.nn.functional.conv2d(
                cb.embedding[:, :, None, None], cb.post_quant_conv_weight, cb.post_quant_conv_bias
            )
            .flatten(1)
            .double()
        )
    assert np.isclose(d[3, 17], float(((e[3] - e[17]) ** 2).sum()), rtol=1e-5)


def test_bayes_choice_hedges_between_likely_codes() -> None:
    # codes on a line at 0, 1, 2: two outer codes at 0.4 each beat the middle one's 0.2 on
    # probability, but the middle code is the one expected to land closest
    pos = np.array([0.0, 1.0, 2.0])
    dist = (pos[:, None] - pos[None]) ** 2
    probs = np.array([[0.4, 0.2, 0.4], [0.0, 0.0, 1.0]])
    choice, risk = bayes_choice(probs, dist)
    assert choice.tolist() == [1, 2] and probs[0].argmax() != 1
    assert np.allclose(risk, [0.8, 0.0])
