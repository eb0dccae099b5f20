"""The interface between the daemon and the runtime driver, and :func:`execute`.

:class:`InstanceDriver` is what the daemon relies on;
:class:`~nanomesh.runtime.process.ProcessDriver` implements it. Processes and
containers share it: the driver dispatches each instance by its ``kind`` to a
:class:`~nanomesh.runtime.launch.Launcher` that says what to execute, and
owns the lifecycle (supervisor shim, cgroup, ports, logs, health checks,
graceful stop) itself.

A driver's duties, in the order the daemon relies on them:

1. **Lifetime.** It runs as a task in the daemon's nursery (``await
   nursery.start(driver.run)``); when that task is cancelled, it stops every
   instance gracefully before returning. Nothing it started outlives it, not
   even when the daemon is SIGKILLed (each driver documents how).
2. **start / stop.** ``start`` returns once the instance is ``running`` or has
   ``failed`` to start (an expected condition, reported in the status, not
   raised); ``stop`` asks politely, waits ``timeout`` seconds, then forces.
   Both are idempotent in effect: stopping an ended or unknown instance is a
   no-op; starting an active one is a caller bug (:class:`DriverError`).
   ``record`` notes a state without a process: ``fetching``, ``idle``, or a
   run that ended (``exited``, ``failed``) before it could start.
3. **status.** ``status()`` is a snapshot of every instance it knows, ended
   ones included, as :class:`~nanomesh.runtime.reconcile_core.InstanceStatus` values
   stamped with the driver's clock (the daemon's ``trio.current_time()``);
   ``wait_changed(seen)`` wakes the daemon when it changes; ``forget(iid)``
   drops a resting instance's record.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import trio

from nanomesh.errors import NanomeshError
from nanomesh.runtime.instance_spec import InstanceSpec, RunSpecError, instance_spec_from
from nanomesh.runtime.lifecycle import State
from nanomesh.runtime.reconcile_core import (
    IdleInstance,
    InstanceStatus,
    StartInstance,
    StopInstance,
)

log = logging.getLogger("nanomesh.runtime")

Fetch = Callable[[str], Awaitable[Path]]
"""``await fetch(sha256)`` -> the folder of the service's extracted bundle
(downloaded from a peer that has it, verified, unpacked; at once when it is
already here). Raises any exception if it cannot: the run is ``failed`` with
``"cannot fetch bundle: <exception>"`` and retried with back-off."""


class DriverError(NanomeshError):
    """A driver was used wrongly: starting an active instance, forgetting a live
    one, using a driver that is not running or already closed."""


@dataclass(frozen=True, slots=True)
class StartContext:
    """Where and how one run starts (besides its spec)."""

    log_dir: Path
    """Logs go to ``log_dir/<service>.<index>.log`` (:mod:`.logs`)."""
    workdir: Path | None = None
    """The service's extracted bundle (the run's default folder); None without one."""
    host_ip: str = "127.0.0.1"
    """The peer's IP: endpoints are served (and health-checked) there."""
    peer_api: str = ""
    """``"ip:port"`` of the local peer's HTTP API (``NANOMESH_PEER_API``)."""
    state_root: Path | None = None
    """Per-instance private folders for launchers go under it (default:
    ``log_dir/.state``)."""
    spec_digest: str = ""
    restarts: int = 0
    credentials: Callable[[str, str], Mapping[str, str]] | None = None
    """``(instance id, visibility) -> variables`` the daemon adds to the run's
    environment: its service keys (`nanomesh.security.servicekeys.Credentials.instance_env`);
    None in a mesh without a cluster key (only ``NANOMESH_VISIBILITY`` is set)."""


