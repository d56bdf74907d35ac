"""The taming VQGAN training losses: L1 + LPIPS-VGG, codebook loss, and a PatchGAN with hinge loss.

Source: CompVis/taming-transformers, ``taming/modules/losses/vqperceptual.py``
(``VQLPIPSWithDiscriminator``) and ``taming/modules/discriminator/model.py``
(``NLayerDiscriminator``, ``weights_init``). The numbers are upstream's: nll = mean(|x - x̂|) +
perceptual_weight * mean(LPIPS-VGG(x, x̂)); generator loss = nll + d_weight * g_loss +
codebook_weight * codebook_loss with g_loss = -mean(D(x̂)) and
d_weight = disc_weight * clamp(‖∇_W nll‖ / (‖∇_W g_loss‖ + 1e-4), 0, 1e4) on the decoder's last
layer W; the discriminator takes the hinge loss. Before ``disc_start`` both GAN terms are zero.
One addition, off by default: ``disc_warmup`` steps in which only the discriminator trains, so that
the generator's first adversarial gradients come from a discriminator that already tells its
reconstructions from photos instead of from random weights. Why try it: a PatchGAN started
untrained against a trained decoder made Kodak LPIPS worse, and with
the warm-up it did not help either (docs/model-card.md, "The PatchGAN, measured and not shipped"), so it
stays off by default.

What differs is only the cost, which matters on a CPU: upstream differentiates nll and g_loss with
respect to W separately and then back-propagates the total loss, so LPIPS-VGG and the
discriminator are each differentiated twice. Here each is differentiated once, with respect to
x̂, and the gradients with respect to W follow from a backward pass through W's layer alone;
:meth:`VQGANLoss.generator_loss` returns a surrogate whose gradient is the total loss's. Before
``disc_start`` the discriminator does not run at all (upstream runs it and multiplies by zero; that
only moves BatchNorm running statistics, which a discriminator kept in train mode never reads).

The perceptual network is LPIPS v0.1 with the VGG16 trunk (``load_lpips("vgg")``: hash-checked,
frozen, eval mode), as taming trains with. LPIPS-alex is the evaluation metric and is never
trained against, so scores stay honest.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from vqnet.metrics import load_lpips


def weights_init(m: nn.Module) -> None:
    """Upstream's initialisation: N(0, 0.02) conv weights, N(1, 0.02) BatchNorm scales, zero shifts."""
    classname = m.__class__.__name__
    if classname.find("Conv") != -1:
        nn.init.normal_(m.weight.data, 0.0, 0.02)
    elif classname.find("BatchNorm") != -1:
        nn.init.normal_(m.weight.data, 1.0, 0.02)
        nn.init.constant_(m.bias.data, 0)


