"""Rate-distortion evaluation of a codec on a folder of images (``vqnet eval``), with classical
baselines at matching rates.

Why this exists: the paper's bpp is log2(K)/f² (uniform coding of the indices, no container),
which is a lower bound nobody can transmit. Here every rate is the size of a real ``.vqn`` file
(header, packet headers, CRCs and the range-coded indices: :func:`vqnet.vqn.encode_vqn` +
:func:`~vqnet.vqn.write_vqn`) and each image is reconstructed from those very bytes, so the
rate-distortion points are ones a receiver could actually get. The paper's number is reported
beside ours so the gap is visible.

For each K of the codec: bpp, LPIPS-alex, DISTS, PSNR, MS-SSIM per image; codebook usage and
perplexity over the whole set. Then each classical codec (:mod:`vqnet.classical`) is coded per
image at the mean bpp vqnet reached at that K (never above it), so curves compare at equal rate.

A fine-tuned bundle also keeps its K-means codebooks (``Codec.raw_codec``); evaluating them too
(rows ``vqnet-raw``, each with its own prior, so its rate is honest) reproduces the paper's
"w/o fine-tune" ablation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from vqnet.chroma import receiver_settings
from vqnet.classical import ClassicalCoder, RateError, unavailable_reason
from vqnet.codec.bundle import Codec
from vqnet.dists import DISTS, dists_input, get_dists
from vqnet.images import NamedImage
from vqnet.journal import Journal, fingerprint, require_scalars
from vqnet.metrics import MS_SSIM_MIN_SIDE, bpp, lpips_distance, ms_ssim, psnr
from vqnet.packets import Layout
from vqnet.runtime import describe
from vqnet.vqn import decode_vqn, encode_vqn, read_vqn, write_vqn

#: Name of the learned codec in the tables and plots.
VQNET = "vqnet"
#: The same codec with the K-means codebooks its rungs were fine-tuned from.
VQNET_RAW = "vqnet-raw"
#: ``--codebooks`` choices -> the vqnet rows they produce; the first one sets the classical rates.
CODEBOOK_SETS = {"finetuned": (VQNET,), "raw": (VQNET_RAW,), "both": (VQNET, VQNET_RAW)}
DEFAULT_CLASSICAL = ("jpeg", "webp", "avif")
#: One row per (image, codec, K). For classical codecs K names the vqnet rung whose mean bpp
#: was the target; scale and quality are the winning classical settings.
IMAGE_COLUMNS = [
    "image",
    "codec",
    "K",
    "target_bpp",
    "bytes",
    "bpp",
    "scale",
    "quality",
    "lpips",
    "dists",
    "psnr",
    "ms_ssim",
]
#: One row per (codec, K): means over the images that codec could code (n_images of them).
RD_COLUMNS = [
    "codec",
    "K",
    "n_images",
    "target_bpp",
    "bpp",
    "bpp_uniform_paper",
    "lpips",
    "dists",
    "psnr",
    "ms_ssim",
    "code_usage",
    "perplexity",
]
_MEANS = ("bpp", "lpips", "dists", "psnr", "ms_ssim")  # averaged over images in the rd table


@dataclass(frozen=True)
class Example:
    """A reconstruction of the first image, with the numbers the grid prints under it."""

    image: np.ndarray
    bpp: float
    lpips: float


@dataclass
class EvalOutput:
    """Tables of one evaluation plus the reconstructions of its first image (for the grid)."""

    per_image: pd.DataFrame  # IMAGE_COLUMNS
    rd: pd.DataFrame  # RD_COLUMNS
    original: NamedImage
    examples: dict[tuple[str, int], Example]  # (codec, K) -> reconstruction of ``original``
    notes: list[str] = field(default_factory=list)  # what was skipped, one line each


class _Scorer:
    """Scores reconstructions of one original, running DISTS's VGG16 on the original only once."""

    def __init__(self, ref: np.ndarray, with_dists: bool, device: torch.device) -> None:
        self.ref, self.device = ref, device  # where LPIPS and DISTS run
        self.with_ms_ssim = min(ref.shape[:2]) > MS_SSIM_MIN_SIDE
        self.dists: DISTS | None = None
        if with_dists:
            self.dists = get_dists(str(device))  # VGG16 and its weights load only when DISTS is asked for
            with torch.inference_mode():
                self.ref_features = self.dists.features(dists_input(ref).to(device))

    def __call__(self, test: np.ndarray, lpips: float | None = None) -> dict[str, float]:
        """All metrics of ``test``; pass ``lpips`` when it is already known (saves a forward pass)."""
        scores = {
            "lpips": lpips_distance(self.ref, test, self.device) if lpips is None else lpips,
            "psnr": psnr(self.ref, test),
            "ms_ssim": ms_ssim(self.ref, test) if self.with_ms_ssim else math.nan,
            "dists": math.nan,
        }
        if self.dists is not None:
            with torch.inference_mode():
                features = self.dists.features(dists_input(test).to(self.device))
                scores["dists"] = self.dists.compare(self.ref_features, features).item()
        return scores


