"""hotcache's modules import each other without a cycle, function-level imports included.

Every ``import`` and ``from ... import`` anywhere in a module (top level or inside a function) is an
edge to the hotcache module it names; the implicit import of a parent package is not an edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import hotcache

ROOT = Path(hotcache.__file__).parent


def _modules() -> dict[str, Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = path
    return mods


def _edges(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in mods and t != name)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
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
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_among_hotcache_modules() -> None:
    mods = _modules()
    graph = {name: _edges(name, path, mods) for name, path in mods.items()}
    assert _cycles(graph) == []


def test_the_walker_sees_function_level_imports() -> None:
    """The guard above would pass vacuously if it missed imports inside functions: it must see them."""
    mods = _modules()
    # HotcacheConfig.ready() imports checks, signals and the meter store inside a method.
    assert {"hotcache.checks", "hotcache.signals", "hotcache.backends.meter_store"} <= _edges(
        "hotcache.apps", mods["hotcache.apps"], mods
    )
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_docs_layout_names_every_module() -> None:
    """docs/layout.md is how a newcomer finds a behaviour from the file names: it must not fall behind."""
    layout = (ROOT.parent / "docs" / "layout.md").read_text(encoding="utf-8")
    modules = [
        p.relative_to(ROOT).as_posix()
        for p in ROOT.rglob("*.py")
        if p.stat().st_size and p.relative_to(ROOT).as_posix() != "management/__init__.py"
    ]
    assert [m for m in modules if f"`{m}`" not in layout] == []
