"""ProcessDriver with real processes: start, stop, escalation, exit codes, logs,
group kill, shutdown. Every wait is bounded; no test asserts a duration."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import trio
from runtime_helpers import (
    BYE,
    IGNORES_TERM,
    READY,
    READY_THEN_WAIT_FOR_TERM,
    SPAWNS_GRANDCHILD,
    alive,
    ctx,
    gone,
    instance,
    pgid_members,
    program,
    read_pids,
    wait_for_text,
    wait_state,
    wait_until,
)

from nanomesh.runtime import (
    DriverError,
    ProcessDriver,
    RunSpec,
    execute,
    log_path,
    open_process_driver,
)
from nanomesh.runtime.logs import ROTATE_BYTES
from nanomesh.runtime.reconcile_core import InstanceStatus, StartInstance, StopInstance, spec_digest


async def test_start_runs_the_program_with_its_environment_and_logs(tmp_path: Path) -> None:
    code = ("import os; print('env', os.environ['NANOMESH_INSTANCE'], "
            "os.environ['NANOMESH_SERVICE'], os.environ['COLOUR'], os.getcwd(), flush=True);"
            "import time; time.sleep(60)")
    workdir = tmp_path / "work"
    workdir.mkdir()
    async with open_process_driver(stop_timeout=2.0) as driver:
        spec = instance(RunSpec(program(code).run.command, env={"COLOUR": "green"},
                                cwd=str(workdir)))
        status = await driver.start("sensor/3", spec, ctx(tmp_path, spec_digest="abc",
                                                                 restarts=2))
        assert status.state == "running"
        assert status.pid is not None and os.getpgid(status.pid) == status.pid  # group leader
        assert (status.iid, status.service, status.spec_digest, status.restarts) == (
            "sensor/3", "sensor", "abc", 2)
        assert status.started_at is not None
        text = await wait_for_text(tmp_path / "sensor.3.log",
                                   f"env sensor/3 sensor green {workdir}")
        assert "=== nanomesh" in text.splitlines()[0]  # header line
        assert driver.status()["sensor/3"] == status


async def test_graceful_stop_lets_the_program_handle_sigterm(tmp_path: Path) -> None:
    async with open_process_driver(stop_timeout=10.0) as driver:
        await driver.start("svc/0", program(READY_THEN_WAIT_FOR_TERM), ctx(tmp_path))
        await wait_for_text(log_path(tmp_path, "svc", 0), READY)
        final = await driver.stop("svc/0")
    assert final is not None
    assert (final.state, final.exit_code, final.pid) == ("exited", 0, None)
    assert final.message.startswith("stopped")
    text = log_path(tmp_path, "svc", 0).read_text()
    assert BYE in text
    assert "svc/0 exited: stopped" in text  # footer line


async def test_stop_escalates_to_sigkill_when_sigterm_is_ignored(tmp_path: Path) -> None:
    async with open_process_driver() as driver:
        await driver.start("stubborn/0", program(IGNORES_TERM), ctx(tmp_path))
        await wait_for_text(log_path(tmp_path, "stubborn", 0), READY)
        final = await driver.stop("stubborn/0", timeout=0.3)
    assert final is not None
    assert (final.state, final.exit_code) == ("failed", -signal.SIGKILL)
    assert "did not stop within 0.3 s" in final.message


@pytest.mark.parametrize(("code", "state", "exit_code", "message"), [
    ("import sys; sys.exit(0)", "exited", 0, "exited with code 0"),
    ("import sys; sys.exit(3)", "failed", 3, "exited with code 3"),
    ("import os, signal; os.kill(os.getpid(), signal.SIGUSR1)", "failed", -signal.SIGUSR1,
     "killed by SIGUSR1"),
])
async def test_a_run_that_ends_by_itself_is_recorded(tmp_path: Path, code: str, state: str,
                                                     exit_code: int, message: str) -> None:
    async with open_process_driver() as driver:
        await driver.start("job/0", program(code), ctx(tmp_path))
        await wait_state(driver, "job/0", "exited", "failed")
        status = driver.status()["job/0"]
    assert (status.state, status.exit_code, status.message, status.pid) == (
        state, exit_code, message, None)
    assert status.started_at is not None and status.since >= status.started_at


async def test_the_next_run_remembers_how_the_last_one_ended(tmp_path: Path) -> None:
    """A crash-looping instance is mostly "starting" again when the leader
    looks: its report still says why it restarts (`last_exit`)."""
    async with open_process_driver() as driver:
        await driver.start("loop/0", program("import sys; sys.exit(3)"), ctx(tmp_path))
        await wait_state(driver, "loop/0", "failed")
        second = await driver.start("loop/0", program("import time; time.sleep(30)"),
                                    ctx(tmp_path))
        assert (second.state, second.exit_code, second.last_exit) == ("running", None, 3)
        await driver.stop("loop/0")


async def test_stopping_kills_the_whole_group_including_grandchildren(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    async with open_process_driver() as driver:
        status = await driver.start("tree/0", program(SPAWNS_GRANDCHILD, str(pidfile), "-", "-"),
                                    ctx(tmp_path))
        child, grandchild = await read_pids(pidfile)
        assert status.pid is not None
        assert os.getpgid(child) == os.getpgid(grandchild) == status.pid
        final = await driver.stop("tree/0", timeout=5.0)
    assert final is not None and final.state == "exited"  # the child obeyed SIGTERM
    await wait_until(lambda: gone(child) and gone(grandchild), "child and grandchild gone")


async def test_leftovers_are_killed_when_the_main_process_exits(tmp_path: Path) -> None:
    """Like systemd's control-group kill mode: a run is over when its main
    process ends, and nothing it left behind in its group keeps running."""
    pidfile = tmp_path / "pids"
    async with open_process_driver() as driver:
        status = await driver.start(
            "tree/0", program(SPAWNS_GRANDCHILD, str(pidfile), "-", "then-exit"), ctx(tmp_path))
        _, grandchild = await read_pids(pidfile)
        await wait_state(driver, "tree/0", "exited")
        assert driver.status()["tree/0"].exit_code == 0
        await wait_until(lambda: gone(grandchild), "the grandchild swept")
        assert status.pid is not None and pgid_members(status.pid) == []


async def test_a_killed_shim_is_noticed_and_its_group_swept(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    async with open_process_driver() as driver:
        status = await driver.start("tree/0", program(SPAWNS_GRANDCHILD, str(pidfile), "-", "-"),
                                    ctx(tmp_path))
        child, grandchild = await read_pids(pidfile)
        assert status.pid is not None
        os.kill(status.pid, signal.SIGKILL)
        await wait_state(driver, "tree/0", "failed")
        assert driver.status()["tree/0"].exit_code == -signal.SIGKILL
        await wait_until(lambda: gone(child) and gone(grandchild), "child and grandchild gone")


async def test_leaving_the_driver_stops_every_instance_gracefully(tmp_path: Path) -> None:
    async with open_process_driver(stop_timeout=10.0) as driver:
        for i in range(3):
            await driver.start(f"svc/{i}", program(READY_THEN_WAIT_FOR_TERM), ctx(tmp_path))
        for i in range(3):
            await wait_for_text(log_path(tmp_path, "svc", i), READY)
        pids = [s.pid for s in driver.status().values()]
    assert {s.state for s in driver.status().values()} == {"exited"}
    for i in range(3):
        assert BYE in log_path(tmp_path, "svc", i).read_text()
    assert all(pid is not None and gone(pid) for pid in pids)


async def test_cancelling_the_driver_task_stops_every_instance(tmp_path: Path) -> None:
    """Daemon shutdown: the nursery running driver.run() is cancelled."""
    driver = ProcessDriver(stop_timeout=10.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run)
        await driver.start("svc/0", program(READY_THEN_WAIT_FOR_TERM), ctx(tmp_path))
        await driver.start("stubborn/0", program(IGNORES_TERM), ctx(tmp_path))
        await wait_for_text(log_path(tmp_path, "svc", 0), READY)
        await wait_for_text(log_path(tmp_path, "stubborn", 0), READY)
        driver.stop_timeout = 0.3  # the stubborn one is SIGKILLed after this
        nursery.cancel_scope.cancel()
    states = {iid: (s.state, s.exit_code) for iid, s in driver.status().items()}
    assert states == {"svc/0": ("exited", 0), "stubborn/0": ("failed", -signal.SIGKILL)}
    with pytest.raises(DriverError, match="not running"):
        await driver.start("svc/1", program("pass"), ctx(tmp_path))


async def test_instances_outlive_the_thread_that_spawned_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression guard against PR_SET_PDEATHSIG in the child: trio forks from
    a worker thread that exits when idle (10 s; shortened here), and a
    parent-death signal fires when that *thread* exits."""
    from trio._core import _thread_cache
    if not hasattr(_thread_cache, "IDLE_TIMEOUT"):
        pytest.skip("trio's thread cache changed")
    monkeypatch.setattr(_thread_cache, "IDLE_TIMEOUT", 0.1)
    async with open_process_driver() as driver:
        await driver.start("svc/0", program(READY_THEN_WAIT_FOR_TERM), ctx(tmp_path))
        await wait_for_text(log_path(tmp_path, "svc", 0), READY)
        await trio.sleep(1.0)  # ten idle timeouts
        assert driver.status()["svc/0"].state == "running"


