"""ProcessDriver: nanoservice instances as supervised process trees.

Each run is a process group led by the supervisor shim
(:mod:`nanomesh.runtime.shim`), started in a new session with
``trio.lowlevel.open_process``, inside a cgroup of its own where the machine
offers cgroups (:mod:`nanomesh.runtime.cgroups`)::

    daemon ──lifeline pipe──▶ shim (session + group leader, pid = pgid; in the cgroup)
                                 └── command ── its children ...   (output ─▶ shim ─▶ log)

*What* runs is a launcher's business (:mod:`nanomesh.runtime.launch`): the
driver picks one by the spec's ``kind`` (``process``: the host launcher;
``container``: runc/podman/docker, given by the daemon) and runs the argv it
returns under the shim; everything else is the same for both.

* **start**: ports for ``"auto"`` endpoints (:mod:`.ports`), the environment
  contract (``NANOMESH_*``, with a fresh instance token), the cgroup with the
  spec's limits, the launcher's command, the log's header line; the shim joins
  the cgroup before it spawns the command.
* **health**: with a check (:mod:`.health`), the status's ``health`` goes
  ``starting`` -> ``healthy``; an instance that turns unhealthy, or never
  passes within ``start_period``, is stopped and recorded ``failed``
  (``"unhealthy: ..."``).
* **stop** sends SIGTERM to the whole group and cgroup, waits ``timeout``,
  then SIGKILL.
* **the command ends by itself**: the shim exits as the command did; while
  the shim is a zombie (its pid still names the group, so no stranger can
  be hit) the driver SIGKILLs whatever is left in the group, then empties the
  cgroup (processes that left the group included).
* **the daemon dies**, even by SIGKILL: the kernel closes the lifeline's
  write end, the shim reads EOF and kills the group and the cgroup (SIGTERM,
  ``stop_timeout`` seconds, SIGKILL).
* **after every run** (however it ended): the cgroup is emptied and removed,
  the ports released, the launcher's ``cleanup`` command run (bounded, best
  effort, logged), *then* the end is recorded, so a restart never meets the
  remains of the previous run.

Outcome of a run: ``exit_code`` is ``subprocess``-style (-N: signal N). A run
killed by the kernel for its memory limit is ``failed`` with ``"killed by its
memory limit (64 MiB)"``; a run stopped for failing its health check is
``failed`` with ``"unhealthy: ..."``; a run we stopped is ``exited`` if it
ended within the timeout, ``failed`` if it had to be killed; a run that ended
by itself is ``exited`` with status 0, ``failed`` otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from nanomesh.ids import split_instance_id
from nanomesh.runtime import health as hc
from nanomesh.runtime.cgroups import Cgroups, InstanceCgroup, Layout
from nanomesh.runtime.driver import DriverError, InstanceDriver, StartContext
from nanomesh.runtime.instance_spec import InstanceSpec
from nanomesh.runtime.launch import HostLauncher, Launch, LaunchContext, Launcher, LaunchError
from nanomesh.runtime.lifecycle import State
from nanomesh.runtime.logs import ROTATE_BYTES, ROTATE_KEEP, append_line, log_path, open_log
from nanomesh.runtime.ports import ContractValues, PortAllocator, instance_env, new_token
from nanomesh.runtime.reconcile_core import ACTIVE, InstanceStatus, check_transition, transition

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

CLEANUP_TIMEOUT = 10.0
"""Seconds a launcher's cleanup command (``runc delete --force ID``) may take
after a run; it is killed after that and the failure logged. Removing a
container takes well under a second; ten covers a loaded device."""

_RECORDABLE: frozenset[State] = frozenset({"fetching", "idle", "exited", "failed"})
"""States :meth:`ProcessDriver.record` may write (``exited``: a run that
ended before it started, e.g. no longer wanted once its bundle arrived)."""


@dataclass(eq=False)
class _Instance:
    status: InstanceStatus
    process: trio.Process | None = None
    pidfd: int | None = None
    lifeline: int | None = None
    log: Path | None = None
    cgroup: InstanceCgroup | None = None
    launch: Launch | None = None
    token: str | None = None
    state_dir: Path | None = None
    health_scope: trio.CancelScope | None = None
    unhealthy: str | None = None
    """Set when the health check gave up: the reason the run ``failed``."""
    stop_requested: bool = False
    stop_timeout: float = STOP_TIMEOUT
    killed: bool = False
    reaped: bool = False
    settled: trio.Event = field(default_factory=trio.Event)
    """Set once start() is done, with a process or without one."""
    exited: trio.Event = field(default_factory=trio.Event)
    """Set once the run has ended and its status says so."""


class ProcessDriver:
    """Runs instances as supervised process trees (module docstring); the
    :class:`~nanomesh.runtime.driver.InstanceDriver` for every kind.

    ``launchers`` maps a spec ``kind`` to its launcher (default: ``process``
    only, on the host); ``peer`` names this daemon's cgroup scope;
    ``cgroups=False`` runs without cgroups (no limits, group kill only);
    ``clock`` stamps statuses (the daemon's ``trio.current_time``, the same
    clock :func:`nanomesh.runtime.reconcile_core.reconcile` is given); ``rotate_bytes`` and
    ``rotate_keep`` size the logs (:mod:`.logs`).
    """

    def __init__(self, *, launchers: Mapping[str, Launcher] | None = None,
                 peer: str = "local", cgroups: bool = True,
                 stop_timeout: float = STOP_TIMEOUT,
                 clock: Callable[[], float] = trio.current_time,
                 rotate_bytes: int = ROTATE_BYTES, rotate_keep: int = ROTATE_KEEP) -> None:
        if not stop_timeout >= 0:
            raise ValueError(f"stop_timeout must be >= 0, got {stop_timeout!r}")
        if rotate_bytes < 1 or rotate_keep < 0:
            raise ValueError("rotate_bytes must be >= 1 and rotate_keep >= 0")
        self.launchers: dict[str, Launcher] = (
            {"process": HostLauncher()} if launchers is None else dict(launchers))
        self.peer = peer
        self.stop_timeout = stop_timeout
        self.rotate_bytes, self.rotate_keep = rotate_bytes, rotate_keep
        self._use_cgroups = cgroups
        self.cgroups = Cgroups(Layout(reason="not detected yet (driver not running)"), "")
        self.ports = PortAllocator()
        self._clock = clock
        self._instances: dict[str, _Instance] = {}
        self._nursery: trio.Nursery | None = None
        self._closing = False
        self._version = 0
        self._changed = trio.Event()
        self._warned_limits: set[str] = set()

    # ------------------------------------------------------------ lifetime

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Detect cgroups, serve until cancelled; then stop every instance
        (shielded, at most about ``stop_timeout`` seconds) and return."""
        if self._nursery is not None or self._closing:
            raise DriverError("ProcessDriver.run() may be called once")
        if self._use_cgroups:
            self.cgroups = await trio.to_thread.run_sync(Cgroups.open, self.peer)
        else:
            self.cgroups = Cgroups(Layout(reason="disabled in the driver"), "")
        if self.cgroups.layout.limits:
            log.info("cgroups: %s", self.cgroups.describe())
        else:
            log.warning("cgroups: %s: instance resource limits will not be enforced",
                        self.cgroups.describe())
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                try:
                    await trio.sleep_forever()
                finally:
                    self._closing = True
                    with trio.CancelScope(shield=True):
                        await self.stop_all()
        finally:
            self.cgroups.close()

    def describe_cgroups(self) -> str:
        """What enforces limits here, for the peer's profile:
        ``{"cgroups": driver.describe_cgroups()}``."""
        return self.cgroups.describe()

    async def stop_all(self, timeout: float | None = None) -> None:
        """Stop every active instance concurrently."""
        async with trio.open_nursery() as nursery:
            for iid, inst in list(self._instances.items()):
                if inst.status.state in ACTIVE:
                    nursery.start_soon(self.stop, iid, timeout)

    # ------------------------------------------------------------ records

    def record(self, iid: str, state: State, message: str = "", *, spec_digest: str = "",
               restarts: int = 0) -> InstanceStatus:
        """Record a state without a process (see InstanceDriver): ``fetching``,
        ``idle``, ``exited`` or ``failed``."""
        if state not in _RECORDABLE:
            raise DriverError(f"record() is for {', '.join(sorted(_RECORDABLE))}, "
                              f"not {state}")
        service = _service(iid)
        old = self._instances.get(iid)
        if old is not None and old.status.state in ACTIVE:
            raise DriverError(f"cannot record {iid} {state}: it is {old.status.state}")
        check_transition(None if old is None else old.status.state, state, iid)
        inst = _Instance(InstanceStatus(iid, service, state, self._clock(), restarts=restarts,
                                        spec_digest=spec_digest, message=message,
                                        last_exit=_previous_exit(old)),
                         state_dir=None if old is None else old.state_dir)
        inst.settled.set()
        inst.exited.set()
        self._instances[iid] = inst
        self._publish()
        return inst.status

    def instance_token(self, iid: str) -> str | None:
        """The bearer token of ``iid``'s current run (its
        ``NANOMESH_INSTANCE_TOKEN``), while it is active; None otherwise. The
        daemon checks it on the instance's calls to the peer API."""
        inst = self._instances.get(iid)
        if inst is None or inst.status.state not in ACTIVE:
            return None
        return inst.token

    def cgroup_of(self, iid: str) -> InstanceCgroup | None:
        """The cgroup of ``iid``'s current run (None without one, or when it is
        not running): for diagnostics and tests."""
        inst = self._instances.get(iid)
        return None if inst is None or inst.status.state not in ACTIVE else inst.cgroup

    # ------------------------------------------------------------ start

    async def start(self, iid: str, spec: InstanceSpec, ctx: StartContext) -> InstanceStatus:
        """Start one run of ``iid`` (see :class:`InstanceDriver`). Problems the
        operator can act on (no launcher for the kind, program not found, bad
        ``cwd``, no free port, a cgroup that cannot be made) give a ``failed``
        status, not an error; so does any other exception while starting (a bug,
        or input nobody foresaw: logged with its traceback as ``BUG``), so no
        spec can take the caller down. Raises :class:`DriverError` if ``iid``
        is malformed or active, or the driver is not running; cancellation
        propagates."""
        if self._nursery is None or self._closing:
            raise DriverError(f"cannot start {iid}: the driver is not running")
        inst = self._begin(iid, ctx.spec_digest, ctx.restarts)
        try:
            process = await self._spawn(inst, spec, ctx)
        except (LaunchError, OSError) as exc:
            with trio.CancelScope(shield=True):
                await self._after_run(inst)
            self._end(inst, "failed", None, f"cannot start: {_os_error(exc)}")
            log.warning("cannot start %s: %s", iid, inst.status.message)
            return inst.status
        except Exception as exc:  # not the instance's fault, but its failure, not ours
            log.exception("BUG: starting %s raised", iid)
            with trio.CancelScope(shield=True):
                await self._after_run(inst)
            self._end(inst, "failed", None, f"cannot start: {type(exc).__name__}: {exc}")
            return inst.status
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._after_run(inst)
            self._end(inst, "failed", None, "start interrupted")
            raise
        # No checkpoint from here on: a cancellation delivered now must not
        # leave a process without its watcher.
        now = self._clock()
        checked = spec.health.check != "none"
        self._set(inst, transition(inst.status, "running", now, pid=process.pid,
                                   started_at=now, message="",
                                   health="starting" if checked else "none"))
        inst.settled.set()
        self._nursery.start_soon(self._watch, inst)
        if checked:
            inst.health_scope = trio.CancelScope()
            self._nursery.start_soon(self._health, inst, spec, self._target(inst, spec, ctx))
        assert inst.launch is not None
        log.info("started %s (pid %d, %s): %s", iid, process.pid,
                 inst.launch.description or "process", shlex.join(inst.launch.argv))
        return inst.status

    def _begin(self, iid: str, spec_digest: str, restarts: int) -> _Instance:
        service = _service(iid)
        old = self._instances.get(iid)
        if old is not None and old.status.state in ACTIVE:
            raise DriverError(f"cannot start {iid}: it is {old.status.state}")
        check_transition(None if old is None else old.status.state, "starting", iid)
        inst = _Instance(InstanceStatus(iid, service, "starting", self._clock(),
                                        restarts=restarts, spec_digest=spec_digest,
                                        last_exit=_previous_exit(old)),
                         state_dir=None if old is None else old.state_dir)
        self._instances[iid] = inst
        self._publish()
        return inst

    async def _spawn(self, inst: _Instance, spec: InstanceSpec, ctx: StartContext
                     ) -> trio.Process:
        iid, service = inst.status.iid, inst.status.service
        _, index = split_instance_id(iid)
        launcher = self.launchers.get(spec.kind)
        if launcher is None:
            raise LaunchError(f"no launcher for kind {spec.kind!r} on this peer (it runs: "
                              f"{', '.join(sorted(self.launchers)) or 'nothing'})")
        endpoints = self.ports.allocate(iid, ctx.host_ip, spec.endpoints)
        self._set(inst, replace(inst.status, endpoints=endpoints))
        inst.token = new_token()
        env = instance_env(spec, ContractValues(iid, service, ctx.host_ip, endpoints,
                                                ctx.peer_api, inst.token))
        env["NANOMESH_VISIBILITY"] = spec.visibility
        if ctx.credentials is not None:
            env.update(ctx.credentials(iid, spec.visibility))
        inst.state_dir = (ctx.state_root or Path(ctx.log_dir) / ".state") / f"{service}.{index}"
        inst.log = log_path(ctx.log_dir, service, index)
        await trio.to_thread.run_sync(_make_dirs, inst.state_dir, inst.log.parent)
        if self.cgroups.available:
            inst.cgroup = self.cgroups.create(f"{service}-{index}")
        launch = await launcher.prepare(spec, LaunchContext(
            iid=iid, env=env, workdir=ctx.workdir, state_dir=inst.state_dir,
            host_ip=ctx.host_ip, cgroup=inst.cgroup))
        inst.launch = launch
        if spec.limits.any and not launch.enforces_limits:
            self._apply_limits(inst, spec)
        elif inst.cgroup is not None and spec.limits.memory_mb is not None:
            # the engine enforces it (in a cgroup nested in ours, where the
            # OOM count is read): remembered for the "memory limit" message
            inst.cgroup.memory_mb = spec.limits.memory_mb
        _check_program(launch)
        header = (f"starting {iid} (restarts {inst.status.restarts}, "
                  f"spec {inst.status.spec_digest or '-'}, {launch.description or 'process'}):"
                  f" {shlex.join(launch.argv)}")
        log_fd = await trio.to_thread.run_sync(open_log, inst.log, header, self.rotate_bytes,
                                               self.rotate_keep)
        argv = [*SHIM_ARGV, "--grace", repr(self.stop_timeout), "--log", str(inst.log),
                "--rotate-bytes", str(self.rotate_bytes), "--keep", str(self.rotate_keep)]
        if inst.cgroup is not None:
            for directory in inst.cgroup.dirs.values():
                argv += ["--cgroup", str(directory)]
        read_end, write_end = os.pipe()  # both close-on-exec; the child gets a dup of read_end
        try:
            process = await trio.lowlevel.open_process(
                [*argv, "--", *launch.argv], stdin=read_end, stdout=log_fd, stderr=log_fd,
                cwd=launch.cwd, env=dict(launch.env), start_new_session=True)
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
            os.close(log_fd)
        inst.process, inst.lifeline = process, write_end
        inst.pidfd = _pidfd_open(process.pid)
        return process

    def _apply_limits(self, inst: _Instance, spec: InstanceSpec) -> None:
        why = self.cgroups.unenforced(spec.limits)
        if why is not None and spec.service not in self._warned_limits:
            self._warned_limits.add(spec.service)
            log.warning("limits for %s not enforced: %s", spec.service, why)
        if inst.cgroup is not None:
            self.cgroups.apply(inst.cgroup, spec.limits)

    @staticmethod
    def _target(inst: _Instance, spec: InstanceSpec, ctx: StartContext) -> hc.Target:
        port = next((p for name, _, p in inst.status.endpoints
                     if name == spec.health.endpoint), None)
        launch = inst.launch
        return hc.Target(host=ctx.host_ip, port=port,
                         cwd=None if launch is None else launch.cwd,
                         env=None if launch is None else launch.env,
                         exec_prefix=None if launch is None else launch.exec_prefix,
                         cgroup_procs=() if inst.cgroup is None else tuple(
                             str(f) for f in inst.cgroup.procs_files))

    # ------------------------------------------------------------ health

    async def _health(self, inst: _Instance, spec: InstanceSpec, target: hc.Target) -> None:
        """Check the run's health until it ends (:mod:`.health`); on giving up,
        stop it (the run is then ``failed`` with the reason). It runs in the
        driver's nursery, so nothing may escape it: an unexpected exception
        (a bug) is logged and ends the run as unhealthy."""
        assert inst.health_scope is not None
        iid = inst.status.iid
        with inst.health_scope:
            try:
                reason = await self._check_until_given_up(inst, spec, target)
            except Exception as exc:
                log.exception("BUG: the health checks of %s raised", iid)
                reason = f"unhealthy: health check error: {type(exc).__name__}: {exc}"
            inst.unhealthy = reason
            log.warning("%s: %s: stopping it", iid, reason)
            assert self._nursery is not None
            self._nursery.start_soon(self.stop, iid)

    async def _check_until_given_up(self, inst: _Instance, spec: InstanceSpec,
                                    target: hc.Target) -> str:
        """Run the checks until the machine gives up; returns why."""
        iid = inst.status.iid
        state = hc.begin(trio.current_time())
        while True:
            await trio.sleep_until(state.next_check)
            error = await hc.probe(spec.health, target)
            state = hc.observe(spec.health, state, error, trio.current_time())
            if inst.status.state == "running" and inst.status.health != state.state:
                log.info("%s is %s%s", iid, state.state,
                         f" ({state.last_error})" if state.state != "healthy" else "")
                self._set(inst, replace(inst.status, health=state.state))
            if state.give_up:
                return state.reason

    # ------------------------------------------------------------ exit

    async def _watch(self, inst: _Instance) -> None:
        """Wait for the run to end, sweep the group and the cgroup, reap, clean
        up, record. Shielded: at shutdown, stop() relies on this to report the
        ends."""
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
                if inst.health_scope is not None:
                    inst.health_scope.cancel()
                oom = inst.cgroup is not None and inst.cgroup.oom_killed()
                memory = None if inst.cgroup is None else inst.cgroup.memory_mb
                await self._after_run(inst)
                state, message = self._outcome(inst, rc, memory if oom else None)
                self._end(inst, state, rc, message)
                log.log(logging.INFO if state == "exited" else logging.WARNING,
                        "%s %s: %s", inst.status.iid, state, message)
            if inst.log is not None:  # still shielded: the footer is written at shutdown too
                await trio.to_thread.run_sync(append_line, inst.log,
                                              f"{inst.status.iid} {state}: {message}")

    async def _after_run(self, inst: _Instance) -> None:
        """Whatever the run left: the cgroup (emptied, removed), the ports, the
        launcher's cleanup command. Bounded; failures are logged, not raised."""
        iid = inst.status.iid
        self.ports.release(iid)
        if inst.cgroup is not None:
            with trio.move_on_after(_KILL_TIMEOUT):
                while not inst.cgroup.kill_once():
                    await trio.sleep(0.01)
            removed = False
            with trio.move_on_after(_KILL_TIMEOUT):
                while not (removed := inst.cgroup.remove()):
                    await trio.sleep(0.01)
            if not removed:
                log.warning("%s: could not remove its cgroup %s (still busy)", iid,
                            ", ".join(str(d) for d in inst.cgroup.dirs.values()))
        if inst.launch is not None and inst.launch.cleanup:
            await _run_cleanup(iid, inst.launch.cleanup)

    def _outcome(self, inst: _Instance, rc: int | None, oom_mb: int | None
                 ) -> tuple[State, str]:
        if oom_mb is not None:
            return "failed", f"killed by its memory limit ({oom_mb} MiB)"
        if rc is None:
            return "failed", "lost track of the process (driver error)"
        if inst.unhealthy is not None:
            return "failed", inst.unhealthy
        if inst.stop_requested:
            if inst.killed:
                return "failed", (f"did not stop within {inst.stop_timeout:g} s of SIGTERM: "
                                  f"killed ({describe_exit(rc)})")
            return "exited", f"stopped ({describe_exit(rc)})"
        return ("exited" if rc == 0 else "failed"), describe_exit(rc)

    def _end(self, inst: _Instance, state: State, rc: int | None, message: str) -> None:
        self._set(inst, transition(inst.status, state, self._clock(), exit_code=rc, pid=None,
                                   message=message, health="none", endpoints=()))
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
        """SIGTERM the instance's group and cgroup, wait ``timeout`` seconds
        (default :attr:`stop_timeout`) for it to end, then SIGKILL them and wait
        for the end. Returns the final status; None if ``iid`` is unknown.
        Concurrent calls share one stop sequence."""
        inst = self._instances.get(iid)
        if inst is None:
            return None
        await inst.settled.wait()  # a start in progress finishes first
        if inst.status.state not in ACTIVE:
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
        """Signal the instance's whole process group (only before the shim is
        reaped: until then its pid names the group and cannot be reused) and
        every process in its cgroup (those that left the group)."""
        group = None
        if inst.process is not None and not inst.reaped:
            group = inst.process.pid
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, sig)
        if inst.cgroup is not None:
            if sig == signal.SIGKILL:
                inst.cgroup.kill_once()
            else:
                inst.cgroup.signal_all(sig, except_group=group)

    # ------------------------------------------------------------ status

    def status(self) -> dict[str, InstanceStatus]:
        """A snapshot: instance id -> status, ended instances included."""
        return {iid: inst.status for iid, inst in self._instances.items()}

    def forget(self, iid: str) -> None:
        """Drop a resting instance's record, its remembered ports and its private
        folder. Raises DriverError if it is active."""
        inst = self._instances.get(iid)
        if inst is None:
            return
        if inst.status.state in ACTIVE:
            raise DriverError(f"cannot forget {iid}: it is {inst.status.state}")
        del self._instances[iid]
        self.ports.forget(iid)
        if inst.state_dir is not None:
            shutil.rmtree(inst.state_dir, ignore_errors=True)
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


