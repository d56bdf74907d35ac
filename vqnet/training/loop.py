"""The one checkpoint/resume loop every trainer runs (the VQGAN, codebook fine-tuning, the
concealment transformers).

A trainer supplies only what differs: its step (:meth:`Trainer.step`, :meth:`Trainer.describe`) and its state
(:meth:`Trainer.state_dict` / :meth:`Trainer.load_state_dict`: models, optimisers, its own
generators). The loop owns the rest, the same for all of them:

- the step count, stopping at ``steps`` or once ``minutes`` of wall time have passed;
- ``OUT/checkpoint.pt``, written atomically (tmp + rename, so a kill during a save never leaves a
  broken one) every ``checkpoint_minutes``, at the last step and when time runs out; it holds the
  trainer's state, the step, the run's config and the global torch (and CUDA) RNG states;
- resuming: refusing a run folder that already holds a checkpoint without ``resume``, a checkpoint
  trained with other settings (but those in ``may_change``) or on other data (``identity``);
  then the trainer's state and the RNG states come back, so the resumed run continues the same
  loss curve, step for step;
- ``OUT/log.csv``: one row per step, rows past the checkpoint dropped on resume;
- the progress bar (:func:`vqnet.progress.progress_bar`), from the resumed step on, labelled with
  each step's row as the trainer words it (:meth:`Trainer.describe`).

Checkpoints hold only tensors and plain containers and load with ``weights_only=True``.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from vqnet.errors import VqnetError
from vqnet.progress import progress_bar

CHECKPOINT = "checkpoint.pt"
LOG = "log.csv"


class ResumeError(VqnetError, ValueError):
    """A checkpoint that cannot continue the run asked for."""


class Trainer(Protocol):
    """What a trainer gives :class:`TrainingRun`."""

    def step(self, step: int) -> dict[str, float]:
        """Take step number ``step`` (0-based) and return its log row."""

    def describe(self, row: dict[str, float]) -> str:
        """The progress bar's label for a step's row."""

    def state_dict(self) -> dict[str, Any]:
        """Everything but the step and the global RNG that a resumed run needs (tensors and plain
        containers only)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back what :meth:`state_dict` gave (the whole checkpoint is passed); raise
        :class:`ResumeError` for a checkpoint this trainer cannot continue."""


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Checkpoints hold only tensors and plain containers, so ``weights_only=True`` always suffices."""
    return torch.load(path, map_location="cpu", weights_only=True)


