"""The per-instance supervisor shim: kills the instance's whole tree if the daemon dies.

Run by :class:`nanomesh.runtime.process.ProcessDriver` as::

    python3 -I -S shim.py --grace SECONDS [--log PATH --rotate-bytes N --keep K]
                          [--cgroup DIR ...] -- COMMAND [ARG ...]

with a new session (so the shim leads the instance's process group), the
*lifeline* pipe on its stdin, and the instance's log file on stdout/stderr.
It joins the instance's cgroup (``--cgroup``: one directory per hierarchy; it
writes its pid to each ``cgroup.procs``) *before* it spawns ``COMMAND``, so
the whole tree starts inside; spawns the command in its own process group;
copies the command's output into the log, rotating it by size (``--log``);
waits for it, and exits the way the command did (same exit status, or killed
by the same signal), so the driver sees the command's own outcome.

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
stops the instance: SIGTERM to the group and to everything in its cgroup,
``--grace`` seconds for the command to exit, then it kills everything in the
cgroup (``cgroup.kill`` where v2 has it, else SIGKILL to every pid in
``cgroup.procs`` until only the shim is left) and the whole group, itself
included. There is no race at start-up either: a daemon that dies before the
shim first looks leaves EOF waiting.

**While the daemon lives** the driver signals the group (and the cgroup)
itself: SIGTERM, then SIGKILL after the stop timeout; the shim survives a
SIGTERM (it only waits for the command to end) so it can report the
command's exit status. When the command ends by itself, the driver kills
whatever it left behind, in the group and in the cgroup.

**Logs during a run.** The command writes into a pipe; the shim appends
what it reads to ``--log`` and, when the file would grow past
``--rotate-bytes``, renames it to ``.1`` (``.1`` to ``.2`` ..., keeping
``--keep`` old files) and starts a new one, so even one long chatty run
cannot fill the disk. Its own messages (``nanomesh-shim[pid]: ...``) go to
the same log. When the command has ended, output still buffered in the pipe is
copied; output of leftovers after that is dropped (they are killed anyway).

**Limits.** Without a cgroup (no cgroups on the machine, not root), a process
that leaves the group (``setsid``, ``setpgid``: a double-forking daemon)
escapes the group kill. If the shim itself is SIGKILLed while the daemon
lives, the driver notices it ended and kills the group and the cgroup. The
lifeline only breaks when *every* copy of its write end is closed: the daemon
keeps it close-on-exec, so spawned programs never hold it, but a bare
``os.fork()`` without exec in the daemon would keep it alive until that child
exits.

This file must stay importable without nanomesh on ``sys.path`` (it runs
under ``-I -S``) and use the standard library only;
:mod:`nanomesh.runtime.logs` imports :func:`rotate_files` from here, so the
rotation scheme has one home.
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
EXIT_CANNOT_JOIN_CGROUP = 125
"""The shim could not join the instance's cgroup: it does not run the command
without the limits it was asked to enforce."""
EXIT_CANNOT_SPAWN = 127
"""As in shells: the command could not be executed (not found, not executable)."""

KILL_ROUNDS_SECONDS = 5.0
"""How long the orphaned shim keeps SIGKILLing a v1 cgroup's members before it
gives up on stragglers (a process stuck in the kernel)."""
READ_CHUNK = 65536

_WAIT_THROUGH = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
"""Signals that reach the whole group; the shim lives through them and lets the
command decide how to react."""
_RESET_IN_CHILD = frozenset({*_WAIT_THROUGH, signal.SIGPIPE, signal.SIGXFSZ})
"""Python ignores SIGPIPE and SIGXFSZ at start-up; the command gets the defaults."""

_pending: list[int] = []


def _note(signum: int, _frame: object) -> None:
    _pending.append(signum)


# -- the log ------------------------------------------------------------------------------


def rotate_files(path: str, keep: int) -> None:
    """``path`` becomes ``path.1``, ``path.1`` becomes ``path.2`` ... up to
    ``path.<keep>`` (the oldest is dropped); ``keep == 0`` just removes ``path``."""
    if keep <= 0:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    for i in range(keep - 1, 0, -1):
        with contextlib.suppress(FileNotFoundError):
            os.replace(f"{path}.{i}", f"{path}.{i + 1}")
    with contextlib.suppress(FileNotFoundError):
        os.replace(path, f"{path}.1")


class _Log:
    """The instance's log on fds 1 and 2, rotated by size."""

    def __init__(self, path: str, rotate_bytes: int, keep: int) -> None:
        self.path, self.rotate_bytes, self.keep = path, rotate_bytes, keep
        try:
            self.size = os.fstat(1).st_size
        except OSError:
            self.size = 0

    def write(self, data: bytes) -> None:
        """Append ``data``; rotate first where the file would pass the cap,
        splitting at a line end when one fits (a line longer than a whole file
        is cut)."""
        while data:
            room = max(0, self.rotate_bytes - self.size)
            if len(data) <= room:
                self._write(data)
                return
            cut = data.rfind(b"\n", 0, room) + 1
            if cut == 0 and self.size == 0:
                cut = room
            if cut:
                self._write(data[:cut])
                data = data[cut:]
            self._rotate()

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(1, view)
            except OSError:  # a full disk drops output; it must not end the instance
                return
            view = view[n:]
            self.size += n

    def _rotate(self) -> None:
        self.size = 0  # even if the rotation fails: keep writing where we are
        try:
            rotate_files(self.path, self.keep)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                         0o644)
        except OSError:
            return
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)


