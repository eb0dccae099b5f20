"""cgroups: detection (pure, table tests) and, as root, real limits and the
cgroup-wide kill. CI runs as root: these only skip when not root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
from runtime_helpers import (
    READY,
    ROOT,
    ctx,
    gone,
    instance,
    program,
    read_pids,
    wait_for_text,
    wait_state,
    wait_until,
)

from nanomesh.runtime import log_path, open_process_driver
from nanomesh.runtime.cgroups import Hierarchy, Layout, choose, parse_mountinfo

# -- detection (pure) -------------------------------------------------------------------------

HYBRID_MOUNTS = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
HYBRID_SELF = """\
9:name=systemd:/
8:pids:/
4:memory:/process_api/abc
2:cpuacct:/
1:cpu:/
0::/
"""
V2_MOUNTS = "25 20 0:22 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
V2_SELF = "0::/system.slice/nanomesh.service\n"
COMOUNTED = """\
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 /docker/x /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
"""
COMOUNTED_SELF = "3:cpu,cpuacct:/\n2:memory:/docker/x/sub\n"


def test_parse_a_hybrid_layout() -> None:
    found = parse_mountinfo(HYBRID_MOUNTS, HYBRID_SELF)
    by_key = {h.key: h for h in found}
    assert set(by_key) == {"cpu", "cpuacct", "memory", "pids", "name=systemd", "unified"}
    assert by_key["memory"] == Hierarchy(1, Path("/sys/fs/cgroup/memory"), "process_api/abc",
                                         frozenset({"memory"}), "memory")
    assert by_key["memory"].base == Path("/sys/fs/cgroup/memory/process_api/abc")
    assert by_key["unified"].base == Path("/sys/fs/cgroup/unified")


def test_choose_v1_limits_plus_v2_kill_on_a_hybrid_layout() -> None:
    layout = choose(parse_mountinfo(HYBRID_MOUNTS, HYBRID_SELF), frozenset(), v2_kill=True)
    assert layout.controllers == {"memory", "cpu", "pids"}
    assert layout.tracker is not None and layout.tracker.version == 2
    assert layout.describe() == "v1 (memory, cpu, pids) + v2 cgroup.kill"
    assert layout.reason == ""


def test_choose_v2_when_it_has_every_controller() -> None:
    found = parse_mountinfo(V2_MOUNTS, V2_SELF)
    layout = choose(found, frozenset({"cpuset", "cpu", "io", "memory", "pids"}), v2_kill=True)
    assert layout.limits == layout.hierarchies and len(layout.limits) == 1
    assert layout.limits[0].base == Path("/sys/fs/cgroup/system.slice/nanomesh.service")
    assert layout.describe() == "v2 (memory, cpu, pids)"


def test_choose_a_partial_v2_and_say_what_is_missing() -> None:
    layout = choose(parse_mountinfo(V2_MOUNTS, V2_SELF), frozenset({"memory"}), v2_kill=True)
    assert layout.controllers == {"memory"}
    assert layout.reason == "no cpu, pids controller"


def test_mount_roots_and_co_mounted_controllers() -> None:
    found = parse_mountinfo(COMOUNTED, COMOUNTED_SELF)
    by_key = {h.key: h for h in found}
    assert by_key["cpu"].controllers == {"cpu"} and by_key["cpu"].name == "cpu,cpuacct"
    assert by_key["memory"].own == "sub"  # relative to the mount's root /docker/x
    layout = choose(found)
    assert layout.describe() == "v1 (memory, cpu)" and layout.reason == "no pids controller"


def test_no_cgroups_at_all() -> None:
    layout = choose(parse_mountinfo("", ""))
    assert layout == Layout(reason="no cgroup file system")
    assert layout.describe() == "none (no cgroup file system)"


# -- real limits and kills (root) -------------------------------------------------------------

needs_root = pytest.mark.skipif(not ROOT, reason="cgroups need root")

EATS_MEMORY = """
print("is", "ready", flush=True)
hog = b"x" * (200 * 1024 * 1024)
print("sur" + "vived", len(hog), flush=True)
"""

FORKS = """
import os, sys, time
children = 0
try:
    for _ in range(200):
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        children += 1
except OSError as exc:
    print("fork" + " failed after", children, type(exc).__name__, flush=True)
    sys.exit(3)
print("forked", children, flush=True)
"""

ESCAPES = """
import os, sys, time
pid = os.fork()
if pid == 0:
    os.setsid()  # leaves the instance's process group
    tmp = sys.argv[1] + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(os.getpid()))
    os.rename(tmp, sys.argv[1])
    time.sleep(60)
    os._exit(0)
print("is", "ready", flush=True)
if sys.argv[2] == "then-exit":
    while not os.path.exists(sys.argv[1]):
        time.sleep(0.01)
    sys.exit(0)
