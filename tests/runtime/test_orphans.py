"""Orphan-freedom: a daemon SIGKILLed with instances running leaves none behind.

The "daemon" here is a separate Python process running a ProcessDriver (as the
real daemon does); it starts instances that spawn grandchildren, and the test
SIGKILLs it: nothing in it runs afterwards, so only the supervisor shim's
lifeline can clean up.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
import trio
from runtime_helpers import (
    BYE,
    READY,
    READY_THEN_WAIT_FOR_TERM,
    ROOT,
    SPAWNS_GRANDCHILD,
    STAYING,
    gone,
    read_pids,
    wait_for_text,
    wait_until,
)

from nanomesh.runtime import log_path

DAEMON = """
import sys, trio
from pathlib import Path
from nanomesh.runtime import StartContext, instance_spec_from, open_process_driver

log_dir, pidfile, stubborn, graceful = sys.argv[1:5]

async def main():
    async with open_process_driver(stop_timeout=0.5) as driver:
        py = sys.executable
        ctx = StartContext(log_dir=Path(log_dir))
        def spec(name, *argv):
            return instance_spec_from({"name": name, "run": {"command": list(argv)}})
        await driver.start("tree/0", spec("tree", py, "-c", stubborn, pidfile, "ignore-term", "-"),
                           ctx)
        await driver.start("polite/0", spec("polite", py, "-c", graceful), ctx)
        print("started", flush=True)
        await trio.sleep_forever()

trio.run(main)
"""


async def test_a_sigkilled_daemon_leaves_no_instance_behind(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    daemon = await trio.lowlevel.open_process(
        [sys.executable, "-c", DAEMON, str(tmp_path), str(pidfile), SPAWNS_GRANDCHILD,
         READY_THEN_WAIT_FOR_TERM])
    try:
        child, grandchild = await read_pids(pidfile)
        await wait_for_text(log_path(tmp_path, "tree", 0), READY)
        await wait_for_text(log_path(tmp_path, "polite", 0), READY)
        shims = _shim_pids(daemon.pid)
        assert len(shims) == 2
    finally:
        daemon.send_signal(signal.SIGKILL)
        await daemon.wait()
    assert daemon.returncode == -signal.SIGKILL

    everything = [child, grandchild, *shims]
    await wait_until(lambda: all(gone(pid) for pid in everything),
                     "every instance process to be gone after the daemon's SIGKILL")
    tree_log = log_path(tmp_path, "tree", 0).read_text()
    assert "the nanomesh daemon is gone" in tree_log
    assert STAYING in tree_log  # it was asked politely first, then killed
    assert BYE in log_path(tmp_path, "polite", 0).read_text()  # and this one obeyed


def _shim_pids(daemon_pid: int) -> list[int]:
    children = Path(f"/proc/{daemon_pid}/task/{daemon_pid}/children")
    pids: list[int] = []
    for task in Path(f"/proc/{daemon_pid}/task").iterdir():
        pids += [int(p) for p in (task / "children").read_text().split()]
    assert children.exists()
    return pids


ESCAPING_DAEMON = """
import sys, trio
from pathlib import Path
from nanomesh.runtime import StartContext, instance_spec_from, open_process_driver

log_dir, pidfile, escapes = sys.argv[1:4]

async def main():
    async with open_process_driver(stop_timeout=0.5) as driver:
        spec = instance_spec_from({"name": "esc", "run": {
            "command": [sys.executable, "-c", escapes, pidfile, "-"]}})
        await driver.start("esc/0", spec, StartContext(log_dir=Path(log_dir)))
        print(driver.describe_cgroups(), flush=True)
        await trio.sleep_forever()

trio.run(main)
"""


@pytest.mark.skipif(not ROOT, reason="the cgroup kill needs root")
async def test_a_setsid_escapee_dies_with_a_sigkilled_daemon(tmp_path: Path) -> None:
    """The known hole of the group kill: a process that setsid()s leaves the
    group; the shim's cgroup kill still reaches it after the daemon's SIGKILL."""
    from test_cgroups import ESCAPES

    pidfile = tmp_path / "escapee"
    daemon = await trio.lowlevel.open_process(
        [sys.executable, "-c", ESCAPING_DAEMON, str(tmp_path), str(pidfile), ESCAPES])
    try:
        [escapee] = await read_pids(pidfile)
        await wait_for_text(log_path(tmp_path, "esc", 0), READY)
        assert os.getsid(escapee) == escapee
        shims = _shim_pids(daemon.pid)
    finally:
        daemon.send_signal(signal.SIGKILL)
        await daemon.wait()
    await wait_until(lambda: gone(escapee) and all(gone(p) for p in shims),
                     "the setsid() escapee gone after the daemon's SIGKILL")
    assert "the nanomesh daemon is gone" in log_path(tmp_path, "esc", 0).read_text()