def save_atomically(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file renamed over ``path``: a kill never leaves half a file."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def truncate_log(log_path: Path, step: int) -> None:
    """Drop log rows written after the checkpoint, so a resumed run's log has each step once."""
    if not log_path.exists():
        return
    lines = log_path.read_text().splitlines(keepends=True)
    kept = lines[:1] + [ln for ln in lines[1:] if int(ln.split(",", 1)[0]) <= step]
    log_path.write_text("".join(kept))


def _cell(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value


class TrainingRun:
    """One run folder: opened (checked and, with ``resume``, its checkpoint read) before the
    trainer is built, since a trainer may take its model's shape from :attr:`state`; then
    :meth:`run` drives the trainer.

    ``config`` (plain values) is what decides the run's outcome; it is stored as the checkpoint's
    ``train_config``. On resume every key must equal the saved one but those in ``may_change``;
    ``missing`` gives the values of keys that checkpoints written before the key existed lack.
    ``identity`` (say the fingerprint of the data) is stored beside it and must match exactly.
    ``logs`` are the run's other per-step CSV logs, truncated with ``log.csv`` on resume and
    removed on a fresh start, with ``outputs`` (files a fresh start must not inherit).
    """

    def __init__(
        self,
        out: Path,
        config: Mapping[str, Any],
        resume: bool = False,
        may_change: Sequence[str] = (),
        missing: Mapping[str, Any] | None = None,
        identity: Mapping[str, Any] | None = None,
        logs: Sequence[str] = (),
        outputs: Sequence[str] = (),
    ):
        self.out = out
        self.checkpoint = out / CHECKPOINT
        self.config = dict(config)
        self.identity = dict(identity or {})
        self.logs = [out / LOG, *(out / name for name in logs)]
        self.state: dict[str, Any] | None = None
        #: Steps done: the resumed checkpoint's before :meth:`run`, the last one saved after it.
        self.step = 0
        if resume:
            if not self.checkpoint.is_file():
                raise ResumeError(f"--resume: no checkpoint at {self.checkpoint}")
            self.state = load_checkpoint(self.checkpoint)
            self._check(self.state, may_change, missing or {})
            self.step = int(self.state["step"])
        elif self.checkpoint.exists():
            raise FileExistsError(f"{self.checkpoint} exists; pass --resume to continue it or choose another --out")
        out.mkdir(parents=True, exist_ok=True)
        if self.state is None:
            for path in (*self.logs, *(out / name for name in outputs)):
                path.unlink(missing_ok=True)

    def _check(self, state: dict[str, Any], may_change: Sequence[str], missing: Mapping[str, Any]) -> None:
        saved = dict(missing) | state["train_config"]
        changed = [k for k, v in self.config.items() if k not in may_change and saved.get(k) != v]
        if changed:
            raise ResumeError(
                f"{self.checkpoint} was trained with other settings ("
                + ", ".join(f"{k}={saved.get(k)!r}, now {self.config[k]!r}" for k in changed)
                + "); resume with the same options or use another --out"
            )
        for key, value in self.identity.items():
            if state.get(key) != value:
                raise ResumeError(f"{self.checkpoint} was trained on other data ({key} differs); use another --out")

    def save(self, trainer: Trainer, step: int, path: Path | None = None) -> Path:
        """The trainer at ``step`` as a checkpoint (``OUT/checkpoint.pt`` unless ``path``)."""
        path = path or self.checkpoint
        rng = {"torch_rng": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda_rng"] = torch.cuda.get_rng_state_all()
        save_atomically(
            path, {**trainer.state_dict(), **self.identity, **rng, "step": step, "train_config": self.config}
        )
        return path

    def run(
        self,
        trainer: Trainer,
        steps: int,
        columns: Sequence[str],
        checkpoint_minutes: float = 3.0,
        minutes: float | None = None,
        after_step: Callable[[int, bool], None] | None = None,
        bar: str | None = None,
    ) -> Path:
        """Step ``trainer`` from :attr:`step` to ``steps`` and return the checkpoint path.

        Each row (``columns``, after ``step``) goes to ``OUT/log.csv``. ``after_step(step,
        last)`` follows each logged step (``last``: the run ends after it), before the checkpoint
        is written; a validation hooks in there. ``bar`` titles a progress bar on stderr (None: no
        bar). ``minutes`` stops the run early, with a checkpoint, once that much wall time has
        passed (a lent GPU's budget is fixed); a resumed run continues from there towards ``steps``.
        """
        step = self.step
        if self.state is not None:
            trainer.load_state_dict(self.state)
            torch.set_rng_state(self.state["torch_rng"])
            if "cuda_rng" in self.state and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(self.state["cuda_rng"])
            for log in self.logs:
                truncate_log(log, step)
        last_save = time.monotonic()
        stop_at = None if minutes is None else last_save + 60 * minutes
        log_path = self.logs[0]
        new_log = not log_path.exists()
        with progress_bar(steps, bar or "", quiet=bar is None) as advance, log_path.open("a", newline="") as fh:
            advance(step, "")  # a resumed run's bar starts where it stopped
            writer = csv.writer(fh)
            if new_log:
                writer.writerow(["step", *columns])
            while step < steps:
                row = trainer.step(step)
                step = self.step = step + 1
                writer.writerow([step, *(_cell(row[c]) for c in columns)])
                fh.flush()
                advance(1, trainer.describe(row))
                out_of_time = stop_at is not None and time.monotonic() > stop_at
                last = step == steps or out_of_time
                if after_step:
                    after_step(step, last)
                if last or time.monotonic() - last_save > 60 * checkpoint_minutes:
                    self.save(trainer, step)
                    last_save = time.monotonic()
                if out_of_time:
                    break
        return self.checkpoint


def read_rows(path: Path) -> list[dict[str, str]]:
    """A CSV log's rows (none when it does not exist)."""
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def append_row(path: Path, columns: Sequence[str], row: Sequence[Any]) -> None:
    """One row appended to a CSV log (its header first when the file is new)."""
    new = not path.exists()
    with path.open("a", newline="") as fh:
        writer = csv.writer(fh)
        if new:
            writer.writerow(columns)
        writer.writerow([_cell(v) for v in row])
