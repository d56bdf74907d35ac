"""Where and how the decoder, the concealers and LPIPS run: the device (``cpu``, ``cuda``, ``auto``),
the decoder's precision (``float32``, ``bf16``) and the process settings that make a CPU decode fast.

Why bf16 is refused on most CPUs: it is only fast where the CPU multiplies bf16 natively (AMX, or
AVX512-BF16); elsewhere oneDNN emulates it and a decode gets many times *slower* (25x on an
AVX2-only machine of this project). The CPU's flags come from ``/proc/cpuinfo``; the environment
variable ``VQNET_CPU_FLAGS`` (space- or comma-separated) replaces them, so that a test can play a
CPU without the instructions.

See docs/performance.md for the measurements behind every choice here.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from pathlib import Path

import torch

from vqnet.errors import VqnetError

PRECISIONS = ("float32", "bf16")
#: CPU flags (as Linux names them) whose presence makes bf16 matmuls and convolutions fast.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
CPU_FLAGS_ENV = "VQNET_CPU_FLAGS"


class DeviceError(VqnetError, ValueError):
    """A device or precision this machine cannot honour; the message is one line for the user."""


def cpu_flags() -> set[str]:
    """The CPU's feature flags (``VQNET_CPU_FLAGS`` if set); empty where they cannot be read."""
    override = os.environ.get(CPU_FLAGS_ENV)
    if override is not None:
        return set(override.replace(",", " ").split())
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda[:N]`` or ``auto`` (a GPU when one is visible) as a torch device; a GPU asked
    for on a machine without one is a :class:`DeviceError`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise DeviceError(f"--device must be cpu or cuda[:N] (or auto), got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"--device {name}: no CUDA GPU is visible on this machine; use --device cpu (or auto)")
    return device


def check_precision(precision: str, device: torch.device) -> str:
    """``precision`` if ``device`` runs it fast, else a one-line :class:`DeviceError`."""
    if precision not in PRECISIONS:
        raise DeviceError(f"precision must be {' or '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise DeviceError(
                f"precision bf16: {torch.cuda.get_device_name(device)} has no bfloat16 support; use float32"
            )
        if device.type == "cpu" and not cpu_flags() & set(BF16_CPU_FLAGS):
            raise DeviceError(
                "precision bf16 needs a CPU with AMX or AVX512-BF16 (flags amx_bf16 / avx512_bf16), "
                "which this one lacks; without them bf16 is slower than float32: use float32"
            )
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The context a decode runs in: bf16 autocast, or nothing for float32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def keep_freed_memory() -> None:
    """Ask glibc's malloc to keep freed blocks instead of handing them back to the kernel.

    Why: a 512 x 512 decode allocates and frees tens of activations of up to 33.5 MB; by default
    glibc maps each large one fresh (``mmap``) and unmaps it on free, so every decode pays for
    faulting in ~650 MB of zeroed pages. Reusing them takes a quarter off the decode
    (docs/performance.md) and changes no number. A no-op where the C library is not glibc.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 1 << 30)
    mallopt(m_trim_threshold, (1 << 31) - 1)


def prepare(device: str, precision: str = "float32") -> tuple[torch.device, str]:
    """Resolve and check ``device`` and ``precision`` for this process and set it up for them:
    malloc keeps freed memory; on a GPU, float32 means float32 (cuDNN's TF32 off) and cuDNN
    picks deterministic kernels, so a rerun gives the same table."""
    dev = resolve_device(device)
    check_precision(precision, dev)
    if dev.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    keep_freed_memory()
    return dev, precision


def describe(device: torch.device) -> dict:
    """What a result computed on ``device`` depends on besides the inputs, for journal fingerprints:
    the device kind, and on a CPU torch's thread count (a different count splits reductions
    differently, which moves the last bits of a decode)."""
    return {"device": device.type} | ({"threads": torch.get_num_threads()} if device.type == "cpu" else {})