_log: _Log | None = None


def _say(text: str) -> None:
    line = f"nanomesh-shim[{os.getpid()}]: {text}\n".encode()
    if _log is not None:
        _log.write(line)
    else:
        with contextlib.suppress(OSError):
            os.write(2, line)


# -- arguments ----------------------------------------------------------------------------


class _Args:
    grace: float = 0.0
    log: str | None = None
    rotate_bytes: int = 5 * 1024 * 1024
    keep: int = 2
    cgroups: list[str]
    command: list[str]

    def __init__(self) -> None:
        self.cgroups, self.command = [], []


USAGE = ("usage: shim.py --grace SECONDS [--log PATH --rotate-bytes N --keep K] "
         "[--cgroup DIR ...] -- COMMAND [ARG ...] (lifeline pipe on stdin)")


def _parse(argv: list[str]) -> _Args | None:
    args = _Args()
    seen_grace = False
    i = 0
    try:
        while i < len(argv) and argv[i] != "--":
            opt, value = argv[i], argv[i + 1]
            if opt == "--grace":
                args.grace, seen_grace = float(value), True
            elif opt == "--log":
                args.log = value
            elif opt == "--rotate-bytes":
                args.rotate_bytes = int(value)
            elif opt == "--keep":
                args.keep = int(value)
            elif opt == "--cgroup":
                args.cgroups.append(value)
            else:
                return None
            i += 2
    except (IndexError, ValueError):
        return None
    args.command = argv[i + 1:]
    if (i >= len(argv) or not seen_grace or not args.command or not args.grace >= 0
            or args.rotate_bytes < 1 or args.keep < 0):
        return None
    return args


