"""Real runc containers from a busybox rootfs (services/counter-container's
build-rootfs.sh): HTTP on the host network, SIGTERM stop, a container that
ignores SIGTERM, the memory limit, a SIGKILLed supervisor, stale containers,
the container inside the instance's cgroup, and podman where it works.

The runs are driven the way the ProcessDriver drives any launch (a new
session, stdin /dev/null, output to a log, SIGTERM then SIGKILL to the
group, then the launch's cleanup) by :class:`Supervised` below, and once
through the driver itself when it takes launchers.

Skipped unless root with runc and a static busybox (CI installs both and runs
as root: there they run). Loopback addresses 127.0.53.x only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from nanomesh.runtime.container import UNIFIED_MOUNTS, PodmanLauncher, RuncLauncher, probe_engine
from nanomesh.runtime.instance_spec import InstanceSpec, instance_spec_from
from nanomesh.runtime.launch import Launch, LaunchContext

REPO = Path(__file__).resolve().parents[2]
BUILD_ROOTFS = REPO / "services" / "counter-container" / "build-rootfs.sh"
HOST = "127.0.53.40"
WAIT = 20.0
"""Upper bound for anything these tests wait for (a loaded 2-core CI box)."""

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runc") is None or not os.path.exists("/bin/busybox"),
    reason="needs root, runc and busybox-static")

SERVE = """
trap 'echo got SIGTERM; exit 0' TERM
echo hello > /www/hello
httpd -f -p "$NANOMESH_HOST:$NANOMESH_PORT_HTTP" -h /www &
echo ready
while :; do sleep 1 & wait $!; done
"""
IGNORE_TERM = """
trap '' TERM
echo ready
while :; do sleep 1; done
"""


@pytest.fixture(scope="module")
def rootfs_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    bundle = tmp_path_factory.mktemp("bundle")
    subprocess.run(["sh", str(BUILD_ROOTFS), str(bundle / "rootfs")], check=True,
                   capture_output=True)
    return bundle


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def container_spec(script: str, **doc: Any) -> InstanceSpec:
    return instance_spec_from({
        "name": "ctr", "kind": "container", "container": {"rootfs": "rootfs"},
        "run": {"command": ["/bin/sh", "-c", script]},
        "endpoints": [{"name": "http", "protocol": "http", "port": "auto"}], **doc})


@dataclass
class Supervised:
    """One launched run, supervised as the ProcessDriver does."""

    launch: Launch
    process: trio.Process
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def wait_for(self, text: str) -> None:
        with trio.fail_after(WAIT):
            while text not in self.output():
                if self.process.returncode is not None:
                    raise AssertionError(f"ended ({self.process.returncode}): {self.output()}")
                await trio.sleep(0.01)

    def signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    async def stop(self, timeout: float) -> tuple[int, bool]:
        """SIGTERM the group, SIGKILL after ``timeout``; (exit code, killed)."""
        self.signal_group(signal.SIGTERM)
        with trio.move_on_after(timeout):
            return await self.process.wait(), False
        self.signal_group(signal.SIGKILL)
        with trio.fail_after(WAIT):
            return await self.process.wait(), True

    async def cleanup(self) -> None:
        if self.launch.cleanup:
            await trio.run_process(list(self.launch.cleanup), capture_stdout=True,
                                   capture_stderr=True, check=False)


@dataclass
class Lab:
    launcher: RuncLauncher
    bundle: Path
    state_root: Path

    def context(self, iid: str = "ctr/0", port: int | None = None) -> LaunchContext:
        state = self.state_root / "instances" / iid.replace("/", "-")
        state.mkdir(parents=True, exist_ok=True)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NANOMESH_HOST": HOST,
               "NANOMESH_SERVICE": iid.split("/")[0], "NANOMESH_INSTANCE": iid,
               "NANOMESH_PORT_HTTP": str(port or free_port())}
        return LaunchContext(iid=iid, env=env, workdir=self.bundle, state_dir=state,
                             host_ip=HOST)

    def runc(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(self.launcher.command(*args)), capture_output=True, text=True,
                              check=False)

    def containers(self) -> dict[str, dict[str, Any]]:
        """``runc list`` under this lab's root: id -> state."""
        out = self.runc("list", "--format", "json").stdout.strip()
        return {c["id"]: c for c in json.loads(out or "null") or []}

    async def start(self, spec: InstanceSpec, ctx: LaunchContext) -> Supervised:
        launch = await self.launcher.prepare(spec, ctx)
        log = ctx.state_dir / "log"
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            process = await trio.lowlevel.open_process(
                list(launch.argv), stdin=subprocess.DEVNULL, stdout=fd, stderr=fd,
                env=dict(launch.env), cwd=launch.cwd, start_new_session=True)
        finally:
            os.close(fd)
        return Supervised(launch, process, log)


