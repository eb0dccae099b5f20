"""The driver's issue-4 features with real processes: health checks, ports and
the environment contract, fetching and idle records, launcher dispatch and
cleanup, log rotation during a run, limits warnings."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
import trio
from runtime_helpers import (
    COAP_RESPONDER,
    PY,
    READY,
    READY_THEN_WAIT_FOR_TERM,
    TCP_SERVER,
    ctx,
    instance,
    program,
    wait_for_text,
    wait_state,
    wait_until,
)

from nanomesh.runtime import (
    HostLauncher,
    Launch,
    LaunchContext,
    ProcessDriver,
    RunSpec,
    execute,
    log_path,
    open_process_driver,
    read_log_tail,
)
from nanomesh.runtime.instance_spec import InstanceSpec
from nanomesh.runtime.reconcile_core import IdleInstance, InstanceStatus, StartInstance, spec_digest

HOST = "127.0.0.1"
SHA = "ab" * 32


def served(code: str, *args: str, protocol: str = "http", **sections: Any) -> InstanceSpec:
    return instance(RunSpec((PY, "-c", code, *args)),
                    endpoints=[{"name": "api", "protocol": protocol, "port": "auto"}],
                    **sections)


async def healths(driver: ProcessDriver, iid: str, until: str, into: list[str]) -> None:
    """Collect the distinct health values of ``iid`` until ``until``."""
    seen = 0
    with trio.fail_after(15):
        while True:
            status = driver.status().get(iid)
            if status is not None and (not into or into[-1] != status.health):
                into.append(status.health)
            if status is not None and status.health == until:
                return
            seen = await driver.wait_changed(seen)


# -- health ---------------------------------------------------------------------------------


async def test_a_tcp_server_goes_from_starting_to_healthy(tmp_path: Path) -> None:
    async with open_process_driver() as driver:
        status = await driver.start("web/0", served(TCP_SERVER), ctx(tmp_path))
        assert (status.state, status.health) == ("running", "starting")
        seen: list[str] = []
        await healths(driver, "web/0", "healthy", seen)
        assert seen == ["starting", "healthy"]
        assert driver.status()["web/0"].state == "running"
        final = await driver.stop("web/0")
    assert final is not None and (final.health, final.endpoints) == ("none", ())


async def test_a_coap_responder_goes_healthy(tmp_path: Path) -> None:
    async with open_process_driver() as driver:
        spec = served(COAP_RESPONDER, protocol="coap", health={"check": "coap", "path": "/h"})
        status = await driver.start("coap/0", spec, ctx(tmp_path))
        assert status.health == "starting"
        seen: list[str] = []
        await healths(driver, "coap/0", "healthy", seen)
        assert seen == ["starting", "healthy"]
        ping = served(COAP_RESPONDER, protocol="coap")  # default check: a CoAP ping
        assert ping.health.check == "coap" and ping.health.path == ""
        await driver.start("coap/1", ping, ctx(tmp_path))
        await healths(driver, "coap/1", "healthy", [])


async def test_an_instance_that_turns_unhealthy_is_stopped_and_failed(tmp_path: Path) -> None:
    health = {"check": "tcp", "interval": 0.1, "retries": 2, "timeout": 0.5}
    async with open_process_driver(stop_timeout=2.0) as driver:
        await driver.start("flaky/0", served(TCP_SERVER, "0.5", health=health), ctx(tmp_path))
        await healths(driver, "flaky/0", "healthy", [])
        await wait_state(driver, "flaky/0", "failed")
        status = driver.status()["flaky/0"]
    assert status.message.startswith(f"unhealthy: tcp {HOST}:")
    assert status.message.endswith("Connection refused")
    assert "closed" in log_path(tmp_path, "flaky", 0).read_text()


async def test_an_instance_that_never_passes_is_failed_after_start_period(
        tmp_path: Path) -> None:
    health = {"check": "http", "start_period": 0.3}
    async with open_process_driver(stop_timeout=2.0) as driver:
        await driver.start("mute/0", served(READY_THEN_WAIT_FOR_TERM, health=health),
                           ctx(tmp_path))
        await wait_state(driver, "mute/0", "failed")
        status = driver.status()["mute/0"]
    assert status.message.startswith("unhealthy: no successful check within 0.3 s")
    assert "got SIGTERM, bye" in log_path(tmp_path, "mute", 0).read_text()  # stopped politely


async def test_an_exec_check_runs_in_the_instance_environment(tmp_path: Path) -> None:
    health = {"check": "exec", "command": ["sh", "-c", 'test "$NANOMESH_SERVICE" = svc']}
    async with open_process_driver() as driver:
        spec = instance(program(READY_THEN_WAIT_FOR_TERM).run, health=health)
        await driver.start("svc/0", spec, ctx(tmp_path))
        await healths(driver, "svc/0", "healthy", [])


# -- ports and the environment contract --------------------------------------------------------

DUMP_ENV = """
import json, os, sys, time
tmp = sys.argv[1] + ".tmp"
with open(tmp, "w") as f:
    json.dump({k: v for k, v in os.environ.items() if k.startswith("NANOMESH_")}, f)
