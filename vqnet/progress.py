"""Progress bars of long commands (sweeps, evaluations, training): one look for all of them, on stderr."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

#: The bar's columns; a command that drives its own :class:`rich.progress.Progress` uses these too.
COLUMNS = (
    TextColumn("{task.description}"),
    BarColumn(),
    MofNCompleteColumn(),
    TimeElapsedColumn(),
    TextColumn("eta"),
    TimeRemainingColumn(),
    TextColumn("{task.fields[label]}"),
)


@contextmanager
def progress_bar(total: int | None, description: str, quiet: bool) -> Iterator[Callable[[int, str], None]]:
    """A rich progress bar on stderr; ``advance(n, label)`` moves it. Silent with --quiet."""
    if quiet:
        yield lambda n, label: None
        return
    with Progress(*COLUMNS) as bar:
        task = bar.add_task(description, total=total, label="")
        yield lambda n, label: bar.update(task, advance=n, label=label)
