"""Official taming-transformers VQGAN checkpoints (the paper's starting point) as a :class:`VQModel`.

What a researcher downloads from taming's model zoo is a PyTorch-Lightning ``last.ckpt`` (weights
under ``state_dict``, beside optimiser states and Lightning's own bookkeeping) and its
``model.yaml``; a converted ``.safetensors`` state_dict works the same way. Weights are read
safely: safetensors cannot carry code, and pickles go through ``torch.load(weights_only=True)``.
Lightning checkpoints also pickle a few of Lightning's own objects (the ``ModelCheckpoint``
callback is a key of ``callbacks`` in checkpoints of that era, and ``hparams`` may be an
``argparse.Namespace`` or an OmegaConf node); those names, and only those, are read as inert
placeholder classes of ours, so neither Lightning nor anything the file names is ever imported
or run. Every other global is refused.

``loss.*`` keys (LPIPS-VGG and the PatchGAN, trained with the model) are dropped; every other
key and shape must match the config exactly, so a wrong config is one line naming the first
mismatch rather than a model with silently random layers.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from vqnet.codec.bundle import CodecError
from vqnet.codec.model import VQGANConfig, VQModel

#: Module prefixes (and exact names) of the bookkeeping objects Lightning pickles into checkpoints.
LIGHTNING_GLOBALS = ("pytorch_lightning.", "lightning.", "lightning_fabric.", "omegaconf.", "argparse.Namespace")


def _placeholder(qualified_name: str) -> type:
    """An inert class standing in for ``qualified_name``: it accepts and ignores any arguments and
    state, so unpickling it builds an empty object and runs nothing."""
    return type(
        qualified_name.rsplit(".", 1)[-1],
        (),
        {
            "__init__": lambda self, *args, **kwargs: None,
            "__setstate__": lambda self, state: None,
            "__module__": "vqnet.codec.taming.placeholders",
        },
    )


def _is_lightning(name: str) -> bool:
    return any(name == prefix or (prefix.endswith(".") and name.startswith(prefix)) for prefix in LIGHTNING_GLOBALS)


def read_config(config: VQGANConfig | dict | Path | str) -> VQGANConfig:
    """A taming ``model.yaml`` (path), its parsed dict, or a VQGANConfig; anything else is a
    one-line :class:`CodecError`."""
    if isinstance(config, VQGANConfig):
        return config
    if isinstance(config, (str, Path)):
        import yaml

        path = Path(config)
        try:
            config = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise CodecError(f"cannot read config {path}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise CodecError(f"config {path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    try:
        return VQGANConfig.from_dict(config)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        detail = f"missing {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0]
        raise CodecError(
            f"the config is not a taming VQModel config (model.params with embed_dim, n_embed, ddconfig): {detail}"
        ) from None


def read_state_dict(path: Path | str) -> dict[str, torch.Tensor]:
    """The state_dict in a ``.safetensors`` file, or under ``state_dict`` in a Lightning ``.ckpt``
    (a bare state_dict pickle works too). Pickles are memory-mapped where their format allows, so a
    1 GB checkpoint with optimiser states does not have to fit in memory twice."""
    path = Path(path)
    if not path.is_file():
        raise CodecError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise CodecError(f"{path} is not a readable safetensors file ({exc})") from None
    try:
        if zipfile.is_zipfile(path):
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
            lightning = [(_placeholder(name), name) for name in names if _is_lightning(name)]
            with torch.serialization.safe_globals(lightning):
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        else:  # torch's legacy (pre-1.6) format: neither scanned for globals nor memory-mapped
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "refuse"
        raise CodecError(f"{path} cannot be loaded safely (weights_only=True): {str(exc).splitlines()[0]}") from None
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CodecError(f"{path} holds no state_dict of tensors")
    return sd


def load_taming_checkpoint(path: Path | str, config: VQGANConfig | dict | Path | str) -> VQModel:
    """Load an official taming VQGAN: a Lightning ``.ckpt`` or a ``.safetensors`` state_dict, plus
    its config (the ``model.yaml`` path, its dict, or a VQGANConfig). Raises :class:`CodecError`
    (one line) when the file cannot be read safely or does not match the config."""
    cfg = read_config(config)
    sd = {k: v for k, v in read_state_dict(path).items() if not k.startswith("loss.")}
    model = VQModel(cfg).eval()
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [k for k in expected if k in sd and sd[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        first = (
            f"{shapes[0]} is {list(sd[shapes[0]].shape)} in the checkpoint, {list(expected[shapes[0]].shape)} "
            f"in the config"
            if shapes
            else f"{len(missing)} key(s) missing (first {missing[0]})"
            if missing
            else f"{len(unexpected)} unexpected key(s) (first {unexpected[0]})"
        )
        raise CodecError(
            f"{path} does not match the config (embed_dim {cfg.embed_dim}, n_embed {cfg.n_embed}, "
            f"ch {cfg.ddconfig.ch}): {first}"
        )
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    return model