@pytest.mark.parametrize(("spec", "message"), [
    (RunSpec(("no-such-program-xyz",)), "command not found on PATH: 'no-such-program-xyz'"),
    (RunSpec(("./missing.sh",), cwd="/"), "no such program: /./missing.sh"),
    (RunSpec(("./data.txt",), cwd="TMP"), "not executable: TMP/./data.txt"),
    (RunSpec(("true",), cwd="/no/such/dir"), "/no/such/dir"),
])
async def test_a_program_that_cannot_start_is_a_failed_run(tmp_path: Path, spec: RunSpec,
                                                           message: str) -> None:
    (tmp_path / "data.txt").write_text("not a program")
    (tmp_path / "data.txt").chmod(0o644)
    if spec.cwd == "TMP":
        spec = RunSpec(spec.command, cwd=str(tmp_path))
        message = message.replace("TMP", str(tmp_path))
    async with open_process_driver() as driver:
        status = await driver.start("bad/0", instance(spec), ctx(tmp_path, restarts=4))
        assert (status.state, status.exit_code, status.pid, status.restarts) == (
            "failed", None, None, 4)
        assert status.message.startswith("cannot start")
        assert message in status.message
        # a failed run can be started again
        again = await driver.start("bad/0", instance(RunSpec(("true",))), ctx(tmp_path))
        assert again.state == "running"


