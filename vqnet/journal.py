"""A resume journal: finished units of a long job, kept in a JSON-lines file so a killed job can
resume where it stopped instead of starting over.

Why a journal and not a results file written at the end: a Kodak sweep or evaluation runs for tens
of minutes to hours on a CPU, and a crash, a ``kill -9`` or a full disk near the end must not lose
what was already computed. Both ``vqnet run`` (:class:`vqnet.sweep.TrialJournal`) and
``vqnet eval`` (:class:`vqnet.evaluate.EvalJournal`) use this one format.

Every line is ``{"unit": <JSON>, "sha256": "<16 hex digits>"}``, the digest taken over the exact
bytes of ``<JSON>``, written with one ``write`` + ``fsync``. Line 1's unit is ``{"format": ...,
"fingerprint": ...}``: a hash of everything the units' results depend on, chosen by the job. Every
further line's unit is one finished unit, ``{"key": [...], <payload>}``. A kill leaves each unit
either wholly recorded or as a torn last line, which :meth:`Journal.open` cuts off; a complete
line whose digest fails (edited, fused with another writer's line, damaged on disk) or whose
unit does not have the shape of a unit (the job's :meth:`Journal.parse` decides) is not trusted:
it is dropped and its unit is computed again.
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
#: Version of the line format above (1: bare JSON lines, no digest). A journal of another
#: version is refused with a hint to rerun with --fresh.
FORMAT = 2
_PREFIX = b'{"unit": '
_SUFFIX = b', "sha256": "%s"}'
_DIGEST_HEX = 16


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
        #: Complete lines of the file that were damaged or repeated a key, dropped at :meth:`open`.
        self.dropped = 0

    @staticmethod
    def dump(unit: T) -> dict:
        """The unit as a JSON object (without its key)."""
        raise NotImplementedError

    @staticmethod
    def parse(entry: dict) -> T:
        """A unit from its JSON object (key included); raises ValueError, TypeError or KeyError
        unless it has exactly the shape and types the job writes."""
        raise NotImplementedError

    @staticmethod
    def key(*parts: object) -> str:
        """A unit's key as stored (JSON, so a float part reads back equal)."""
        return json.dumps(list(parts))

    @classmethod
    def open(cls, path: Path, fingerprint: str, fresh: bool = False) -> Self:
        """Open (or start) the journal at ``path``; ``fresh`` discards an existing one.

        Raises :class:`JournalError` when the file was written under another fingerprint or
        format, or is no journal at all. Damaged unit lines are dropped (the file is rewritten
        without them) and counted in :attr:`dropped`, so their units run again.
        """
        if fresh:
            path.unlink(missing_ok=True)
        done: dict[str, T] = {}
        data = path.read_bytes() if path.is_file() else b""
        keep = data.rfind(b"\n") + 1  # a torn last line (killed mid-write) is dropped
        lines = data[:keep].split(b"\n")[:-1]
        good = lines[:1]
        if lines:
            try:
                head = read_line(lines[0])
            except ValueError:
                head = None
            if not isinstance(head, dict) or head.get("format") != FORMAT or "fingerprint" not in head:
                raise JournalError(
                    f"{path} is not {cls.kind} journal of this vqnet (journal format {FORMAT}); "
                    "rerun with --fresh to discard it"
                )
            found = head["fingerprint"]
            if found != fingerprint:
                raise JournalError(
                    f"{path} was written for {cls.origin} (fingerprint {str(found)[:12]}, now "
                    f"{fingerprint[:12]}); rerun with --fresh to discard it"
                )
            for line in lines[1:]:
                try:
                    entry = read_line(line)
                    unit = cls.parse(entry)
                    key = json.dumps(entry["key"])
                except (ValueError, TypeError, KeyError):
                    continue
                if key not in done:
                    done[key] = unit
                    good.append(line)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not lines:
            journal = cls(path, open(path, "wb"), done)
            journal._write_line({"format": FORMAT, "fingerprint": fingerprint})
            _fsync_dir(path.parent)  # the new file's name must survive a crash too
            return journal
        if len(good) < len(lines):
            _replace(path, b"".join(line + b"\n" for line in good))
        fh = open(path, "r+b")
        fh.truncate(sum(len(line) + 1 for line in good))  # the torn tail, where nothing was rewritten
        fh.seek(0, os.SEEK_END)
        journal = cls(path, fh, done)
        journal.dropped = len(lines) - len(good)
        return journal

    def append(self, key: str, unit: T) -> None:
        """Record a finished unit durably before the job moves on."""
        self._write_line({"key": json.loads(key)} | self.dump(unit))
        self.done[key] = unit

    def _write_line(self, obj: dict) -> None:
        self._fh.write(make_line(obj))
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


def make_line(obj: dict) -> bytes:
    """One journal line holding ``obj``, with the digest of its bytes."""
    body = json.dumps(obj, default=_json_default).encode()
    return _PREFIX + body + _SUFFIX % _digest(body) + b"\n"


def read_line(line: bytes) -> Any:
    """The object a line of :func:`make_line` holds; ValueError if its digest or framing fails."""
    line = line.rstrip(b"\n")
    tail = len(_SUFFIX % (b"0" * _DIGEST_HEX))
    body, suffix = line[len(_PREFIX) : -tail], line[-tail:]
    if not line.startswith(_PREFIX) or len(line) < len(_PREFIX) + tail or suffix != _SUFFIX % _digest(body):
        raise ValueError("journal line fails its checksum")
    return json.loads(body)


def _digest(body: bytes) -> bytes:
    return hashlib.sha256(body).hexdigest()[:_DIGEST_HEX].encode()


def require_scalars(obj: object, keys: Sequence[str] | None = None) -> dict:
    """``obj`` if it is a JSON object of strings, numbers and nulls (with exactly ``keys``, when
    given); TypeError otherwise. What a journalled row must be to go into a table."""
    if not isinstance(obj, dict) or (keys is not None and obj.keys() != set(keys)):
        raise TypeError("not a row of the expected columns")
    if not all(v is None or (isinstance(v, (str, int, float)) and not isinstance(v, bool)) for v in obj.values()):
        raise TypeError("a row holds a value that is not a string, number or null")
    return obj


def _replace(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (a crash leaves the old file or the new one)."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
