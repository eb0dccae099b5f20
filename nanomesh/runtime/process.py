"""ProcessDriver: nanoservice instances as supervised host processes.

Each instance is a process group led by the supervisor shim
(:mod:`nanomesh.runtime.shim`), started in a new session with
``trio.lowlevel.open_process``::

    daemon ──lifeline pipe──▶ shim (session + group leader, pid = pgid)
                                 └── command ── its children ...

* **stop** sends SIGTERM to the whole group, waits ``timeout``, then SIGKILL
  to the group: grandchildren go too.
* **the command ends by itself**: the shim exits as the command did; while
  the shim is a zombie (its pid still names the group, so no stranger can
  be hit) the driver SIGKILLs whatever is left in the group, then reaps.
* **the daemon dies**, even by SIGKILL: the kernel closes the lifeline's
  write end, the shim reads EOF and kills the group (SIGTERM, ``stop_timeout``
  seconds, SIGKILL). The shim's docstring explains why this and not
  ``PR_SET_PDEATHSIG``.

Outcome of a run: ``exit_code`` is ``subprocess``-style (-N: signal N). A run
we stopped is ``exited`` if it ended within the timeout, ``failed`` if it had
to be killed; a run that ended by itself is ``exited`` with status 0,
``failed`` otherwise. Environment: the daemon's, plus the spec's ``env``,
plus ``NANOMESH_INSTANCE`` / ``NANOMESH_SERVICE``. stdin is ``/dev/null``;
stdout and stderr are appended to the instance's log (:mod:`.logs`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from nanomesh.placement.spec import split_instance_id
from nanomesh.reconcile import ACTIVE, ENDED, InstanceStatus, State, check_transition, transition
from nanomesh.runtime.driver import DriverError, InstanceDriver
from nanomesh.runtime.logs import append_line, log_path, open_log
from nanomesh.runtime.spec import RunSpec

log = logging.getLogger("nanomesh.runtime")

SHIM = Path(__file__).with_name("shim.py")
SHIM_ARGV: tuple[str, ...] = (sys.executable, "-I", "-S", str(SHIM))
"""The shim runs isolated (``-I``: no user site, no PYTHON* variables, no
script directory on the path) and without ``site`` (``-S``): stdlib only.
Measured here: about 40 ms of interpreter start-up (the driver does not wait
for it) and about 4 MiB PSS per instance."""

STOP_TIMEOUT = 5.0
"""Seconds between SIGTERM and SIGKILL, for :meth:`ProcessDriver.stop` by
default, at shutdown, and for the shim when the daemon has died. Long enough
to flush a file or close a socket politely; short enough that a peer leaving
the mesh is quick about it (systemd's default is 90 s, sized for databases)."""


@dataclass(eq=False)
class _Instance:
    status: InstanceStatus
    process: trio.Process | None = None
    pidfd: int | None = None
    lifeline: int | None = None
    log: Path | None = None
    stop_requested: bool = False
    stop_timeout: float = STOP_TIMEOUT
    killed: bool = False
    reaped: bool = False
    settled: trio.Event = field(default_factory=trio.Event)
    """Set once start() is done, with a process or without one."""
    exited: trio.Event = field(default_factory=trio.Event)
    """Set once the run has ended and its status says so."""


class ProcessDriver:
    """Runs instances as supervised process groups (module docstring); the
    :class:`~nanomesh.runtime.driver.InstanceDriver` of host processes.

    ``clock`` stamps statuses (the daemon's ``trio.current_time``, the same
    clock :func:`nanomesh.reconcile.reconcile` is given).
    """

    def __init__(self, *, stop_timeout: float = STOP_TIMEOUT,
                 clock: Callable[[], float] = trio.current_time) -> None:
        if not stop_timeout >= 0:
            raise ValueError(f"stop_timeout must be >= 0, got {stop_timeout!r}")
        self.stop_timeout = stop_timeout
        self._clock = clock
        self._instances: dict[str, _Instance] = {}
        self._nursery: trio.Nursery | None = None
        self._closing = False
        self._version = 0
        self._changed = trio.Event()

    # ------------------------------------------------------------ lifetime

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Serve until cancelled; then stop every instance (shielded, at most
        about ``stop_timeout`` seconds) and return."""
        if self._nursery is not None or self._closing:
            raise DriverError("ProcessDriver.run() may be called once")
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self._closing = True
                with trio.CancelScope(shield=True):
                    await self.stop_all()

    async def stop_all(self, timeout: float | None = None) -> None:
        """Stop every active instance concurrently."""
        async with trio.open_nursery() as nursery:
            for iid, inst in list(self._instances.items()):
                if inst.status.state in ACTIVE:
                    nursery.start_soon(self.stop, iid, timeout)

    # ------------------------------------------------------------ start

    async def start(self, iid: str, run: RunSpec, log_dir: Path, *, spec_digest: str = "",
                    restarts: int = 0) -> InstanceStatus:
        """Start one run of ``iid`` (see :class:`InstanceDriver`). Spawn problems
        (program not found, bad ``cwd``) give a ``failed`` status, not an error.
        Raises :class:`DriverError` if ``iid`` is malformed or active, or the
        driver is not running."""
        if self._nursery is None or self._closing:
            raise DriverError(f"cannot start {iid}: the driver is not running")
        inst = self._begin(iid, spec_digest, restarts)
        try:
            process = await self._spawn(inst, run, Path(log_dir))
        except OSError as exc:
            self._end(inst, "failed", None, f"cannot start: {_os_error(exc)}")
            return inst.status
        except BaseException:
            self._end(inst, "failed", None, "start interrupted")
            raise
        # No checkpoint from here on: a cancellation delivered now must not
        # leave a process without its watcher.
        now = self._clock()
        self._set(inst, transition(inst.status, "running", now, pid=process.pid,
                                   started_at=now, message=""))
        inst.settled.set()
        self._nursery.start_soon(self._watch, inst)
        log.info("started %s (pid %d): %s", iid, process.pid, shlex.join(run.command))
        return inst.status

    def record_failure(self, iid: str, message: str, *, spec_digest: str = "",
                       restarts: int = 0) -> InstanceStatus:
        """Record a run that failed before a process existed (see InstanceDriver)."""
        inst = self._begin(iid, spec_digest, restarts)
        self._end(inst, "failed", None, message)
        return inst.status

    def _begin(self, iid: str, spec_digest: str, restarts: int) -> _Instance:
        try:
            service, _ = split_instance_id(iid)
        except ValueError as exc:
            raise DriverError(str(exc)) from None
        old = self._instances.get(iid)
        if old is not None and old.status.state in ACTIVE:
            raise DriverError(f"cannot start {iid}: it is {old.status.state}")
        check_transition(None if old is None else old.status.state, "starting", iid)
        inst = _Instance(InstanceStatus(iid, service, "starting", self._clock(),
                                        restarts=restarts, spec_digest=spec_digest))
        self._instances[iid] = inst
        self._publish()
        return inst

    async def _spawn(self, inst: _Instance, run: RunSpec, log_dir: Path) -> trio.Process:
        iid, service = inst.status.iid, inst.status.service
        env = {**os.environ, **run.env, "NANOMESH_INSTANCE": iid, "NANOMESH_SERVICE": service}
        _check_program(run, env)
        _, index = split_instance_id(iid)
        inst.log = log_path(log_dir, service, index)
        header = (f"starting {iid} (restarts {inst.status.restarts}, "
                  f"spec {inst.status.spec_digest or '-'}): {shlex.join(run.command)}")
        log_fd = await trio.to_thread.run_sync(open_log, inst.log, header)
        read_end, write_end = os.pipe()  # both close-on-exec; the child gets a dup of read_end
        try:
            process = await trio.lowlevel.open_process(
                [*SHIM_ARGV, "--grace", repr(self.stop_timeout), "--", *run.command],
                stdin=read_end, stdout=log_fd, stderr=log_fd, cwd=run.cwd, env=env,
                start_new_session=True)
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
            os.close(log_fd)
        inst.process, inst.lifeline = process, write_end
        inst.pidfd = _pidfd_open(process.pid)
        return process

    # ------------------------------------------------------------ exit

    async def _watch(self, inst: _Instance) -> None:
        """Wait for the run to end, sweep the group, reap, record. Shielded:
        at shutdown, stop() relies on this to report the ends."""
        assert inst.process is not None
        rc: int | None = None
        with trio.CancelScope(shield=True):
            try:
                if inst.pidfd is not None:
                    await trio.lowlevel.wait_readable(inst.pidfd)
                    self._signal(inst, signal.SIGKILL)  # leftovers; the zombie holds the pgid
                rc = await inst.process.wait()
                if inst.pidfd is None:
                    self._signal(inst, signal.SIGKILL)  # without pidfd: tiny window, best effort
            finally:
                inst.reaped = True
                self._close_fds(inst)
                state, message = self._outcome(inst, rc)
                self._end(inst, state, rc, message)
                log.log(logging.INFO if state == "exited" else logging.WARNING,
                        "%s %s: %s", inst.status.iid, state, message)
            if inst.log is not None:  # still shielded: the footer is written at shutdown too
                await trio.to_thread.run_sync(append_line, inst.log,
                                              f"{inst.status.iid} {state}: {message}")

    def _outcome(self, inst: _Instance, rc: int | None) -> tuple[State, str]:
        if rc is None:
            return "failed", "lost track of the process (driver error)"
        if inst.stop_requested:
            if inst.killed:
                return "failed", (f"did not stop within {inst.stop_timeout:g} s of SIGTERM: "
                                  f"killed ({describe_exit(rc)})")
            return "exited", f"stopped ({describe_exit(rc)})"
        return ("exited" if rc == 0 else "failed"), describe_exit(rc)

    def _end(self, inst: _Instance, state: State, rc: int | None, message: str) -> None:
        self._set(inst, transition(inst.status, state, self._clock(), exit_code=rc, pid=None,
                                   message=message))
        inst.settled.set()
        inst.exited.set()

    @staticmethod
    def _close_fds(inst: _Instance) -> None:
        if inst.pidfd is not None:
            trio.lowlevel.notify_closing(inst.pidfd)
            os.close(inst.pidfd)
            inst.pidfd = None
        if inst.lifeline is not None:
            os.close(inst.lifeline)
            inst.lifeline = None

    # ------------------------------------------------------------ stop

    async def stop(self, iid: str, timeout: float | None = None) -> InstanceStatus | None:
        """SIGTERM the instance's group, wait ``timeout`` seconds (default
        :attr:`stop_timeout`) for it to end, then SIGKILL the group and wait
        for the end. Returns the final status; None if ``iid`` is unknown.
        Concurrent calls share one stop sequence."""
        inst = self._instances.get(iid)
        if inst is None:
            return None
        await inst.settled.wait()  # a start in progress finishes first
        if inst.status.state in ENDED:
            return inst.status
        timeout = self.stop_timeout if timeout is None else timeout
        if not inst.stop_requested:
            inst.stop_requested, inst.stop_timeout = True, timeout
            self._set(inst, transition(inst.status, "stopping", self._clock(),
                                       message="stopping (SIGTERM)"))
            self._signal(inst, signal.SIGTERM)
        with trio.move_on_after(timeout):
            await inst.exited.wait()
            return inst.status
        if not inst.killed:
            inst.killed = True
            log.warning("%s did not stop within %g s of SIGTERM: sending SIGKILL", iid, timeout)
            self._signal(inst, signal.SIGKILL)
        await inst.exited.wait()
        return inst.status

    @staticmethod
    def _signal(inst: _Instance, sig: signal.Signals) -> None:
        """Signal the instance's whole process group. Only before the shim is
        reaped: until then its pid names the group and cannot be reused."""
        if inst.process is None or inst.reaped:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(inst.process.pid, sig)

    # ------------------------------------------------------------ status

    def status(self) -> dict[str, InstanceStatus]:
        """A snapshot: instance id -> status, ended instances included."""
        return {iid: inst.status for iid, inst in self._instances.items()}

    def forget(self, iid: str) -> None:
        """Drop an ended instance's record. Raises DriverError if it is active."""
        inst = self._instances.get(iid)
        if inst is None:
            return
        if inst.status.state in ACTIVE:
            raise DriverError(f"cannot forget {iid}: it is {inst.status.state}")
        del self._instances[iid]
        self._publish()

    @property
    def version(self) -> int:
        """Bumped on every status change (start, state change, forget)."""
        return self._version

    async def wait_changed(self, seen: int) -> int:
        """Wait until :attr:`version` is greater than ``seen``; return it. Read
        ``version`` and ``status()`` together, then wait with that version: no
        change is missed."""
        while self._version <= seen:
            await self._changed.wait()
        return self._version

    def _set(self, inst: _Instance, status: InstanceStatus) -> None:
        inst.status = status
        self._publish()

    def _publish(self) -> None:
        self._version += 1
        self._changed.set()
        self._changed = trio.Event()


