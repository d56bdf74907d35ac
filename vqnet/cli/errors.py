"""One error path for the whole command line: every user error is one ``Error:`` line on stderr
and exit code 2, whether click found it while parsing options or a command found it later.

Why not click's own handling: it prints a usage box of five lines or more (rich's panel under
typer), which scripts cannot parse and users read as a crash. Tracebacks stay for what is a bug.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer

# typer >= 0.29 runs on its own copy of click (typer._click): its exceptions, not click's, are raised.
from typer._click import Context
from typer._click.exceptions import NoArgsIsHelpError, UsageError
from typer.core import TyperGroup

from vqnet.errors import VqnetError

#: Exit status of every user error (click's own for usage errors).
USER_ERROR = 2


def fail(message: str) -> typer.Exit:
    """Print ``Error: message`` (one line) on stderr and return the Exit to raise."""
    typer.echo("Error: " + " ".join(str(message).split()), err=True)
    return typer.Exit(USER_ERROR)


#: Causes worded for this program's users: where vqnet meets these, it was making a folder.
_REASONS = {errno.EEXIST: "exists and is not a folder", errno.ENOTDIR: "a part of this path is a file, not a folder"}


def describe_os_error(exc: OSError) -> str:
    """``[Errno 21] Is a directory: 'x'`` -> ``x: is a directory``: the path first, then the cause."""
    reason = _REASONS.get(exc.errno) or (exc.strerror or str(exc)).lower()
    names = [str(n) for n in (exc.filename, exc.filename2) if n is not None]
    return f"{' -> '.join(names)}: {reason}" if names else reason


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the errors a user can cause (a :class:`VqnetError`, or the file system refusing a
    read or write: missing, a folder where a file belongs, read-only, full) into one line + exit
    2; Ctrl-C into exit 130."""
    try:
        yield
    except VqnetError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(describe_os_error(exc)) from None
    except KeyboardInterrupt:
        typer.echo("Interrupted.", err=True)
        raise typer.Exit(130) from None


class OneLineErrors(TyperGroup):
    """The top-level group: a usage error anywhere below it (unknown option, bad value, missing
    argument, a ``BadParameter`` a command raises) becomes one ``Error:`` line, exit 2."""

    def make_context(
        self, info_name: str | None, args: list[str], parent: Context | None = None, **extra: Any
    ) -> Context:
        with _one_line_usage():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: Context) -> Any:
        with _one_line_usage():
            return super().invoke(ctx)


@contextmanager
def _one_line_usage() -> Iterator[None]:
    try:
        yield
    except NoArgsIsHelpError:
        raise  # `vqnet` or `vqnet train` alone: the help text is what was asked for
    except UsageError as exc:
        where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        raise fail(exc.format_message() + where) from None
