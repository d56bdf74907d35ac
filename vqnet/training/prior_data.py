"""Training data for the concealment transformers: index maps of the training photos, and masks.

Index maps re-quantise the cached encoder outputs of whole photos and their mirror images
(:mod:`vqnet.training.photos`), so another K (or a fine-tuned codebook) costs seconds instead of
another pass of the encoder.

Masks imitate what the receiver sees: i.i.d. holes, raster-run packets and interleaved packets lost
in Gilbert-style bursts (the packetizer's two layouts), and rectangular blocks.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from vqnet.codec.bundle import Codec, CodecError

WINDOW = 16


def index_maps(codec: Codec, latents: list[torch.Tensor], K: int, min_side: int = WINDOW) -> list[np.ndarray]:
    """Quantise cached latents at K; grids smaller than the window on a side are dropped."""
    maps = []
    for z in latents:
        if min(z.shape[1:]) < min_side:
            continue
        maps.append(codec.quantize(z.float().unsqueeze(0), K).astype(np.int16))
    return maps


MAPS_FORMAT = "vqnet-index-maps"


def save_maps(path: Path, maps: list[np.ndarray], fingerprint: str, photos: int) -> None:
    """Write index maps with the codebook fingerprint they came from (uint8 when every K fits).

    Why a file: a lent GPU machine receives 64 MiB per call, far too little for the photos or
    their latents, but the maps of all 1,500 training photos and their mirrors are ~2 MB.
    """
    dtype = torch.uint8 if all(int(m.max(initial=0)) < 256 for m in maps) else torch.int16
    tensors = {f"m{i:05d}": torch.from_numpy(m.astype(np.int64)).to(dtype) for i, m in enumerate(maps)}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"format": MAPS_FORMAT, "fingerprint": fingerprint, "photos": str(photos)})
    tmp.replace(path)


def load_maps(path: Path, fingerprint: str) -> tuple[list[np.ndarray], int]:
    """(maps as int16, photo count) from :func:`save_maps`, refused unless made with ``fingerprint``."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            maps = [f.get_tensor(k).numpy().astype(np.int16) for k in sorted(f.keys())]
    except (OSError, SafetensorError) as exc:
        raise CodecError(f"cannot read index maps {path}: {exc}") from None
    if meta.get("format") != MAPS_FORMAT:
        raise CodecError(f"{path} is not an index-map file of vqnet")
    if meta.get("fingerprint") != fingerprint:
        raise CodecError(f"{path} holds index maps of another codebook or encoder; delete it to re-encode")
    return maps, int(meta.get("photos", 0))


def gilbert_losses(rng: np.random.Generator, n: int, loss: float, burst: float) -> np.ndarray:
    """``n`` lost/received flags from a two-state chain with mean loss ``loss`` and mean burst ``burst``."""
    burst = max(burst, 1.0)
    r = 1.0 / burst  # P(bad -> good)
    p = min(1.0, loss * r / max(1e-9, 1.0 - loss))  # P(good -> bad), stationary loss = p / (p + r)
    out = np.empty(n, dtype=bool)
    bad = rng.random() < loss
    u = rng.random(n)
    for k in range(n):
        out[k] = bad
        bad = (u[k] >= r) if bad else (u[k] < p)
    return out


# Mask kinds (i.i.d., raster runs, interleaved bursts, blocks) and their CDF, normalised as numpy's
# ``Generator.choice`` normalises it, so the draws below equal ``rng.choice(4, p=...)``.
_MASK_KIND_CDF = np.array([0.2, 0.3, 0.35, 0.15]).cumsum()
_MASK_KIND_CDF /= _MASK_KIND_CDF[-1]


