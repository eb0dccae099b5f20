"""Helpers for tests that run real processes: bounded polling, pid checks,
small instance programs. Timeouts are generous; no test asserts a duration."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import trio

from nanomesh.runtime import InstanceSpec, ProcessDriver, RunSpec, StartContext, instance_spec_from

PY = sys.executable
ROOT = os.geteuid() == 0
"""cgroup tests need root (CI runs as root: they must not be skipped there)."""
WAIT = 15.0
"""Upper bound for anything a test waits for (a loaded 2-core CI box)."""


READY = "is ready"
"""What the programs below print once their signal handling is set up (built
at run time: the log's header line quotes the program's source)."""
BYE = "got SIGTERM, bye"
STAYING = "got SIGTERM, staying"


def program(code: str, *args: str, **env: str) -> InstanceSpec:
    """An InstanceSpec running ``python -c code args...``."""
    return instance(RunSpec((PY, "-c", code, *args), env=env))


def instance(run: RunSpec, service: str = "svc", **sections: object) -> InstanceSpec:
    """An InstanceSpec of ``run`` plus manifest ``sections`` (``endpoints``,
    ``health``, ``limits``, ...), validated as the driver's caller would."""
    return instance_spec_from({"name": service, "run": run.to_dict(), **sections})


def ctx(log_dir: Path, **kw: object) -> StartContext:
    """A StartContext for tests (loopback, logs under ``log_dir``)."""
    return StartContext(log_dir=log_dir, **kw)  # type: ignore[arg-type]


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


COAP_RESPONDER = """
import os, socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
host, port = (sys.argv[1], int(sys.argv[2])) if len(sys.argv) > 2 else (
    os.environ["NANOMESH_HOST"], int(os.environ["NANOMESH_PORT"]))
s.bind((host, port))
print(s.getsockname()[1], flush=True)
while True:
    data, peer = s.recvfrom(2048)
    first, code, mid = struct.unpack("!BBH", data[:4])
    tkl = first & 15
    if code == 0:  # a ping: reset
        s.sendto(struct.pack("!BBH", 0x70, 0, mid), peer)
    else:  # GET: piggybacked 2.05, or 4.04 for /missing
        found = b"missing" not in data
        s.sendto(struct.pack("!BBH", 0x60 | tkl, 0x45 if found else 0x84, mid)
                 + data[4:4 + tkl] + b"\\xffok", peer)
"""
"""A tiny stdlib CoAP responder (RFC 7252 ping and GET): argv HOST PORT, or
the instance's NANOMESH_HOST / NANOMESH_PORT. Prints its port."""

TCP_SERVER = """
import os, socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((os.environ["NANOMESH_HOST"], int(os.environ["NANOMESH_PORT"])))
s.listen()
print("is", "ready", flush=True)
close_after = float(sys.argv[1]) if len(sys.argv) > 1 else None
if close_after is not None:  # stop answering, but keep running
    time.sleep(close_after)
    s.close()
    print("closed", flush=True)
    time.sleep(60)
while True:
    c, _ = s.accept()
    c.close()
"""
"""A small TCP server on the instance's first endpoint (argv: close the
listening socket after that many seconds and keep running)."""


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
