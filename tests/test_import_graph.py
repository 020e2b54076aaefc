"""The import graph of ``spiral`` has no cycle, and ``spiral.world`` does not reach up into the layers built on it.

Every ``import`` statement counts, at module level and inside functions (a lazy import still ties two modules
together: the cycle only waits for the first call). Imports under ``if TYPE_CHECKING:`` do not run and are not
counted. Modules are read with ``ast`` (nothing is imported), so a cycle is reported even where the import order
happens to work today.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Imports allowed to close a cycle while a change that removes them is in flight (none today; the test fails on
# an entry that no longer closes a cycle, so the list cannot go stale).
KNOWN_CYCLE_EDGES: set[tuple[str, str]] = set()

# spiral.world (domain, renderer, goals, splits, seed ranges) is the bottom of the tabletop stack: these layers
# build on it and it must not import them.
ABOVE_WORLD = ("spiral.bench", "spiral.train", "spiral.data", "spiral.generators", "spiral.critics", "spiral.loop",
               "spiral.api", "spiral.cli")
KNOWN_LAYER_EDGES: set[tuple[str, str]] = set()


def _modules(root: Path) -> dict[str, Path]:
    mods = {}
    for path in sorted((root / "spiral").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except the bodies of ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return found


def import_graph(root: Path = ROOT) -> dict[str, dict[str, str]]:
    """importer → {imported module: "path:line" of the first import}, spiral modules only."""
    mods = _modules(root)

    def owner(name: str) -> str | None:  # the deepest spiral module a dotted name lies in
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, dict[str, str]] = {m: {} for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for name in names:
                target = owner(name) if name == "spiral" or name.startswith("spiral.") else None
                if target and target != mod:
                    graph[mod].setdefault(target, f"{path.relative_to(root).as_posix()}:{node.lineno}")
    return graph


def cycles(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _path_in(graph: dict[str, dict[str, str]], comp: list[str]) -> str:
    """One cycle through the component, each import with its file and line."""
    members, start = set(comp), comp[0]
    seen, trail, v = {start: 0}, [start], start
    while True:
        v = next(w for w in sorted(graph[v]) if w in members)  # every member has a successor inside
        if v in seen:
            loop = trail[seen[v]:] + [v]
            return " -> ".join(f"{a} ({graph[a][b]})" for a, b in zip(loop, loop[1:])) + f" -> {v}"
        seen[v] = len(trail)
        trail.append(v)


def test_no_import_cycle():
    graph = import_graph()
    for a, b in sorted(KNOWN_CYCLE_EDGES):
        assert b in graph.get(a, {}) and any(a in c and b in c for c in cycles(graph)), (
            f"{a} -> {b} no longer closes an import cycle: remove it from KNOWN_CYCLE_EDGES")
    pruned = {a: {b: where for b, where in out.items() if (a, b) not in KNOWN_CYCLE_EDGES} for a, out in graph.items()}
    found = [_path_in(pruned, comp) for comp in cycles(pruned)]
    assert not found, "import cycles (module- and function-level imports):\n" + "\n".join(found)


def test_world_does_not_import_the_layers_above_it():
    graph = import_graph()
    for a, b in sorted(KNOWN_LAYER_EDGES):
        assert b in graph.get(a, {}), f"{a} no longer imports {b}: remove it from KNOWN_LAYER_EDGES"
    bad = [f"{a} -> {b} ({where})" for a, out in sorted(graph.items()) if a.startswith("spiral.world")
           for b, where in sorted(out.items())
           if b.startswith(ABOVE_WORLD) and (a, b) not in KNOWN_LAYER_EDGES]
    assert not bad, "spiral.world imports a layer built on it:\n" + "\n".join(bad)


def test_the_graph_sees_function_level_and_relative_imports(tmp_path):
    """The reader itself: a cycle closed only by an import inside a function, through a relative import, is found;
    one closed only under ``if TYPE_CHECKING:`` is not."""
    pkg = tmp_path / "spiral" / "sub"
    pkg.mkdir(parents=True)
    (tmp_path / "spiral" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from spiral.sub import b\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n    return a\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from spiral.sub.a import x\n")
    (pkg / "d.py").write_text("import spiral.sub.c\n")
    graph = import_graph(tmp_path)
    assert graph["spiral.sub.b"] == {"spiral.sub.a": "spiral/sub/b.py:2"}
    assert graph["spiral.sub.c"] == {} and graph["spiral.sub.d"] == {"spiral.sub.c": "spiral/sub/d.py:1"}
    assert cycles(graph) == [["spiral.sub.a", "spiral.sub.b"]]
    assert "spiral.sub.a (spiral/sub/a.py:1) -> spiral.sub.b (spiral/sub/b.py:2) -> spiral.sub.a" == _path_in(
        graph, ["spiral.sub.a", "spiral.sub.b"])
