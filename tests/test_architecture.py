"""The layout of the package, as rules the import graph must keep.

README's "Architecture" section describes the rooms; these tests keep the
doors where it says they are. They read the source with `ast` (nothing is
imported), so a rule broken anywhere fails here with the offending import,
including imports inside functions and under ``if TYPE_CHECKING:``: a type
import is still a dependency a reader has to follow.
"""

from __future__ import annotations

import ast
import functools
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "nanomesh"

ROOT_MODULES = {
    "__init__", "__main__",
    "errors", "durations", "config", "ids", "checks", "disk", "naming", "labstate",  # shared
    "versions",
    "client", "service",  # aliases of nanomesh.sdk.* for services written before 0.2
}
"""The only modules allowed at the package root; everything else lives in the
package of its layer (see README, Architecture)."""

PURE_CORES = (
    "nanomesh.gossip", "nanomesh.placement", "nanomesh.consensus.voters",
    "nanomesh.consensus.role_core", "nanomesh.consensus.leader_loss",
    "nanomesh.consensus.election_backoff",
    "nanomesh.runtime.reconcile_core",
    "nanomesh.runtime.lifecycle", "nanomesh.runtime.deployment_core", "nanomesh.naming",
    "nanomesh.ids", "nanomesh.wire.messages", "nanomesh.monitor", "nanomesh.wire.leaf",
    "nanomesh.gateway.leaf_core",
    "nanomesh.devices.world", "nanomesh.devices.berrymed", "nanomesh.devices.alert_core",
    "nanomesh.versions", "nanomesh.cli.upgrade_core",
    "nanomesh.devices.meeting_core",
)
"""Decision code: messages and ``now`` in, effects out. It does no I/O and
reads no clock, so it imports none of `IO_MODULES`."""

IO_MODULES = {
    "trio", "asyncio", "socket", "select", "selectors", "signal", "subprocess",
    "threading", "time", "os", "pathlib", "shutil", "tempfile", "io", "urllib", "http",
    "h11", "zmq", "aiocoap", "trio_asyncio", "psutil", "pysyncobj", "msgpack",
}

LAYERS = (
    "__init__", "errors", "durations", "wire", "gossip",
    "config", "checks", "ids", "disk", "naming", "labstate", "versions",
    "consensus", "placement", "security", "transport", "runtime", "monitor", "gateway",
    "bundles",
    "sdk", "client", "service", "devices",
    "discovery", "sim", "testing", "daemon", "cli", "__main__",
)
"""The packages (and root modules) bottom up, as in docs/architecture.md:
each imports only from those before it."""


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # what it names: a module, or a module's attribute
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, source: str | None = None) -> Iterator[Import]:
    """Every import statement in the file, wherever it is (module level,
    functions, TYPE_CHECKING blocks), with relative imports resolved.
    ``source``: the module's name (default: from its path)."""
    source = source or module_name(path)
    package = source if path.name == "__init__.py" else source.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(source, alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                yield Import(source, f"{base}.{alias.name}", node.lineno)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The nanomesh module that ``name`` lives in (``a.b.func`` → ``a.b``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


@functools.cache
def internal_graph() -> dict[str, set[str]]:
    modules = all_modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for path in modules.values():
        for imp in imports_of(path):
            target = resolve(imp.target, modules) if imp.target.startswith("nanomesh") else None
            # A package importing its own submodules (``__init__`` re-exports)
            # is not a cycle a reader has to untangle.
            if target and target != imp.source and not target.startswith(imp.source + "."):
                graph[imp.source].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
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

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph)))
    try:
        for v in sorted(graph):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return found


def in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


# ---------------------------------------------------------------- the checker itself

def test_cycles_are_found() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]


def test_imports_are_found_in_functions_and_type_checking_blocks(tmp_path: Path) -> None:
    text = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from nanomesh.a import A\n"
            "def f():\n    from . import b\n    import nanomesh.c\n")
    fake = tmp_path / "x.py"
    fake.write_text(text)
    found = {i.target for i in imports_of(fake, "nanomesh.daemon.x")}
    assert {"nanomesh.a.A", "nanomesh.daemon.b", "nanomesh.c"} <= found