os.rename(tmp, sys.argv[1])
time.sleep(60)
"""


async def test_auto_ports_are_distinct_and_the_env_contract_is_complete(tmp_path: Path) -> None:
    endpoints = [{"name": "coap", "protocol": "coap", "port": "auto"},
                 {"name": "rpc-in", "protocol": "zmq", "port": "auto"},
                 {"name": "fixed", "protocol": "http", "port": 18999}]
    async with open_process_driver() as driver:
        envs = []
        for i in range(3):
            dump = tmp_path / f"env{i}"
            spec = instance(RunSpec((PY, "-c", DUMP_ENV, str(dump))), endpoints=endpoints,
                            health={"check": "none"})
            status = await driver.start(f"svc/{i}", spec,
                                        ctx(tmp_path, host_ip=HOST, peer_api="127.0.0.1:7100"))
            await wait_until(dump.exists, "the env dump")
            env = json.loads(dump.read_text())
            envs.append(env)
            assert [name for name, _, _ in status.endpoints] == ["coap", "rpc-in", "fixed"]
            ports = {name: port for name, _, port in status.endpoints}
            assert env["NANOMESH_PORT_COAP"] == str(ports["coap"])
            assert env["NANOMESH_PORT_RPC_IN"] == str(ports["rpc-in"])
            assert env["NANOMESH_PORT_FIXED"] == "18999"
            assert env["NANOMESH_PORT"] == str(ports["coap"])
            assert json.loads(env["NANOMESH_ENDPOINTS"]) == {
                "coap": {"protocol": "coap", "port": ports["coap"]},
                "rpc-in": {"protocol": "zmq", "port": ports["rpc-in"]},
                "fixed": {"protocol": "http", "port": 18999}}
            assert (env["NANOMESH_SERVICE"], env["NANOMESH_INSTANCE"], env["NANOMESH_HOST"],
                    env["NANOMESH_PEER_API"]) == ("svc", f"svc/{i}", HOST, "127.0.0.1:7100")
            assert env["NANOMESH_INSTANCE_TOKEN"] == driver.instance_token(f"svc/{i}")
        auto = [(s.endpoints[0][2], s.endpoints[1][2]) for s in driver.status().values()]
        flat = [p for pair in auto for p in pair]
        assert len(set(flat)) == len(flat)  # distinct across instances and endpoints
        tokens = {e["NANOMESH_INSTANCE_TOKEN"] for e in envs}
        assert len(tokens) == 3 and all(len(t) >= 40 for t in tokens)
        await driver.stop("svc/0")
        assert driver.instance_token("svc/0") is None  # only while it runs
        assert driver.instance_token("nothing/0") is None
        # a restart gets its port back when it is still free
        again = await driver.start("svc/0", instance(RunSpec((PY, "-c", DUMP_ENV,
                                                              str(tmp_path / "env0b"))),
                                                     endpoints=endpoints,
                                                     health={"check": "none"}), ctx(tmp_path))
        assert again.endpoints[:2] == ((
            "coap", "coap", auto[0][0]), ("rpc-in", "zmq", auto[0][1]))


async def test_a_daemon_started_by_an_instance_does_not_leak_its_contract(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NANOMESH_PORT_STALE", "1")
    monkeypatch.setenv("NANOMESH_INSTANCE_TOKEN", "the-daemons-own")
    dump = tmp_path / "env"
    async with open_process_driver() as driver:
        await driver.start("svc/0", instance(RunSpec((PY, "-c", DUMP_ENV, str(dump)))),
                           ctx(tmp_path))
        await wait_until(dump.exists, "the env dump")
    env = json.loads(dump.read_text())
    assert "NANOMESH_PORT_STALE" not in env and "NANOMESH_PORT" not in env
    assert env["NANOMESH_INSTANCE_TOKEN"] != "the-daemons-own"
    assert json.loads(env["NANOMESH_ENDPOINTS"]) == {}


# -- fetching and idle ---------------------------------------------------------------------------

PRINT_CWD = "import os, time; print('cwd', os.getcwd(), flush=True); time.sleep(60)"


def bundled(code: str = PRINT_CWD, **extra: Any) -> dict[str, Any]:
    return {"name": "svc", "run": {"command": [PY, "-c", code]},
            "bundle": {"sha256": SHA}, **extra}


async def test_fetching_then_starting_in_the_bundle(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    release = trio.Event()
    asked: list[str] = []

    async def fetch(sha: str) -> Path:
        asked.append(sha)
        await release.wait()
        return bundle

    doc = bundled()
    async with open_process_driver() as driver, trio.open_nursery() as nursery:
        results: list[InstanceStatus | None] = []

        async def go() -> None:
            results.append(await execute(driver, StartInstance("svc/0", "svc", doc,
                                                               spec_digest(doc), 2),
                                         ctx(tmp_path / "logs"), fetch=fetch))

        nursery.start_soon(go)
        await wait_state(driver, "svc/0", "fetching")
        fetching = driver.status()["svc/0"]
        assert (fetching.restarts, fetching.spec_digest) == (2, spec_digest(doc))
        assert asked == [SHA]
        release.set()
        await wait_state(driver, "svc/0", "running")
        await wait_for_text(log_path(tmp_path / "logs", "svc", 0), f"cwd {bundle}")
        nursery.cancel_scope.cancel()
    assert results and results[0] is not None and results[0].state == "running"


async def test_a_failed_fetch_is_a_failed_run(tmp_path: Path) -> None:
    async def fetch(sha: str) -> Path:
        raise OSError(f"no peer has bundle {sha[:8]}")

    doc = bundled()
    async with open_process_driver() as driver:
        status = await execute(driver, StartInstance("svc/0", "svc", doc, "d", 1),
                               ctx(tmp_path), fetch=fetch)
    assert status is not None and status.state == "failed" and status.restarts == 1
    assert status.message == "cannot fetch bundle: no peer has bundle abababab"


async def test_idle_fetches_and_records_idle_then_starts_on_activation(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    fetched: list[str] = []

    async def fetch(sha: str) -> Path:
        fetched.append(sha)
        return bundle

    doc = bundled(mode="idle")
    async with open_process_driver() as driver:
        idle = await execute(driver, IdleInstance("svc/0", "svc", doc, "d1"), ctx(tmp_path),
                             fetch=fetch)
        assert idle is not None and (idle.state, idle.spec_digest, idle.pid) == (
            "idle", "d1", None)
        assert fetched == [SHA]
        active = {**doc, "mode": "active"}
        started = await execute(driver, StartInstance("svc/0", "svc", active, "d2", 0),
                                ctx(tmp_path), fetch=fetch)
        assert started is not None and started.state == "running"
        await wait_for_text(log_path(tmp_path, "svc", 0), f"cwd {bundle}")
        # idle again: stop, then an idle record
        await driver.stop("svc/0")
        again = await execute(driver, IdleInstance("svc/0", "svc", doc, "d1"), ctx(tmp_path))
        assert again is not None and again.state == "idle"
        driver.forget("svc/0")
        assert "svc/0" not in driver.status()


async def test_records_refuse_active_instances_and_other_states(tmp_path: Path) -> None:
    from nanomesh.runtime import DriverError
    async with open_process_driver() as driver:
        await driver.start("svc/0", program(READY_THEN_WAIT_FOR_TERM), ctx(tmp_path))
        with pytest.raises(DriverError, match="it is running"):
            driver.record("svc/0", "idle")
        with pytest.raises(DriverError, match="not running"):
            driver.record("svc/1", "running")
        failed = driver.record("bad/0", "failed", "invalid spec: x", restarts=3)
        assert (failed.state, failed.message, failed.restarts) == ("failed", "invalid spec: x",
                                                                    3)


# -- launchers ------------------------------------------------------------------------------------


async def test_a_kind_without_a_launcher_is_a_failed_run(tmp_path: Path) -> None:
    doc = {"name": "ctr", "kind": "container", "container": {"image": "busybox"}}
    async with open_process_driver() as driver:
        status = await execute(driver, StartInstance("ctr/0", "ctr", doc, "d", 0), ctx(tmp_path))
    assert status is not None and status.state == "failed"
    assert status.message == ("cannot start: no launcher for kind 'container' on this peer "
                              "(it runs: process)")


class CleaningLauncher:
    """The host launcher plus a cleanup command that records when it ran."""

    engine = "test"

    def __init__(self, marker: Path) -> None:
        self.marker = marker
        self.contexts: list[LaunchContext] = []

    async def prepare(self, spec: InstanceSpec, lctx: LaunchContext) -> Launch:
        self.contexts.append(lctx)
        launch = await HostLauncher().prepare(spec, lctx)
        return Launch(argv=launch.argv, env=launch.env, cwd=launch.cwd,
                      cleanup=("sh", "-c", f"echo cleaned >> {self.marker}"),
                      description="test launcher")


async def test_the_launchers_cleanup_runs_before_the_end_is_recorded(tmp_path: Path) -> None:
    marker = tmp_path / "cleaned"
    launcher = CleaningLauncher(marker)
    async with open_process_driver(launchers={"process": launcher}) as driver:
        await driver.start("job/0", program("print('is', 'ready')"),
                           ctx(tmp_path, state_root=tmp_path / "state"))
        seen = 0
        with trio.fail_after(15):
            while driver.status()["job/0"].state != "exited":
                assert not marker.exists()
                seen = await driver.wait_changed(seen)
        assert marker.read_text() == "cleaned\n"  # already there when "exited" showed
        lctx = launcher.contexts[0]
        assert lctx.state_dir == tmp_path / "state" / "job.0"
        assert lctx.state_dir.is_dir() and lctx.env["NANOMESH_INSTANCE"] == "job/0"
        assert "test launcher" in log_path(tmp_path, "job", 0).read_text()
        driver.forget("job/0")
        assert not lctx.state_dir.exists()  # the private folder goes with the record


# -- logs ---------------------------------------------------------------------------------------

CHATTY = """
import time
for i in range(400):
    print(f"line {i:04d} " + "x" * 80, flush=True)
