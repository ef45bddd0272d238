"""The package's layout is its architecture: dependencies run one way, from the faces (docks, command line) down
to plain values, and nothing imports in a circle. This test fails when an arrow runs back up.

Layers, lowest first; a module may import from its own layer and the layers below it, never above:
    job < io < tools < models < runtime < evaluation < inference < planning < training < cli < faces
The faces are the docks (``_widgets``) and napari's contributions (``_reader``, ``_writer``, ``_sample_data``).
The package's ``__init__`` only names the public API (imported on first use) and is left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "napari_plantbio_train"
NAME = "napari_plantbio_train"
LAYERS = ["job", "io", "tools", "models", "runtime", "evaluation", "inference", "planning", "training", "cli",
          "faces"]
FACES = {"_widgets", "_reader", "_writer", "_sample_data"}


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str:
    top = module.split(".")[1]
    return "faces" if top in FACES else top


def _imports(path: Path) -> set[str]:
    """Every package module this file imports, at its top or inside a function (a lazy import is still an arrow)."""
    module = _module(path)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, node.module] if node.module else base) if node.level else node.module or ""
            if not target.startswith(NAME):
                continue
            for alias in node.names:  # "from . import x" imports the module x
                candidate = f"{target}.{alias.name}"
                found.add(candidate if _exists(candidate) else target)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith(NAME + ".")}
    return {m for m in found if m != NAME}


def _exists(module: str) -> bool:
    relative = Path(*module.split(".")[1:])
    return (PACKAGE / relative).with_suffix(".py").is_file() or (PACKAGE / relative / "__init__.py").is_file()


GRAPH = {_module(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py")) if p != PACKAGE / "__init__.py"}


def test_every_module_lives_in_a_known_layer():
    assert {_layer(m) for m in GRAPH} <= set(LAYERS), "a new subpackage needs its place in LAYERS"
    assert not [p.name for p in PACKAGE.glob("*.py") if p.stem not in FACES | {"__init__"}], \
        "modules live in subpackages whose names say what they hold"


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_arrow_runs_back_up(module):
    level = LAYERS.index(_layer(module))
    upward = sorted(target for target in GRAPH[module] if LAYERS.index(_layer(target)) > level)
    assert not upward, f"{module} ({_layer(module)}) imports from higher layers: {upward}"


def test_no_import_cycles():
    # A module importing its own subpackage's __init__ (which re-exports it) is not a cycle of code.
    graph = {m: {t for t in targets if not m.startswith(t + ".")} for m, targets in GRAPH.items()}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_the_engine_imports_without_qt():
    import subprocess
    import sys

    code = ("import sys; import napari_plantbio_train.training.loop, napari_plantbio_train.inference.label, "
            "napari_plantbio_train.cli; bad = [m for m in sys.modules if m.split('.')[0] in ('qtpy', 'PyQt6', "
            "'napari')]; print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
