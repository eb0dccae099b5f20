"""One cgroup per instance: resource limits, and a kill that reaches the whole tree.

**What is used.** At start the driver looks at what the machine offers
(:func:`detect`, a pure reading of ``/proc/self/mountinfo`` and
``/proc/self/cgroup``; :meth:`Cgroups.open` then checks it can write there):

* cgroup v2 with the ``memory``, ``cpu`` and ``pids`` controllers: v2 only;
* otherwise, per controller, a cgroup v1 hierarchy that has it (hybrid
  layouts, like this project's machines: v2 mounted at
  ``/sys/fs/cgroup/unified`` without controllers, v1 memory/cpu/pids that
  work), plus the v2 hierarchy, if there is one, for its ``cgroup.kill``;
* otherwise none: instances run without limits, and a service that declares
  limits gets one warning saying why (not root, no cgroup file system).

:meth:`Cgroups.describe` says which (``"v1 (memory, cpu, pids) + v2
cgroup.kill"``) for the log and the peer's profile.

**Where.** Every instance cgroup lives under the daemon's *own* cgroup in each
hierarchy (``<own>/nanomesh/<peer>.<pid>.<n>/<service>-<index>``), the way a
delegated systemd service nests its children: the limits of whoever runs the
daemon still apply to its instances. The daemon's pid (and a per-process
counter ``n``) are in the scope's name so that two drivers on one machine
(labs, tests) never share a cgroup, and so that a later daemon can tell and
remove the empty scopes of dead ones
(:meth:`Cgroups.sweep_stale`).

**Life of an instance cgroup.** The driver creates it and writes the limits
(:meth:`Cgroups.create`); the supervisor shim writes its own pid into
``cgroup.procs`` of each hierarchy *before* it spawns the command, so the
whole tree starts inside; when the run ends (stopped, ended by itself, or the
daemon died and the shim saw its lifeline break) everything in it is killed:
v2 ``cgroup.kill`` (atomic, fork bombs included), else SIGKILL to every pid in
``cgroup.procs`` until it is empty. That is what catches a process that left
the process group (``setsid()``, a double-forking daemon). Then the driver
reads whether the kernel's OOM killer struck (v2 ``memory.events``, v1
``memory.oom_control``) and removes the cgroup.

Every file operation here is a sysfs read or write of a few bytes: fast and
non-blocking, so the driver calls them directly from trio.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import re
import signal
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from nanomesh.runtime.instance_spec import Limits

log = logging.getLogger("nanomesh.runtime")

CONTROLLERS = ("memory", "cpu", "pids")
"""The controllers the runtime uses, in the order they are reported."""

CPU_PERIOD_US = 100_000
"""The CFS period for a CPU quota (100 ms, the kernel's default): a quota of
0.5 cores is 50 ms of CPU time per 100 ms."""

KILL_TIMEOUT = 5.0
"""Seconds :meth:`InstanceCgroup.kill` keeps killing before it gives up (and
logs the cgroup it could not empty). A SIGKILLed process normally leaves its
cgroup within milliseconds; only a process stuck in the kernel (``D`` state,
a dead NFS mount) takes longer."""

_scope_numbers = itertools.count()
"""Drivers in one process (tests, ``nanomesh lab``) get distinct scopes."""

SCOPE_PARENT = "nanomesh"
"""The folder, under the daemon's own cgroup, holding one scope per daemon."""


class CgroupError(OSError):
    """A cgroup could not be created or configured (the driver then records the
    run ``failed``: limits that were asked for are never silently dropped)."""


# -- what the machine offers (pure) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hierarchy:
    """One mounted cgroup hierarchy and the daemon's place in it."""

    version: int
    """1 or 2."""
    mount: Path
    own: str
    """The daemon's cgroup, relative to the mount (``"process_api/x"``, or ``""``
    at the root)."""
    controllers: frozenset[str]
    """Of :data:`CONTROLLERS`, those this hierarchy carries (v1: its mount
    options; v2: the daemon's ``cgroup.controllers``)."""
    name: str = ""
    """v1: every controller of the hierarchy (``"cpu,cpuacct"``, ``"name=systemd"``)."""

    @property
    def base(self) -> Path:
        """The daemon's cgroup directory."""
        return self.mount / self.own if self.own else self.mount

    @property
    def key(self) -> str:
        """A short name: ``"unified"`` for v2, else the controllers used here
        (``"cpu"`` for a co-mounted ``cpu,cpuacct``), else :attr:`name`."""
        if self.version == 2:
            return "unified"
        return ",".join(c for c in CONTROLLERS if c in self.controllers) or self.name


@dataclass(frozen=True, slots=True)
class Layout:
    """Which hierarchies the runtime uses (see the module docstring)."""

    limits: tuple[Hierarchy, ...] = ()
    """Hierarchies that carry the controllers used for limits."""
    tracker: Hierarchy | None = None
    """A v2 hierarchy used for membership and ``cgroup.kill`` (v2-only
    layouts: the same hierarchy as ``limits``)."""
    reason: str = ""
    """Why nothing (or not everything) is available; empty when all is."""

    @property
    def hierarchies(self) -> tuple[Hierarchy, ...]:
        out = list(self.limits)
        if self.tracker is not None and self.tracker not in out:
            out.append(self.tracker)
        return tuple(out)

    @property
    def controllers(self) -> frozenset[str]:
        return frozenset().union(*(h.controllers for h in self.limits))

    def describe(self) -> str:
        """``"v2 (memory, cpu, pids)"``, ``"v1 (memory, cpu, pids) + v2 cgroup.kill"``,
        ``"none (not root)"``."""
        if not self.hierarchies:
            return f"none ({self.reason})" if self.reason else "none"
        ctrl = ", ".join(c for c in CONTROLLERS if c in self.controllers) or "no controllers"
        versions = {h.version for h in self.limits}
        if not self.limits:
            text = f"v2 ({ctrl})"
        else:
            text = f"v{'/'.join(str(v) for v in sorted(versions))} ({ctrl})"
        if self.tracker is not None and self.tracker not in self.limits:
            text += " + v2 cgroup.kill"
        return text


def parse_mountinfo(mountinfo: str, proc_cgroup: str) -> list[Hierarchy]:
    """The cgroup hierarchies mounted here and the daemon's cgroup in each, from
    the text of ``/proc/self/mountinfo`` and ``/proc/self/cgroup``. v2
    hierarchies come back with no controllers (they are read from the file
    system: :func:`v2_controllers`)."""
    own_v1: dict[frozenset[str], str] = {}
    own_v2: str | None = None
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, ctrl, path = parts
        if parts[0] == "0" and ctrl == "":
            own_v2 = path
        else:
            own_v1[frozenset(ctrl.split(","))] = path
    out: list[Hierarchy] = []
    seen: set[str] = set()
    for line in mountinfo.splitlines():
        pre, sep, post = line.partition(" - ")
        fields, tail = pre.split(), post.split()
        if not sep or len(fields) < 5 or len(tail) < 3:
            continue
        root, mountpoint, fstype = fields[3], _unescape(fields[4]), tail[0]
        if fstype == "cgroup2" and own_v2 is not None and "v2" not in seen:
            seen.add("v2")
            out.append(Hierarchy(2, Path(mountpoint), _relative(own_v2, root), frozenset()))
        elif fstype == "cgroup":
            options = set(tail[2].split(","))
            for ctrl_set, path in own_v1.items():
                if ctrl_set <= options and ",".join(sorted(ctrl_set)) not in seen:
                    seen.add(",".join(sorted(ctrl_set)))
                    out.append(Hierarchy(1, Path(mountpoint), _relative(path, root),
                                         frozenset(ctrl_set & set(CONTROLLERS)),
                                         ",".join(sorted(ctrl_set))))
    return out


def choose(found: Iterable[Hierarchy], v2_controllers: frozenset[str] = frozenset(),
           v2_kill: bool = False) -> Layout:
    """Pick the hierarchies to use (module docstring): v2 when it has every
    controller of :data:`CONTROLLERS`; else v1 per controller, plus v2 for
    ``cgroup.kill`` when it has it (``v2_kill``)."""
    found = list(found)
    v2 = next((h for h in found if h.version == 2), None)
    if v2 is not None:
        v2 = replace(v2, controllers=v2_controllers & frozenset(CONTROLLERS))
        if v2.controllers == frozenset(CONTROLLERS):
            return Layout(limits=(v2,), tracker=v2)
    limits: list[Hierarchy] = []
    covered: set[str] = set()
    for h in found:
        if h.version == 1 and h.controllers - covered:
            limits.append(h)
            covered |= h.controllers
    tracker = v2 if v2 is not None and v2_kill else None
    if not limits and v2 is not None and v2.controllers:
        limits.append(v2)  # a partial v2 beats nothing
        covered |= v2.controllers
    missing = [c for c in CONTROLLERS if c not in covered]
    reason = f"no {', '.join(missing)} controller" if missing else ""
    if not limits and tracker is None:
        reason = "no cgroup file system" if not found else f"no usable controllers ({reason})"
    return Layout(limits=tuple(limits), tracker=tracker, reason=reason)


def _relative(path: str, root: str) -> str:
    if root != "/" and (path == root or path.startswith(root + "/")):
        path = path[len(root):]
    return path.strip("/")


def _unescape(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def v2_controllers(h: Hierarchy) -> frozenset[str]:
    """The controllers the daemon's v2 cgroup can hand to its children."""
    try:
        return frozenset((h.base / "cgroup.controllers").read_text().split())
    except OSError:
        return frozenset()


def detect() -> Layout:
    """What this machine offers the runtime (read from ``/proc``; see
    :meth:`Cgroups.open` for the checks that need writing)."""
    try:
        mountinfo = Path("/proc/self/mountinfo").read_text()
        proc_cgroup = Path("/proc/self/cgroup").read_text()
    except OSError as exc:
        return Layout(reason=f"cannot read /proc: {exc.strerror}")
    found = parse_mountinfo(mountinfo, proc_cgroup)
    v2 = next((h for h in found if h.version == 2), None)
    controllers = v2_controllers(v2) if v2 is not None else frozenset()
    # cgroup.kill (Linux 5.14) exists in non-root v2 cgroups only: guess from
    # the kernel here, Cgroups.open() checks the file in the scope it creates.
    kill = v2 is not None and _kernel_at_least(5, 14)
    return choose(found, controllers, kill)


def _kernel_at_least(major: int, minor: int) -> bool:
    match = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return match is not None and (int(match[1]), int(match[2])) >= (major, minor)


# -- the daemon's scope and the instances' cgroups (I/O) ------------------------------------


@dataclass(eq=False)
class InstanceCgroup:
    """One instance's cgroup: a directory in each hierarchy the runtime uses."""

    name: str
    """``"<service>-<index>"``."""
    dirs: Mapping[str, Path]
    """Hierarchy key (``"memory"``, ``"cpu"``, ``"pids"``, ``"unified"``) -> directory."""
    versions: Mapping[str, int] = field(default_factory=dict)
    memory_mb: int | None = None
    """The memory limit written (for the "killed by its memory limit" message)."""
    oom_baseline: int = 0
    """OOM kills already counted when the run began (a cgroup left over from an
    earlier run keeps its counter)."""

    @property
    def procs_files(self) -> list[Path]:
        """The ``cgroup.procs`` files a process writes its pid to, to join."""
        return [d / "cgroup.procs" for d in self.dirs.values()]

    def pids(self) -> set[int]:
        """Every process in the cgroup or below it (a container engine may nest
        its own cgroup inside), in any hierarchy."""
        out: set[int] = set()
        for d in self.dirs.values():
            for procs in [d / "cgroup.procs", *_sub_procs_files(d)]:
                with contextlib.suppress(OSError, ValueError):
                    out.update(int(p) for p in procs.read_text().split())
        return out

    def signal_all(self, sig: signal.Signals, except_group: int | None = None) -> None:
        """Send ``sig`` to every process in the cgroup (best effort), except the
        members of process group ``except_group`` (signalled already: a second
        SIGTERM can hit a program while it exits, with default handlers back)."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if except_group is None or os.getpgid(pid) != except_group:
                    os.kill(pid, sig)

    def kill_once(self) -> bool:
        """One round of killing: ``cgroup.kill`` where v2 has it, else SIGKILL to
        every pid. Returns True once the cgroup is empty."""
        unified = self.dirs.get("unified")
        if unified is not None and (unified / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                (unified / "cgroup.kill").write_text("1")
        else:
            self.signal_all(signal.SIGKILL)
        return not self.pids()

    def kill_sync(self, timeout: float = KILL_TIMEOUT) -> bool:
        """Kill everything in the cgroup and wait (at most ``timeout`` s) until it
        is empty. Blocking; for the start-up sweep and tests."""
        deadline = time.monotonic() + timeout
        while not self.kill_once():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def oom_kills(self) -> int:
        """OOM kills in this cgroup since it was made (v2 ``memory.events``,
        hierarchical; v1 ``memory.oom_control``'s ``oom_kill``, Linux 4.13+,
        counted per cgroup, so cgroups an engine nested inside are added)."""
        unified = self.dirs.get("unified")
        if unified is not None and (unified / "memory.events").exists():
            return _read_key(unified / "memory.events", "oom_kill")
        memory = self.dirs.get("memory")
        if memory is None:
            return 0
        files = [memory / "memory.oom_control",
                 *(p.with_name("memory.oom_control") for p in _sub_procs_files(memory))]
        return sum(_read_key(f, "oom_kill") for f in files)

    def oom_killed(self) -> bool:
        """Whether the kernel's OOM killer struck in this cgroup during the run."""
        return self.memory_mb is not None and self.oom_kills() > self.oom_baseline

    def remove(self) -> bool:
        """Remove the cgroup's directories and any cgroups nested in them (they
        must be empty: :meth:`kill_once` first). True if all are gone."""
        for d in self.dirs.values():
            _remove_tree(d)
        return not any(d.exists() for d in self.dirs.values())


class Cgroups:
    """The runtime's cgroups on this machine: detection, the daemon's scope, and
    one :class:`InstanceCgroup` per instance."""

    def __init__(self, layout: Layout, scope: str) -> None:
        self.layout = layout
        self.scope = scope
        """``"nanomesh/<peer>.<pid>.<n>"``, relative to the daemon's own cgroup."""

    @classmethod
    def open(cls, peer: str, layout: Layout | None = None) -> Cgroups:
        """Detect (unless ``layout`` is given), check that we may write, create
        this daemon's scope, remove stale scopes of dead daemons. Never raises:
        a machine without usable cgroups gives an empty layout with a reason."""
        layout = detect() if layout is None else layout
        scope = f"{SCOPE_PARENT}/{_safe(peer)}.{os.getpid()}.{next(_scope_numbers)}"
        if layout.hierarchies and os.geteuid() != 0:
            layout = Layout(reason="not root")
        usable_limits: list[Hierarchy] = []
        tracker = layout.tracker
        problems: list[str] = []
        for h in layout.hierarchies:
            try:
                (h.base / scope).mkdir(parents=True, exist_ok=True)
                if h.version == 2 and h.controllers:
                    _enable_v2_controllers(h, scope)
            except OSError as exc:
                problems.append(f"{h.mount}: {exc.strerror or exc}")
                if h is tracker:
                    tracker = None
                continue
            if h in layout.limits:
                usable_limits.append(h)
        if tracker is not None and not (tracker.base / scope / "cgroup.kill").exists():
            tracker = tracker if tracker in usable_limits else None
        reason = "; ".join(filter(None, [layout.reason, *problems]))
        cg = cls(Layout(limits=tuple(usable_limits), tracker=tracker, reason=reason), scope)
        cg.sweep_stale()
        return cg

    def describe(self) -> str:
        """For the log and the peer's profile (``{"cgroups": describe()}``)."""
        return self.layout.describe()

    @property
    def available(self) -> bool:
        return bool(self.layout.hierarchies)

    def unenforced(self, limits: Limits) -> str | None:
        """Why some of ``limits`` cannot be enforced here, or None if all can."""
        wanted = [c for c, v in (("memory", limits.memory_mb), ("cpu", limits.cpu),
                                 ("pids", limits.pids)) if v is not None]
        missing = [c for c in wanted if c not in self.layout.controllers]
        if not missing:
            return None
        if not self.layout.limits:
            return self.layout.reason or "no cgroup controllers"
        return f"no {', '.join(missing)} controller ({self.describe()})"

    def create(self, name: str, limits: Limits | None = None) -> InstanceCgroup:
        """Create (or reuse an empty leftover) cgroup ``name`` in each hierarchy
        and write ``limits`` (those this machine can enforce). Raises
        :class:`CgroupError` naming the file that could not be written."""
        dirs: dict[str, Path] = {}
        versions: dict[str, int] = {}
        for h in self.layout.hierarchies:
            d = h.base / self.scope / name
            try:  # parents: a daemon that took our empty scope for stale may have removed it
                d.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CgroupError(exc.errno, f"cannot create cgroup {d}: {exc.strerror}"
                                  ) from None
            dirs[h.key] = d
            versions[h.key] = h.version
        cg = InstanceCgroup(name, dirs, versions)
        if cg.pids():  # a leftover of a run that could not be emptied
            cg.kill_sync()
        cg.oom_baseline = cg.oom_kills()
        if limits is not None and limits.any:
            self.apply(cg, limits)
        return cg

    def apply(self, cg: InstanceCgroup, limits: Limits) -> None:
        """Write ``limits`` into ``cg`` (controllers missing here are skipped:
        :meth:`unenforced` says which)."""
        for h in self.layout.limits:
            d = cg.dirs[h.key]
            for file, value in _limit_files(h.version, h.controllers, limits):
                try:
                    (d / file).write_text(value)
                except FileNotFoundError:
                    if not file.startswith(("memory.memsw", "memory.swap")):
                        raise CgroupError(2, f"cannot set {d / file}: no such file") from None
                except OSError as exc:
                    raise CgroupError(exc.errno, f"cannot set {d / file} to {value}: "
                                      f"{exc.strerror}") from None
        if limits.memory_mb is not None and "memory" in self.layout.controllers:
            cg.memory_mb = limits.memory_mb

    def sweep_stale(self) -> None:
        """Remove the scopes of daemons that are gone (best effort: only empty
        cgroups can be removed, and a live daemon's scope is never touched)."""
        for h in self.layout.hierarchies:
            parent = h.base / SCOPE_PARENT
            with contextlib.suppress(OSError):
                for scope in parent.iterdir():
                    if scope.is_dir() and not _owner_alive(scope.name) \
                            and scope.name != Path(self.scope).name:
                        _remove_tree(scope)

    def close(self) -> None:
        """Remove this daemon's (empty) scope; at driver shutdown."""
        for h in self.layout.hierarchies:
            _remove_tree(h.base / self.scope)


def _limit_files(version: int, controllers: frozenset[str],
                 limits: Limits) -> list[tuple[str, str]]:
    """The (file, value) pairs that set ``limits`` in one hierarchy, in a
    working order (v1 wants ``memory.limit_in_bytes`` before
    ``memory.memsw.limit_in_bytes``)."""
    out: list[tuple[str, str]] = []
    if limits.memory_mb is not None and "memory" in controllers:
        size = str(limits.memory_mb * 1024 * 1024)
        if version == 2:
            out += [("memory.max", size), ("memory.swap.max", "0")]
        else:
            out += [("memory.limit_in_bytes", size), ("memory.memsw.limit_in_bytes", size)]
    if limits.cpu is not None and "cpu" in controllers:
        quota = str(max(1000, round(limits.cpu * CPU_PERIOD_US)))
        if version == 2:
            out.append(("cpu.max", f"{quota} {CPU_PERIOD_US}"))
        else:
            out += [("cpu.cfs_period_us", str(CPU_PERIOD_US)), ("cpu.cfs_quota_us", quota)]
    if limits.pids is not None and "pids" in controllers:
        out.append(("pids.max", str(limits.pids)))
    return out


DAEMON_LEAF = "nanomesh-daemon"
"""Where the daemon moves itself, inside its own v2 cgroup, when that cgroup
must hand controllers down (see `_enable_v2_controllers`)."""


def _enable_v2_controllers(h: Hierarchy, scope: str) -> None:
    """Hand the controllers down from the daemon's cgroup to the instances'
    parent. v2's "no internal processes" rule forbids that (EBUSY) while the
    daemon's own cgroup holds processes, as a systemd service's cgroup does:
    the daemon then moves itself into a leaf of its own cgroup first, as
    systemd's delegation documents (the unit sets ``Delegate=yes``, so the
    cgroup is ours to arrange)."""
    wanted = " ".join(f"+{c}" for c in CONTROLLERS if c in h.controllers)
    try:
        (h.base / "cgroup.subtree_control").write_text(wanted)
    except OSError as exc:
        if exc.errno != errno.EBUSY or h.own == "":
            raise
        _move_self_to_leaf(h.base)
        (h.base / "cgroup.subtree_control").write_text(wanted)
    level = h.base
    for part in Path(scope).parts:
        level = level / part
        (level / "cgroup.subtree_control").write_text(wanted)


def _move_self_to_leaf(base: Path) -> None:
    leaf = base / DAEMON_LEAF
    leaf.mkdir(exist_ok=True)
    (leaf / "cgroup.procs").write_text(str(os.getpid()))
    log.info("cgroups: moved the daemon into %s so that %s can hand its controllers to "
             "the instances (cgroup v2 allows no processes beside child cgroups)", leaf, base)


def _owner_alive(scope_name: str) -> bool:
    """Whether the daemon of scope ``<peer>.<pid>.<n>`` still runs (a name we
    cannot read counts as alive: never touch what we do not understand)."""
    parts = scope_name.split(".")
    return len(parts) != 3 or not parts[1].isdigit() or Path(f"/proc/{parts[1]}").exists()


def _read_key(path: Path, key: str) -> int:
    """The value of ``key`` in a flat-keyed cgroup file; 0 if absent."""
    with contextlib.suppress(OSError, ValueError):
        for line in path.read_text().splitlines():
            k, _, v = line.partition(" ")
            if k == key:
                return int(v)
    return 0


def _sub_procs_files(top: Path) -> list[Path]:
    """``cgroup.procs`` of the cgroups nested below ``top`` (usually none)."""
    out: list[Path] = []
    with contextlib.suppress(OSError):
        for sub in top.iterdir():
            if sub.is_dir():
                out += [sub / "cgroup.procs", *_sub_procs_files(sub)]
    return out


def _remove_tree(top: Path) -> None:
    """rmdir ``top`` and its sub-cgroups, deepest first; busy ones stay."""
    with contextlib.suppress(OSError):
        for sub in sorted((p for p in top.rglob("*") if p.is_dir()),
                          key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                sub.rmdir()
        top.rmdir()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "peer"