_KILL_TIMEOUT = 5.0
"""Seconds spent emptying and removing a run's cgroup (see cgroups.KILL_TIMEOUT)."""


@contextlib.asynccontextmanager
async def open_process_driver(*, stop_timeout: float = STOP_TIMEOUT,
                              clock: Callable[[], float] = trio.current_time,
                              launchers: Mapping[str, Launcher] | None = None,
                              peer: str = "local", cgroups: bool = True,
                              rotate_bytes: int = ROTATE_BYTES, rotate_keep: int = ROTATE_KEEP,
                              ) -> AsyncIterator[ProcessDriver]:
    """``async with open_process_driver() as driver:`` runs a
    :class:`ProcessDriver` for the block; leaving the block (or being
    cancelled) stops every instance gracefully."""
    driver = ProcessDriver(stop_timeout=stop_timeout, clock=clock, launchers=launchers,
                           peer=peer, cgroups=cgroups, rotate_bytes=rotate_bytes,
                           rotate_keep=rotate_keep)
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run)
        try:
            yield driver
        finally:
            nursery.cancel_scope.cancel()


def describe_exit(rc: int) -> str:
    """``"exited with code 3"``, ``"killed by SIGSEGV"`` (rc is subprocess-style)."""
    if rc >= 0:
        hint = {127: " (the command could not be executed; see the log)",
                125: " (the supervisor could not join the instance's cgroup; see the log)",
                }.get(rc, "")
        return f"exited with code {rc}{hint}"
    try:
        name = signal.Signals(-rc).name
    except ValueError:
        name = f"signal {-rc}"
    return f"killed by {name}"