class InstanceDriver(Protocol):
    """What the daemon needs from a runtime (see the module docstring)."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Serve until cancelled, then stop every instance."""

    async def start(self, iid: str, spec: InstanceSpec, ctx: StartContext) -> InstanceStatus:
        """Start one run of ``iid``. Returns the status it reached: ``running``,
        or ``failed`` with a message."""

    async def stop(self, iid: str, timeout: float | None = None) -> InstanceStatus | None:
        """Stop ``iid`` and wait until it has ended; None if unknown."""

    def record(self, iid: str, state: State, message: str = "", *, spec_digest: str = "",
               restarts: int = 0) -> InstanceStatus:
        """Record ``iid`` in a state without a process: ``fetching``, ``idle``,
        ``exited`` (a run that was no longer wanted before it started) or
        ``failed`` (a run that failed before anything started, e.g. an invalid
        spec), so it is reported and backed off like any other run."""

    def status(self) -> dict[str, InstanceStatus]:
        """A snapshot: instance id -> status."""

    def forget(self, iid: str) -> None:
        """Drop the record of a resting instance."""

    @property
    def version(self) -> int:
        """Bumped on every status change."""

    async def wait_changed(self, seen: int) -> int:
        """Wait until :attr:`version` exceeds ``seen``; return it."""


StillWanted = Callable[[str], bool]
"""``still_wanted(iid)``: whether ``iid`` is still wanted on this peer, by the
desired state as it is *now* (the Reconciler's); asked after a bundle fetch,
which can take long enough for the service to be undeployed meanwhile."""


async def execute(driver: InstanceDriver, effect: StartInstance | StopInstance | IdleInstance,
                  ctx: StartContext, *, fetch: Fetch | None = None,
                  stop_timeout: float | None = None,
                  still_wanted: StillWanted | None = None) -> InstanceStatus | None:
    """Carry out one reconcile effect.

    ``StartInstance``: validate the spec (an invalid one is a ``failed`` record
    naming the field, not an exception: reconcile retries it with back-off, and
    a fixed spec starts at once); fetch its bundle if it has one (recorded
    ``fetching`` meanwhile; a failure is a ``failed`` record); if
    ``still_wanted`` says the instance is no longer wanted once the bundle is
    here, record it ``exited`` (``"no longer wanted"``) instead; else start it.
    ``IdleInstance``: the same without the start, ending ``idle``.
    ``StopInstance``: stop it. ``ctx`` gives the log folder, the peer's IP and
    API address; its ``spec_digest``, ``restarts`` and ``workdir`` are set here
    from the effect and the fetched bundle."""
    match effect:
        case StopInstance():
            log.info("stopping %s (%s)", effect.iid, effect.reason)
            return await driver.stop(effect.iid, stop_timeout)
        case StartInstance():
            restarts = effect.restarts
        case IdleInstance():
            restarts = 0
    digest = effect.spec_digest
    try:
        spec = instance_spec_from(effect.spec)
    except RunSpecError as exc:
        log.warning("cannot start %s: %s", effect.iid, exc)
        return driver.record(effect.iid, "failed", f"invalid spec: {exc}", spec_digest=digest,
                             restarts=restarts)
    workdir = ctx.workdir
    if spec.bundle is not None and fetch is not None:
        driver.record(effect.iid, "fetching", f"fetching bundle {spec.bundle[:12]}",
                      spec_digest=digest, restarts=restarts)
        try:
            workdir = await fetch(spec.bundle)
        except Exception as exc:  # any failure of the hook is this run's failure
            log.warning("cannot fetch the bundle of %s: %s", effect.iid, exc)
            return driver.record(effect.iid, "failed", f"cannot fetch bundle: {exc}",
                                 spec_digest=digest, restarts=restarts)
        if still_wanted is not None and not still_wanted(effect.iid):
            log.info("not starting %s: no longer wanted here once its bundle arrived",
                     effect.iid)
            return driver.record(effect.iid, "exited", "no longer wanted", spec_digest=digest,
                                 restarts=restarts)
    if isinstance(effect, IdleInstance):
        return driver.record(effect.iid, "idle", "idle: prepared, not started",
                             spec_digest=digest)
    return await driver.start(effect.iid, spec, replace(ctx, workdir=workdir, spec_digest=digest,
                                                        restarts=restarts))