def usable_codecs(classical: Sequence[str]) -> tuple[list[str], list[str]]:
    """The classical codecs this Pillow can run, and one note for each it cannot.

    Raises ``ClassicalError`` for a name that is no classical codec at all.
    """
    usable, notes = [], []
    for name in classical:
        if (reason := unavailable_reason(name)) is None:
            usable.append(name)
        else:
            notes.append(f"{name} skipped: {reason}")
    return usable, notes


def count_steps(n_images: int, n_ks: int, classical: Sequence[str], codebooks: str = "finetuned") -> int:
    """Progress-bar total of :func:`evaluate`: one step per coded (image, codec, K)."""
    return n_images * n_ks * (len(CODEBOOK_SETS[codebooks]) + len(usable_codecs(classical)[0]))


def eval_ladder(codec: Codec, ks: Sequence[int] | None) -> list[int]:
    """The K to evaluate, largest first: ``ks`` without repeats, or the whole ladder; a K the
    codec lacks raises ``CodecError``."""
    return sorted({codec.codebook(K).K for K in ks}, reverse=True) if ks else codec.ks


# Bumped when what a journal line holds changes, so an old journal is not reused.
_JOURNAL_FORMAT = 1

#: One coded (image, codec, K): its per-image row (None: the codec could not reach the rate) and,
#: for vqnet rows, how often each code was used.
Unit = tuple[dict | None, list[int] | None]


class EvalJournal(Journal[Unit]):
    """The finished codings of one evaluation (:mod:`vqnet.journal`), one line per (image, codec, K),
    so a killed ``vqnet eval`` (over an hour with DISTS on Kodak) resumes instead of starting over."""

    kind = "an eval"
    origin = "another model, image set or set of options"

    @staticmethod
    def dump(unit: Unit) -> dict:
        return {"row": unit[0], "counts": unit[1]}

    @staticmethod
    def parse(entry: dict) -> Unit:
        image, codec, K = entry["key"]
        row, counts = entry["row"], entry["counts"]
        if row is not None and (require_scalars(row)["image"], row["K"]) != (image, K):
            raise TypeError("a row does not belong to its coding")
        if row is not None and not all(isinstance(row.get(m), (int, float)) for m in ("bpp", "lpips", "psnr")):
            raise TypeError("a row lacks its scores")
        if codec in CODEBOOK_SETS["both"] and not (
            row is not None
            and isinstance(counts, list)
            and len(counts) == K
            and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts)
        ):
            raise TypeError("a vqnet coding has a row and a count per code")
        if codec not in CODEBOOK_SETS["both"] and counts is not None:
            raise TypeError("a classical coding has no code counts")
        return row, counts

    @staticmethod
    def key(image: str, codec: str, K: int) -> str:  # type: ignore[override]
        return Journal.key(image, codec, K)


def eval_fingerprint(
    codec: Codec,
    images: Sequence[NamedImage],
    *,
    with_dists: bool,
    classical: Sequence[str],
    max_payload: int,
    codebooks: str,
    ks: Sequence[int],
    layout: Layout = "interleaved",
    chroma_cells: int = 0,
) -> str:
    """sha256 of everything an evaluation's rows depend on: the model, where and in which
    precision it runs (a GPU's scores differ from the CPU's in the last digits), the options and
    the images."""
    return fingerprint(
        {
            "journal": _JOURNAL_FORMAT,
            "model": codec.model_id,
            "dists": with_dists,
            "classical": list(classical),
            "max_payload": max_payload,
            "layout": layout,
            "codebooks": codebooks,
            "ks": list(ks),
            "columns": IMAGE_COLUMNS,
            "chroma_cells": chroma_cells,
            "precision": codec.precision,
        }
        | describe(codec.device)
        | receiver_settings(chroma_cells),
        images,
    )