class NLayerDiscriminator(nn.Module):
    """The pix2pix PatchGAN as taming builds it (BatchNorm, no ActNorm): one logit per patch.

    Layers sit in one ``nn.Sequential`` named ``main`` so the state_dict keys (``main.0.weight``,
    ``main.3.running_mean``, ...) are upstream's ``loss.discriminator.*`` keys without the prefix.
    Convs followed by BatchNorm have no bias, as upstream.
    """

    def __init__(self, input_nc: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        seq: list[nn.Module] = [nn.Conv2d(input_nc, ndf, kernel_size=4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        nf_mult = 1
        for n in range(1, n_layers):
            nf_mult_prev, nf_mult = nf_mult, min(2**n, 8)
            seq += [
                nn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, kernel_size=4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(ndf * nf_mult),
                nn.LeakyReLU(0.2, True),
            ]
        nf_mult_prev, nf_mult = nf_mult, min(2**n_layers, 8)
        seq += [
            nn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, kernel_size=4, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(ndf * nf_mult),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * nf_mult, 1, kernel_size=4, stride=1, padding=1),
        ]
        self.main = nn.Sequential(*seq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0 once real patches score >= 1 and fake ones <= -1; 1 when the discriminator says 0 everywhere."""
    return 0.5 * (torch.mean(F.relu(1.0 - logits_real)) + torch.mean(F.relu(1.0 + logits_fake)))


def adaptive_weight(nll_grad: torch.Tensor, g_grad: torch.Tensor) -> torch.Tensor:
    """taming's ``calculate_adaptive_weight`` without the disc_weight factor, from the two gradients
    on the last layer: the GAN term is scaled to pull as hard as the reconstruction term."""
    return torch.clamp(torch.norm(nll_grad) / (torch.norm(g_grad) + 1e-4), 0.0, 1e4).detach()


@functools.cache
def lpips_vgg() -> nn.Module:
    """The process-wide frozen LPIPS-VGG (building it reads ~60 MB of checked weights)."""
    return load_lpips("vgg", fp16_ok=True)


def reconstruction_loss(x: torch.Tensor, xrec: torch.Tensor, perceptual_weight: float) -> dict[str, torch.Tensor]:
    """taming's nll: mean L1 plus ``perceptual_weight`` times mean LPIPS-VGG (both inputs in [-1, 1]).

    Returns ``{"nll", "l1", "p_loss"}``; ``p_loss`` is NaN (and not computed) when the weight is 0.
    """
    l1 = torch.mean(torch.abs(x - xrec))
    if perceptual_weight <= 0:
        return {"nll": l1, "l1": l1, "p_loss": torch.tensor(math.nan)}
    p_loss = torch.mean(lpips_vgg().to(x.device)(x.contiguous(), xrec.contiguous()))
    return {"nll": l1 + perceptual_weight * p_loss, "l1": l1, "p_loss": p_loss}


class VQGANLoss(nn.Module):
    """taming's ``VQLPIPSWithDiscriminator`` (hinge loss, no conditioning); owns the discriminator.

    Only ``discriminator`` is state: LPIPS-VGG is shared and frozen, so it is not a submodule and
    never lands in a checkpoint.
    """

    def __init__(
        self,
        *,
        perceptual_weight: float = 1.0,
        codebook_weight: float = 1.0,
        disc_weight: float = 0.8,
        disc_start: int = 0,
        disc_warmup: int = 0,
        disc_layers: int = 3,
        disc_ndf: int = 64,
    ):
        super().__init__()
        self.perceptual_weight = perceptual_weight
        self.codebook_weight = codebook_weight
        self.disc_weight = disc_weight
        self.disc_start = disc_start
        self.disc_warmup = disc_warmup
        self.discriminator = NLayerDiscriminator(3, disc_ndf, disc_layers).apply(weights_init)

    def disc_active(self, step: int) -> bool:
        """Whether the discriminator trains at ``step`` (0-based, taming's ``global_step``)."""
        return step >= self.disc_start

    def adversarial_active(self, step: int) -> bool:
        """Whether the generator's loss has its GAN term at ``step``: ``disc_warmup`` steps after the
        discriminator starts (taming: at once)."""
        return step >= self.disc_start + self.disc_warmup

    def generator_loss(
        self, x: torch.Tensor, xrec: torch.Tensor, codebook_loss: torch.Tensor, last_layer: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Return (surrogate, log): ``surrogate.backward()`` gives the model parameters exactly the
        gradient of upstream's total loss, whose value is ``log["loss"]``.

        ``last_layer`` is the decoder's output-layer weight (``decoder.conv_out.weight``); it must be
        the last weight on the path to ``xrec``. The discriminator's own parameters get no gradient
        here (upstream's generator optimiser does not step them either).
        """
        rec = reconstruction_loss(x, xrec, self.perceptual_weight)
        nll_grad = torch.autograd.grad(rec["nll"], xrec)[0]
        log = {
            "l1": rec["l1"].item(),
            "p_loss": rec["p_loss"].item(),
            "emb_loss": codebook_loss.item(),
            "g_loss": math.nan,
            "d_weight": 0.0,
        }
        total = rec["nll"].item() + self.codebook_weight * codebook_loss.item()
        grad = nll_grad
        if self.adversarial_active(step):
            g_loss = -torch.mean(self.discriminator(xrec))
            g_grad = torch.autograd.grad(g_loss, xrec)[0]
            nll_w, g_w = (
                torch.autograd.grad(xrec, last_layer, grad_outputs=g, retain_graph=True)[0] for g in (nll_grad, g_grad)
            )
            d_weight = adaptive_weight(nll_w, g_w) * self.disc_weight
            grad = nll_grad + d_weight * g_grad
            total += d_weight.item() * g_loss.item()
            log |= {"g_loss": g_loss.item(), "d_weight": d_weight.item()}
        surrogate = torch.sum(xrec * grad) + self.codebook_weight * codebook_loss
        return surrogate, {"loss": total} | log

    def discriminator_loss(self, x: torch.Tensor, xrec: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Hinge loss on real crops and (detached) reconstructions, scored in two passes as upstream
        does, so BatchNorm sees real and fake batches separately."""
        logits_real = self.discriminator(x.detach())
        logits_fake = self.discriminator(xrec.detach())
        d_loss = hinge_d_loss(logits_real, logits_fake)
        return d_loss, {
            "d_loss": d_loss.item(),
            "logits_real": logits_real.mean().item(),
            "logits_fake": logits_fake.mean().item(),
        }
