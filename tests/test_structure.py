"""The package's shape: no import cycle anywhere in vqnet/, and the runtime path (sweep, .vqn files,
eval, the CLI's entry point) loads no training code."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vqnet"

#: The package of code that exists to train or fit models; a sweep or a decode must never need it.
TRAINING = "vqnet.training"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """vqnet modules ``name`` imports anywhere in its file (functions included: a deferred import
    still makes a cycle, only a later one), but for annotations (``if TYPE_CHECKING:``)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            for a in node.names:
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
    return {m for m in found if m in known and m != name}


def test_no_import_cycle_in_vqnet():
    modules = _modules()
    graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


@pytest.mark.parametrize("entry", ["vqnet.sweep", "vqnet.vqn", "vqnet.evaluate", "vqnet.cli"])
def test_runtime_path_loads_no_training_module(entry):
    code = f"import sys, json, {entry}; print(json.dumps(sorted(m for m in sys.modules if m.startswith('vqnet'))))"
    loaded = set(
        json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    )
    training = sorted(m for m in loaded if m == TRAINING or m.startswith(TRAINING + "."))
    assert not training, f"importing {entry} loads training code: {training}"


def test_runtime_packages_import_nothing_from_training():
    """The codec and concealment runtime (their command-line wiring aside) never import training code,
    not even in a function: what the runtime needs lives in a runtime module."""
    modules = _modules()
    runtime = [n for n in modules if n.startswith(("vqnet.codec", "vqnet.restore")) and not n.endswith(".cli")]
    leaks = {
        name: sorted(m for m in _imports(name, modules[name], set(modules)) if m.startswith(TRAINING))
        for name in runtime
    }
    assert not {k: v for k, v in leaks.items() if v}
