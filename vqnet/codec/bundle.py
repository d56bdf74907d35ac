"""A codec bundle: one VQGAN, a ladder of codebooks (one per K), and an entropy prior per K.

File format (one ``.safetensors`` file, fp16 for weights, float32 for priors, uint16 for context tables):

- the base VQModel's tensors under their *upstream* names (``encoder.*``, ``decoder.*``,
  ``quantize.embedding.weight``, ``quant_conv.*``, ``post_quant_conv.*``), so the same file is a
  taming state_dict;
- for every K: ``codebooks.K{K}.embedding`` (K x embed_dim) and that K's ``quant_conv``/
  ``post_quant_conv`` (the paper fine-tunes these per K, with the encoder/decoder frozen);
- ``priors.K{K}``: the static index distribution the range coder uses at that K, and
  ``priors.K{K}.context`` (K x K uint16, optional): its neighbour-context table, and
  ``priors.K{K}.pair`` (one float32, optional): the exponent for indices coded against both
  neighbours (:class:`vqnet.entropy.Prior`); a bundle with one is version 2, which older readers
  refuse instead of decoding its packets wrongly;
- for every fine-tuned K, optionally its K-means ancestor ("w/o fine-tune", the paper's ablation):
  ``codebooks.K{K}.raw.*`` (same five tensors) and ``priors.K{K}.raw``. These names sit inside the
  prefixes readers already skip or look up key by key, so bundles without them (and readers that
  predate them) need no new version;
- metadata: ``format``, ``version``, ``config`` (JSON VQGANConfig), ``ks``, ``finetuned`` (JSON
  list of K whose codebook was fine-tuned), free-form ``provenance``.

Why per-K quant convs live beside the codebook: swapping K must not touch the shared encoder
and decoder, so a sweep encodes each image once and quantises it at every K.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from vqnet.codec.model import VQGANConfig, VQModel, nearest_code_chunked
from vqnet.entropy import Prior
from vqnet.errors import VqnetError
from vqnet.images import pad_to_multiple, to_tensor, to_uint8_batch
from vqnet.runtime import autocast
from vqnet.weights import sha256_of

FORMAT = "vqnet-codec"
#: Bundle versions this vqnet reads: 2 adds ``priors.K{K}.pair``; a bundle without one is written as 1.
VERSIONS = ("1", "2")
DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "default.safetensors"
#: ``{"<file name in vqnet/models/>": "<sha256 hex>"}`` for every bundled weights file.
MANIFEST = DEFAULT_MODEL.parent / "manifest.json"


class CodecError(VqnetError, ValueError):
    """A codec file or request that cannot be honoured; the message is one line for the user."""


@dataclass
class Codebook:
    """One rung of the variable-rate ladder."""

    K: int
    embedding: torch.Tensor  # (K, embed_dim)
    quant_conv_weight: torch.Tensor
    quant_conv_bias: torch.Tensor
    post_quant_conv_weight: torch.Tensor
    post_quant_conv_bias: torch.Tensor
    prior: Prior
    finetuned: bool = False
    raw: "Codebook | None" = None  # the K-means codebook this one was fine-tuned from, if kept

    @classmethod
    def from_model(cls, model: VQModel, prior: Prior | None = None) -> "Codebook":
        """The model's own codebook and convs (the base rung)."""
        K = model.config.n_embed
        return cls(
            K=K,
            embedding=model.quantize.embedding.weight.detach().clone(),
            quant_conv_weight=model.quant_conv.weight.detach().clone(),
            quant_conv_bias=model.quant_conv.bias.detach().clone(),
            post_quant_conv_weight=model.post_quant_conv.weight.detach().clone(),
            post_quant_conv_bias=model.post_quant_conv.bias.detach().clone(),
            prior=prior or Prior.uniform(K),
        )


