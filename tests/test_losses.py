"""The taming loss pieces: PatchGAN layout and init, hinge loss, and the adaptive GAN weight."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vqnet.training.losses import NLayerDiscriminator, VQGANLoss, hinge_d_loss, reconstruction_loss

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _upstream_keys(n_layers: int, ndf: int = 64) -> list[tuple[str, list[int]]]:
    """taming's NLayerDiscriminator state_dict, written out: conv(+bias), LeakyReLU, then per layer
    conv(no bias), BatchNorm, LeakyReLU, and a final biased conv to one channel."""
    keys = [("main.0.weight", [ndf, 3, 4, 4]), ("main.0.bias", [ndf])]
    i, prev = 2, ndf
    for n in range(1, n_layers + 1):
        nf = ndf * min(2**n, 8)
        keys.append((f"main.{i}.weight", [nf, prev, 4, 4]))
        keys += [(f"main.{i + 1}.{k}", [] if k == "num_batches_tracked" else [nf]) for k in BN]
        i, prev = i + 3, nf
    return keys + [(f"main.{i}.weight", [1, prev, 4, 4]), (f"main.{i}.bias", [1])]


@pytest.mark.parametrize(("n_layers", "patches"), [(3, 6), (2, 14)])
def test_discriminator_state_dict_matches_upstream(n_layers: int, patches: int) -> None:
    disc = NLayerDiscriminator(n_layers=n_layers)
    assert [(k, list(v.shape)) for k, v in disc.state_dict().items()] == _upstream_keys(n_layers)
    assert disc(torch.zeros(2, 3, 64, 64)).shape == (2, 1, patches, patches)  # one logit per patch


def test_vqgan_loss_initialises_the_discriminator_like_upstream() -> None:
    torch.manual_seed(0)
    sd = VQGANLoss().discriminator.state_dict()
    assert abs(sd["main.8.weight"].std().item() - 0.02) < 1e-3  # N(0, 0.02) convs
    assert abs(sd["main.9.weight"].mean().item() - 1.0) < 5e-3  # N(1, 0.02) BatchNorm scales
    assert torch.equal(sd["main.9.bias"], torch.zeros(512))


def test_hinge_loss() -> None:
    zeros = torch.zeros(2, 1, 4, 4)
    assert hinge_d_loss(zeros, zeros).item() == 1.0
    assert hinge_d_loss(zeros + 2.0, zeros - 3.0).item() == 0.0  # confident and right: no loss
    assert hinge_d_loss(zeros + 0.5, zeros + 0.5).item() == pytest.approx(0.5 * (0.5 + 1.5))


class _Toy(nn.Module):
    """A two-layer 'decoder' whose last conv plays decoder.conv_out."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(4, 8, 3, padding=1)
        self.last = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.last(F.silu(self.first(z))))


def _setup(disc_start: int):
    torch.manual_seed(0)
    toy, loss_fn = _Toy(), VQGANLoss(disc_start=disc_start, disc_layers=2, disc_ndf=8)
    z, x = torch.randn(2, 4, 32, 32), torch.rand(2, 3, 32, 32) * 2 - 1
    return toy, loss_fn, z, x


def test_adaptive_weight_and_surrogate_gradient_match_upstream() -> None:
    toy, loss_fn, z, x = _setup(disc_start=0)
    # upstream: grads of nll and g_loss on the last layer, then the total loss's gradient
    xrec = toy(z)
    nll = reconstruction_loss(x, xrec, 1.0)["nll"]
    g_loss = -loss_fn.discriminator(xrec).mean()
    nll_w = torch.autograd.grad(nll, toy.last.weight, retain_graph=True)[0]
    g_w = torch.autograd.grad(g_loss, toy.last.weight, retain_graph=True)[0]
    d_weight = 0.8 * nll_w.norm() / (g_w.norm() + 1e-4)
    codebook_loss = (toy.first.weight**2).mean()  # stands in for emb_loss: it depends on earlier layers
    total = nll + d_weight * g_loss + codebook_loss
    expected = torch.autograd.grad(total, list(toy.parameters()))

    surrogate, log = loss_fn.generator_loss(x, toy(z), (toy.first.weight**2).mean(), toy.last.weight, step=0)
    assert log["d_weight"] == pytest.approx(d_weight.item(), rel=1e-5)
    assert log["loss"] == pytest.approx(total.item(), rel=1e-6)
    assert log["g_loss"] == pytest.approx(g_loss.item(), rel=1e-6)
    surrogate.backward()
    for p, g in zip(toy.parameters(), expected):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for p in loss_fn.discriminator.parameters())  # the generator step leaves D alone

    d_loss, d_log = loss_fn.discriminator_loss(x, toy(z))
    d_loss.backward()
    assert d_log["d_loss"] == pytest.approx(d_loss.item()) and 0 < d_log["d_loss"]
    assert all(p.grad is not None for p in loss_fn.discriminator.parameters())


def test_before_disc_start_only_the_reconstruction_counts() -> None:
    toy, loss_fn, z, x = _setup(disc_start=5)
    assert not loss_fn.disc_active(4) and loss_fn.disc_active(5)
    xrec = toy(z)
    expected_loss = reconstruction_loss(x, xrec, 1.0)["nll"] + 0.5
    expected = torch.autograd.grad(expected_loss, list(toy.parameters()))
    surrogate, log = loss_fn.generator_loss(x, toy(z), torch.tensor(0.5), toy.last.weight, step=4)
    assert math.isnan(log["g_loss"]) and log["d_weight"] == 0.0
    assert log["loss"] == pytest.approx(expected_loss.item(), rel=1e-6)
    surrogate.backward()
    for p, g in zip(toy.parameters(), expected):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)


def test_disc_warmup_trains_the_discriminator_before_the_generator_sees_it() -> None:
    toy, _, z, x = _setup(disc_start=0)
    loss_fn = VQGANLoss(disc_start=2, disc_warmup=3, disc_layers=2, disc_ndf=8)
    assert [loss_fn.disc_active(s) for s in range(6)] == [False, False, True, True, True, True]
    assert [loss_fn.adversarial_active(s) for s in range(6)] == [False] * 5 + [True]
    _, warm = loss_fn.generator_loss(x, toy(z), torch.tensor(0.0), toy.last.weight, step=4)
    _, adv = loss_fn.generator_loss(x, toy(z), torch.tensor(0.0), toy.last.weight, step=5)
    assert math.isnan(warm["g_loss"]) and warm["d_weight"] == 0.0
    assert not math.isnan(adv["g_loss"]) and adv["d_weight"] > 0.0


def test_reconstruction_loss_is_l1_plus_weighted_lpips_vgg() -> None:
    torch.manual_seed(1)
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    rec = reconstruction_loss(x, y, 0.5)
    assert rec["l1"].item() == pytest.approx((x - y).abs().mean().item())
    assert rec["nll"].item() == pytest.approx(rec["l1"].item() + 0.5 * rec["p_loss"].item())
    assert reconstruction_loss(x, x, 1.0)["nll"].item() == pytest.approx(0.0, abs=1e-6)
    l1_only = reconstruction_loss(x, y, 0.0)
    assert math.isnan(l1_only["p_loss"].item()) and l1_only["nll"] is l1_only["l1"]
