"""The base class of every error a user can cause and fix.

Why one base: the command line turns exactly these into one ``Error: <message>`` line and exit
code 2 (:func:`vqnet.cli.errors.user_errors`), without having to import, and keep a list of, every
module that defines one. Each subclass also keeps its old built-in base (``ValueError``,
``RuntimeError``) so callers that catch those still do.
"""

from __future__ import annotations


class VqnetError(Exception):
    """An error whose message is one line meant for the user."""