@dataclass
class Codec:
    """Image <-> index grid at any K of the ladder. Stateless apart from the weights."""

    model: VQModel
    codebooks: dict[int, Codebook]
    model_id: str = "unsaved"
    provenance: dict = field(default_factory=dict)
    path: Path | None = None  # where it was loaded from: concealment models live beside it
    precision: str = "float32"  # the decoder's (vqnet.runtime.PRECISIONS); the encoder always runs in float32

    @property
    def factor(self) -> int:
        return self.model.config.ddconfig.downsample_factor

    @property
    def device(self) -> torch.device:
        """Where the model runs; codebooks and priors stay on the CPU (they are small)."""
        return self.model.quant_conv.weight.device

    def to(self, device: torch.device | str, precision: str = "float32") -> "Codec":
        """Move the model to ``device`` and decode in ``precision`` from now on (in place, like
        ``nn.Module.to``); check both with :func:`vqnet.runtime.prepare` first."""
        self.model.to(device)
        self.precision = precision
        return self

    @property
    def decode_batch(self) -> int:
        """How many grids one decoder call should take. One on a CPU: batching there gains nothing
        and moves the last bits of the images (other kernel blocking; docs/performance.md)."""
        return 1 if self.device.type == "cpu" else 8

    @property
    def ks(self) -> list[int]:
        return sorted(self.codebooks, reverse=True)

    def codebook(self, K: int) -> Codebook:
        if K not in self.codebooks:
            raise CodecError(f"model has no codebook with K={K}; available: {', '.join(map(str, self.ks))}")
        return self.codebooks[K]

    def raw_codec(self) -> "Codec":
        """This codec with each fine-tuned rung replaced by the K-means codebook it started from
        (the paper's "w/o fine-tune" ablation); rungs never fine-tuned are their own raw codebook.

        It keeps the model id, so only use it where its indices never meet the fine-tuned codec.
        """
        if not any(cb.raw for cb in self.codebooks.values()):
            raise CodecError(f"model {self.model_id} keeps no codebooks from before fine-tuning (raw)")
        return Codec(
            self.model,
            {K: cb.raw or cb for K, cb in self.codebooks.items()},
            self.model_id,
            self.provenance,
            precision=self.precision,
        )

    @torch.inference_mode()
    def encode_latent(self, img: np.ndarray) -> torch.Tensor:
        """uint8 H,W,3 -> encoder output (1, z_channels, ceil(H/f), ceil(W/f)); shared by every K."""
        x = to_tensor(pad_to_multiple(img, self.factor))
        # The model may sit on a GPU while training scripts encode; latents always come back on the CPU.
        return self.model.encoder(x.to(self.model.quant_conv.weight.device)).cpu()

    @torch.inference_mode()
    def quantize(self, latent: torch.Tensor, K: int) -> np.ndarray:
        """Encoder output -> int64 index grid (h, w) with K's quant_conv and codebook."""
        cb = self.codebook(K)
        h = F.conv2d(latent, cb.quant_conv_weight, cb.quant_conv_bias)
        _, c, gh, gw = h.shape
        idx = nearest_code_chunked(h.permute(0, 2, 3, 1).reshape(-1, c), cb.embedding)
        return idx.view(gh, gw).numpy().astype(np.int64)

    def encode(self, img: np.ndarray, K: int) -> np.ndarray:
        return self.quantize(self.encode_latent(img), K)

    def decode_vectors(self, z: torch.Tensor, K: int) -> torch.Tensor:
        """Codebook-space vectors (1, embed_dim, h, w) -> image in [-1, 1] through K's post_quant_conv.

        Not in inference mode, so that tools can differentiate through the decoder (or probe it
        with vectors that are not codes). The decoder runs where the model sits (a GPU for the
        official model's sweeps); the image comes back on ``z``'s device."""
        cb = self.codebook(K)
        h = F.conv2d(z, cb.post_quant_conv_weight, cb.post_quant_conv_bias)
        return self.model.decoder(h.to(self.model.quant_conv.weight.device)).to(z.device)

    def decode(self, indices: np.ndarray, K: int, size: tuple[int, int] | None = None) -> np.ndarray:
        """Index grid -> uint8 image, cropped to ``size`` (H, W) when the original was padded."""
        return self.decode_many([indices], K, size)[0]

    @torch.inference_mode()
    def decode_many(self, grids: list[np.ndarray], K: int, size: tuple[int, int] | None = None) -> list[np.ndarray]:
        """Index grids of one shape -> uint8 images, in one decoder call (see :attr:`decode_batch`)."""
        cb = self.codebook(K)
        idx = torch.as_tensor(np.stack([np.asarray(g, dtype=np.int64) for g in grids]))
        if idx.ndim != 3 or int(idx.min()) < 0 or int(idx.max()) >= K:
            raise CodecError(f"indices must be a 2-D grid of values in [0, {K})")
        # One grid is fed as a (C, h, w) view with a batch axis added, the strides every published
        # table was decoded with: oneDNN rounds some pixels differently for a batch's strides.
        vectors = cb.embedding[idx].permute(0, 3, 1, 2)
        z = vectors[0].unsqueeze(0) if len(grids) == 1 else vectors
        with autocast(self.device, self.precision):
            out = self.decode_vectors(z, K)
        images = to_uint8_batch(out)
        if size is not None:
            images = images[:, : size[0], : size[1]]
        return [np.ascontiguousarray(im) for im in images]