# ---------------------------------------------------------------- the rules

def test_no_import_cycles() -> None:
    assert cycles(internal_graph()) == []


def room_of(module: str) -> str:
    """The package a module belongs to (``nanomesh.wire.codec`` → ``wire``);
    a module at the package root is a room of its own."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_no_cycles_between_packages() -> None:
    """Packages form layers: if ``sdk`` imports ``transport``, nothing in
    ``transport`` imports ``sdk``, even through a third package."""
    rooms: dict[str, set[str]] = {}
    for source, targets in internal_graph().items():
        here = rooms.setdefault(room_of(source), set())
        here.update(room_of(t) for t in targets if room_of(t) != room_of(source))
    for targets in list(rooms.values()):
        for t in targets:
            rooms.setdefault(t, set())
    assert cycles(rooms) == []


def test_the_package_root_holds_only_shared_modules() -> None:
    at_root = {p.stem for p in PACKAGE.glob("*.py")}
    assert at_root - ROOT_MODULES == set(), (
        "new modules go into the package of their layer (README, Architecture)")


def test_msgpack_stays_inside_wire() -> None:
    outside = [f"{i.source}:{i.line}" for p in all_modules().values() for i in imports_of(p)
               if i.target.split(".")[0] == "msgpack"
               and not in_package(i.source, "nanomesh.wire")]
    assert outside == [], "the wire format has one home: nanomesh/wire"


@pytest.mark.parametrize("core", PURE_CORES)
def test_pure_cores_do_no_io(core: str) -> None:
    modules = [p for m, p in all_modules().items() if in_package(m, core)]
    assert modules, f"{core} does not exist: update PURE_CORES"
    io = [f"{i.source}:{i.line} imports {i.target}" for p in modules for i in imports_of(p)
          if i.target.split(".")[0] in IO_MODULES]
    assert io == []


def test_every_package_has_its_place_in_the_layers() -> None:
    rooms = {room_of(m) for m in all_modules()}
    assert rooms ^ set(LAYERS) == set(), "add new packages to LAYERS and docs/architecture.md"


@pytest.mark.parametrize("room", LAYERS)
def test_each_layer_imports_only_the_layers_below_it(room: str) -> None:
    below = set(LAYERS[: LAYERS.index(room)])
    wrong = sorted(f"{source} imports {target}" for source, targets in internal_graph().items()
                   if room_of(source) == room for target in targets
                   if room_of(target) != room and room_of(target) not in below)
    assert wrong == []


def test_nothing_outside_the_cli_imports_it() -> None:
    wrong = [f"{i.source}:{i.line}" for m, p in all_modules().items()
             if not in_package(m, "nanomesh.cli") and m != "nanomesh.__main__"
             for i in imports_of(p) if in_package(i.target, "nanomesh.cli")]
    assert wrong == []


def test_the_old_sdk_import_paths_are_the_sdk_modules() -> None:
    """Services in a registry import ``nanomesh.service``/``nanomesh.client``
    (written before the SDK moved); an upgraded peer must still run them."""
    import nanomesh.client
    import nanomesh.sdk.client
    import nanomesh.sdk.service
    import nanomesh.service
    from nanomesh.service import NanoService

    assert nanomesh.service is nanomesh.sdk.service
    assert nanomesh.client is nanomesh.sdk.client
    assert NanoService is nanomesh.sdk.service.NanoService


def test_only_the_cli_builds_the_daemon() -> None:
    """`nanomesh.daemon.assemble` is the composition root: it builds every
    part of the daemon, and no part holds it (each gets a narrow view)."""
    root = "nanomesh.daemon.assemble"
    holders = sorted(f"{source}" for source, targets in internal_graph().items()
                     if root in targets and not in_package(source, "nanomesh.cli"))
    assert holders == []