@pytest.fixture
async def lab(rootfs_bundle: Path, tmp_path: Path) -> AsyncIterator[Lab]:
    launcher = RuncLauncher(tmp_path / "data", peer=f"t{os.getpid()}")
    lab = Lab(launcher, rootfs_bundle, tmp_path)
    try:
        yield lab
    finally:
        with trio.CancelScope(shield=True):
            await launcher.sweep()  # never leave a container behind, whatever failed


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "State:\tZ" not in Path(
        f"/proc/{pid}/status").read_text()


async def gone(pid: int) -> bool:
    """Wait (bounded) until ``pid`` has exited: a killed process leaves its
    cgroup a moment before it is a zombie."""
    with trio.move_on_after(WAIT):
        while pid_alive(pid):
            await trio.sleep(0.01)
    return not pid_alive(pid)


async def http_get(port: int, path: str) -> bytes:
    """One HTTP/1.0 GET to HOST:port; the whole response."""
    with trio.fail_after(5):
        stream = await trio.open_tcp_stream(HOST, port)
        async with stream:
            await stream.send_all(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
            return data


async def get_when_ready(port: int, path: str) -> bytes:
    with trio.fail_after(WAIT):
        while True:
            with contextlib.suppress(OSError):
                return await http_get(port, path)
            await trio.sleep(0.01)


# -- tests --------------------------------------------------------------------------------------


async def test_serves_http_on_the_host_network_and_stops_on_sigterm(lab: Lab) -> None:
    port = free_port()
    run = await lab.start(container_spec(SERVE), lab.context(port=port))
    response = await get_when_ready(port, "/hello")
    assert response.startswith(b"HTTP/1.") and b" 200 " in response.split(b"\r\n")[0]
    assert response.endswith(b"hello\n")
    cid = "nm-ctr-0-" + lab.launcher.peer
    assert lab.containers()[cid]["status"] == "running"
    rc, killed = await run.stop(timeout=WAIT)
    assert (rc, killed) == (0, False)  # runc forwarded SIGTERM; the trap exited 0
    assert "got SIGTERM" in run.output()
    assert lab.containers() == {}  # runc run removes its container when it ends
    await run.cleanup()  # and the cleanup of an already removed container is harmless


async def test_a_container_ignoring_sigterm_is_killed_after_the_timeout(lab: Lab) -> None:
    run = await lab.start(container_spec(IGNORE_TERM), lab.context())
    await run.wait_for("ready")
    init_pid = lab.containers()["nm-ctr-0-" + lab.launcher.peer]["pid"]
    rc, killed = await run.stop(timeout=1.0)
    assert killed and rc == -signal.SIGKILL
    await run.cleanup()
    assert lab.containers() == {}
    assert await gone(init_pid)


async def test_sigkill_of_the_group_then_cleanup_leaves_nothing(lab: Lab) -> None:
    run = await lab.start(container_spec(SERVE), lab.context())
    await run.wait_for("ready")
    cid = "nm-ctr-0-" + lab.launcher.peer
    inside = json.loads(lab.runc("ps", "--format", "json", cid).stdout)  # sh, httpd, sleep
    assert len(inside) >= 2
    run.signal_group(signal.SIGKILL)
    with trio.fail_after(WAIT):
        await run.process.wait()
    # The container's init is not in the group (runc makes it a session
    # leader): it outlives runc, which is why every run has a cleanup.
    assert pid_alive(inside[0])
    await run.cleanup()
    assert lab.containers() == {}
    for pid in inside:
        assert await gone(pid)


async def test_a_stale_container_of_a_dead_daemon_is_replaced(lab: Lab) -> None:
    ctx = lab.context()
    first = await lab.start(container_spec(IGNORE_TERM), ctx)
    await first.wait_for("ready")
    first.signal_group(signal.SIGKILL)  # the daemon died: no cleanup ran
    with trio.fail_after(WAIT):
        await first.process.wait()
    old_pid = lab.containers()["nm-ctr-0-" + lab.launcher.peer]["pid"]
    second = await lab.start(container_spec(SERVE), ctx)
    await second.wait_for("ready")
    assert await gone(old_pid)
    rc, killed = await second.stop(timeout=WAIT)
    assert (rc, killed) == (0, False)


@pytest.mark.parametrize(("mib", "killed"), [(4, False), (100, True)])
async def test_the_memory_limit_applies(lab: Lab, mib: int, killed: bool) -> None:
    # dd fills one buffer of bs bytes: 100 MiB cannot fit in 32 MiB, 4 MiB can
    # (the control run: the same command, within the limit).
    script = f"dd if=/dev/zero of=/dev/null bs={mib << 20} count=1; echo status $?"
    run = await lab.start(container_spec(script, limits={"memory_mb": 32}), lab.context())
    with trio.fail_after(WAIT * 3):
        rc = await run.process.wait()
    await run.cleanup()
    if killed:
        # The OOM killer took dd (137: SIGKILL), or, when memory was still
        # short as dd died, the container's shell too (runc then exits 137).
        assert "status 137" in run.output() or rc == 137, (rc, run.output())
    else:
        assert rc == 0 and "status 0" in run.output(), (rc, run.output())


async def test_the_container_lands_in_the_instance_cgroup_and_dies_with_the_daemon(
        lab: Lab) -> None:
    """The shim joins the instance's cgroup and runs runc; the container nests
    under the instance's cgroup in the v2 hierarchy too, so when the daemon
    dies (its lifeline breaks) the shim's cgroup kill reaches a container that
    ignores SIGTERM, though it is not in the shim's process group."""
    from nanomesh.runtime.cgroups import Cgroups
    from nanomesh.runtime.process import SHIM_ARGV

    cgroups = Cgroups.open(f"ct{os.getpid()}")
    if cgroups.layout.tracker is None:
        pytest.skip(f"no cgroup v2 kill here: {cgroups.describe()}")
    instance = cgroups.create("ctr-0")
    write_end = -1
    try:
        base = lab.context()
        ctx = LaunchContext(iid=base.iid, env=base.env, workdir=base.workdir,
                            state_dir=base.state_dir, host_ip=HOST, cgroup=instance)
        launch = await lab.launcher.prepare(container_spec(IGNORE_TERM), ctx)
        argv = [*SHIM_ARGV, "--grace", "0.5"]
        for directory in instance.dirs.values():
            argv += ["--cgroup", str(directory)]
        log = ctx.state_dir / "log"
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        read_end, write_end = os.pipe()
        try:
            process = await trio.lowlevel.open_process(
                [*argv, "--", *launch.argv], stdin=read_end, stdout=fd, stderr=fd,
                env=dict(launch.env), cwd=launch.cwd, start_new_session=True)
        finally:
            os.close(fd)
            os.close(read_end)
        run = Supervised(launch, process, log)
        await run.wait_for("ready")
        init_pid = lab.containers()["nm-ctr-0-" + lab.launcher.peer]["pid"]
        line = next(x for x in Path(f"/proc/{init_pid}/cgroup").read_text().splitlines()
                    if x.startswith("0::"))
        mount = UNIFIED_MOUNTS[lab.launcher.layout]
        assert (mount / line[3:].lstrip("/")).is_relative_to(instance.dirs["unified"]), line
        os.close(write_end)  # the daemon is gone
        write_end = -1
        with trio.fail_after(WAIT):
            await run.process.wait()
        assert await gone(init_pid)
        await run.cleanup()  # what the next daemon's sweep does
        assert lab.containers() == {}
    finally:
        if write_end >= 0:
            os.close(write_end)
        instance.kill_sync()
        with trio.CancelScope(shield=True):
            await lab.launcher.sweep()
        instance.remove()
        cgroups.close()


# -- through the ProcessDriver ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def container_driver(tmp_path: Path, stop_timeout: float = WAIT
                           ) -> AsyncIterator[tuple[Any, RuncLauncher]]:
    from nanomesh.runtime.container import ContainerLauncher
    from nanomesh.runtime.process import open_process_driver

    runc = RuncLauncher(tmp_path / "data", peer=f"d{os.getpid()}")
    launchers = {"container": ContainerLauncher({"runc": runc})}
    try:
        async with open_process_driver(launchers=launchers, peer=f"d{os.getpid()}",
                                       stop_timeout=stop_timeout) as driver:
            yield driver, runc
    finally:
        with trio.CancelScope(shield=True):
            await runc.sweep()


