"""The per-instance supervisor shim: kills the instance's whole tree if the daemon dies.

Run by :class:`nanomesh.runtime.process.ProcessDriver` as::

    python3 -I -S shim.py --grace SECONDS -- COMMAND [ARG ...]

with a new session (so the shim leads the instance's process group), the
*lifeline* pipe on its stdin, and the instance's log file on stdout/stderr.
It spawns ``COMMAND`` in its own process group, waits for it, and exits the
way the command did (same exit status, or killed by the same signal), so the
driver sees the command's own outcome.

**Why a shim.** If the daemon is SIGKILLed (OOM killer, a crash, ``kill -9``)
nothing in it runs, so something *else* must take the instances down.
``PR_SET_PDEATHSIG`` in the child is the usual answer, but under trio it is
wrong twice over: it fires when the parent *thread* exits, and
``trio.lowlevel.open_process`` forks from a worker thread that trio retires
after 10 s idle, so a child with ``PDEATHSIG=SIGKILL`` dies about 10 s after
it starts while the daemon is alive (measured); and it reaches the direct
child only, not the tree. cgroup v2 ``cgroup.kill`` reaches the whole tree
but somebody alive must write it. So each instance gets this small
stdlib-only watcher, the leader of the instance's process group, holding the
read end of a pipe whose only write end lives in the daemon. The kernel closes
that end when the daemon dies, however it dies; the shim then reads EOF and
stops the group: SIGTERM, ``--grace`` seconds for the command to exit, then
SIGKILL to the whole group, itself included. There is no race at start-up
either: a daemon that dies before the shim first looks leaves EOF waiting.

**While the daemon lives** the driver signals the group itself (SIGTERM,
then SIGKILL after the stop timeout); the shim survives a SIGTERM (it only
waits for the command to end) so it can report the command's exit status.

**Limits.** A process that leaves the group (``setsid``, ``setpgid``: a
double-forking daemon) escapes the group kill; the cure is a cgroup per
instance (``cgroup.kill``, planned with issue 4's resource limits), which this
shim is the natural place to create. If the shim itself is SIGKILLed while the
daemon lives, the driver notices it ended and kills the group. The lifeline
only breaks when *every* copy of its write end is closed: the daemon keeps it
close-on-exec, so spawned programs never hold it, but a bare ``os.fork()``
without exec in the daemon would keep it alive until that child exits.

This file must stay importable without nanomesh on ``sys.path`` (it runs
under ``-I -S``) and use the standard library only.
"""

from __future__ import annotations

import contextlib
import os
import resource
import select
import signal
import sys
import time

LIFELINE_FD = 0
"""stdin: the read end of the daemon's lifeline pipe."""

EXIT_USAGE = 2
EXIT_CANNOT_SPAWN = 127
"""As in shells: the command could not be executed (not found, not executable)."""

_WAIT_THROUGH = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
"""Signals that reach the whole group; the shim lives through them and lets the
command decide how to react."""
_RESET_IN_CHILD = frozenset({*_WAIT_THROUGH, signal.SIGPIPE, signal.SIGXFSZ})
"""Python ignores SIGPIPE and SIGXFSZ at start-up; the command gets the defaults."""

_pending: list[int] = []


def _note(signum: int, _frame: object) -> None:
    _pending.append(signum)


def _say(text: str) -> None:
    with contextlib.suppress(OSError):
        os.write(2, f"nanomesh-shim[{os.getpid()}]: {text}\n".encode())


def _parse(argv: list[str]) -> tuple[float, list[str]] | None:
    if len(argv) < 4 or argv[0] != "--grace" or argv[2] != "--":
        return None
    try:
        grace = float(argv[1])
    except ValueError:
        return None
    return (grace, argv[3:]) if grace >= 0 else None


def main(argv: list[str]) -> int:
    parsed = _parse(argv)
    if parsed is None:
        _say("usage: shim.py --grace SECONDS -- COMMAND [ARG ...] (lifeline pipe on stdin)")
        return EXIT_USAGE
    grace, command = parsed
    if os.getpgid(0) != os.getpid():
        # Started without a session of its own: make one, or the group kills
        # below would hit whoever started us.
        os.setsid()
    for sig in _WAIT_THROUGH:
        signal.signal(sig, _note)
    devnull = os.open(os.devnull, os.O_RDONLY)
    try:
        pid = os.posix_spawnp(command[0], command, dict(os.environ),
                              file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 0)],
                              setsigdef=_RESET_IN_CHILD, setsigmask=())
    except OSError as exc:
        _say(f"cannot execute {command[0]!r}: {exc.strerror}")
        return EXIT_CANNOT_SPAWN
    finally:
        os.close(devnull)
    if _pending:  # a stop arrived before the command existed: pass it on
        os.killpg(0, _pending[-1])
    return _mirror(_wait(pid, grace))


def _wait(pid: int, grace: float) -> int:
    """Wait for the command; returns its wait status. Never returns if the
    lifeline breaks (see :func:`_orphaned`)."""
    pidfd = _pidfd_open(pid)
    while True:
        watched = [LIFELINE_FD] if pidfd is None else [LIFELINE_FD, pidfd]
        ready, _, _ = select.select(watched, [], [], 0.2 if pidfd is None else None)
        reaped, status = os.waitpid(pid, os.WNOHANG)
        if reaped:
            return status
        if LIFELINE_FD in ready and _lifeline_broken():
            _orphaned(pid, pidfd, grace)


def _pidfd_open(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # Linux < 5.3: poll instead
        return None


def _lifeline_broken() -> bool:
    try:
        return os.read(LIFELINE_FD, 512) == b""
    except OSError:
        return True


def _orphaned(pid: int, pidfd: int | None, grace: float) -> None:
    """The daemon is gone: SIGTERM the group, give the command ``grace``
    seconds, then SIGKILL the whole group, this shim included."""
    _say(f"the nanomesh daemon is gone: stopping the instance (SIGTERM, SIGKILL after {grace:g} s)")
    os.killpg(0, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if pidfd is not None:
            select.select([pidfd], [], [], max(0.0, deadline - time.monotonic()))
        else:
            time.sleep(0.05)
        if os.waitpid(pid, os.WNOHANG)[0]:
            break
    os.killpg(0, signal.SIGKILL)
    os._exit(128 + signal.SIGKILL)  # not reached: the line above kills us too


def _mirror(status: int) -> int:
    """End this process the way the command ended."""
    if not os.WIFSIGNALED(status):
        return os.waitstatus_to_exitcode(status)
    sig = os.WTERMSIG(status)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a mirrored SIGSEGV: no core of ours
    # SIGKILL / SIGSTOP cannot be changed (nor need to be)
    with contextlib.suppress(OSError, ValueError):
        signal.signal(sig, signal.SIG_DFL)
    sys.stderr.flush()
    os.kill(os.getpid(), sig)
    return 128 + sig  # the signal's default action was not to terminate


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