async def test_starting_an_active_instance_is_a_caller_bug(tmp_path: Path) -> None:
    async with open_process_driver() as driver:
        await driver.start("svc/0", program(READY_THEN_WAIT_FOR_TERM), ctx(tmp_path))
        with pytest.raises(DriverError, match="svc/0: it is running"):
            await driver.start("svc/0", program("pass"), ctx(tmp_path))
        with pytest.raises(DriverError, match="malformed instance id"):
            await driver.start("svc", program("pass"), ctx(tmp_path))
        with pytest.raises(DriverError, match="cannot forget svc/0"):
            driver.forget("svc/0")


async def test_driver_must_be_running_to_start(tmp_path: Path) -> None:
    with pytest.raises(DriverError, match="not running"):
        await ProcessDriver().start("svc/0", program("pass"), ctx(tmp_path))


async def test_stop_of_unknown_or_ended_instances_is_a_no_op(tmp_path: Path) -> None:
    async with open_process_driver() as driver:
        assert await driver.stop("nothing/0") is None
        await driver.start("job/0", program("pass"), ctx(tmp_path))
        await wait_state(driver, "job/0", "exited")
        ended = driver.status()["job/0"]
        assert await driver.stop("job/0") == ended


async def test_concurrent_stops_share_one_stop(tmp_path: Path) -> None:
    async with open_process_driver() as driver:
        await driver.start("svc/0", program(READY_THEN_WAIT_FOR_TERM), ctx(tmp_path))
        await wait_for_text(log_path(tmp_path, "svc", 0), READY)
        results: list[InstanceStatus | None] = []

        async def stop() -> None:
            results.append(await driver.stop("svc/0"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop)
            nursery.start_soon(stop)
    assert len(results) == 2 and results[0] == results[1]
    assert results[0] is not None and results[0].state == "exited"
    assert log_path(tmp_path, "svc", 0).read_text().count(BYE) == 1


async def test_wait_changed_reports_every_change(tmp_path: Path) -> None:
    async with open_process_driver() as driver:
        seen = driver.version
        await driver.start("job/0", program("import sys; sys.exit(1)"), ctx(tmp_path))
        assert driver.version > seen  # starting, running
        seen = driver.version
        with trio.fail_after(15):
            seen = await driver.wait_changed(seen)  # the exit
        assert driver.status()["job/0"].state == "failed"
        with trio.fail_after(1):  # an older version returns at once
            assert await driver.wait_changed(0) == seen
        driver.forget("job/0")
        assert driver.version > seen and "job/0" not in driver.status()
        driver.forget("job/0")  # unknown: no-op


async def test_log_is_rotated_when_over_the_cap_at_start(tmp_path: Path) -> None:
    log = log_path(tmp_path, "svc", 0)
    with open(log, "wb") as f:
        f.truncate(ROTATE_BYTES + 1)  # sparse: cheap
    async with open_process_driver() as driver:
        await driver.start("svc/0", program("print('fr' + 'esh', flush=True)"), ctx(tmp_path))
        await wait_state(driver, "svc/0", "exited")
    assert (tmp_path / "svc.0.log.1").stat().st_size == ROTATE_BYTES + 1
    text = log.read_text()
    assert "\nfresh\n" in text and len(text) < 10_000
    # appended, not truncated, across restarts under the cap
    async with open_process_driver() as driver:
        await driver.start("svc/0", program("print('ag' + 'ain', flush=True)"), ctx(tmp_path))
        await wait_state(driver, "svc/0", "exited")
    assert "\nfresh\n" in log.read_text() and "\nagain\n" in log.read_text()


async def test_execute_carries_out_reconcile_effects(tmp_path: Path) -> None:
    spec = {"name": "svc", "run": {"command": list(program(READY_THEN_WAIT_FOR_TERM).run.command)}}
    bad = {"name": "bad", "run": {"command": "python3 -m bad"}}
    async with open_process_driver() as driver:
        started = await execute(driver, StartInstance("svc/0", "svc", spec, spec_digest(spec), 1),
                                ctx(tmp_path))
        assert started is not None
        assert (started.state, started.spec_digest, started.restarts) == (
            "running", spec_digest(spec), 1)
        failed = await execute(driver, StartInstance("bad/0", "bad", bad, "d", 2), ctx(tmp_path))
        assert failed is not None and failed.state == "failed"
        assert "invalid spec" in failed.message and "run.command" in failed.message
        await wait_for_text(log_path(tmp_path, "svc", 0), READY)
        stopped = await execute(driver, StopInstance("svc/0", "unassigned"), ctx(tmp_path))
        assert stopped is not None and stopped.state == "exited"


async def test_statuses_use_the_injected_clock(tmp_path: Path) -> None:
    ticks = iter(range(1000, 2000))
    async with open_process_driver(clock=lambda: float(next(ticks))) as driver:
        status = await driver.start("job/0", program("pass"), ctx(tmp_path))
        assert status.since >= 1000.0 and status.started_at == status.since
        await wait_state(driver, "job/0", "exited")
        assert driver.status()["job/0"].since > status.since


async def test_the_instance_pid_is_the_group_and_the_session(tmp_path: Path) -> None:
    async with open_process_driver() as driver:
        status = await driver.start("svc/0", program(READY_THEN_WAIT_FOR_TERM), ctx(tmp_path))
        assert status.pid is not None and alive(status.pid)
        assert os.getsid(status.pid) == status.pid != os.getsid(0)
