"""Nothing an instance or a spec does may take the driver or the reconciler down,
nor see what it should not: probe exceptions, undigestible specs, failing
effects, the daemon's own NANOMESH_* variables, exec checks run inside the
instance, a service undeployed while its bundle is fetched."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import trio
from runtime_helpers import (
    PY,
    READY,
    READY_THEN_WAIT_FOR_TERM,
    ctx,
    instance,
    wait_for_text,
    wait_state,
    wait_until,
)

from nanomesh.runtime import (
    ProcessDriver,
    Reconciler,
    RunSpec,
    RunSpecError,
    StartContext,
    instance_spec_from,
    log_path,
    open_process_driver,
)
from nanomesh.runtime import health as hc
from nanomesh.runtime.instance_spec import HealthSpec, InstanceSpec
from nanomesh.runtime.oci import container_env
from nanomesh.runtime.ports import ContractValues, instance_env
from nanomesh.runtime.reconcile_core import BackoffPolicy

HOST = "127.0.54.21"
ME = "pi-a"
FAST = BackoffPolicy(initial=0.05, factor=2.0, maximum=0.2, reset_after=60.0)


# -- 1. a probe never raises -----------------------------------------------------------------


async def _garbage_http(task_status: trio.TaskStatus[int]) -> None:
    """Answers every request with a status line whose code is a superscript two."""
    listener = (await trio.open_tcp_listeners(0, host=HOST))[0]
    task_status.started(listener.socket.getsockname()[1])

    async def answer(stream: trio.SocketStream) -> None:
        with trio.move_on_after(5):
            await stream.receive_some(4096)
            await stream.send_all("HTTP/1.1 \u00b2 OK\r\n\r\n".encode("latin-1"))
        await stream.aclose()

    await trio.serve_listeners(answer, [listener])


async def test_answers_that_used_to_raise_are_failed_checks() -> None:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(_garbage_http)
        http = await hc.probe(HealthSpec(check="http"), hc.Target(HOST, port))
        nursery.cancel_scope.cancel()
    assert http is not None and "bad answer" in http and "not an HTTP status line" in http
    # paths the validator now refuses, built directly: the probe still must not raise
    coap = await hc.probe(HealthSpec(check="coap", path="x" * 70000, timeout=0.5),
                          hc.Target(HOST, 9))
    assert coap is not None and coap.startswith(f"coap {HOST}:9: bad answer: error: ")
    zmq = await hc.probe(HealthSpec(check="zmq", path="a\nb", timeout=0.5), hc.Target(HOST, 9))
    assert zmq is not None and zmq.startswith(f"zmq {HOST}:9: bad answer: ValueError: ")
    assert len(coap) < 250 and len(zmq) < 250


GARBAGE_SERVER = r"""
import os, socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((os.environ["NANOMESH_HOST"], int(os.environ["NANOMESH_PORT"]))); s.listen()
print("is", "ready", flush=True)
while True:
    c, _ = s.accept(); c.recv(4096); c.sendall("HTTP/1.1 \u00b2 OK\r\n\r\n".encode("latin-1"))
    c.close()
