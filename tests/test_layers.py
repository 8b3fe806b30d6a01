"""The package's layers, read from the source: each layer imports only the layers below it, the
core imports nothing else of helpers, and no two modules import each other, directly or round a
longer loop (imports inside functions count too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

HELPERS = Path(__file__).resolve().parent.parent / "helpers"
LAYERS = ("core", "data", "evaluation", "run", "lessons", "tools")  # bottom to top


def module_name(path: Path) -> str:
    parts = path.relative_to(HELPERS.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every helpers module ``path`` imports (absolute or relative, at any depth)."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "helpers"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join([*base, *([node.module] if node.module else [])])
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "helpers":
                continue
            for alias in node.names:  # ``from helpers.core import coreset`` imports a module
                sub = f"{mod}.{alias.name}"
                found.add(sub if MODULES.get(sub) else mod)
    return found


MODULES = {module_name(p): p for p in HELPERS.rglob("*.py")}
GRAPH = {name: imports_of(path) for name, path in MODULES.items()}


def layer(name: str) -> int | None:
    """Index in LAYERS; None for the package's own front door (helpers, helpers.__main__)."""
    parts = name.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_module_lives_in_a_layer():
    loose = [m for m in MODULES if layer(m) is None and m not in ("helpers", "helpers.__main__")]
    assert not loose, f"modules outside the layer folders {LAYERS}: {loose}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_go_down_only(name):
    mine = layer(name)
    if mine is None:
        return  # helpers/__init__.py and __main__.py sit above every layer
    wrong = sorted(m for m in GRAPH[name] if layer(m) is None or layer(m) > mine)
    assert not wrong, f"{name} ({LAYERS[mine]}) imports from above its layer: {wrong}"


def test_the_core_is_closed():
    for name in MODULES:
        if layer(name) == 0:
            outside = [m for m in GRAPH[name] if layer(m) != 0]
            assert not outside, f"{name} imports outside helpers.core: {outside}"


def test_no_import_cycle():
    """Depth-first search for a back edge in the module graph (a package imports its
    ``__init__`` first, so ``helpers.x.y -> helpers.x`` edges are left out)."""
    graph = {
        name: {m for m in deps if m in MODULES and not name.startswith(m + ".")}
        for name, deps in GRAPH.items()
    }
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                loop = path[path.index(nxt) :] + [nxt]
                raise AssertionError(f"import cycle: {' -> '.join(loop)}")
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_the_checks_catch_a_wrong_import(tmp_path):
    """The reader itself: an upward import and a relative one are both seen."""
    pkg = tmp_path / "helpers" / "core"
    pkg.mkdir(parents=True)
    bad = pkg / "bad.py"
    bad.write_text("from helpers.run.run import Run\nfrom ..lessons import viz\nimport numpy\n")
    global HELPERS
    saved = HELPERS
    HELPERS = tmp_path / "helpers"
    try:
        found = imports_of(bad)
    finally:
        HELPERS = saved
    assert found == {"helpers.run.run", "helpers.lessons"} or found == {
        "helpers.run.run",
        "helpers.lessons.viz",
    }
    assert all(layer(m) > 0 for m in found)