time.sleep(60)
"""
"""argv: PIDFILE, "then-exit" | "-". Its child calls setsid() and writes its
pid to PIDFILE: without a cgroup nothing would reach it."""


@needs_root
async def test_a_memory_hog_is_killed_by_its_limit_and_reported(tmp_path: Path) -> None:
    spec = instance(program(EATS_MEMORY).run, "hog", limits={"memory_mb": 64})
    async with open_process_driver() as driver:
        assert "memory" in driver.describe_cgroups()
        await driver.start("hog/0", spec, ctx(tmp_path))
        await wait_state(driver, "hog/0", "exited", "failed")
        status = driver.status()["hog/0"]
    assert (status.state, status.message) == ("failed", "killed by its memory limit (64 MiB)")
    assert "survived" not in log_path(tmp_path, "hog", 0).read_text()


@needs_root
async def test_a_pids_limit_stops_a_fork_loop(tmp_path: Path) -> None:
    spec = instance(program(FORKS).run, "forker", limits={"pids": 12})
    async with open_process_driver() as driver:
        await driver.start("forker/0", spec, ctx(tmp_path))
        await wait_state(driver, "forker/0", "exited", "failed")
        status = driver.status()["forker/0"]
    assert status.exit_code == 3
    text = log_path(tmp_path, "forker", 0).read_text()
    assert "fork failed after" in text and "BlockingIOError" in text
    forked = int(text.split("fork failed after")[1].split()[0])
    assert forked < 12  # the shim and the command count too


@needs_root
async def test_cpu_quota_and_cgroup_membership(tmp_path: Path) -> None:
    spec = instance(program("import time; print('is', 'ready', flush=True); time.sleep(60)").run,
                    limits={"cpu": 0.5})
    async with open_process_driver() as driver:
        status = await driver.start("svc/0", spec, ctx(tmp_path))
        await wait_for_text(log_path(tmp_path, "svc", 0), READY)
        cg = driver.cgroup_of("svc/0")
        assert cg is not None and status.pid is not None
        assert status.pid in cg.pids()  # the shim joined before spawning
        assert len(cg.pids()) == 2  # shim + command
        if "cpu" in cg.dirs:
            quota = (cg.dirs["cpu"] / "cpu.cfs_quota_us").read_text().strip()
            assert quota == "50000"
        dirs = list(cg.dirs.values())
        await driver.stop("svc/0")
    assert not any(d.exists() for d in dirs)  # removed after the run


@needs_root
@pytest.mark.parametrize("how", ["stop", "exit"])
async def test_a_process_that_setsids_does_not_escape(tmp_path: Path, how: str) -> None:
    pidfile = tmp_path / "escapee"
    async with open_process_driver(stop_timeout=2.0) as driver:
        await driver.start("svc/0", program(ESCAPES, str(pidfile),
                                            "then-exit" if how == "exit" else "-"),
                           ctx(tmp_path))
        [escapee] = await read_pids(pidfile)
        assert os.getsid(escapee) == escapee  # really left the group
        if how == "stop":
            final = await driver.stop("svc/0")
            assert final is not None and final.state in ("exited", "failed")
        else:
            await wait_state(driver, "svc/0", "exited")
        await wait_until(lambda: gone(escapee), "the setsid() escapee killed")


@needs_root
async def test_a_driver_leaves_no_cgroups_behind(tmp_path: Path) -> None:
    async with open_process_driver(peer="tidy") as driver:
        await driver.start("svc/0", program("pass"), ctx(tmp_path))
        await wait_state(driver, "svc/0", "exited")
        scope = driver.cgroups.scope
        bases = [h.base for h in driver.cgroups.layout.hierarchies]
    with trio.fail_after(5):
        assert not any((b / scope).exists() for b in bases)


def test_v2_daemon_in_a_busy_cgroup_moves_itself_to_a_leaf(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """A daemon run by systemd (``Delegate=yes``) sits in its service's cgroup,
    which holds its process: v2 refuses to enable controllers there (EBUSY)
    until the daemon moves into a leaf of it. Simulated: the kernel's refusal
    is the only thing a plain directory cannot do."""
    import errno

    from nanomesh.runtime import cgroups

    h = Hierarchy(2, tmp_path, "system.slice/nanomesh.service",
                  frozenset({"memory", "cpu", "pids"}))
    scope = "nanomesh/peer.1.0"
    (h.base / scope).mkdir(parents=True)
    moved: list[str] = []
    real_write = Path.write_text

    def write_text(self: Path, data: str, *args: object, **kwargs: object) -> int:
        if self == h.base / "cgroup.subtree_control" and not moved:
            raise OSError(errno.EBUSY, "Device or resource busy")
        if self.name == "cgroup.procs":
            moved.append(data)
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_text", write_text)
    cgroups._enable_v2_controllers(h, scope)
    assert moved == [str(os.getpid())]
    assert (h.base / cgroups.DAEMON_LEAF / "cgroup.procs").read_text() == str(os.getpid())
    for level in (h.base, h.base / "nanomesh", h.base / scope):
        assert (level / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"