"""


async def test_an_instance_answering_garbage_does_not_kill_the_driver(tmp_path: Path) -> None:
    spec = instance(RunSpec((PY, "-c", GARBAGE_SERVER)),
                    endpoints=[{"name": "h", "protocol": "http"}],
                    health={"check": "http", "start_period": 1})
    async with open_process_driver(stop_timeout=2) as driver:
        status = await driver.start("svc/0", spec, ctx(tmp_path, host_ip=HOST))
        assert status.state == "running", status.message
        await wait_for_text(log_path(tmp_path, "svc", 0), READY)
        await wait_state(driver, "svc/0", "failed")  # never healthy, after its start period
        final = driver.status()["svc/0"]
        assert "bad answer" in final.message and "not an HTTP status line" in final.message


@pytest.mark.parametrize(("path", "problem"), [
    ("x" * 1025, "at most 1024 characters"),
    ("a\nb", "printable"),
    ("ok/\x7f", "printable"),
    ("a/\ud800", "UTF-8"),
    ("a/" + "é" * 128, "255 bytes"),
    (3, "must be a string"),
])
def test_health_path_is_validated(path: Any, problem: str) -> None:
    doc = {"name": "s", "run": {"command": ["true"]},
           "endpoints": [{"name": "c", "protocol": "coap", "port": 9}],
           "health": {"check": "coap", "path": path}}
    with pytest.raises(RunSpecError, match=problem) as info:
        instance_spec_from(doc)
    assert info.value.field == "health.path"


def test_reasonable_health_paths_pass() -> None:
    for path in ("", "/healthz", "a/" + "é" * 127, "/" + "x" * 255 + "/" + "y" * 255, "q?x=1 2"):
        doc = {"name": "s", "run": {"command": ["true"]},
               "endpoints": [{"name": "h", "protocol": "http", "port": 9}],
               "health": {"check": "http", "path": path}}
        assert instance_spec_from(doc).health.path == path


# -- 2. nothing in a spec or an effect stops the driver or the reconciler ----------------------


async def test_a_start_that_raises_is_a_failed_run_not_an_exception(tmp_path: Path) -> None:
    # a lone surrogate cannot be put into a process environment: it used to escape start()
    spec = InstanceSpec(service="svc", kind="process",
                        run=RunSpec(("sleep", "60"), env={"X": "\ud800"}))
    async with open_process_driver(stop_timeout=2) as driver:
        status = await driver.start("svc/0", spec, ctx(tmp_path, host_ip=HOST))
        assert status.state == "failed"
        assert status.message.startswith("cannot start: UnicodeEncodeError")
        assert driver.ports.held() == {}
        # the driver still works
        ok = await driver.start("svc/1", instance(RunSpec(("sleep", "60"))),
                                ctx(tmp_path, host_ip=HOST))
        assert ok.state == "running"


def service(name: str, **env: str) -> dict[str, Any]:
    return {"name": name, "run": {"command": [PY, "-c", READY_THEN_WAIT_FOR_TERM], "env": env}}


async def test_a_spec_that_cannot_be_digested_fails_alone(tmp_path: Path) -> None:
    good, bad = service("good"), service("bad", X="\ud800")
    async with open_process_driver(stop_timeout=5) as driver:
        reconciler = Reconciler(ME, driver, tmp_path, backoff=FAST, host_ip=HOST)
        async with trio.open_nursery() as nursery:
            await nursery.start(reconciler.run)
            reconciler.set_desired({"good/0": ME}, {"good": good})
            await wait_state(driver, "good/0", "running")
            pid = driver.status()["good/0"].pid
            reconciler.set_desired({"good/0": ME, "bad/0": ME, "bad/1": "pi-b"},
                                   {"good": good, "bad": bad})
            await wait_state(driver, "bad/0", "failed")
            message = driver.status()["bad/0"].message
            assert message.startswith("invalid spec: cannot digest it: UnicodeEncodeError")
            # recorded once, not in a loop: the driver's version settles
            version = driver.version
            rounds = reconciler.rounds
            await trio.sleep(0.5)
            assert driver.version == version and reconciler.rounds - rounds < 20
            assert driver.status()["good/0"].pid == pid  # the other service runs on
            # a fixed spec starts at once
            fixed = service("bad", X="ok")
            reconciler.set_desired({"good/0": ME, "bad/0": ME}, {"good": good, "bad": fixed})
            await wait_state(driver, "bad/0", "running")
            nursery.cancel_scope.cancel()


class FlakyDriver(ProcessDriver):
    """A driver whose first ``fail`` starts raise, as a bug would."""

    def __init__(self, fail: int) -> None:
        super().__init__(stop_timeout=5)
        self.fail = fail

    async def start(self, iid: str, spec: InstanceSpec, ctx: StartContext) -> Any:
        if self.fail > 0:
            self.fail -= 1
            raise RuntimeError("boom")
        return await super().start(iid, spec, ctx)


async def test_an_effect_that_raises_is_recorded_and_retried_later(tmp_path: Path) -> None:
    driver = FlakyDriver(fail=2)
    async with trio.open_nursery() as outer:
        await outer.start(driver.run)
        reconciler = Reconciler(ME, driver, tmp_path, backoff=FAST, host_ip=HOST)
        async with trio.open_nursery() as nursery:
            await nursery.start(reconciler.run)
            reconciler.set_desired({"svc/0": ME}, {"svc": service("svc")})
            await wait_until(lambda: "BUG: RuntimeError: boom" in (
                driver.status()["svc/0"].message if "svc/0" in driver.status() else ""),
                "the failure recorded")
            await wait_state(driver, "svc/0", "running")  # after the back-off, it works
            assert driver.fail == 0
            nursery.cancel_scope.cancel()
        outer.cancel_scope.cancel()


# -- 3. the daemon's NANOMESH_* variables stay out ----------------------------------------------


def test_the_daemons_nanomesh_variables_do_not_reach_an_instance() -> None:
    spec = instance(RunSpec(("true",), env={"MINE": "1"}),
                    endpoints=[{"name": "http", "protocol": "http", "port": "auto"}])
    values = ContractValues("svc/0", "svc", HOST, (("http", "http", 8080),), "1.2.3.4:7000",
                            "instance-token")
    base = {"NANOMESH_TOKEN": "MGMT-SECRET", "NANOMESH_CONFIG": "/etc/x", "HOME": "/root",
            "NANOMESH_PORT_OLD": "1", "NANOMESH_INSTANCE": "parent/0", "PATH": "/bin",
            "NANOMESH_DEVICES": "sim", "NANOMESH_WORLD": "/w.toml"}
    env = instance_env(spec, values, base)
    assert not {"NANOMESH_TOKEN", "NANOMESH_CONFIG", "NANOMESH_PORT_OLD"} & set(env)
    # ... except those describing the machine's (simulated) hardware
    assert env["NANOMESH_DEVICES"] == "sim" and env["NANOMESH_WORLD"] == "/w.toml"
    assert env["NANOMESH_INSTANCE"] == "svc/0" and env["NANOMESH_PORT_HTTP"] == "8080"
    assert env["HOME"] == "/root" and env["MINE"] == "1"
    # the container's environment keeps the contract only, even from a leaky env
    inside = container_env(spec, {**env, "NANOMESH_TOKEN": "MGMT-SECRET", "SECRET": "x"})
    assert "NANOMESH_TOKEN" not in inside and "SECRET" not in inside
    assert inside["NANOMESH_INSTANCE_TOKEN"] == "instance-token"
    assert inside["NANOMESH_PORT_HTTP"] == "8080" and inside["MINE"] == "1"


async def test_an_instance_does_not_see_the_management_token(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NANOMESH_TOKEN", "MGMT-SECRET-123")
    spec = instance(RunSpec(("sh", "-c", "echo token=${NANOMESH_TOKEN:-none}")))
    async with open_process_driver(stop_timeout=2) as driver:
        await driver.start("svc/0", spec, ctx(tmp_path, host_ip=HOST))
        await wait_state(driver, "svc/0", "exited")
    text = log_path(tmp_path, "svc", 0).read_text()
    assert "token=none" in text and "MGMT-SECRET" not in text


# -- 5. exec checks run inside the instance -------------------------------------------------


def test_exec_checks_poll_no_faster_than_a_quarter_second_while_starting() -> None:
    exec_spec = HealthSpec(check="exec", command=("true",))
    state = hc.observe(exec_spec, hc.begin(0.0), "exited with 1", 0.0)
    assert state.next_check == pytest.approx(hc.EXEC_START_POLL) and hc.EXEC_START_POLL >= 0.25
    tcp = hc.observe(HealthSpec(check="tcp"), hc.begin(0.0), "refused", 0.0)
    assert tcp.next_check < hc.EXEC_START_POLL


def test_exec_argv_joins_the_cgroup_or_goes_through_the_engine() -> None:
    procs = ("/cg/memory/x/cgroup.procs", "/cg/pids/x/cgroup.procs")
    argv = hc.exec_argv(("test", "-f", "/ready"), hc.Target(HOST, cgroup_procs=procs))
    assert argv == ["/bin/sh", "-c", hc.JOIN_CGROUP_SH, "nanomesh-health", "2", *procs,
                    "test", "-f", "/ready"]
    engine = hc.Target(HOST, exec_prefix=("runc", "--root", "/r", "exec", "nm-svc-0"))
    assert hc.exec_argv(("true",), engine) == ["runc", "--root", "/r", "exec", "nm-svc-0",
                                               "true"]
    assert hc.exec_argv(("true",), hc.Target(HOST)) == ["true"]


def marker_processes(marker: str) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline.split(b"\0"):
                out.append(int(entry))
    return out


async def test_a_check_that_backgrounds_something_passes_and_leaves_nothing(
        tmp_path: Path) -> None:
    marker = f"61.{os.getpid() % 1000:03d}7"  # a sleep length no one else uses
    spec = instance(RunSpec(("sleep", "60")),
                    health={"check": "exec", "command": ["sh", "-c", f"sleep {marker} & exit 0"],
                            "timeout": 1, "start_period": 5})
    async with open_process_driver(stop_timeout=2) as driver:
        await driver.start("svc/0", spec, ctx(tmp_path, host_ip=HOST))
        await wait_until(lambda: driver.status()["svc/0"].health == "healthy"
                         or driver.status()["svc/0"].state != "running", "a verdict")
        assert driver.status()["svc/0"].health == "healthy", driver.status()["svc/0"]
        # its process group is killed as soon as the check has exited
        await wait_until(lambda: not marker_processes(marker), "the check's leftovers gone")
    assert marker_processes(marker) == []


SAVE_CGROUP = "cat /proc/self/cgroup > {f}.tmp && mv {f}.tmp {f} && exec sleep 60"
SAME_CGROUP = "test -f {f} && cat /proc/self/cgroup | cmp -s - {f}"


async def test_a_host_exec_check_runs_in_the_instance_cgroup(tmp_path: Path) -> None:
    saved = tmp_path / "cgroup"
    spec = instance(RunSpec(("sh", "-c", SAVE_CGROUP.format(f=saved))),
                    health={"check": "exec",
                            "command": ["sh", "-c", SAME_CGROUP.format(f=saved)],
                            "start_period": 5})
    async with open_process_driver(stop_timeout=2, peer="robust") as driver:
        if not driver.cgroups.available:
            pytest.skip(f"no cgroups here: {driver.describe_cgroups()}")
        await driver.start("svc/0", spec, ctx(tmp_path, host_ip=HOST))
        await wait_until(lambda: driver.status()["svc/0"].health == "healthy"
                         or driver.status()["svc/0"].state != "running", "a verdict")
        assert driver.status()["svc/0"].health == "healthy", driver.status()["svc/0"]


# -- 6. undeployed while its bundle was fetched ------------------------------------------------


async def test_a_service_undeployed_during_its_fetch_is_not_started(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = trio.Event()
    fetching = trio.Event()

    async def fetch(sha: str) -> Path:
        fetching.set()
        await release.wait()
        return tmp_path

    svc = {**service("f"), "bundle": {"sha256": "a" * 64}}
    async with open_process_driver(stop_timeout=2) as driver:
        recorded: list[tuple[str, str]] = []
        record = driver.record

        def spy(iid: str, state: Any, message: str = "", **kw: Any) -> Any:
            recorded.append((state, message))
            return record(iid, state, message, **kw)

        monkeypatch.setattr(driver, "record", spy)
        reconciler = Reconciler(ME, driver, tmp_path / "logs", backoff=FAST, host_ip=HOST,
                                fetch=fetch)
        async with trio.open_nursery() as nursery:
            await nursery.start(reconciler.run)
            reconciler.set_desired({"f/0": ME}, {"f": svc})
            with trio.fail_after(15):
                await fetching.wait()
            reconciler.set_desired({}, {})  # undeployed while its bundle is on the way
            await trio.sleep(0.1)
            release.set()
            await wait_until(lambda: len(recorded) >= 2 and "f/0" not in driver.status(),
                             "recorded and forgotten")
            nursery.cancel_scope.cancel()
    assert recorded == [("fetching", "fetching bundle aaaaaaaaaaaa"),
                        ("exited", "no longer wanted")]
    assert not log_path(tmp_path / "logs", "f", 0).exists(), "it was started"
