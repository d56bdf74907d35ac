"""Run a scenario: image -> indices -> packets -> channel -> holes -> restored indices -> image -> scores.

Each stage is a plain function from its own module; this one only wires them and records a row per
trial. Determinism: a trial's channel seed derives from the scenario seed and the trial's key
(image, K, loss, burst, repetition) — not from the method — so every method sees the *same* loss
pattern (a paired comparison) and the table does not depend on run order.
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from vqnet.channel.link import LinkConfig, transmit
from vqnet.codec.bundle import Codec, load_codec
from vqnet.images import NamedImage, load_images
from vqnet.metrics import bpp, lpips_distance, psnr
from vqnet.packets import depacketize, packetize
from vqnet.restore import RestoreContext, restore
from vqnet.scenario import Scenario

# Columns of results.csv, in order. Timings are kept out of it (timings.csv) so that the same
# scenario and seed give a byte-identical table.
RESULT_COLUMNS = [
    "image", "height", "width", "K", "max_payload", "layout", "channel", "target_loss", "burst", "trial",
    "method", "n_packets", "packets_lost", "packet_loss", "index_loss", "mean_burst", "bytes_sent", "bpp",
    "lossless_lpips", "lossless_psnr", "lpips", "psnr", "lost_index_accuracy",
]


def trial_seed(root: int, *key: object) -> int:
    """A 63-bit seed from the scenario seed and a trial key, stable across runs and platforms."""
    digest = hashlib.sha256(repr((root,) + key).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@dataclass
class Encoded:
    """Everything the sender has for one (image, K): computed once, reused by every trial."""

    image: NamedImage
    K: int
    indices: np.ndarray
    packets: list[bytes]
    lossless: np.ndarray
    lossless_lpips: float
    lossless_psnr: float


@dataclass
class SweepOutput:
    results: pd.DataFrame
    timings: pd.DataFrame
    examples: dict[tuple[str, float | None], np.ndarray] = field(default_factory=dict)
    originals: dict[str, np.ndarray] = field(default_factory=dict)
    lossless: dict[str, np.ndarray] = field(default_factory=dict)


def encode_image(codec: Codec, image: NamedImage, latent: torch.Tensor, K: int, max_payload: int, layout: str,
                 image_id: int) -> Encoded:
    """Quantise the image's encoder output at K, packetize it and score the loss-free decode."""
    indices = codec.quantize(latent, K)
    packets = packetize(indices, codec.codebook(K).prior, max_payload, layout=layout, image_id=image_id)
    h, w = image.pixels.shape[:2]
    lossless = codec.decode(indices, K, (h, w))
    return Encoded(image, K, indices, packets, lossless, lpips_distance(image.pixels, lossless), psnr(image.pixels, lossless))


def count_trials(sc: Scenario, n_images: int) -> int:
    return n_images * len(sc.K) * len(sc.channel.points()) * sc.trials * len(sc.methods)