# -- main ---------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    global _log
    args = _parse(argv)
    if args is None:
        _say(USAGE)
        return EXIT_USAGE
    if os.getpgid(0) != os.getpid():
        # Started without a session of its own: make one, or the group kills
        # below would hit whoever started us.
        os.setsid()
    for directory in args.cgroups:
        try:
            with open(os.path.join(directory, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        except OSError as exc:
            _say(f"cannot join the instance's cgroup {directory}: {exc.strerror or exc}")
            return EXIT_CANNOT_JOIN_CGROUP
    for sig in _WAIT_THROUGH:
        signal.signal(sig, _note)
    out_r: int | None = None
    out_w: int | None = None
    if args.log is not None:
        _log = _Log(args.log, args.rotate_bytes, args.keep)
        out_r, out_w = os.pipe()
    devnull = os.open(os.devnull, os.O_RDONLY)
    actions = [(os.POSIX_SPAWN_DUP2, devnull, 0)]
    if out_w is not None:
        actions += [(os.POSIX_SPAWN_DUP2, out_w, 1), (os.POSIX_SPAWN_DUP2, out_w, 2)]
    try:
        pid = os.posix_spawnp(args.command[0], args.command, dict(os.environ),
                              file_actions=actions, setsigdef=_RESET_IN_CHILD, setsigmask=())
    except OSError as exc:
        _say(f"cannot execute {args.command[0]!r}: {exc.strerror}")
        return EXIT_CANNOT_SPAWN
    finally:
        os.close(devnull)
        if out_w is not None:
            os.close(out_w)
    if _pending:  # a stop arrived before the command existed: pass it on
        os.killpg(0, _pending[-1])
    return _mirror(_supervise(pid, out_r, args))


def _supervise(pid: int, out_r: int | None, args: _Args) -> int:
    """Copy output and wait for the command; returns its wait status. Never
    returns if the lifeline breaks (the shim kills everything, itself too)."""
    pidfd = _pidfd_open(pid)
    orphaned_at: float | None = None
    while True:
        watched = [fd for fd in (LIFELINE_FD if orphaned_at is None else None, pidfd, out_r)
                   if fd is not None]
        timeout: float | None = None if pidfd is not None else 0.2
        if orphaned_at is not None:
            left = orphaned_at + args.grace - time.monotonic()
            if left <= 0:
                _kill_everything(args.cgroups)
            timeout = left if timeout is None else min(timeout, left)
        try:
            ready, _, _ = select.select(watched, [], [], timeout)
        except InterruptedError:  # pragma: no cover - PEP 475 retries select itself
            continue
        if out_r is not None and out_r in ready and not _copy(out_r):
            out_r = None  # every writer is gone
        reaped, status = os.waitpid(pid, os.WNOHANG)
        if reaped:
            if out_r is not None:
                _drain(out_r)
            if orphaned_at is not None:
                _kill_everything(args.cgroups)
            return status
        if orphaned_at is None and LIFELINE_FD in ready and _lifeline_broken():
            _say(f"the nanomesh daemon is gone: stopping the instance (SIGTERM, SIGKILL after "
                 f"{args.grace:g} s)")
            _signal_everything(signal.SIGTERM, args.cgroups)
            orphaned_at = time.monotonic()


def _copy(fd: int) -> bool:
    """Copy what is readable on ``fd`` to the log; False at end of file."""
    try:
        data = os.read(fd, READ_CHUNK)
    except BlockingIOError:
        return True
    except OSError:
        return False
    if not data:
        return False
    if _log is not None:
        _log.write(data)
    return True


def _drain(fd: int) -> None:
    """After the command's end: copy what is buffered, without waiting for
    leftovers that may still hold the pipe open."""
    os.set_blocking(fd, False)
    with contextlib.suppress(OSError):
        while _copy(fd):
            if not select.select([fd], [], [], 0)[0]:
                break


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


def _cgroup_pids(cgroups: list[str]) -> set[int]:
    """Every process in the instance's cgroups *and the cgroups nested in them*
    (runc puts a container in a cgroup of its own below the instance's on v1
    layouts), but the shim."""
    out: set[int] = set()
    for top in cgroups:
        for directory in _cgroup_tree(top):
            with contextlib.suppress(OSError, ValueError), \
                    open(os.path.join(directory, "cgroup.procs")) as f:
                out.update(int(p) for p in f.read().split())
    out.discard(os.getpid())
    return out


CGROUP_WALK_DEPTH = 8
"""Levels of nested cgroups :func:`_cgroup_tree` descends (an engine nests one
or two: ``<instance>/<container>``; systemd inside a container a few more)."""
CGROUP_WALK_DIRS = 1024
"""Most cgroup directories :func:`_cgroup_tree` returns per instance cgroup:
the walk stays bounded however many cgroups an instance makes (it can create
them in its own cgroup where it is delegated); ``cgroup.kill`` and the
driver's kill are not bounded like this."""


def _cgroup_tree(top: str) -> list[str]:
    """``top`` and the cgroups below it, breadth first, bounded by
    :data:`CGROUP_WALK_DEPTH` and :data:`CGROUP_WALK_DIRS`."""
    out = [top]
    level = [top]
    for _ in range(CGROUP_WALK_DEPTH):
        below: list[str] = []
        for directory in level:
            with contextlib.suppress(OSError), os.scandir(directory) as entries:
                below += [e.path for e in entries if e.is_dir(follow_symlinks=False)]
        room = CGROUP_WALK_DIRS - len(out)
        below = below[:room]
        out += below
        level = below
        if not level:
            break
    return out


def _signal_everything(sig: int, cgroups: list[str]) -> None:
    """``sig`` to the process group (the shim lives through the catchable
    ones) and to every other process in the cgroup (those that left the group)."""
    with contextlib.suppress(OSError):
        os.killpg(0, sig)
    group = os.getpgid(0)
    for pid in _cgroup_pids(cgroups):
        with contextlib.suppress(OSError):
            if os.getpgid(pid) != group:  # a second SIGTERM could hit a program exiting
                os.kill(pid, sig)


def _kill_everything(cgroups: list[str]) -> None:
    """SIGKILL the whole instance, this shim included; never returns."""
    for directory in cgroups:  # v2: atomic, fork bombs included, the shim too
        kill_file = os.path.join(directory, "cgroup.kill")
        if os.path.exists(kill_file):
            with contextlib.suppress(OSError), open(kill_file, "w") as f:
                f.write("1")
    deadline = time.monotonic() + KILL_ROUNDS_SECONDS
    while time.monotonic() < deadline:  # v1: kill until only the shim is left
        pids = _cgroup_pids(cgroups)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.005)
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
