"""A resume journal: finished units of a long job, kept in a JSON-lines file so a killed job can
resume where it stopped instead of starting over.

Why a journal and not a results file written at the end: a Kodak sweep or evaluation runs for tens
of minutes to hours on a CPU, and a crash, a ``kill -9`` or a full disk near the end must not lose
what was already computed. Both ``vqnet run`` (:class:`vqnet.sweep.TrialJournal`) and
``vqnet eval`` (:class:`vqnet.evaluate.EvalJournal`) use this one format.

Line 1 is ``{"fingerprint": ...}``: a hash of everything the units' results depend on, chosen by
the job. Every further line is one finished unit, ``{"key": [...], <payload>}``, written with one
``write`` + ``fsync``, so a kill leaves each unit either wholly recorded or as a torn last line,
which :meth:`Journal.open` cuts off.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, ClassVar, Generic, Self, TypeVar

import numpy as np

from vqnet.errors import VqnetError

T = TypeVar("T")

#: A journal's file name inside a job's output folder; deleted once the job's tables are written.
PARTIAL_NAME = "partial.jsonl"


def fingerprint(spec: dict, images: Sequence) -> str:
    """sha256 of a job's settings (``spec``, JSON-able) and its images' names, shapes and pixels
    (:class:`vqnet.images.NamedImage`): a journal written under another one is refused, because
    mixing its results with new ones would give a table no single run could produce."""
    h = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    for image in images:
        h.update(json.dumps([image.name, list(image.pixels.shape)]).encode())
        h.update(np.ascontiguousarray(image.pixels).tobytes())
    return h.hexdigest()


class JournalError(VqnetError, ValueError):
    """A journal that cannot be resumed from; the message is one line for the user."""


def _json_default(value: Any) -> Any:
    """numpy scalars -> Python scalars; JSON floats are shortest round-trip reprs, so exact."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in a journal")


class Journal(Generic[T]):
    """The finished units of one job, by key. Subclasses say how a unit is stored and read back.

    ``done`` maps :meth:`key` strings to units. A subclass sets :attr:`kind` and :attr:`origin`
    (for error messages) and implements :meth:`dump` and :meth:`parse`.
    """

    #: What the journal belongs to, e.g. "a sweep" (messages say "not a sweep journal").
    kind: ClassVar[str] = "a job"
    #: What a different fingerprint means, e.g. "another scenario, model or image set".
    origin: ClassVar[str] = "another job"

    def __init__(self, path: Path, fh: IO[bytes], done: dict[str, T]):
        self.path, self._fh, self.done = path, fh, done

    @staticmethod
    def dump(unit: T) -> dict:
        """The unit as a JSON object (without its key)."""
        raise NotImplementedError

    @staticmethod
    def parse(entry: dict) -> T:
        """A unit from its JSON object; raises ValueError, TypeError or KeyError when damaged."""
        raise NotImplementedError

    @staticmethod
    def key(*parts: object) -> str:
        """A unit's key as stored (JSON, so a float part reads back equal)."""
        return json.dumps(list(parts))

    @classmethod
    def open(cls, path: Path, fingerprint: str, fresh: bool = False) -> Self:
        """Open (or start) the journal at ``path``; ``fresh`` discards an existing one.

        Raises :class:`JournalError` when the file was written under another fingerprint, or a
        complete line in it is unreadable.
        """
        if fresh:
            path.unlink(missing_ok=True)
        done: dict[str, T] = {}
        data = path.read_bytes() if path.is_file() else b""
        keep = data.rfind(b"\n") + 1  # a torn last line (killed mid-write) is dropped
        lines = data[:keep].splitlines()
        if lines:
            try:
                found = json.loads(lines[0])["fingerprint"]
            except (ValueError, TypeError, KeyError):
                raise JournalError(f"{path} is not {cls.kind} journal; rerun with --fresh to discard it") from None
            if found != fingerprint:
                raise JournalError(f"{path} was written for {cls.origin} (fingerprint {str(found)[:12]}, now "
                                   f"{fingerprint[:12]}); rerun with --fresh to discard it")
            for n, line in enumerate(lines[1:], start=2):
                try:
                    entry = json.loads(line)
                    done.setdefault(json.dumps(entry["key"]), cls.parse(entry))
                except (ValueError, TypeError, KeyError):
                    raise JournalError(f"{path}: line {n} is damaged; rerun with --fresh to start over") from None
        path.parent.mkdir(parents=True, exist_ok=True)
        if lines:
            fh = open(path, "r+b")
            fh.truncate(keep)
            fh.seek(keep)
            return cls(path, fh, done)
        journal = cls(path, open(path, "wb"), done)
        journal._write_line({"fingerprint": fingerprint})
        _fsync_dir(path.parent)  # the new file's name must survive a crash too
        return journal

    def append(self, key: str, unit: T) -> None:
        """Record a finished unit durably before the job moves on."""
        self._write_line({"key": json.loads(key)} | self.dump(unit))
        self.done[key] = unit

    def _write_line(self, obj: dict) -> None:
        self._fh.write(json.dumps(obj, default=_json_default).encode() + b"\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def discard(self) -> None:
        """Close and delete: the job's tables are written, so the journal has served."""
        self.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