def evaluate(
    codec: Codec,
    images: Sequence[NamedImage],
    *,
    with_dists: bool = True,
    classical: Sequence[str] = DEFAULT_CLASSICAL,
    max_payload: int = 1000,
    layout: Layout = "interleaved",
    codebooks: str = "finetuned",
    ks: Sequence[int] | None = None,
    chroma_cells: int = 0,
    advance: Callable[[int, str], None] = lambda n, label: None,
    journal: EvalJournal | None = None,
) -> EvalOutput:
    """Evaluate ``codec`` at each of its K on ``images``, then each classical codec at vqnet's rates.

    ``codebooks`` (a :data:`CODEBOOK_SETS` key) picks the stored codebooks, their K-means
    ancestors, or both; raises ``CodecError`` when raw ones are asked for and the bundle has none.
    ``ks`` restricts the ladder (the whole Kodak ladder with DISTS, classical codecs and both
    codebook sets took 96 min on 2 cores). ``chroma_cells`` > 0 adds the colour packet
    (:mod:`vqnet.chroma`) to every vqnet file. ``advance(1, label)`` is called after each coded
    (image, codec, K).
    Classical codecs this Pillow lacks are skipped, and images a codec cannot code within the
    budget are left out of its means; both are listed in ``notes``.

    With a ``journal`` (opened with :func:`eval_fingerprint` of the same arguments), codings it
    holds are not redone and each new one is appended to it; the first image's codings are
    redone for the grid's pictures, keeping the journal's rows. Every step is deterministic, so
    a resumed evaluation gives the tables an uninterrupted one gives.
    """
    if not images:
        raise ValueError("no images to evaluate")
    usable, notes = usable_codecs(classical)  # before the slow part, so a typo fails at once
    ladder = eval_ladder(codec, ks)
    variants = {label: codec.raw_codec() if label == VQNET_RAW else codec for label in CODEBOOK_SETS[codebooks]}
    done: dict[str, Unit] = journal.done if journal else {}
    rows: list[dict] = []
    examples: dict[tuple[str, int], Example] = {}
    counts = {(label, K): np.zeros(K, dtype=np.int64) for label in variants for K in ladder}

    def record(key: str, unit: Unit) -> None:
        if journal:
            journal.append(key, unit)
        else:
            done[key] = unit

    for n, item in enumerate(images):
        score: _Scorer | None = None  # built when a coding of this image has to be scored
        for label, variant in variants.items():
            for K in ladder:
                key = EvalJournal.key(item.name, label, K)
                if label == VQNET_RAW and VQNET in variants and codec.codebook(K).raw is None:
                    # a rung never fine-tuned is its own raw codebook: same numbers, same picture
                    if key not in done:
                        record(key, done[EvalJournal.key(item.name, VQNET, K)])
                    if n == 0:
                        examples[(label, K)] = examples[(VQNET, K)]
                elif key not in done or n == 0:
                    score = score or _Scorer(item.pixels, with_dists, codec.device)
                    row, used, image = _code_vqnet(variant, item, K, score, max_payload, layout, chroma_cells)
                    if key not in done:
                        record(key, (row, used.tolist()))
                    if n == 0:
                        examples[(label, K)] = Example(image, done[key][0]["bpp"], done[key][0]["lpips"])
                row, used = done[key]
                rows.append(row | {"codec": label})
                counts[(label, K)] += np.asarray(used, dtype=np.int64)
                advance(1, f"{item.name} {label} K={K}")
    vq = pd.DataFrame(rows)
    targets = vq[vq["codec"] == CODEBOOK_SETS[codebooks][0]].groupby("K")["bpp"].mean().to_dict()

    missed: dict[tuple[str, int], int] = {}
    for n, item in enumerate(images):
        # Scoring the original again costs one VGG16 pass; keeping every image's features from
        # the first loop instead would hold ~200 MB per Kodak image.
        score = None
        coder = ClassicalCoder(item.pixels, codec.device)
        for name in usable:
            for K in ladder:
                key = EvalJournal.key(item.name, name, K)
                if key not in done or n == 0:
                    try:
                        res = coder.at_bpp(name, targets[K])
                    except RateError:
                        res = None
                    if key not in done:
                        row = None
                        if res is not None:
                            score = score or _Scorer(item.pixels, with_dists, codec.device)
                            row = {
                                "image": item.name,
                                "codec": name,
                                "K": K,
                                "target_bpp": targets[K],
                                "bytes": res.n_bytes,
                                "bpp": res.bpp,
                                "scale": res.scale,
                                "quality": res.quality,
                            } | score(res.image, lpips=res.lpips)
                        record(key, (row, None))
                    if n == 0 and res is not None:
                        examples[(name, K)] = Example(res.image, res.bpp, res.lpips)
                if (row := done[key][0]) is None:
                    missed[(name, K)] = missed.get((name, K), 0) + 1
                else:
                    rows.append(row)
                advance(1, f"{item.name} {name} K={K}")
    notes += [
        f"{name} could not reach {targets[K]:.4f} bpp (K={K}) on {m} of {len(images)} images; its means leave them out"
        for (name, K), m in missed.items()
    ]
    if small := sum(min(item.pixels.shape[:2]) <= MS_SSIM_MIN_SIDE for item in images):
        notes.append(
            f"MS-SSIM left out for {small} of {len(images)} images with a side of at most "
            f"{MS_SSIM_MIN_SIDE} px (too small for its 5 scales)"
        )

    per_image = pd.DataFrame(rows).reindex(columns=IMAGE_COLUMNS)
    return EvalOutput(per_image, _rd_table(per_image, counts, codec.factor), images[0], examples, notes)