def sample_mask(rng: np.random.Generator, h: int, w: int, max_ratio: float = 0.85) -> np.ndarray:
    """A boolean (h, w) loss mask over a whole image grid, shaped like one of the receiver's cases."""
    ratio = float(rng.uniform(0.03, max_ratio))
    # What ``rng.choice(4, p=...)`` draws (one uniform, searched in the normalised CDF), 30x cheaper.
    kind = int(_MASK_KIND_CDF.searchsorted(rng.random(), side="right"))
    n = h * w
    if kind == 0:  # i.i.d. token loss
        return rng.random((h, w)) < ratio
    if kind == 1:  # raster-run packets: contiguous runs in raster order
        run = int(rng.integers(4, 160))
        lost_pkts = gilbert_losses(rng, -(-n // run), ratio, float(rng.uniform(1, 8)))
        return np.repeat(lost_pkts, run)[:n].reshape(h, w)
    if kind == 2:  # interleaved packets: packet p carries positions p, p+P, p+2P, ...
        P = int(rng.integers(4, 120))
        lost_pkts = gilbert_losses(rng, P, ratio, float(rng.uniform(1, 8)))
        return lost_pkts[np.arange(n) % P].reshape(h, w)
    mask = np.zeros((h, w), dtype=bool)  # rectangles until the ratio is reached
    while mask.mean() < ratio:
        bh, bw = int(rng.integers(1, max(2, h // 2))), int(rng.integers(1, max(2, w // 2)))
        y, x = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
        mask[y : y + bh, x : x + bw] = True
    return mask


class WindowSampler:
    """Random 16x16 windows of the index maps, each with a loss mask cut from a whole-grid mask."""

    def __init__(self, maps: list[np.ndarray], size: int = WINDOW):
        if not maps:
            raise ValueError("no index map is at least one window large")
        self.maps = maps
        self.size = size

    def batch(self, rng: np.random.Generator, n: int, with_masks: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, size*size) int64 code windows in raster order and the matching bool masks (all True
        without ``with_masks``: the autoregressive model predicts every position and needs none)."""
        codes, masks = self.draw(rng, n, with_masks)
        return torch.from_numpy(codes), torch.from_numpy(masks)

    def draw(self, rng: np.random.Generator, n: int, with_masks: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`batch` as numpy arrays (what worker processes send back)."""
        s = self.size
        codes = np.empty((n, s, s), dtype=np.int64)
        masks = np.empty((n, s, s), dtype=bool)
        for k in range(n):
            grid = self.maps[int(rng.integers(len(self.maps)))]
            h, w = grid.shape
            y, x = int(rng.integers(h - s + 1)), int(rng.integers(w - s + 1))
            codes[k] = grid[y : y + s, x : x + s]
            masks[k] = sample_mask(rng, h, w)[y : y + s, x : x + s] if with_masks else True
        return codes.reshape(n, -1), masks.reshape(n, -1)


def step_rng(seed: int, step: int) -> np.random.Generator:
    """The generator of one training step's windows and masks.

    A pure function of (seed, step), so any process can draw any step's batch: a resumed run and a
    run whose batches were drawn ahead by workers see the same data as a plain one.
    """
    return np.random.default_rng([seed, step])


#: Longest wait for one drawn batch (batch 512 takes ~0.07 s on one core of this CPU).
WORKER_TIMEOUT_S = 600
_WORKER_SAMPLER: WindowSampler | None = None  # set in each worker process by _start_worker


def _start_worker(maps: list[np.ndarray]) -> None:
    global _WORKER_SAMPLER
    _WORKER_SAMPLER = WindowSampler(maps)


def _draw_step(seed: int, step: int, n: int, with_masks: bool) -> tuple[np.ndarray, np.ndarray]:
    assert _WORKER_SAMPLER is not None
    return _WORKER_SAMPLER.draw(step_rng(seed, step), n, with_masks)


class StepBatches:
    """Training batches by step number (:func:`step_rng`), drawn ahead by ``workers`` processes.

    Why: a masked model's loss masks cost ~0.14 ms a window in Python, so on a GPU the draws, not
    the model, set the pace (an H200 took 24 ms a step at batch 128 for ``masked``, 14 ms for
    ``ar``, whose windows need no masks). Workers change the speed, never the data. Use it as a
    context manager so the workers are stopped; ``workers=0`` draws in this process.
    """

    def __init__(self, maps: list[np.ndarray], seed: int, n: int, with_masks: bool, workers: int = 0):
        self.sampler = WindowSampler(maps)
        self.seed, self.n, self.with_masks = seed, n, with_masks
        self.ahead = 4 * workers  # batches in flight: enough to keep every worker busy, bounded memory
        self.pending: dict[int, Any] = {}
        self.pool: Any = None
        if workers > 0:
            # spawn, not fork: the parent may hold CUDA state, which a forked child must not inherit
            self.pool = multiprocessing.get_context("spawn").Pool(workers, _start_worker, (maps,))

    def __enter__(self) -> "StepBatches":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None

    def __call__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Step ``step``'s (codes, masks), as :meth:`WindowSampler.batch` returns them."""
        if self.pool is None:
            codes, masks = self.sampler.draw(step_rng(self.seed, step), self.n, self.with_masks)
        else:
            for s in range(step, step + self.ahead):
                if s not in self.pending:
                    self.pending[s] = self.pool.apply_async(_draw_step, (self.seed, s, self.n, self.with_masks))
            try:  # a worker killed from outside (out of memory, say) loses its batch without an error
                codes, masks = self.pending.pop(step).get(timeout=WORKER_TIMEOUT_S)
            except multiprocessing.TimeoutError:
                raise TimeoutError(
                    f"no batch from the window-drawing workers in {WORKER_TIMEOUT_S} s "
                    "(was one killed?); resume with --workers 0"
                ) from None
        return torch.from_numpy(codes), torch.from_numpy(masks)
