"""The interface between the daemon and a runtime driver.

:class:`InstanceDriver` is what the daemon relies on; :class:`ProcessDriver`
(``nanomesh.runtime.process``) implements it with supervised host processes,
and issue 4's ContainerDriver will implement the same interface with runc /
podman, so the reconcile loop does not care which one runs an instance.

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
3. **status.** ``status()`` is a snapshot of every instance it knows, ended
   ones included, as :class:`~nanomesh.reconcile.InstanceStatus` values
   stamped with the driver's clock (the daemon's ``trio.current_time()``);
   ``wait_changed(seen)`` wakes the daemon when it changes; ``forget(iid)``
   drops an ended instance's record.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import trio

from nanomesh.errors import NanomeshError
from nanomesh.reconcile import InstanceStatus, StartInstance, StopInstance
from nanomesh.runtime.spec import RunSpec, RunSpecError, run_spec_from

log = logging.getLogger("nanomesh.runtime")


class DriverError(NanomeshError):
    """A driver was used wrongly: starting an active instance, forgetting a live
    one, using a driver that is not running or already closed."""


class InstanceDriver(Protocol):
    """What the daemon needs from a runtime (see the module docstring)."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Serve until cancelled, then stop every instance."""

    async def start(self, iid: str, run: RunSpec, log_dir: Path, *, spec_digest: str = "",
                    restarts: int = 0) -> InstanceStatus:
        """Start one run of ``iid``; output goes under ``log_dir``. Returns the
        status it reached: ``running``, or ``failed`` with a message."""

    async def stop(self, iid: str, timeout: float | None = None) -> InstanceStatus | None:
        """Stop ``iid`` and wait until it has ended; None if unknown."""

    def record_failure(self, iid: str, message: str, *, spec_digest: str = "",
                       restarts: int = 0) -> InstanceStatus:
        """Record a run of ``iid`` that failed before anything was started (an
        invalid spec), so it is reported and backed off like any failure."""

    def status(self) -> dict[str, InstanceStatus]:
        """A snapshot: instance id -> status."""

    def forget(self, iid: str) -> None:
        """Drop the record of an ended instance."""

    @property
    def version(self) -> int:
        """Bumped on every status change."""

    async def wait_changed(self, seen: int) -> int:
        """Wait until :attr:`version` exceeds ``seen``; return it."""


async def execute(driver: InstanceDriver, effect: StartInstance | StopInstance, log_dir: Path,
                  *, stop_timeout: float | None = None) -> InstanceStatus | None:
    """Carry out one reconcile effect. An invalid ``run`` section is recorded
    as a failed run (the status carries the validator's message), not raised:
    reconcile then retries it with back-off, and a fixed spec starts at once."""
    match effect:
        case StartInstance():
            try:
                run = run_spec_from(effect.spec)
            except RunSpecError as exc:
                log.warning("cannot start %s: %s", effect.iid, exc)
                return driver.record_failure(effect.iid, f"invalid spec: {exc}",
                                             spec_digest=effect.spec_digest,
                                             restarts=effect.restarts)
            return await driver.start(effect.iid, run, log_dir, spec_digest=effect.spec_digest,
                                      restarts=effect.restarts)
        case StopInstance():
            log.info("stopping %s (%s)", effect.iid, effect.reason)
            return await driver.stop(effect.iid, stop_timeout)