def _code_vqnet(
    codec: Codec, item: NamedImage, K: int, score: _Scorer, max_payload: int, layout: Layout, chroma_cells: int
) -> tuple[dict, np.ndarray, np.ndarray]:
    """Code ``item`` into a real .vqn file at K and decode those bytes: (row, code counts, image)."""
    h, w = item.pixels.shape[:2]
    data = write_vqn(encode_vqn(codec, item.pixels, K, max_payload, layout, chroma_cells))
    decoded = decode_vqn(codec, read_vqn(data), method="none")
    if decoded.concealed:
        raise RuntimeError(f"{item.name}: an intact .vqn file decoded with lost indices")
    row = {"image": item.name, "K": K, "bytes": len(data), "bpp": bpp(len(data), h, w)} | score(decoded.image)
    return row, np.bincount(decoded.received.indices.ravel(), minlength=K), decoded.image


def _rd_table(per_image: pd.DataFrame, counts: dict[tuple[str, int], np.ndarray], factor: int) -> pd.DataFrame:
    """Means per (codec, K), with vqnet's set-wide code statistics and the paper's uniform bpp."""
    rd = (
        per_image.groupby(["codec", "K"], sort=False)
        .agg(n_images=("image", "size"), target_bpp=("target_bpp", "mean"), **{m: (m, "mean") for m in _MEANS})
        .reset_index()
    )
    is_vq = rd["codec"].isin({label for label, _ in counts})
    vq_keys = list(zip(rd.loc[is_vq, "codec"], rd.loc[is_vq, "K"]))
    # What the paper reports: log2(K) bits per index, one index per f x f pixels, nothing else.
    rd.loc[is_vq, "bpp_uniform_paper"] = np.log2(rd.loc[is_vq, "K"].astype(float)) / factor**2
    rd.loc[is_vq, "code_usage"] = [float((counts[key] > 0).mean()) for key in vq_keys]
    rd.loc[is_vq, "perplexity"] = [perplexity(counts[key]) for key in vq_keys]
    return rd.reindex(columns=RD_COLUMNS)


def perplexity(counts: np.ndarray) -> float:
    """``exp`` of the entropy of the empirical code distribution: the number of equally used
    codes that would carry the same information (K for perfectly uniform use)."""
    p = counts[counts > 0] / counts.sum()
    return float(np.exp(-(p * np.log(p)).sum()))
