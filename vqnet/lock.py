"""One job at a time per output folder: ``vqnet run`` and ``vqnet eval`` hold an exclusive lock
on ``<folder>/.vqnet.lock`` while they write there.

Why: two jobs on one folder share one resume journal; their lines interleave, a kill leaves them
fused and torn, and the next run has to refuse the journal and loses all saved progress. The lock
is ``fcntl.flock`` (the kernel's advisory file lock): it belongs to the open file, so it is
released when the job ends, however it ends (exit, exception, ``kill -9``, a crash), and a later
job never has to clean up after a dead holder. The file itself is left in place: deleting it
would let a third job lock a new file while a second still waits on the old one. The holder
writes its pid, host and start time into the file, so a refused job can say who holds it.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from vqnet.errors import VqnetError

LOCK_NAME = ".vqnet.lock"


class FolderBusy(VqnetError):
    """Another job holds the output folder; the message names it."""


def job_folder(out: Path, name: str) -> Path:
    """``out/name``, refused with a :class:`VqnetError` unless it lies strictly inside ``out``
    (compared lexically, so a folder the user symlinked elsewhere still counts as inside)."""
    folder = Path(os.path.normpath(out / name))
    if folder == Path(os.path.normpath(out)) or not folder.is_relative_to(os.path.normpath(out)):
        raise VqnetError(f"output name {name!r} would write outside --out {out}")
    return folder


@contextmanager
def locked_folder(
    folder: Path, wait: bool = False, on_wait: Callable[[str], None] = lambda holder: None
) -> Iterator[Path]:
    """Create ``folder`` and hold its lock for the ``with`` block. When another job holds it,
    raise :class:`FolderBusy`, or with ``wait`` call ``on_wait(holder)`` and block until it is
    free. File-system refusals (``folder`` is a file, read-only) surface as ``OSError``."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            if not wait:
                raise FolderBusy(
                    f"{folder} is in use by another vqnet job ({holder}); wait for it to end or pass --wait"
                ) from None
            on_wait(holder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {started}\n".encode(), 0)
        yield folder
    finally:
        os.close(fd)  # releases the lock


def _holder(fd: int) -> str:
    """What the holder wrote about itself (it may not have written yet)."""
    text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    return text or "a job that has just started"
