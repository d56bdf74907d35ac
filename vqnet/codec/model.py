"""The taming-transformers first stage (VQModel), re-implemented module for module.

Why a re-implementation and not a dependency: upstream pulls in pytorch-lightning, prints on
construction and has a broken ``decode_code``.  We keep its *numerics* and its *state_dict names
and order* exactly (checked against ``shared/fixtures/taming``), so official checkpoints load
unchanged and our own models can be read by upstream code.

Source: CompVis/taming-transformers @ 3ba01b2, ``taming/modules/diffusionmodules/model.py``,
``taming/modules/vqvae/quantize.py`` (VectorQuantizer2, legacy=True) and ``taming/models/vqgan.py``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class DDConfig:
    """Encoder/decoder hyper-parameters, named exactly as taming's ``ddconfig``."""

    ch: int = 128
    out_ch: int = 3
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.0
    in_channels: int = 3
    resolution: int = 256
    z_channels: int = 256
    double_z: bool = False

    @property
    def downsample_factor(self) -> int:
        """Spatial reduction of the latent grid (16 for the f16 configs)."""
        return 2 ** (len(self.ch_mult) - 1)


@dataclass(frozen=True)
class VQGANConfig:
    """A VQModel config as in taming's ``model.params``: ``embed_dim``, ``n_embed``, ``ddconfig``.

    ``decoder_ch`` and ``decoder_res_blocks`` are ours, not taming's: a decoder wider or deeper than
    the encoder (see :func:`grow_decoder`). Upstream builds both halves from one ``ddconfig``, so
    only models without them load there.
    """

    embed_dim: int = 256
    n_embed: int = 1024
    ddconfig: DDConfig = field(default_factory=DDConfig)
    decoder_ch: int | None = None  # None: ddconfig.ch, as upstream
    decoder_res_blocks: int | None = None  # None: ddconfig.num_res_blocks, as upstream

    @property
    def decoder_ddconfig(self) -> DDConfig:
        dd = self.ddconfig
        return replace(dd, ch=self.decoder_ch or dd.ch, num_res_blocks=self.decoder_res_blocks or dd.num_res_blocks)

    @property
    def encoder_side(self) -> "VQGANConfig":
        """This config with upstream's decoder: equal for two models whose index maps can agree."""
        return replace(self, decoder_ch=None, decoder_res_blocks=None)

    def to_dict(self) -> dict[str, Any]:
        """taming's keys, plus the decoder overrides only when set (existing configs stay as they were)."""
        d = asdict(self)
        for key in ("decoder_ch", "decoder_res_blocks"):
            if d[key] is None:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VQGANConfig":
        """Accept our own dict or a taming ``model.yaml`` (``model.params`` or its ``params`` block)."""
        if "model" in d:
            d = d["model"]
        if "params" in d:
            d = d["params"]
        dd = dict(d["ddconfig"])
        known = set(DDConfig.__dataclass_fields__)
        unknown = set(dd) - known
        if unknown:
            raise ValueError(f"unknown ddconfig keys: {sorted(unknown)}")
        for key in ("ch_mult", "attn_resolutions"):
            if key in dd:
                dd[key] = tuple(dd[key])
        grown = {key: int(d[key]) for key in ("decoder_ch", "decoder_res_blocks") if d.get(key) is not None}
        return cls(embed_dim=int(d["embed_dim"]), n_embed=int(d["n_embed"]), ddconfig=DDConfig(**dd), **grown)


def nonlinearity(x: torch.Tensor) -> torch.Tensor:
    """Swish (upstream writes x*sigmoid(x)); ``F.silu`` is the same function in one fused pass,
    which takes a tenth off a CPU decode. Without autograd it overwrites ``x`` (always a fresh
    GroupNorm output here): the same numbers, one full-size activation fewer to allocate per call."""
    return F.silu(x, inplace=not torch.is_grad_enabled())