_CODEBOOK_TENSORS = {
    "embedding": "embedding",
    "quant_conv.weight": "quant_conv_weight",
    "quant_conv.bias": "quant_conv_bias",
    "post_quant_conv.weight": "post_quant_conv_weight",
    "post_quant_conv.bias": "post_quant_conv_bias",
}  # file name -> Codebook field


def _names(K: int, raw: bool) -> tuple[str, str]:
    """(tensor-name prefix, prior name) of K's codebook, or of its raw ancestor."""
    return (f"codebooks.K{K}.raw.", f"priors.K{K}.raw") if raw else (f"codebooks.K{K}.", f"priors.K{K}")


def _codebook_tensors(cb: Codebook, raw: bool) -> dict[str, torch.Tensor]:
    prefix, prior = _names(cb.K, raw)
    tensors = {
        prefix + name: getattr(cb, field).detach().half().contiguous() for name, field in _CODEBOOK_TENSORS.items()
    }
    tensors[prior] = torch.from_numpy(cb.prior.to_array())
    if cb.prior.context is not None:
        tensors[prior + ".context"] = torch.from_numpy(cb.prior.context.copy())
    if cb.prior.pair is not None:
        tensors[prior + ".pair"] = torch.tensor([cb.prior.pair], dtype=torch.float32)
    return tensors


def _read_codebook(tensors: dict[str, torch.Tensor], K: int, raw: bool, finetuned: bool) -> Codebook:
    """KeyError names the first missing tensor."""
    prefix, prior = _names(K, raw)
    fields = {field: tensors[prefix + name].float() for name, field in _CODEBOOK_TENSORS.items()}
    context, pair = tensors.get(prior + ".context"), tensors.get(prior + ".pair")
    return Codebook(
        K=K,
        prior=Prior.from_array(
            tensors[prior].numpy(),
            None if context is None else context.numpy(),
            None if pair is None else float(pair[0]),
        ),
        finetuned=finetuned,
        **fields,
    )


