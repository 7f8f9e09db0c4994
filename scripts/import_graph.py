"""The import graph of ``exitwise``: modules, import edges, cycles (strongly connected
components; imports inside functions count) and the modules per layer of ``docs/design.md``.

    python scripts/import_graph.py [REPO_ROOT]

``tests/test_structure.py`` enforces the same rules (no cycle, imports only down the layers).
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path


def graph_of(root: Path) -> tuple[dict[str, Path], dict[str, set[str]]]:
    """Modules under ``root/exitwise`` and the exitwise modules each imports (a package's
    re-exports of its own submodules left out)."""
    mods = {}
    for p in (root / "exitwise").rglob("*.py"):
        parts = p.relative_to(root).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                if (node.module or "").startswith("exitwise"):
                    for a in node.names:
                        full = f"{node.module}.{a.name}"
                        deps.add(full if full in mods else node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("exitwise."))
        graph[name] = {
            d
            for d in deps
            if d in mods and d != name and not d.startswith(name + ".") and name != "exitwise"
        }
    return mods, graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layers_of(root: Path, mods: dict[str, Path]) -> dict[tuple[int, str], list[str]]:
    """Modules per layer of the table in ``docs/design.md`` (empty without one)."""
    layers = {}
    for line in (root / "docs" / "design.md").read_text().splitlines():
        m = re.match(r"\|\s*(\d+)\s+([a-z ]+)\|(.*)\|", line)
        if m:
            for path in re.findall(r"`(exitwise/[\w/.]*)`", m.group(3)):
                layers[path] = (int(m.group(1)), m.group(2).strip())
    by: dict[tuple[int, str], list[str]] = {}
    for name in sorted(mods):
        path = name.replace(".", "/")
        hits = [
            p
            for p in layers
            if p == path + ".py" or (p.endswith("/") and (path + "/").startswith(p))
        ]
        if hits:
            by.setdefault(layers[max(hits, key=len)], []).append(name)
    return by


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]
    mods, graph = graph_of(root)
    found = cycles(graph)
    edges = sum(len(d) for d in graph.values())
    print(f"{len(mods)} modules, {edges} import edges, {len(found)} cycles")
    for component in found:
        print("  cycle:", " <-> ".join(component))
    for (n, label), names in sorted(layers_of(root, mods).items()):
        print(f"  layer {n} {label}: {len(names)} modules")


if __name__ == "__main__":
    main()