def run_sweep(sc: Scenario, codec: Codec | None = None, images: list[NamedImage] | None = None,
              advance: Callable[[int, str], None] | None = None) -> SweepOutput:
    """Run every trial of ``sc`` and return the tables; ``advance(n, label)`` reports progress."""
    codec = codec or load_codec(sc.model)
    images = images if images is not None else load_images(sc.images.source, sc.images.names, sc.images.limit)
    for K in sc.K:
        codec.codebook(K)  # fail before any work if a K is missing
    link = LinkConfig(**sc.link.model_dump())
    example_image = sc.examples.image or images[0].name
    rows: list[dict] = []
    timing_rows: list[dict] = []
    out = SweepOutput(pd.DataFrame(), pd.DataFrame())
    for image_id, image in enumerate(images):
        h, w = image.pixels.shape[:2]
        t0 = time.perf_counter()
        latent = codec.encode_latent(image.pixels)
        latent_ms = 1000 * (time.perf_counter() - t0)
        for K in sc.K:
            t0 = time.perf_counter()
            enc = encode_image(codec, image, latent, K, sc.packets.max_payload, sc.packets.layout, image_id)
            encode_ms = latent_ms + 1000 * (time.perf_counter() - t0)
            if image.name == example_image and K == sc.K[0]:
                out.originals[image.name] = image.pixels
                out.lossless[image.name] = enc.lossless
            ctx = RestoreContext(K=K, prior=codec.codebook(K).prior)
            sizes = [len(p) for p in enc.packets]
            bytes_sent = int(sum(sizes))
            for target_loss, burst in sc.channel.points():
                loss_model = sc.channel.loss_model(target_loss, burst)
                for trial in range(sc.trials):
                    seed = trial_seed(sc.seed, image.name, K, target_loss, burst, trial)
                    rng = np.random.default_rng(seed)
                    sent = transmit(sizes, loss_model, link, rng)
                    received = [p for p, ok in zip(enc.packets, sent.delivered) if ok]
                    got = depacketize(received, {K: ctx.prior}, shape=enc.indices.shape, image_id=image_id)
                    base = {
                        "image": image.name, "height": h, "width": w, "K": K, "max_payload": sc.packets.max_payload,
                        "layout": sc.packets.layout, "channel": loss_model.name,
                        "target_loss": target_loss if target_loss is not None else round(loss_model.expected_loss, 6),
                        "burst": burst if burst is not None else np.nan, "trial": trial,
                        "n_packets": len(sizes), "packets_lost": int(sent.n_sent - sent.n_delivered),
                        "packet_loss": sent.packet_loss_ratio, "index_loss": float(got.lost.mean()),
                        "mean_burst": sent.mean_burst, "bytes_sent": bytes_sent, "bpp": bpp(bytes_sent, h, w),
                        "lossless_lpips": enc.lossless_lpips, "lossless_psnr": enc.lossless_psnr,
                    }
                    for method in sc.methods:
                        t1 = time.perf_counter()
                        restored = restore(method, got.indices, got.lost, RestoreContext(K, ctx.prior, seed))
                        t2 = time.perf_counter()
                        recon = codec.decode(restored, K, (h, w))
                        t3 = time.perf_counter()
                        lp = lpips_distance(image.pixels, recon)
                        t4 = time.perf_counter()
                        n_lost = int(got.lost.sum())
                        acc = float((restored[got.lost] == enc.indices[got.lost]).mean()) if n_lost else np.nan
                        rows.append(base | {"method": method, "lpips": lp, "psnr": psnr(image.pixels, recon),
                                            "lost_index_accuracy": acc})
                        timing_rows.append({"image": image.name, "K": K, "target_loss": base["target_loss"],
                                            "burst": base["burst"], "trial": trial, "method": method,
                                            "encode_ms": encode_ms, "restore_ms": 1000 * (t2 - t1),
                                            "decode_ms": 1000 * (t3 - t2), "lpips_ms": 1000 * (t4 - t3),
                                            "lost_indices": n_lost})
                        if (image.name == example_image and K == sc.K[0] and trial == 0
                                and burst == (sc.channel.points()[0][1]) and _shown(target_loss, sc.examples.losses)):
                            out.examples[(method, target_loss)] = recon
                        if advance:
                            advance(1, f"{image.name} K={K} loss={base['target_loss']:.2f} {method}")
    out.results = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    out.timings = pd.DataFrame(timing_rows)
    return out


def _shown(target_loss: float | None, losses: list[float]) -> bool:
    return target_loss is None or any(abs(target_loss - x) < 1e-9 for x in losses)


def write_results(out: SweepOutput, folder: Path) -> dict[str, Path]:
    """Write results.csv (deterministic), timings.csv and return the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"results": folder / "results.csv", "timings": folder / "timings.csv"}
    for key, df in (("results", out.results), ("timings", out.timings)):
        tmp = paths[key].with_suffix(".tmp")
        df.to_csv(tmp, index=False, float_format="%.6g")
        tmp.replace(paths[key])
    return paths