def residual(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``x + h``, summed into ``h`` (a fresh branch output) when no gradient needs it."""
    return x + h if torch.is_grad_enabled() else h.add_(x)


def Normalize(in_channels: int) -> nn.GroupNorm:  # noqa: N802 - upstream name
    return nn.GroupNorm(num_groups=32, num_channels=in_channels, eps=1e-6, affine=True)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Downsample(nn.Module):
    """Pad right/bottom by one zero, then a stride-2 3x3 conv: each stage floors H/2 like upstream."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0))


class ResnetBlock(nn.Module):
    """Upstream ResnetBlock without the timestep embedding (temb_channels=0 in VQModel)."""

    def __init__(self, *, in_channels: int, out_channels: int | None = None, dropout: float = 0.0):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.norm1 = Normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = Normalize(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(nonlinearity(self.norm1(x)))
        h = self.conv2(self.dropout(nonlinearity(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.nin_shortcut(x)
        return residual(x, h)


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1 q/k/v/proj_out convs and scale C^-0.5."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.in_channels = in_channels
        self.norm = Normalize(in_channels)
        self.q = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.k = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.v = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.proj_out = nn.Conv2d(in_channels, in_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h_ = self.norm(x)
        q, k, v = self.q(h_), self.k(h_), self.v(h_)
        b, c, h, w = q.shape
        q = q.reshape(b, c, h * w).permute(0, 2, 1)  # b,hw,c
        k = k.reshape(b, c, h * w)  # b,c,hw
        w_ = torch.bmm(q, k) * (int(c) ** (-0.5))
        w_ = F.softmax(w_, dim=2)
        v = v.reshape(b, c, h * w)
        h_ = torch.bmm(v, w_.permute(0, 2, 1)).reshape(b, c, h, w)
        return x + self.proj_out(h_)


class Encoder(nn.Module):
    """Image -> latent (z_channels, H/f, W/f). Attention sits where the *configured* resolution says."""

    def __init__(self, cfg: DDConfig):
        super().__init__()
        self.num_resolutions = len(cfg.ch_mult)
        self.num_res_blocks = cfg.num_res_blocks
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, kernel_size=3, stride=1, padding=1)
        curr_res = cfg.resolution
        in_ch_mult = (1,) + tuple(cfg.ch_mult)
        self.down = nn.ModuleList()
        block_in = cfg.ch
        for i_level in range(self.num_resolutions):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_in = cfg.ch * in_ch_mult[i_level]
            block_out = cfg.ch * cfg.ch_mult[i_level]
            for _ in range(cfg.num_res_blocks):
                block.append(ResnetBlock(in_channels=block_in, out_channels=block_out, dropout=cfg.dropout))
                block_in = block_out
                if curr_res in cfg.attn_resolutions:
                    attn.append(AttnBlock(block_in))
            down = nn.Module()
            down.block = block
            down.attn = attn
            if i_level != self.num_resolutions - 1:
                down.downsample = Downsample(block_in)
                curr_res = curr_res // 2
            self.down.append(down)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(in_channels=block_in, out_channels=block_in, dropout=cfg.dropout)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(in_channels=block_in, out_channels=block_in, dropout=cfg.dropout)
        self.norm_out = Normalize(block_in)
        z_out = 2 * cfg.z_channels if cfg.double_z else cfg.z_channels
        self.conv_out = nn.Conv2d(block_in, z_out, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for i_level in range(self.num_resolutions):
            level = self.down[i_level]
            for i_block in range(self.num_res_blocks):
                h = level.block[i_block](h)
                if len(level.attn) > 0:
                    h = level.attn[i_block](h)
            if i_level != self.num_resolutions - 1:
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(nonlinearity(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent -> image. ``up.0`` is the highest resolution: it runs last but is listed first."""

    def __init__(self, cfg: DDConfig):
        super().__init__()
        self.num_resolutions = len(cfg.ch_mult)
        self.num_res_blocks = cfg.num_res_blocks
        block_in = cfg.ch * cfg.ch_mult[-1]
        curr_res = cfg.resolution // 2 ** (self.num_resolutions - 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, kernel_size=3, stride=1, padding=1)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(in_channels=block_in, out_channels=block_in, dropout=cfg.dropout)
        self.mid.attn_1 = AttnBlock(block_in)
        self.mid.block_2 = ResnetBlock(in_channels=block_in, out_channels=block_in, dropout=cfg.dropout)
        self.up = nn.ModuleList()
        for i_level in reversed(range(self.num_resolutions)):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_out = cfg.ch * cfg.ch_mult[i_level]
            for _ in range(cfg.num_res_blocks + 1):
                block.append(ResnetBlock(in_channels=block_in, out_channels=block_out, dropout=cfg.dropout))
                block_in = block_out
                if curr_res in cfg.attn_resolutions:
                    attn.append(AttnBlock(block_in))
            up = nn.Module()
            up.block = block
            up.attn = attn
            if i_level != 0:
                up.upsample = Upsample(block_in)
                curr_res = curr_res * 2
            self.up.insert(0, up)
        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.out_ch, kernel_size=3, stride=1, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for i_level in reversed(range(self.num_resolutions)):
            level = self.up[i_level]
            for i_block in range(self.num_res_blocks + 1):
                h = level.block[i_block](h)
                if len(level.attn) > 0:
                    h = level.attn[i_block](h)
            if i_level != 0:
                h = level.upsample(h)
        return self.conv_out(nonlinearity(self.norm_out(h)))


def nearest_code(z_flat: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Argmin of squared distance, computed with upstream's exact expression so ties break alike."""
    d = (
        torch.sum(z_flat**2, dim=1, keepdim=True)
        + torch.sum(codebook**2, dim=1)
        - 2 * torch.einsum("bd,dn->bn", z_flat, codebook.t())
    )
    return torch.argmin(d, dim=1)


def nearest_code_chunked(z_flat: torch.Tensor, codebook: torch.Tensor, max_elements: int = 1 << 23) -> torch.Tensor:
    """:func:`nearest_code` over row chunks whose distance matrix holds at most ``max_elements``
    entries (32 MB). Why: the official codebook has 16384 codes, and the positions of a few
    hundred photos against it would need gigabytes at once; rows are independent, and inputs that
    fit one chunk take the unchunked call, so small codebooks give exactly what they gave before."""
    rows = max(1, max_elements // codebook.shape[0])
    if z_flat.shape[0] <= rows:
        return nearest_code(z_flat, codebook)
    return torch.cat([nearest_code(chunk, codebook) for chunk in z_flat.split(rows)])


class VectorQuantizer2(nn.Module):
    """taming's VectorQuantizer2 with legacy=True and sane_index_shape=True (indices are B,H,W).

    Legacy means beta weights the *codebook* term and the commitment term has weight 1; that is what
    every released VQGAN was trained with, so we keep it.
    """

    def __init__(self, n_e: int, e_dim: int, beta: float = 0.25):
        super().__init__()
        self.n_e = n_e
        self.e_dim = e_dim
        self.beta = beta
        self.embedding = nn.Embedding(n_e, e_dim)
        self.embedding.weight.data.uniform_(-1.0 / n_e, 1.0 / n_e)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (straight-through z_q in B,C,H,W; emb_loss; indices B,H,W)."""
        b, _, h, w = z.shape
        z = z.permute(0, 2, 3, 1).contiguous()
        idx = nearest_code_chunked(z.view(-1, self.e_dim), self.embedding.weight)
        z_q = self.embedding(idx).view(z.shape)
        loss = torch.mean((z_q.detach() - z) ** 2) + self.beta * torch.mean((z_q - z.detach()) ** 2)
        z_q = z + (z_q - z).detach()
        return z_q.permute(0, 3, 1, 2).contiguous(), loss, idx.view(b, h, w)

    def get_codebook_entry(self, indices: torch.Tensor) -> torch.Tensor:
        """Indices (B,H,W) -> latent (B,C,H,W); the working replacement for upstream's decode_code."""
        return self.embedding(indices).permute(0, 3, 1, 2).contiguous()


class VQModel(nn.Module):
    """taming's VQModel without the Lightning wrapper and the loss module (``loss.*`` keys are dropped)."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        self.config = cfg
        dd = cfg.ddconfig
        self.encoder = Encoder(dd)
        self.decoder = Decoder(cfg.decoder_ddconfig)
        self.quantize = VectorQuantizer2(cfg.n_embed, cfg.embed_dim, beta=0.25)
        self.quant_conv = nn.Conv2d(dd.z_channels, cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, dd.z_channels, 1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x in [-1,1], (B,3,H,W) with H,W multiples of f -> (quant, emb_loss, indices)."""
        return self.quantize(self.quant_conv(self.encoder(x)))

    def decode(self, quant: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(quant))

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        return self.decode(self.quantize.get_codebook_entry(indices))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        quant, emb_loss, idx = self.encode(x)
        return self.decode(quant), emb_loss, idx


def _split_inputs(t: torch.Tensor, factor: int, gen: torch.Generator) -> torch.Tensor:
    """Conv weights (out, in, ...) reading channels that were repeated ``factor`` times in place:
    each old weight is split over its copies in random shares summing to 1, so the sum over the
    copies is unchanged while the copies, whose activations are equal, get different gradients."""
    shares = 0.5 + torch.rand((t.shape[0], t.shape[1], factor, *t.shape[2:]), generator=gen)
    shares = shares / shares.sum(dim=2, keepdim=True)
    return (t.unsqueeze(2) * shares).flatten(1, 2)


@torch.no_grad()
def grow_decoder(model: VQModel, ch: int | None = None, res_blocks: int | None = None, seed: int = 0) -> VQModel:
    """A copy of ``model`` whose decoder is wider (base width ``ch``, a multiple of today's) and/or
    deeper (``res_blocks`` per level, upstream's ``num_res_blocks``) but computes the same image, so
    training continues from today's quality with more capacity (Net2WiderNet/Net2DeeperNet, Chen et
    al. 2016). The encoder, quantizer and the convs around the codebook are copied untouched, so
    every index map stays exactly as it was.

    Why widening is exact: every channel is repeated in place, so under GroupNorm(32) each new group
    holds the copies of one old group's channels and sees the same mean and variance; a conv reading
    widened channels splits each weight over the copies (random shares summing to 1, which also
    breaks the copies' symmetry for training); attention logits are scaled by C^-0.5, so q is
    divided by sqrt(factor) to keep them. Why deepening is: each added ResnetBlock (and AttnBlock,
    where the level has attention) is appended to its level with the conv that ends its residual
    branch (conv2, proj_out) zeroed, so it starts as the identity; its other weights are
    initialised as usual, so that conv gets a gradient at once.
    """
    old = model.config.decoder_ddconfig
    ch, res_blocks = ch or old.ch, res_blocks or old.num_res_blocks
    if ch % old.ch or ch < old.ch:
        raise ValueError(f"the decoder's width must be a multiple of its current ch={old.ch}")
    if res_blocks < old.num_res_blocks:
        raise ValueError(f"the decoder has {old.num_res_blocks} res blocks per level already; it cannot shrink")
    factor = ch // old.ch
    big = VQModel(
        replace(
            model.config,
            decoder_ch=None if ch == model.config.ddconfig.ch else ch,
            decoder_res_blocks=None if res_blocks == model.config.ddconfig.num_res_blocks else res_blocks,
        )
    )
    big.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("decoder.")}, strict=False)
    gen = torch.Generator().manual_seed(seed)
    src = model.decoder.state_dict()
    out = big.decoder.state_dict()
    for name, new in out.items():
        if name not in src:  # a block added by deepening: identity at first
            if name.endswith(("conv2.weight", "conv2.bias", "proj_out.weight", "proj_out.bias")):
                new.zero_()
            continue
        t = src[name]
        if t.ndim > 1 and t.shape[1] != new.shape[1]:
            t = _split_inputs(t, factor, gen)
        if t.shape[0] != new.shape[0]:  # outputs (and per-channel biases, GroupNorm affines): copies
            t = torch.repeat_interleave(t, factor, dim=0)
        if name.split(".")[-2] == "q":  # AttnBlock's query conv
            t = t / factor**0.5
        out[name] = t
    big.decoder.load_state_dict(out)
    return big.train(model.training)
