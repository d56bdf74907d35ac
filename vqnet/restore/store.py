"""Concealment-model files: fp16 safetensors that live beside the codec bundle they were trained for.

``<bundle stem>.<kind>.K<K>.safetensors`` (e.g. ``default.masked.K256.safetensors``) holds the GPT
weights and, as metadata, the GPT config, the kind, K, and the *index-map fingerprint*: a hash of
everything that decides which index a photo gets at that K (encoder, that K's quant_conv and
codebook). A transformer is only valid for those index maps, so loading checks the fingerprint; a
decoder-only fine-tune of the codec keeps it, a new encoder or codebook refuses the old model.
Bundled files are also checked against ``vqnet/models/manifest.json`` like the codec itself.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

from safetensors.torch import save_file

from vqnet.codec.bundle import (
    DEFAULT_MODEL,
    MANIFEST,
    Codec,
    CodecError,
    encoder_fingerprint,
    manifest_sha256,
    read_safetensors,
)
from vqnet.restore.gpt import GPT, GPTConfig
from vqnet.weights import sha256_of

FORMAT = "vqnet-concealer"


def index_fingerprint(codec: Codec, K: int) -> str:
    """Hash (16 hex) of the encoder, quant_conv and codebook weights that produce K's indices."""
    cb = codec.codebook(K)
    h = hashlib.sha256(encoder_fingerprint(codec).encode())
    for t in (cb.quant_conv_weight, cb.quant_conv_bias, cb.embedding):
        h.update(t.detach().half().numpy().tobytes())
    return h.hexdigest()[:16]


def concealer_path(codec: Codec, kind: str, K: int) -> Path:
    base = codec.path or DEFAULT_MODEL
    return base.with_name(f"{base.stem}.{kind}.K{K}.safetensors")


def export_concealer(model: GPT, kind: str, K: int, fingerprint: str, path: Path, provenance: dict) -> str:
    """Write the fp16 file atomically; returns its sha256 (for the manifest when it is bundled)."""
    tensors = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    meta = {
        "format": FORMAT,
        "kind": kind,
        "K": str(K),
        "fingerprint": fingerprint,
        "config": json.dumps(model.config.to_dict()),
        "provenance": json.dumps(provenance),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    return sha256_of(path)


def load_concealer(codec: Codec, kind: str, K: int) -> GPT:
    """The ``kind`` model for ``codec`` at K, refused with a one-line reason if absent or stale."""
    path = concealer_path(codec, kind, K)
    if not path.is_file():
        raise CodecError(
            f"no {kind} concealment model for K={K} ({path.name} not found beside the codec); "
            f"train one with `vqnet train prior --kind {kind} --K {K}`"
        )
    sha = sha256_of(path)
    if path.parent == DEFAULT_MODEL.parent and sha != manifest_sha256(path, MANIFEST):
        raise CodecError(
            f"{path} does not match the weights manifest (tampered or truncated); "
            f"restore it with `git checkout vqnet/models/{path.name}` or reinstall vqnet"
        )
    return _load(path, sha, kind, K, index_fingerprint(codec, K))


def load_concealer_file(path: Path, kind: str, K: int, fingerprint: str) -> tuple[GPT, str]:
    """(model, sha256) of a concealment file anywhere (a fine-tune's start), with the same checks."""
    if not path.is_file():
        raise CodecError(f"concealment model not found: {path}")
    sha = sha256_of(path)
    return _load(path, sha, kind, K, fingerprint), sha


@lru_cache(maxsize=16)
def _load(path: Path, sha: str, kind: str, K: int, fingerprint: str) -> GPT:
    """Cached by content (``sha``), so a replaced file is read again and an unchanged one is not."""
    meta, tensors = read_safetensors(path)
    if meta.get("format") != FORMAT or meta.get("kind") != kind or meta.get("K") != str(K):
        raise CodecError(f"{path} is not a {kind} concealment model for K={K}")
    if meta.get("fingerprint") != fingerprint:
        raise CodecError(
            f"{path} was trained on other index maps than this codec's K={K} "
            f"(fingerprint {meta.get('fingerprint')} != {fingerprint}); retrain it with "
            f"`vqnet train prior --kind {kind} --K {K}`"
        )
    model = GPT(GPTConfig.from_dict(json.loads(meta["config"])))
    try:
        model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)
    except RuntimeError as exc:
        raise CodecError(f"{path}: weights do not match its config ({str(exc).splitlines()[0]})") from None
    return model.eval()
