"""Run a scenario: image -> indices -> packets -> channel -> holes -> restored indices -> image -> scores.

Each stage is a plain function from its own module; this one only wires them and records a row per
trial. Determinism: a trial's channel seed derives from the scenario seed and the trial's key
(image, K, loss, burst, repetition) — not from the method — so every method sees the *same* loss
pattern (a paired comparison) and the table does not depend on run order. A scenario's schemes
(:meth:`Scenario.protection_schemes`: K with its parity and retransmission) run in turn, and when the
scenario lists them the seed leaves out K, so they all meet the same channel. The sender
(:func:`vqnet.sender.send`, parity included) and the receiver (:func:`vqnet.receiver.receive`, FEC
recovery included) are those of ``.vqn`` files; this module puts the channel between them.

Resuming: with a :class:`TrialJournal`, every finished trial is appended to ``partial.jsonl`` in
the output folder as it completes, and a rerun after a crash or ``kill -9`` skips the trials found
there. Because a trial's seed depends only on its key, the rerun's ``results.csv`` is the one an
uninterrupted run writes, byte for byte.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import torch

from vqnet.channel.link import TransmissionResult, transmit
from vqnet.channel.loss import LossModel
from vqnet.channel.mask import IndexMask, mean_run
from vqnet.chroma import decode_in_colour, receiver_settings
from vqnet.codec.bundle import Codec, load_codec
from vqnet.images import NamedImage, load_images
from vqnet.journal import Journal, fingerprint, require_scalars
from vqnet.metrics import bpp, lpips_distance, lpips_distances, psnr
from vqnet.receiver import Received, conceal, decode, receive, receive_masked
from vqnet.restore import MODEL_KIND
from vqnet.restore.store import concealer_path, load_concealer
from vqnet.runtime import describe
from vqnet.scenario import Scenario, Scheme
from vqnet.sender import PacketSettings, Sent, send
from vqnet.summary import resolved, summarize
from vqnet.weights import sha256_of

# Columns of results.csv, in order. Timings are kept out of it (timings.csv) so that the same
# scenario and seed give a byte-identical table.
RESULT_COLUMNS = [
    "image",
    "height",
    "width",
    "K",
    "max_payload",
    "layout",
    "channel",
    "target_loss",
    "burst",
    "trial",
    "method",
    "n_packets",
    "packets_lost",
    "packet_loss",
    "index_loss",
    "mean_burst",
    "delivery_s",
    "bytes_sent",
    "bpp",
    "lossless_lpips",
    "lossless_psnr",
    "lpips",
    "psnr",
    "lost_index_accuracy",
]

#: results.csv of a scenario that protects its packets or compares schemes (:attr:`Scenario.protected`):
#: RESULT_COLUMNS with the scheme and what its parity and retransmissions did. Every trial row holds
#: these (the journal keeps them all); an unprotected sweep's table leaves the extra ones out, so it
#: stays the table vqnet wrote before protection existed.
_AT_K, _AFTER_BPP = RESULT_COLUMNS.index("K") + 1, RESULT_COLUMNS.index("bpp") + 1
PROTECTED_COLUMNS = [
    *RESULT_COLUMNS[:_AT_K],
    "scheme",
    *RESULT_COLUMNS[_AT_K:_AFTER_BPP],
    "parity_packets",
    "packets_recovered",
    "retransmissions",
    "bytes_on_wire",
    "bpp_on_wire",
    *RESULT_COLUMNS[_AFTER_BPP:],
]


def result_columns(sc: Scenario) -> list[str]:
    """results.csv's columns for ``sc``: :data:`PROTECTED_COLUMNS` when it protects, else :data:`RESULT_COLUMNS`."""
    return PROTECTED_COLUMNS if sc.protected else RESULT_COLUMNS


#: The columns of PROTECTED_COLUMNS that hold text; every other one holds a number (or null).
_TEXT_COLUMNS = {"image", "scheme", "layout", "channel", "method"}

# Bumped when the journal lines or what a row holds change, so an old journal is not reused.
_JOURNAL_FORMAT = 2


