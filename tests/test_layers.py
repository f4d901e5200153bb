"""The package's dependency order: every import (also inside functions) points down, and no two
parts of the package import each other.

Layers, bottom to top (docs/architecture.md, "Package layout"): a part may import its own layer's parts only
where the graph stays acyclic, and any lower layer.
"""

import ast
from pathlib import Path

import uda_reid

LAYERS = [
    {"errors", "registry", "plugins", "recipe_lookup", "fileio", "config", "device", "precision", "distributed",
     "centroids", "run_folder", "stopping"},
    {"data"},
    {"models"},
    {"clustering", "memory", "losses"},
    {"evaluation"},
    {"methods", "pretraining"},
    {"addons"},
    {"engine"},
    {"cli", "__main__"},
]
PACKAGE = Path(uda_reid.__file__).parent


def part_of(path: Path) -> str:
    """The top-level part of the package a file belongs to (``engine`` for engine/loop.py)."""
    relative = path.relative_to(PACKAGE).with_suffix("").parts
    return relative[0]


def imported_parts(path: Path) -> set[str]:
    """The parts of the package that ``path`` imports, relative and absolute, at any depth of the code."""
    module = list(path.relative_to(PACKAGE).with_suffix("").parts)
    package = module[:-1]  # the package a relative import starts from (also right for __init__.py)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                names = (node.module or "").split(".")
                if names[0] != "uda_reid":
                    continue
                target = names[1:]
            else:
                base = package[: len(package) - (node.level - 1)]
                target = base + (node.module.split(".") if node.module else [])
            if not target:  # from uda_reid import x / from . import x at the top
                target = [node.names[0].name]
            found.add(target[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                names = alias.name.split(".")
                if names[0] == "uda_reid" and len(names) > 1:
                    found.add(names[1])
    return found - {"__init__"}


def dependency_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        part = part_of(path)
        if part == "__init__":
            continue
        graph.setdefault(part, set()).update(imported_parts(path) - {part})
    return graph


def layer_of(part: str) -> int:
    for index, layer in enumerate(LAYERS):
        if part in layer:
            return index
    raise AssertionError(f"uda_reid.{part} is in no layer of tests/test_layers.py: place it")


def test_every_import_points_to_the_same_or_a_lower_layer():
    upward = [
        f"{part} (layer {layer_of(part)}) imports {other} (layer {layer_of(other)})"
        for part, others in dependency_graph().items()
        for other in others
        if layer_of(other) > layer_of(part)
    ]
    assert not upward, "imports that point up: " + "; ".join(sorted(upward))


def test_no_two_parts_of_the_package_depend_on_each_other():
    graph = dependency_graph()
    cycles = []

    def visit(part, trail):
        for other in graph.get(part, ()):
            if other in trail:
                cycles.append(" -> ".join(trail[trail.index(other):] + [other]))
            elif other not in done:
                visit(other, trail + [other])
        done.add(part)

    done: set[str] = set()
    for part in sorted(graph):
        if part not in done:
            visit(part, [part])
    assert not cycles, "import cycles: " + "; ".join(cycles)


def test_the_walk_sees_imports_inside_functions(tmp_path, monkeypatch):
    """The checker itself: a lazy import inside a function counts."""
    module = PACKAGE / "models" / "factory.py"
    assert "config" in imported_parts(module) and "fileio" in imported_parts(module)
    source = tmp_path / "uda_reid" / "models" / "lazy.py"
    source.parent.mkdir(parents=True)
    source.write_text("def f():\n    from ..engine.loop import adapt\n    import uda_reid.cli\n")
    monkeypatch.setattr(f"{__name__}.PACKAGE", tmp_path / "uda_reid")
    assert imported_parts(source) == {"engine", "cli"}
