"""Helpers for tests that run real processes: bounded polling, pid checks,
small instance programs. Timeouts are generous; no test asserts a duration."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import trio

from nanomesh.runtime import ProcessDriver, RunSpec

PY = sys.executable
WAIT = 15.0
"""Upper bound for anything a test waits for (a loaded 2-core CI box)."""


READY = "is ready"
"""What the programs below print once their signal handling is set up (built
at run time: the log's header line quotes the program's source)."""
BYE = "got SIGTERM, bye"
STAYING = "got SIGTERM, staying"


def program(code: str, *args: str, **env: str) -> RunSpec:
    """A RunSpec running ``python -c code args...``."""
    return RunSpec((PY, "-c", code, *args), env=env)


READY_THEN_WAIT_FOR_TERM = """
import signal, sys, time
def bye(*_):
    print("got", "SIGTERM,", "bye", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, bye)
print("is", "ready", flush=True)
time.sleep(60)
"""

IGNORES_TERM = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("is", "ready", flush=True)
time.sleep(60)
"""

SPAWNS_GRANDCHILD = """
import os, signal, subprocess, sys, time
if sys.argv[2] == "ignore-term":
    signal.signal(signal.SIGTERM, lambda *_: print("got", "SIGTERM,", "staying", flush=True))
g = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
tmp = sys.argv[1] + ".tmp"
with open(tmp, "w") as f:
    f.write(f"{os.getpid()} {g.pid}")
os.rename(tmp, sys.argv[1])
print("is", "ready", flush=True)
if sys.argv[3] == "then-exit":
    sys.exit(0)
time.sleep(60)
"""
"""argv: PIDFILE, "ignore-term" | "-", "then-exit" | "-". Writes "<own pid>
<grandchild pid>" to PIDFILE; the grandchild ignores SIGTERM."""


def gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie awaiting its reaper counts)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.02)
        return
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


async def wait_for_text(path: Path, text: str, timeout: float = WAIT) -> str:
    def found() -> bool:
        return path.exists() and text in path.read_text(errors="replace")
    await wait_until(found, f"{text!r} in {path}", timeout)
    return path.read_text(errors="replace")


async def read_pids(path: Path) -> list[int]:
    await wait_until(path.exists, f"pid file {path}")
    return [int(p) for p in path.read_text().split()]


async def wait_state(driver: ProcessDriver, iid: str, *states: str,
                     timeout: float = WAIT) -> None:
    def reached() -> bool:
        status = driver.status().get(iid)
        return status is not None and status.state in states
    await wait_until(reached, f"{iid} in {states}", timeout)


def alive(pid: int) -> bool:
    return not gone(pid)


def pgid_members(pgid: int) -> list[int]:
    """Live processes whose process group is ``pgid``."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                out.append(int(entry))
    return out
