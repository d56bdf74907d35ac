"""minGPT exactly as taming-transformers lays it out (``taming/modules/transformer/mingpt.py``).

Parameter names, registration order and the persistent ``attn.mask`` buffer follow upstream, so a
taming ``Net2NetTransformer`` checkpoint's ``transformer.*`` weights load unchanged and
``state_dict()`` lists keys in upstream order. Three additions that do not change upstream maths:

- ``n_unmasked`` (upstream's own config field) set to ``block_size`` makes every token see every
  other one; that is how the bidirectional *masked* concealment model reuses this class.
- ``forward(idx, pos=None)`` accepts explicit position ids, so a window narrower than the 16-wide
  training window keeps each token at its 2-D position; ``pos=None`` is upstream's ``arange(T)``.
- with autograd off, attention runs its query, key and value Linears as one GEMM
  (:meth:`CausalSelfAttention.fused`), which gives the same bits.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class GPTConfig:
    """Upstream's GPTConfig fields; dropouts default to 0 (``vqnet train prior --dropout`` sets two)."""

    vocab_size: int
    block_size: int
    n_layer: int = 4
    n_head: int = 8
    n_embd: int = 256
    embd_pdrop: float = 0.0
    resid_pdrop: float = 0.0
    attn_pdrop: float = 0.0
    n_unmasked: int = 0

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if not 0 <= self.n_unmasked <= self.block_size:
            raise ValueError(f"n_unmasked={self.n_unmasked} must be in [0, block_size={self.block_size}]")

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)

    def to_dict(self) -> dict:
        return asdict(self)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention with separate key/query/value Linears and a float mask buffer."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.key = nn.Linear(config.n_embd, config.n_embd)
        self.query = nn.Linear(config.n_embd, config.n_embd)
        self.value = nn.Linear(config.n_embd, config.n_embd)
        self.attn_drop = nn.Dropout(config.attn_pdrop)
        self.resid_drop = nn.Dropout(config.resid_pdrop)
        self.proj = nn.Linear(config.n_embd, config.n_embd)
        mask = torch.tril(torch.ones(config.block_size, config.block_size))
        if config.n_unmasked:
            mask[: config.n_unmasked, : config.n_unmasked] = 1
        self.register_buffer("mask", mask.view(1, 1, config.block_size, config.block_size))
        self.n_head = config.n_head
        self.n_unmasked = config.n_unmasked

    def fused(self, names: str = "qkv") -> tuple[torch.Tensor, torch.Tensor]:
        """Weight and bias of the ``names`` Linears (``q``, ``k``, ``v``) stacked along the
        output axis: one GEMM instead of several. Each output element is the same dot product
        as in its own Linear, and MKL's result holds the same bits (tests/test_restore_bits.py);
        one pass over the input instead of three."""
        linears = [{"q": self.query, "k": self.key, "v": self.value}[n] for n in names]
        return torch.cat([m.weight for m in linears]), torch.cat([m.bias for m in linears])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        hs = C // self.n_head
        if torch.is_grad_enabled():
            q, k, v = self.query(x), self.key(x), self.value(x)
        else:  # inference: the three projections in one GEMM (:meth:`fused`)
            q, k, v = F.linear(x, *self.fused()).split(C, dim=-1)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)
        if self.training and self.attn_drop.p:  # upstream's exact path: dropout acts on the weights
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
            att = att.masked_fill(self.mask[:, :, :T, :T] == 0, float("-inf"))
            y = self.attn_drop(F.softmax(att, dim=-1)) @ v
        else:  # the same maths, fused; the bidirectional model needs no mask
            if self.n_unmasked >= T:
                y = F.scaled_dot_product_attention(q, k, v)
            elif self.n_unmasked == 0:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask[0, 0, :T, :T].bool())
        return self.resid_drop(self.proj(y.transpose(1, 2).contiguous().view(B, T, C)))


class Block(nn.Module):
    """Pre-norm transformer block; ``mlp.0``/``mlp.2`` are upstream's Linear indices (GELU exact)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(config.n_embd)
        self.ln2 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.mlp = nn.Sequential(
            nn.Linear(config.n_embd, 4 * config.n_embd),
            nn.GELU(),
            nn.Linear(4 * config.n_embd, config.n_embd),
            nn.Dropout(config.resid_pdrop),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Token + learned position embeddings, ``n_layer`` blocks, final LayerNorm, bias-free head."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_emb = nn.Parameter(torch.zeros(1, config.block_size, config.n_embd))
        self.drop = nn.Dropout(config.embd_pdrop)
        self.blocks = nn.Sequential(*[Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.config = config
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """Upstream's init: N(0, 0.02) weights, zero biases, unit LayerNorm."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            module.weight.data.normal_(mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.LayerNorm):
            module.bias.data.zero_()
            module.weight.data.fill_(1.0)

    def forward(self, idx: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) token ids -> (B, T, vocab) logits. ``pos`` (T,) or (B, T) picks pos_emb rows."""
        T = idx.shape[1]
        if T > self.config.block_size:
            raise ValueError(f"sequence of {T} tokens exceeds block_size {self.config.block_size}")
        position = self.pos_emb[:, :T, :] if pos is None else self.pos_emb[0][pos]
        x = self.drop(self.tok_emb(idx) + position)
        return self.head(self.ln_f(self.blocks(x)))


def load_gpt_state(state: dict[str, torch.Tensor], config: GPTConfig) -> GPT:
    """Build a GPT from a state_dict; a taming ``Net2NetTransformer`` checkpoint's ``transformer.``
    prefix is stripped and its first-stage / cond-stage weights are ignored."""
    if any(k.startswith("transformer.") for k in state):
        state = {k[len("transformer.") :]: v for k, v in state.items() if k.startswith("transformer.")}
    model = GPT(config)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval()


def load_taming_transformer(path: Path | str, config: GPTConfig) -> GPT:
    """Load the GPT of a taming transformer checkpoint (Lightning ``.ckpt`` or bare state_dict)."""
    ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
    return load_gpt_state(state, config)