def start_context(tmp_path: Path, bundle: Path) -> Any:
    from nanomesh.runtime.driver import StartContext

    return StartContext(log_dir=tmp_path / "logs", workdir=bundle, host_ip=HOST,
                        state_root=tmp_path / "state")


async def wait_status(driver: Any, iid: str, pred: Any) -> Any:
    with trio.fail_after(WAIT):
        while True:
            status = driver.status().get(iid)
            if status is not None and pred(status):
                return status
            await driver.wait_changed(driver.version)


def runc_list(runc: RuncLauncher) -> list[str]:
    out = subprocess.run(list(runc.command("list", "--quiet")), capture_output=True, text=True,
                         check=False).stdout
    return out.split()


async def test_counter_container_through_the_driver(rootfs_bundle: Path, tmp_path: Path) -> None:
    from nanomesh.runtime.manifest import load_manifest

    spec = instance_spec_from(load_manifest(BUILD_ROOTFS.parent / "nanoservice.toml"))
    async with container_driver(tmp_path) as (driver, runc):
        iid = "counter-container/0"
        status = await driver.start(iid, spec, start_context(tmp_path, rootfs_bundle))
        assert status.state == "running", status.message
        status = await wait_status(driver, iid, lambda s: s.health == "healthy")
        port = next(p for name, _, p in status.endpoints if name == "http")
        response = await http_get(port, "/count")
        assert b" 200 " in response.split(b"\r\n")[0]
        cgroup = driver.cgroup_of(iid)
        final = await driver.stop(iid)
        assert final is not None and final.state == "exited", final
        assert runc_list(runc) == []
        if cgroup is not None:  # emptied and removed, the container's nested cgroups too
            assert not any(d.exists() for d in cgroup.dirs.values()), cgroup.dirs


