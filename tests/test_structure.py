"""The package's import graph: no module imports, at any level (function-level imports included), one that imports it back."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "ilm"


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    """The package module that `name` (a module or an attribute of one) lives in."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its body."""
    modules = module_names()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                owner = _owner(target, modules)
                if owner and owner != module and not module.startswith(owner + "."):
                    graph[module].add(owner)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_planted_circle():
    """A hand-made graph with a -> b -> c -> a and d -> a gives exactly one circle {a, b, c}."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_the_graph_sees_function_level_and_relative_imports():
    """The graph holds the function-level imports that made the old circles (config -> shards, cli -> pilot.cli)."""
    graph = import_graph()
    assert "ilm.shards" in graph["ilm.config"]  # imported inside check_against_data
    assert "ilm.pilot.cli" in graph["ilm.cli"]  # imported inside build_parser (add_pilot_commands)


def test_no_import_circles():
    """No module of the package imports, directly or through others, a module that imports it."""
    assert cycles(import_graph()) == []


def test_shared_machinery_sits_below_the_stages():
    """config and shards import no stage module; inversion and judging use ilm.shards, not the GCG job module."""
    graph = import_graph()
    assert not graph["ilm.shards"] - {"ilm.io"}
    assert not graph["ilm.config"] & {"ilm.attack", "ilm.studies", "ilm.invert", "ilm.gcg"}
    assert "ilm.attack" not in graph["ilm.invert"] | graph["ilm.judge_runs"]
    assert "ilm.cli" not in graph["ilm.pilot.cli"]