async def _run_cleanup(iid: str, argv: tuple[str, ...]) -> None:
    """Run a launcher's cleanup command: bounded, best effort, logged."""
    try:
        with trio.move_on_after(CLEANUP_TIMEOUT) as scope:
            result = await trio.run_process(list(argv), stdin=b"", capture_stdout=True,
                                            capture_stderr=True, check=False)
    except OSError as exc:
        log.warning("%s: cleanup %s failed: %s", iid, shlex.join(argv), _os_error(exc))
        return
    if scope.cancelled_caught:
        log.warning("%s: cleanup %s took over %g s: killed", iid, shlex.join(argv),
                    CLEANUP_TIMEOUT)
    elif result.returncode != 0:
        log.warning("%s: cleanup %s: %s: %s", iid, shlex.join(argv),
                    describe_exit(result.returncode),
                    result.stderr.decode(errors="replace").strip()[-300:])
    else:
        log.debug("%s: cleanup %s done", iid, shlex.join(argv))


def _previous_exit(old: _Instance | None) -> int | None:
    """How the instance's previous run ended (its own, or the one before)."""
    if old is None:
        return None
    return old.status.exit_code if old.status.exit_code is not None else old.status.last_exit


def _service(iid: str) -> str:
    try:
        return split_instance_id(iid)[0]
    except ValueError as exc:
        raise DriverError(str(exc)) from None


def _make_dirs(*dirs: Path) -> None:
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)


def _check_program(launch: Launch) -> None:
    """Raise FileNotFoundError / PermissionError now, with a clear message, for
    a program that cannot be executed (the shim would only exit 127)."""
    program = launch.argv[0]
    if "/" in program:
        path = os.path.join(launch.cwd or os.getcwd(), program)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such program: {path}")
        if not os.access(path, os.X_OK):
            raise PermissionError(f"not executable: {path}")
    elif shutil.which(program, path=launch.env.get("PATH", os.defpath)) is None:
        raise FileNotFoundError(f"command not found on PATH: {program!r}")


def _os_error(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror is not None:
        where = f": {exc.filename}" if exc.filename is not None else ""
        return f"{exc.strerror}{where}"
    return str(exc)


def _pidfd_open(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # Linux < 5.3: fall back to Process.wait()
        return None


if TYPE_CHECKING:
    def _implements_the_interface(driver: ProcessDriver) -> InstanceDriver:
        return driver  # mypy checks ProcessDriver against InstanceDriver here
