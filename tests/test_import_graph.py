"""The import graph, read from the code's imports (type-only ones and those inside functions
included): no circles, and no arrow from a lower layer to a higher one. common/ is the floor;
controller/, worker/ and client/ build on it and not on each other; bench/ may use them all."""

from __future__ import annotations

import ast
import pathlib

REPO = pathlib.Path(__file__).resolve().parent.parent
LAYER = {"common": 0, "controller": 1, "worker": 1, "client": 1, "bench": 2}
# Arrows across a layer that are there on purpose, each with its reason (docs/architecture.md).
ACROSS = {
    ("clockwork.client.cli", "clockwork.worker.runtimes.engine_build"):
        "`clockwork build-engine` must build exactly what a worker would (departure 12)",
    ("clockwork.client.cli", "clockwork.worker.runtimes.base"): "the same command's error type (departure 12)",
}


def modules() -> dict[str, pathlib.Path]:
    found = {}
    for package in LAYER:
        for path in (REPO / package).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found["clockwork." + ".".join(parts)] = path
    return found


def imports_of(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """The project modules `name` imports (a `from package import module` names the module)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            out.update(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names)
    return {m for m in out if m in known and m != name}


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(name, path, set(found)) for name, path in found.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_import_graph_has_no_circles():
    assert circles(graph()) == []


def test_no_import_points_from_a_lower_layer_to_a_higher_one_or_across():
    wrong = [f"{a} -> {b}" for a, deps in graph().items() for b in deps if (a, b) not in ACROSS
             and a.split(".")[1] != b.split(".")[1] and LAYER[b.split(".")[1]] >= LAYER[a.split(".")[1]]]
    assert wrong == []
    assert all(b in graph()[a] for a, b in ACROSS), "an allowed arrow is gone: take it off the list"


def test_the_checks_see_a_circle_and_a_wrong_way_arrow():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    edges = graph()
    assert "clockwork.controller.core" in edges["clockwork.controller.policy"]  # the seam points one way
    assert "clockwork.common.schema" in edges["clockwork.controller.core"]