def save_codec(codec: Codec, path: Path) -> str:
    """Write the bundle in fp16 (priors float32) and return its sha256 (the model id)."""
    tensors: dict[str, torch.Tensor] = {k: v.detach().half().contiguous() for k, v in codec.model.state_dict().items()}
    for cb in codec.codebooks.values():
        tensors |= _codebook_tensors(cb, raw=False)
        if cb.raw is not None:
            tensors |= _codebook_tensors(cb.raw, raw=True)
    meta = {
        "format": FORMAT,
        "version": VERSIONS[1] if any(t.endswith(".pair") for t in tensors) else VERSIONS[0],
        "config": json.dumps(codec.model.config.to_dict()),
        "ks": json.dumps(sorted(codec.codebooks)),
        "finetuned": json.dumps(sorted(K for K, cb in codec.codebooks.items() if cb.finetuned)),
        "provenance": json.dumps(codec.provenance),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    return sha256_of(path)


def _restore_hint(path: Path) -> str:
    return f"restore it with `git checkout vqnet/models/{path.name}` (in a git checkout) or reinstall vqnet"


def manifest_sha256(path: Path, manifest: Path) -> str:
    """The sha256 that ``manifest`` records for the bundled file ``path`` (by file name)."""
    try:
        entries = json.loads(manifest.read_text())
    except FileNotFoundError:
        raise CodecError(
            f"weights manifest {manifest} is missing, so {path.name} cannot be verified; {_restore_hint(manifest)}"
        ) from None
    except (OSError, ValueError) as exc:
        raise CodecError(f"weights manifest {manifest} is unreadable ({exc}); {_restore_hint(manifest)}") from None
    sha = entries.get(path.name) if isinstance(entries, dict) else None
    if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        raise CodecError(f"weights manifest {manifest} has no sha256 for {path.name}; {_restore_hint(manifest)}")
    return sha


def read_safetensors(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a safetensors file; a damaged file is a one-line :class:`CodecError`."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        return meta, load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CodecError(f"{path} is not a readable safetensors file ({exc})") from None


def load_codec(path: Path | str | None = None) -> Codec:
    """Load a bundle (default: the one shipped in the package). All weights are upcast to float32.

    The default bundle is checked against the sha256 in :data:`MANIFEST` first: a truncated or
    tampered file in the package must be refused, not turned into silently different numbers.
    A bundle given by path is the caller's choice and is only identified (model id), not checked.
    """
    bundled = not path
    path = Path(path) if path else DEFAULT_MODEL
    if path.is_dir():
        raise CodecError(f"{path} is a folder; a codec is one bundle file (.safetensors)")
    if not path.is_file():
        hint = f"; {_restore_hint(path)}" if bundled else ""
        raise CodecError(f"codec file not found: {path}{hint}")
    sha = sha256_of(path)
    if bundled and sha != (expected := manifest_sha256(path, MANIFEST)):
        raise CodecError(
            f"{path} has sha256 {sha[:16]}..., the manifest says {expected[:16]}... "
            f"(tampered or truncated); {_restore_hint(path)}"
        )
    meta, tensors = read_safetensors(path)
    if meta.get("format") != FORMAT:
        raise CodecError(f"{path} is not a vqnet codec bundle (format={meta.get('format')!r})")
    if meta.get("version") not in VERSIONS:
        raise CodecError(
            f"{path} has bundle version {meta.get('version')!r}; this vqnet reads versions {', '.join(VERSIONS)}"
        )
    cfg, ks, finetuned, provenance = _metadata(meta, path)
    model = VQModel(cfg).eval()
    base = {k: v.float() for k, v in tensors.items() if not k.startswith(("codebooks.", "priors."))}
    try:
        model.load_state_dict(base, strict=True)
    except RuntimeError as exc:
        raise CodecError(f"{path}: weights do not match its config ({str(exc).splitlines()[0]})") from None
    model.to(memory_format=torch.channels_last)  # same numbers; oneDNN's CPU convolutions run ~15 % faster
    codebooks = {}
    for K in ks:
        try:
            codebooks[K] = _read_codebook(tensors, K, raw=False, finetuned=K in finetuned)
            if _names(K, raw=True)[0] + "embedding" in tensors:
                codebooks[K].raw = _read_codebook(tensors, K, raw=True, finetuned=False)
        except KeyError as exc:
            raise CodecError(f"{path}: codebook K={K} is incomplete (missing {exc})") from None
    return Codec(model, codebooks, model_id=sha[:16], provenance=provenance, path=path)


def _metadata(meta: dict[str, str], path: Path) -> tuple[VQGANConfig, list[int], set[int], dict]:
    """The bundle's config, K list, fine-tuned K and provenance, or one CodecError naming what is broken."""
    try:
        cfg = VQGANConfig.from_dict(json.loads(meta["config"]))
        ks, finetuned = json.loads(meta["ks"]), json.loads(meta.get("finetuned", "[]"))
        provenance = json.loads(meta.get("provenance", "{}"))
        if not (isinstance(ks, list) and ks and all(type(K) is int and K >= 2 for K in ks)):
            raise ValueError(f"ks must be a list of codebook sizes, got {str(ks)[:40]}")
        if not (isinstance(finetuned, list) and set(finetuned) <= set(ks)) or not isinstance(provenance, dict):
            raise ValueError("finetuned must list some of its ks, provenance must be an object")
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise CodecError(f"{path}: broken metadata ({type(exc).__name__}: {str(exc)[:80]})") from None
    return cfg, ks, set(finetuned), provenance


def encoder_fingerprint(codec: Codec) -> str:
    """Hash (16 hex) of the fp16 encoder weights: equal encoders give equal latents, so index maps
    cached for one (and transformers trained on them) are valid for the other. The model may sit
    on a GPU (`train prior --device cuda` keys its latent cache after moving it)."""
    h = hashlib.sha256()
    enc = codec.model.encoder.state_dict()
    for name in sorted(enc):
        h.update(name.encode())
        h.update(enc[name].detach().half().cpu().numpy().tobytes())
    return h.hexdigest()[:16]
