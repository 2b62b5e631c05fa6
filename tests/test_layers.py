"""The import graph follows the layers of docs/architecture.md: dependencies run one way, down the data flow.

Every import counts, the ones inside functions too (they are how heavy libraries stay out of `retrv --help`,
not a way around the layers).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "retrv"

# Lowest first. A module may import from its own layer's group and from lower layers only.
LAYERS: list[set[str]] = [
    {"errors", "progress"},
    {"items", "config", "devices", "hub"},
    {"scan", "images"},
    {"icm", "encoders", "data"},
    {"index", "rerank"},  # siblings: neither imports the other
    {"engine", "precomputed", "dedup"},
    {"bench", "train"},
    {"cli", "serve"},
]
SIBLINGS = [("index", "rerank"), ("icm", "encoders"), ("icm", "data"), ("encoders", "data")]


def _group(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _layer(group: str) -> int:
    for i, groups in enumerate(LAYERS):
        if group in groups:
            return i
    raise AssertionError(f"retrv.{group} is in no layer of this test (add it where it belongs)")


def _imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("retrv"):
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("retrv"))
        graph[module] = found
    return graph


def test_layers_import_only_downwards():
    wrong = []
    for module, imported in _imports().items():
        group = _group(module)
        if group == "__init__":
            continue  # the package's lazy re-exports
        for target in imported:
            other = _group(target)
            if other == "__init__" or other == group:
                continue
            if _layer(other) > _layer(group) or (group, other) in SIBLINGS or (other, group) in SIBLINGS:
                wrong.append(f"{module} imports {target}")
    assert not wrong, wrong


def test_no_import_cycles_between_modules():
    graph = {m: {t for t in ts if t != m} for m, ts in _imports().items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in graph.get(module, ()):
            if target not in graph:
                continue
            if state.get(target) == 1:
                cycles.append(path[path.index(target) :] + [target] if target in path else [module, target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    cycles = [c for c in cycles if not (len(c) == 2 and c[0] == "retrv")]
    assert not cycles, cycles


def test_images_are_opened_in_one_place():
    """`retrv/images.py` is the one guarded image opener (size checked before decoding, every mode to RGB)."""
    callers = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "images.py" and path.parent == PACKAGE:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "open" and getattr(node.value, "id", "") == "Image":
                callers.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not callers, callers