async def test_a_container_ignoring_sigterm_through_the_driver(rootfs_bundle: Path,
                                                               tmp_path: Path) -> None:
    async with container_driver(tmp_path, stop_timeout=1.0) as (driver, runc):
        iid = "ctr/0"
        status = await driver.start(iid, container_spec(IGNORE_TERM),
                                    start_context(tmp_path, rootfs_bundle))
        assert status.state == "running", status.message
        with trio.fail_after(WAIT):
            while "ready" not in (tmp_path / "logs" / "ctr.0.log").read_text():
                await trio.sleep(0.02)
        cgroup = driver.cgroup_of(iid)
        final = await driver.stop(iid)
        assert final is not None and final.state == "failed"
        assert "did not stop within 1 s" in final.message
        assert runc_list(runc) == []
        if cgroup is not None:
            assert not any(d.exists() for d in cgroup.dirs.values()), cgroup.dirs


async def test_a_container_killed_by_its_memory_limit_through_the_driver(
        rootfs_bundle: Path, tmp_path: Path) -> None:
    script = f"dd if=/dev/zero of=/dev/null bs={100 << 20} count=1 || exit $?; echo survived"
    spec = container_spec(script, limits={"memory_mb": 32}, restart={"policy": "never"})
    async with container_driver(tmp_path) as (driver, runc):
        iid = "ctr/0"
        status = await driver.start(iid, spec, start_context(tmp_path, rootfs_bundle))
        assert status.state == "running", status.message
        final = await wait_status(driver, iid, lambda s: s.state in ("exited", "failed"))
        assert final.state == "failed"
        # runc's exit code: the container's shell saw dd killed (137), or was
        # killed itself. (The driver's "killed by its memory limit" needs the
        # v1 OOM count of runc's own cgroup, gone when runc removes it.)
        assert final.exit_code == 137 or "memory limit" in final.message, final
        assert "survived" not in (tmp_path / "logs" / "ctr.0.log").read_text()
        assert runc_list(runc) == []