def trial_seed(root: int, *key: object) -> int:
    """A 63-bit seed from the scenario seed and a trial key, stable across runs and platforms."""
    digest = hashlib.sha256(repr((root,) + key).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@dataclass
class Encoded:
    """One (image, scheme) as sent and its loss-free decode: computed once, reused by every trial."""

    image: NamedImage
    sent: Sent
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


def encode_image(
    codec: Codec, image: NamedImage, latent: torch.Tensor, K: int, settings: PacketSettings, image_id: int
) -> Encoded:
    """Send the image at K from its encoder output (:func:`vqnet.sender.send`) and score the
    loss-free decode."""
    sent = send(codec, image.pixels, K, settings, image_id=image_id, latent=latent)
    lossless = decode_in_colour(codec, sent.indices, K, sent.size, sent.colour)
    return Encoded(
        image, sent, lossless, lpips_distance(image.pixels, lossless, codec.device), psnr(image.pixels, lossless)
    )


def count_trials(sc: Scenario, n_images: int, per_method: bool = True) -> int:
    """Method-trials of the sweep (trials alone with ``per_method`` False): exact for a fixed trial
    count, the upper bound for adaptive ones."""
    schemes = sc.protection_schemes()
    per_point = sum(len(sc.scheme_methods(s)) for s in schemes) if per_method else len(schemes)
    return n_images * per_point * len(sc.channel.points()) * sc.max_trials


@dataclass(frozen=True)
class TrialRecord:
    """One finished trial: its results.csv rows and timings.csv rows (one per method)."""

    rows: list[dict]
    timings: list[dict]


def _model_kinds(sc: Scenario, scheme: Scheme) -> list[str]:
    """The concealment transformers a scheme's methods load (``ar-mbr`` uses the ``ar`` file)."""
    return sorted({MODEL_KIND[m] for m in sc.scheme_methods(scheme) if m in MODEL_KIND})


#: Scenario fields no trial's rows depend on: how many trials run (a trial's rows depend only on its
#: key), the free text, and which trials are drawn in examples.png. Raising ``trials`` and rerunning
#: resumes from the journal and runs only the new trials.
_NOT_IN_ROWS = {"trials", "description", "examples"}


def sweep_fingerprint(sc: Scenario, codec: Codec, images: list[NamedImage]) -> str:
    """sha256 of everything a trial's rows depend on: the scenario (but :data:`_NOT_IN_ROWS`), the
    codec weights (model id), the concealment models the scenario uses, the images' names and
    pixels, and where and in which precision the codec runs (:func:`vqnet.runtime.describe`). A
    journal written under another fingerprint is refused, because mixing its rows with new ones
    would give a table no single run could produce."""
    concealers = {
        f"{m}.K{s.K}": sha256_of(path) if (path := concealer_path(codec, m, s.K)).is_file() else None
        for s in sc.protection_schemes()
        for m in _model_kinds(sc, s)
    }
    trace = sc.channel.params.get("path") if sc.channel.model == "trace" else None
    return fingerprint(
        {
            "journal": _JOURNAL_FORMAT,
            "scenario": sc.model_dump(mode="json", exclude=_NOT_IN_ROWS),
            "model": codec.model_id,
            "concealers": concealers,
            "columns": result_columns(sc),
            "trace": None if trace is None else sha256_of(Path(str(trace))),
            "precision": codec.precision,
        }
        | describe(codec.device)
        | receiver_settings(sc.packets.chroma_cells),
        images,
    )


class TrialJournal(Journal[TrialRecord]):
    """The finished trials of one sweep (:mod:`vqnet.journal`), one line per trial. Why per trial
    and not per row: a trial's rows (one per method) then reach the disk together."""

    kind = "a sweep"
    origin = "another scenario, model or image set"

    @staticmethod
    def dump(unit: TrialRecord) -> dict:
        return {"rows": unit.rows, "timings": unit.timings}

    @staticmethod
    def parse(entry: dict) -> TrialRecord:
        image, scheme, _, _, trial = entry["key"]
        rows, timings = entry["rows"], entry["timings"]
        if not (isinstance(rows, list) and isinstance(timings, list) and rows and len(rows) == len(timings)):
            raise TypeError("a trial has one row and one timing per method")
        for row in rows:
            require_scalars(row, PROTECTED_COLUMNS)
            if (row["image"], row["scheme"], row["trial"]) != (image, scheme, trial) or not all(
                isinstance(v, str) == (c in _TEXT_COLUMNS) for c, v in row.items() if v is not None
            ):
                raise TypeError("a row does not belong to its trial, or a value has the wrong type")
        if len({row["method"] for row in rows}) < len(rows):
            raise TypeError("a method is listed twice")
        return TrialRecord(rows, [require_scalars(t) for t in timings])

    @staticmethod
    def key(image: str, scheme: str, target_loss: float | None, burst: float | None, trial: int) -> str:  # type: ignore[override]
        return Journal.key(image, scheme, target_loss, burst, trial)


@dataclass(frozen=True)
class TrialTask:
    """One trial to run, by position in the sweep's images, schemes (:meth:`Scenario.protection_schemes`)
    and channel points."""

    image_id: int
    k_i: int
    p_i: int
    trial: int
    shown: bool  # it feeds examples.png: send its reconstructions back
    example: bool  # of the example image in the first scheme: send the loss-free decode back


@dataclass
class TrialResult:
    task: TrialTask
    record: TrialRecord
    recons: dict[str, np.ndarray]  # per method, for shown trials
    lossless: np.ndarray | None  # for example trials


class TrialWorker:
    """Runs any trial of one sweep; each (image, scheme) is encoded, packetized and given its parity once, on its first
    trial here. A sweep has one in its own process (:class:`SerialPool`) or one per Ray actor
    (:mod:`vqnet.cluster`); since a trial's seed depends only on its key, where it runs changes
    none of its numbers."""

    def __init__(self, sc: Scenario, codec: Codec, images: list[NamedImage]):
        self.sc, self.codec, self.images = sc, codec, images
        self.schemes = sc.protection_schemes()
        self.points = sc.channel.points()
        self.latents: dict[int, tuple[torch.Tensor, float]] = {}
        self.runners: dict[tuple[int, int], _TrialRunner] = {}

    def _runner(self, image_id: int, k_i: int) -> _TrialRunner:
        if image_id not in self.latents:
            t0 = time.perf_counter()
            latent = self.codec.encode_latent(self.images[image_id].pixels)
            self.latents[image_id] = (latent, 1000 * (time.perf_counter() - t0))
        if (image_id, k_i) not in self.runners:
            self.runners[(image_id, k_i)] = _TrialRunner(
                self.sc, self.codec, self.schemes[k_i], self.images[image_id], image_id, *self.latents[image_id]
            )
        return self.runners[(image_id, k_i)]

    def run(self, task: TrialTask) -> TrialResult:
        target_loss, burst = self.points[task.p_i]
        runner = self._runner(task.image_id, task.k_i)
        record, recons = runner(self.sc.channel.loss_model(target_loss, burst), target_loss, burst, task.trial)
        runner.scorer.forget()  # grids rarely recur across trials; an image's scorer outlives many
        return TrialResult(task, record, recons if task.shown else {}, runner.enc.lossless if task.example else None)


class SerialPool:
    """Runs submitted trials one at a time, in submission order, in this process. Its capacity
    of one makes the sweep finish a point before it opens the next."""

    capacity = 1

    def __init__(self, worker: TrialWorker):
        self.worker = worker
        self.queue: deque[TrialTask] = deque()

    @property
    def in_flight(self) -> int:
        return len(self.queue)

    def submit(self, task: TrialTask) -> None:
        self.queue.append(task)

    def next_done(self) -> TrialResult:
        return self.worker.run(self.queue.popleft())


class TrialPool(Protocol):
    """Where trials run: :class:`SerialPool`, or :class:`vqnet.cluster.RayPool` across processes."""

    capacity: int

    @property
    def in_flight(self) -> int: ...

    def submit(self, task: TrialTask) -> None: ...

    def next_done(self) -> TrialResult: ...


@dataclass
class _Point:
    """A (scheme, channel point) being swept: the trial round in progress and the rows of earlier ones."""

    k_i: int
    p_i: int
    trial: int = 0
    rows: list[dict] = field(default_factory=list)  # trials 0..trial-1, in (trial, image) order
    round: dict[int, TrialRecord] = field(default_factory=dict)  # this trial's records by image
    waiting: int = 0  # this trial's tasks still running


def run_sweep(
    sc: Scenario,
    codec: Codec | None = None,
    images: list[NamedImage] | None = None,
    advance: Callable[[int, str], None] | None = None,
    journal: TrialJournal | None = None,
    pool: TrialPool | None = None,
) -> SweepOutput:
    """Run every trial of ``sc`` and return the tables; ``advance(n, label)`` reports progress.

    A point (one scheme and channel setting) runs trial t for every image, then decides whether to
    run trial t+1 (:func:`trials_to_run`). Trials run in ``pool`` (default: one at a time in this
    process); a pool with room for more opens further points while earlier ones are running, and
    results are taken in whatever order they finish. With a ``journal``, trials it holds are not
    run again (rows and timings come from it) and each newly finished trial is appended to it as
    it arrives. An image is encoded only if one of its trials still has to run; trials that feed
    examples.png are rerun for their picture, keeping the journal's rows (the rerun's rows are the
    same, since the trial's seed is). Rows come out in (image, scheme, point, trial, method) order
    whatever order they ran in, and each adaptive decision sees its point's earlier trials in
    (trial, image) order, so the tables do not depend on the pool.
    """
    codec = codec or load_codec(sc.model)
    images = images if images is not None else load_images(sc.images.source, sc.images.names, sc.images.limit)
    schemes = sc.protection_schemes()
    for scheme in schemes:
        codec.codebook(scheme.K)  # fail before any work if a K is missing, or a transformer for it
        for kind in _model_kinds(sc, scheme):
            load_concealer(codec, kind, scheme.K)
    pool = pool or SerialPool(TrialWorker(sc, codec, images))
    example_image = sc.examples.image or images[0].name
    points = sc.channel.points()
    records: dict[tuple[int, int, int, int], TrialRecord] = {}  # by (image, scheme, point, trial)
    out = SweepOutput(pd.DataFrame(), pd.DataFrame())

    def label(pt: _Point, image_id: int) -> str:
        target_loss = points[pt.p_i][0]
        loss = "" if target_loss is None else f" loss={target_loss:.2f}"
        return f"{images[image_id].name} {schemes[pt.k_i].name}{loss} trial {pt.trial}"

    def record(pt: _Point, image_id: int, rec: TrialRecord) -> None:
        pt.round[image_id] = records[(image_id, pt.k_i, pt.p_i, pt.trial)] = rec
        if advance:
            advance(len(rec.rows), label(pt, image_id))

    def begin(pt: _Point) -> bool:
        """Submit the point's next trial round(s) until one has work in the pool; False once the
        point is finished."""
        scheme, (target_loss, burst) = schemes[pt.k_i], points[pt.p_i]
        while trials_to_run(sc, pt.rows, pt.trial):
            pt.round = {}
            for image_id, image in enumerate(images):
                done = (
                    journal.done.get(TrialJournal.key(image.name, scheme.name, target_loss, burst, pt.trial))
                    if journal
                    else None
                )
                example = image.name == example_image and pt.k_i == 0
                shown = example and pt.trial == 0 and burst == points[0][1] and _shown(target_loss, sc.examples.losses)
                if done is None or shown:
                    pool.submit(TrialTask(image_id, pt.k_i, pt.p_i, pt.trial, shown, example))
                    pt.waiting += 1
                if done is not None:
                    record(pt, image_id, done)
            if pt.waiting:
                return True
            close_round(pt)
        if advance and pt.trial < sc.max_trials:  # stopped early: the bar's total counted up to max
            advance(
                (sc.max_trials - pt.trial) * len(images) * len(sc.scheme_methods(scheme)),
                f"{scheme.name} point resolved",
            )
        return False

    def close_round(pt: _Point) -> None:
        pt.rows += [row for image_id in range(len(images)) for row in pt.round[image_id].rows]
        pt.trial += 1

    todo = deque((k_i, p_i) for k_i in range(len(schemes)) for p_i in range(len(points)))
    running: dict[tuple[int, int], _Point] = {}
    while todo or running:
        while todo and pool.in_flight < pool.capacity:
            pt = _Point(*todo.popleft())
            if begin(pt):
                running[(pt.k_i, pt.p_i)] = pt
        if not running:
            continue
        result = pool.next_done()
        task = result.task
        pt = running[(task.k_i, task.p_i)]
        pt.waiting -= 1
        image = images[task.image_id]
        if task.shown:
            out.examples.update({(m, points[pt.p_i][0]): r for m, r in result.recons.items()})
        if task.example:
            out.originals[image.name] = image.pixels
            out.lossless[image.name] = result.lossless
        if task.image_id not in pt.round:  # not a journalled trial rerun for its picture
            if journal:
                journal.append(
                    TrialJournal.key(image.name, schemes[pt.k_i].name, *points[pt.p_i], task.trial), result.record
                )
            record(pt, task.image_id, result.record)
        if not pt.waiting:
            close_round(pt)
            if not begin(pt):
                del running[(pt.k_i, pt.p_i)]
    ordered = [records[k] for k in sorted(records)]
    out.results = pd.DataFrame([r for rec in ordered for r in rec.rows], columns=result_columns(sc))
    out.timings = pd.DataFrame([t for rec in ordered for t in rec.timings])
    return out


def trials_to_run(sc: Scenario, point_rows: list[dict], trial: int) -> bool:
    """Whether a point runs trial ``trial``, judged only on its trials 0..trial-1 (``point_rows``),
    so the decision, like each trial's seed, is the same in every run and after a resume."""
    if isinstance(sc.trials, int):
        return trial < sc.trials
    if trial < sc.trials.min:
        return True
    if trial >= sc.trials.max:
        return False
    return not resolved(pd.DataFrame(point_rows, columns=PROTECTED_COLUMNS), sc.reference, sc.trials.precision)


class _TrialRunner:
    """Runs the trials of one (image, scheme): the image is encoded, packetized and given its parity
    once, here."""

    def __init__(
        self,
        sc: Scenario,
        codec: Codec,
        scheme: Scheme,
        image: NamedImage,
        image_id: int,
        latent: torch.Tensor,
        latent_ms: float,
    ):
        t0 = time.perf_counter()
        p = sc.packets
        settings = PacketSettings(
            p.max_payload, p.layout, p.chroma_cells, None if scheme.fec is None else scheme.fec.code()
        )
        self.enc = encode_image(codec, image, latent, scheme.K, settings, image_id)
        self.encode_ms = latent_ms + 1000 * (time.perf_counter() - t0)
        self.sc, self.scheme, self.image_id, self.codec = sc, scheme, image_id, codec
        self.link = sc.link.config(scheme.arq)
        self.methods = sc.scheme_methods(scheme)
        self.scorer = GridScorer(codec, self.enc)

    def __call__(
        self, loss_model: LossModel, target_loss: float | None, burst: float | None, trial: int
    ) -> tuple[TrialRecord, dict[str, np.ndarray]]:
        """One channel realisation, scored for every method -> (record, reconstruction per method)."""
        sc, enc, sent = self.sc, self.enc, self.enc.sent
        name, K = enc.image.name, sent.K
        # A scenario's own schemes share one channel: the same seed, so the k-th packet on the wire meets
        # the same channel state whichever scheme sent it (for loss models whose draws are prefix-stable).
        seed = trial_seed(sc.seed, name, None if sc.schemes else K, target_loss, burst, trial)
        rng = np.random.default_rng(seed)
        if isinstance(loss_model, IndexMask):
            transmission = None
            got = receive_masked(sent, loss_model.draw(sent.indices.shape, rng))
        else:
            transmission = transmit([len(p) for p in sent.wire], loss_model, self.link, rng)
            arrived = [p for p, ok in zip(sent.wire, transmission.delivered) if ok]
            got = receive(self.codec, arrived, K, sent.size, image_id=self.image_id)
        base = _trial_row(sc, self.scheme, enc, loss_model, target_loss, burst, trial, transmission, got)
        lost = got.lost
        n_lost = int(lost.sum())
        record = TrialRecord([], [])
        recons: dict[str, np.ndarray] = {}
        restored, restore_ms = [], []
        for method in self.methods:
            t1 = time.perf_counter()
            restored.append(conceal(self.codec, got, method, seed))
            restore_ms.append(1000 * (time.perf_counter() - t1))
        scores = self.scorer.score(restored, got)  # the methods' grids decoded together where that pays
        for method, grid, ms, (recons[method], lp, ps, decode_ms, lpips_ms) in zip(
            self.methods, restored, restore_ms, scores
        ):
            acc = float((grid[lost] == sent.indices[lost]).mean()) if n_lost else np.nan
            record.rows.append(base | {"method": method, "lpips": lp, "psnr": ps, "lost_index_accuracy": acc})
            record.timings.append(
                {
                    "image": name,
                    "K": K,
                    "target_loss": base["target_loss"],
                    "burst": base["burst"],
                    "trial": trial,
                    "method": method,
                    "encode_ms": self.encode_ms,
                    "restore_ms": ms,
                    "decode_ms": decode_ms,
                    "lpips_ms": lpips_ms,
                    "lost_indices": n_lost,
                }
            )
        return record, recons


class GridScorer:
    """Decode a restored grid and score it against the original, reusing results for repeated grids.

    Identical grids recur often (no index lost at low loss, or two methods agreeing), and the
    decoder dominates a trial's cost; the cached answer is the same number, so reuse is exact.
    """

    def __init__(self, codec: Codec, enc: Encoded):
        self.codec, self.image = codec, enc.image
        self.cache: dict[tuple[bytes, bool], tuple[np.ndarray, float, float]] = {
            (enc.sent.indices.astype(np.int64).tobytes(), enc.sent.colour is not None): (
                enc.lossless,
                enc.lossless_lpips,
                enc.lossless_psnr,
            )
        }

    def forget(self) -> None:
        """Drop every decode but the loss-free one: grids rarely recur across trials, and a sweep
        that keeps an image's scorer through many trials must not keep all its reconstructions."""
        lossless = next(iter(self.cache))
        self.cache = {lossless: self.cache[lossless]}

    def score(self, grids: list[np.ndarray], received: Received) -> list[tuple[np.ndarray, float, float, float, float]]:
        """-> per grid (reconstruction, LPIPS, PSNR, decode ms, LPIPS ms). Grids not seen before are
        decoded and scored :attr:`Codec.decode_batch` at a time (one at a time on a CPU, where a
        batch gains nothing and would move the last bits); a batch's time is shared out equally,
        and a grid met before costs 0 ms.

        ``grids`` are restorations of ``received``, which says whether the image's colour packet
        arrived (an image has only one, so that is all the cache needs to know)."""
        coloured = received.colour is not None
        keys = [(np.ascontiguousarray(g, dtype=np.int64).tobytes(), coloured) for g in grids]
        new = {k: g for k, g in zip(keys, grids) if k not in self.cache}
        ms: dict[tuple[bytes, bool], tuple[float, float]] = {}
        todo, size = list(new), self.codec.decode_batch
        for chunk in (todo[i : i + size] for i in range(0, len(todo), size)):
            t0 = time.perf_counter()
            recons = decode(self.codec, received, [new[k] for k in chunk])
            t1 = time.perf_counter()
            lps = lpips_distances(self.image.pixels, recons, self.codec.device)
            t2 = time.perf_counter()
            for key, recon, lp in zip(chunk, recons, lps):
                self.cache[key] = (recon, lp, psnr(self.image.pixels, recon))
                ms[key] = (1000 * (t1 - t0) / len(chunk), 1000 * (t2 - t1) / len(chunk))
        return [(*self.cache[k], *ms.pop(k, (0.0, 0.0))) for k in keys]


def _trial_row(
    sc: Scenario,
    scheme: Scheme,
    enc: Encoded,
    loss_model: LossModel | IndexMask,
    target_loss: float | None,
    burst: float | None,
    trial: int,
    transmission: TransmissionResult | None,
    received: Received,
) -> dict:
    """The method-independent columns of a trial's rows. The packets on the wire are counted once
    (parity included: bytes_sent and bpp count them); bytes_on_wire adds the retransmissions. With
    no transmission (``transmission`` None: the index-mask experiment) no packet is lost, packet loss is
    undefined, and the mean burst is the mean run of lost indices in raster order."""
    h, w = enc.sent.size
    packets, lost = enc.sent.wire, received.lost
    bytes_sent = int(sum(len(p) for p in packets))
    if transmission is None:
        link = {
            "packets_lost": 0,
            "packet_loss": np.nan,
            "mean_burst": mean_run(lost),
            "delivery_s": np.nan,
            "retransmissions": 0,
            "bytes_on_wire": bytes_sent,
        }
    else:
        link = {
            "packets_lost": int(transmission.n_sent - transmission.n_delivered),
            "packet_loss": transmission.packet_loss_ratio,
            "mean_burst": transmission.mean_burst,
            "delivery_s": transmission.completion_s,
            "retransmissions": transmission.retransmissions,
            "bytes_on_wire": transmission.bytes_on_wire,
        }
    return {
        "image": enc.image.name,
        "height": h,
        "width": w,
        "K": enc.sent.K,
        "scheme": scheme.name,
        "max_payload": sc.packets.max_payload,
        "layout": sc.packets.layout,
        "channel": loss_model.name,
        "target_loss": target_loss if target_loss is not None else round(loss_model.expected_loss, 6),
        "burst": burst if burst is not None else np.nan,
        "trial": trial,
        "n_packets": len(packets),
        "packets_lost": link["packets_lost"],
        "packet_loss": link["packet_loss"],
        "index_loss": float(lost.mean()),
        "mean_burst": link["mean_burst"],
        "delivery_s": link["delivery_s"],
        "bytes_sent": bytes_sent,
        "bpp": bpp(bytes_sent, h, w),
        "parity_packets": enc.sent.parity_packets,
        "packets_recovered": received.packets_recovered,
        "retransmissions": link["retransmissions"],
        "bytes_on_wire": link["bytes_on_wire"],
        "bpp_on_wire": bpp(link["bytes_on_wire"], h, w),
        "lossless_lpips": enc.lossless_lpips,
        "lossless_psnr": enc.lossless_psnr,
    }


def _shown(target_loss: float | None, losses: list[float]) -> bool:
    return target_loss is None or any(abs(target_loss - x) < 1e-9 for x in losses)


#: How results.csv writes floats: six significant digits, so the table is the same on CPUs whose
#: kernels differ only in the last bits.
FLOAT_FORMAT = "%.6g"


def as_written(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` as it reads back from its csv: summaries are computed from the table of record, so
    `vqnet summarize` on a committed results.csv gives back its summary.csv to the last digit."""
    return pd.read_csv(io.StringIO(df.to_csv(index=False, float_format=FLOAT_FORMAT)))


def sweep_summary(sc: Scenario, results: pd.DataFrame) -> pd.DataFrame:
    """summary.csv of a sweep's results as written (:func:`as_written`; :func:`vqnet.summary.summarize`
    with the scenario's reference method and trial bounds)."""
    return summarize(as_written(results), sc.reference, None if isinstance(sc.trials, int) else sc.trials.precision)


def write_results(out: SweepOutput, folder: Path, summary: pd.DataFrame | None = None) -> dict[str, Path]:
    """Write results.csv (deterministic), timings.csv, summary.csv when given, and return the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    tables = {"results": out.results, "timings": out.timings} | ({} if summary is None else {"summary": summary})
    paths = {key: folder / f"{key}.csv" for key in tables}
    for key, df in tables.items():
        tmp = paths[key].with_suffix(".tmp")
        df.to_csv(tmp, index=False, float_format=FLOAT_FORMAT)
        tmp.replace(paths[key])
    return paths
