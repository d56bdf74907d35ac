"""Shared test helpers: where ../shared is, and skipping cleanly when it is absent."""
from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test with the reason if it is not there."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not found: these tests need the read-only ../shared folder beside the repo")
    return p