# -- podman (only where it works; CI does not install it) ---------------------------------------


@pytest.mark.skipif(probe_engine("podman") is not None, reason="podman does not work here")
async def test_podman_runs_an_imported_rootfs_on_the_host_network(rootfs_bundle: Path,
                                                                  tmp_path: Path) -> None:
    launcher = PodmanLauncher(peer=f"t{os.getpid()}")
    lab = Lab(RuncLauncher(tmp_path / "data"), rootfs_bundle, tmp_path)
    port = free_port()
    ctx = lab.context(port=port)
    launch = await launcher.prepare(container_spec(SERVE), ctx)
    log = ctx.state_dir / "log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        process = await trio.lowlevel.open_process(
            list(launch.argv), stdin=subprocess.DEVNULL, stdout=fd, stderr=fd,
            env=dict(launch.env), cwd=launch.cwd, start_new_session=True)
    finally:
        os.close(fd)
    run = Supervised(launch, process, log)
    try:
        response = await get_when_ready(port, "/hello")
        assert response.endswith(b"hello\n")
        rc, killed = await run.stop(timeout=WAIT)
        assert (rc, killed) == (0, False)
    finally:
        with trio.CancelScope(shield=True):
            if run.process.returncode is None:
                run.signal_group(signal.SIGKILL)
                await run.process.wait()
            await run.cleanup()
            await launcher.sweep()


WAIT_FOR_TERM = """
trap 'exit 0' TERM
echo ready
while :; do sleep 1 & wait $!; done
"""


async def test_an_exec_check_runs_inside_the_container(rootfs_bundle: Path,
                                                       tmp_path: Path) -> None:
    """The check sees the container's root filesystem and environment (on the
    host there is no /www/count), through ``runc exec``."""
    assert not Path("/www/count").exists()
    check = 'test -f /www/count && test "$NANOMESH_INSTANCE" = ctr/0 && test "$(hostname)" = ctr'
    spec = container_spec(WAIT_FOR_TERM, health={"check": "exec", "start_period": 10,
                                                 "command": ["/bin/sh", "-c", check]})
    async with container_driver(tmp_path, stop_timeout=2.0) as (driver, runc):
        status = await driver.start("ctr/0", spec, start_context(tmp_path, rootfs_bundle))
        assert status.state == "running", status.message
        status = await wait_status(driver, "ctr/0",
                                   lambda s: s.health == "healthy" or s.state != "running")
        assert status.health == "healthy", status
        final = await driver.stop("ctr/0")
        assert final is not None and final.state == "exited", final
        assert runc_list(runc) == []


def test_exec_argv_of_the_engines(tmp_path: Path) -> None:
    runc = RuncLauncher(tmp_path, peer="p", layout="none")
    assert runc.exec_argv("svc/0", ["true"]) == ("runc", "--root", str(tmp_path / "runc"),
                                                 "exec", "nm-svc-0-p", "true")
    podman = PodmanLauncher(peer="p")
    assert podman.exec_argv("svc/0", ("sh", "-c", "x")) == ("podman", "exec", "nm-svc-0-p",
                                                            "sh", "-c", "x")