@contextlib.asynccontextmanager
async def open_process_driver(*, stop_timeout: float = STOP_TIMEOUT,
                              clock: Callable[[], float] = trio.current_time,
                              ) -> AsyncIterator[ProcessDriver]:
    """``async with open_process_driver() as driver:`` runs a
    :class:`ProcessDriver` for the block; leaving the block (or being
    cancelled) stops every instance gracefully."""
    driver = ProcessDriver(stop_timeout=stop_timeout, clock=clock)
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run)
        try:
            yield driver
        finally:
            nursery.cancel_scope.cancel()


def describe_exit(rc: int) -> str:
    """``"exited with code 3"``, ``"killed by SIGSEGV"`` (rc is subprocess-style)."""
    if rc >= 0:
        hint = " (the command could not be executed; see the log)" if rc == 127 else ""
        return f"exited with code {rc}{hint}"
    try:
        name = signal.Signals(-rc).name
    except ValueError:
        name = f"signal {-rc}"
    return f"killed by {name}"


def _check_program(run: RunSpec, env: dict[str, str]) -> None:
    """Raise FileNotFoundError / PermissionError now, with a clear message, for
    a program that cannot be executed (the shim would only exit 127)."""
    program = run.command[0]
    if "/" in program:
        path = os.path.join(run.cwd or os.getcwd(), program)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such program: {path}")
        if not os.access(path, os.X_OK):
            raise PermissionError(f"not executable: {path}")
    elif shutil.which(program, path=env.get("PATH", os.defpath)) is None:
        raise FileNotFoundError(f"command not found on PATH: {program!r}")


def _os_error(exc: OSError) -> str:
    if exc.filename is None and exc.strerror is None:
        return str(exc)
    where = f": {exc.filename}" if exc.filename is not None else ""
    return f"{exc.strerror or exc}{where}"


def _pidfd_open(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # Linux < 5.3: fall back to Process.wait()
        return None


if TYPE_CHECKING:
    def _implements_the_interface(driver: ProcessDriver) -> InstanceDriver:
        return driver  # mypy checks ProcessDriver against InstanceDriver here
