"""Fail on an import circle among the modules of the given packages (``make imports``).

Every import statement counts as an edge, wherever it stands: at the top, inside a
function, under ``if TYPE_CHECKING:``. A circle that only lazy or type-checking imports
close still ties the modules together (they cannot be understood, tested or loaded one
without the other), so it is reported like any other. Importing a package from one of
its own modules (``overlayboot.cli`` -> ``overlayboot``) is not an edge.

usage: python3 tools/importcheck.py [--root DIR] PACKAGE...
Prints each circle (its modules, and one cycle ``a -> b -> ... -> a``), then a summary
line; exits 1 if there is any.
Standard library only (``ast``): no module of the packages is imported or run.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

Graph = dict[str, set[str]]


def module_name(path: Path) -> str:
    """``pkg/sub/mod.py`` -> ``pkg.sub.mod``; ``pkg/__init__.py`` -> ``pkg``."""
    parts = list(path.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def find_modules(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Every module of ``packages`` (directories under ``root``) by dotted name."""
    found: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            found[module_name(path.relative_to(root))] = path
    return found


def imported_names(tree: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """The dotted names an import of ``module`` may refer to (relative ones resolved)."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, base] if base else parts)
            yield base
            # "from pkg import name": name may be a module of pkg
            yield from (f"{base}.{alias.name}" for alias in node.names)


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    """The module of ours that an imported dotted name falls in, if any."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(modules: dict[str, Path]) -> Graph:
    """Module -> the modules of ours it imports."""
    graph: Graph = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_bytes(), filename=str(path))
        targets = set()
        for name in imported_names(tree, module, path.name == "__init__.py"):
            target = _owner(name, modules)
            if target and target != module and not module.startswith(target + "."):
                targets.add(target)
        graph[module] = targets
    return graph


def strong_components(graph: Graph) -> list[list[str]]:
    """Tarjan's strongly connected components, iteratively (no recursion limit)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for nxt in successors:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
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
                    components.append(sorted(component))
    return components


def a_cycle(graph: Graph, component: Sequence[str]) -> list[str]:
    """One closed path through the first module of ``component``, inside it."""
    members = set(component)
    start = component[0]
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for nxt in sorted(graph[node] & members):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if nxt not in parents:
                    parents[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {component}")


def circles(root: Path, packages: Iterable[str]) -> list[tuple[list[str], list[str]]]:
    """Each import circle among the modules of ``packages``: its modules, and one cycle."""
    graph = import_graph(find_modules(root, packages))
    return [(c, a_cycle(graph, c)) for c in strong_components(graph) if len(c) > 1]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="where the packages are")
    parser.add_argument("packages", nargs="+")
    args = parser.parse_args(argv)
    missing = [p for p in args.packages if not (args.root / p).is_dir()]
    if missing:
        print(f"importcheck: no package directory {', '.join(missing)}", file=sys.stderr)
        return 2
    found = circles(args.root, args.packages)
    for component, cycle in found:
        print(f"import circle among {' '.join(component)}: {' -> '.join(cycle)}")
    print(f"importcheck: {len(found)} import circles in {', '.join(args.packages)}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
