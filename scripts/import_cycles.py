#!/usr/bin/env python3
"""Report import cycles between the modules of regkit and its plugins, and imports that climb.

Every ``import`` counts, at module level or inside a function (a deferred import hides a cycle
from Python, not from a reader), except those under ``if TYPE_CHECKING:``, which never run.
``from package import name`` counts as importing the submodule ``package.name`` where there is
one (Python imports a module's parent packages first in any case) and the package otherwise.

Layers: :data:`LAYERS` lists the packages from the bottom up, as the README's architecture
section draws them. A module may import from its own layer and the layers below; an import of a
higher layer is reported like a cycle. The package roots (``regkit``, ``regkit_recon``) are light
facades whose names load on first use: importing them is free, and they may name anything.
Modules under no listed package are not checked for layers.

Usage: ``python scripts/import_cycles.py [ROOT ...]``; exits 1 and prints each cycle or climbing
import when there is one, 0 otherwise. The default roots are ``regkit`` and ``plugins/*/src/*``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

LAYERS: tuple[tuple[str, ...], ...] = (
    ("regkit.errors",),
    ("regkit.volume", "regkit.registry", "regkit.utils", "regkit.lazy", "regkit.data",
     "regkit.labels"),
    ("regkit.geometry",),
    ("regkit.render", "regkit.metrics", "regkit.optim", "regkit.io"),
    ("regkit.registration",),
    ("regkit.cli", "regkit.testing"),
    ("regkit_recon.measure", "regkit_recon.data", "regkit_recon.models"),
    ("regkit_recon.phantom",),
    ("regkit_recon.groundtruth", "regkit_recon.measure_hand"),
    ("regkit_recon.net",),
    ("regkit_recon.reconstruct",),
    ("regkit_recon.cli",),
)
"""The packages, bottom layer first (the README's architecture section)."""
FACADES = frozenset({"regkit", "regkit_recon"})


def layer_of(module: str) -> int | None:
    """The layer of a module (that of the deepest listed package holding it), None if unlisted."""
    best: tuple[int, int] | None = None
    for level, packages in enumerate(LAYERS):
        for package in packages:
            if module == package or module.startswith(package + "."):
                depth = package.count(".")
                if best is None or depth > best[0]:
                    best = (depth, level)
    return None if best is None else best[1]


def climbing(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Every import of a module in a higher layer than the importer's, sorted."""
    found = []
    for module, targets in graph.items():
        here = layer_of(module)
        if here is None or module in FACADES:
            continue
        for target in targets:
            there = layer_of(target)
            if target not in FACADES and there is not None and there > here:
                found.append((module, target))
    return sorted(found)


def module_files(root: Path) -> dict[str, Path]:
    """Every module below a package root, by dotted name."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The known modules that module ``name`` imports when it runs."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in known else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return {module for module in found if module in known and module != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    sys.setrecursionlimit(10_000)
    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(found)


def import_graph(roots: list[Path]) -> dict[str, set[str]]:
    """Each module of the roots and the modules of the roots it imports."""
    files: dict[str, Path] = {}
    for root in roots:
        files.update(module_files(root))
    known = set(files)
    return {name: imported(name, path, known) for name, path in files.items()}


def main(argv: list[str]) -> int:
    roots = [Path(arg).resolve() for arg in argv] or [
        REPO / "regkit",
        *sorted(path for path in (REPO / "plugins").glob("*/src/*") if path.is_dir()),
    ]
    graph = import_graph(roots)
    found = cycles(graph)
    for component in found:
        links = [f"{a} -> {b}" for a in component for b in sorted(graph[a]) if b in component]
        print(f"import cycle among {len(component)} modules:")
        for link in links:
            print(f"  {link}")
    upward = climbing(graph)
    for module, target in upward:
        print(f"import climbs the layers: {module} -> {target}")
    print(f"{len(graph)} modules, {len(found)} import cycle(s), {len(upward)} climbing import(s)")
    return 1 if found or upward else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
