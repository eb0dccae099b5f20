"""The daemon's architecture rule (issue 14): one composition root,
`nanomesh.daemon.assemble`, builds every part; no part holds the root, and
the import graph of `nanomesh.daemon` has no cycle, counting imports under
``if TYPE_CHECKING:`` (they are design dependencies too). Parsed with
`ast`, so nothing is imported and every import statement counts."""

from __future__ import annotations

import ast
from pathlib import Path

import nanomesh

PACKAGE = "nanomesh.daemon"
ROOT = f"{PACKAGE}.assemble"
FORBIDDEN = (ROOT, f"{PACKAGE}.peer")
"""The root, and the old home of the whole daemon object (PeerDaemon)."""
SRC = Path(nanomesh.__file__).parent


def _imports(path: Path, module: str) -> set[str]:
    """Every module named by an import statement of ``path``, anywhere in it."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing package
                parent = module.rsplit(".", node.level)[0]
                base = f"{parent}.{base}" if base else parent
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def _daemon_graph(src: Path) -> dict[str, set[str]]:
    """Module -> the `nanomesh.daemon` modules it imports."""
    modules = {f"{PACKAGE}.{p.stem}": p for p in (src / "daemon").glob("*.py")
               if p.stem != "__init__"}
    return {name: {m for m in _imports(path, name) if m in modules and m != name}
            for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` (its modules in order), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_module_holds_the_root() -> None:
    """Only the root itself and the CLI import the root (or `daemon.peer`)."""
    offenders = []
    for path in sorted((SRC / "daemon").glob("*.py")):
        name = f"{PACKAGE}.{path.stem}"
        if name == ROOT:
            continue
        bad = _imports(path, name) & set(FORBIDDEN)
        if bad:
            offenders.append(f"{name} imports {', '.join(sorted(bad))}")
    assert not offenders, offenders


def test_daemon_import_graph_has_no_cycle() -> None:
    cycle = _cycle(_daemon_graph(SRC))
    assert cycle is None, " -> ".join(cycle or [])


def test_cycle_finder_finds_a_cycle() -> None:
    """The checker itself: a two-module cycle and a self-consistent DAG."""
    assert _cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