print("is", "ready", flush=True)
time.sleep(60)
"""


async def test_logs_rotate_during_a_run_and_the_tail_spans_files(tmp_path: Path) -> None:
    async with open_process_driver(rotate_bytes=4000, rotate_keep=2) as driver:
        await driver.start("chat/0", program(CHATTY), ctx(tmp_path))
        live = log_path(tmp_path, "chat", 0)
        await wait_for_text(live, READY)
        files = sorted(p.name for p in tmp_path.glob("chat.0.log*"))
        assert files == ["chat.0.log", "chat.0.log.1", "chat.0.log.2"]  # no .3: kept 2
        for p in tmp_path.glob("chat.0.log*"):
            assert p.stat().st_size <= 4000 + 200
        tail = read_log_tail(tmp_path, "chat", 0, 60)
        assert len(tail) == 60 and tail[-1] == READY
        numbers = [int(line.split()[1]) for line in tail if line.startswith("line ")]
        assert numbers == list(range(400 - len(numbers), 400))  # in order across the files
        assert len(numbers) == 59
    assert read_log_tail(tmp_path, "nothing", 0, 10) == []
    assert read_log_tail(tmp_path, "chat", 0, 0) == []


async def test_read_log_tail_on_a_big_single_file(tmp_path: Path) -> None:
    lines = [f"{i} " + "y" * 50 for i in range(5000)]
    log_path(tmp_path, "big", 0).write_text("\n".join(lines) + "\n")
    (tmp_path / "big.0.log.1").write_text("old\n")
    assert read_log_tail(tmp_path, "big", 0, 3) == lines[-3:]
    assert read_log_tail(tmp_path, "big", 0, 5001) == ["old", *lines]


# -- limits without cgroups -------------------------------------------------------------------


async def test_limits_not_enforced_are_warned_once_per_service(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spec = instance(program("pass").run, limits={"memory_mb": 64, "pids": 10})
    with caplog.at_level(logging.WARNING, logger="nanomesh.runtime"):
        async with open_process_driver(cgroups=False) as driver:
            for i in range(2):
                await driver.start(f"svc/{i}", spec, ctx(tmp_path))
                await wait_state(driver, f"svc/{i}", "exited")
            assert driver.describe_cgroups() == "none (disabled in the driver)"
    warnings = [r.getMessage() for r in caplog.records if "not enforced" in r.getMessage()]
    assert warnings == ["limits for svc not enforced: disabled in the driver"]


async def test_a_run_is_reported_with_its_endpoints(tmp_path: Path) -> None:
    async with open_process_driver() as driver:
        status = await driver.start("web/0", served(TCP_SERVER), ctx(tmp_path))
        assert len(status.endpoints) == 1 and status.endpoints[0][:2] == ("api", "http")
        assert InstanceStatus.from_dict(status.to_dict()) == status
        assert os.getpgid(status.pid or 0) == status.pid
