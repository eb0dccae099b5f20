"""The reconcile loop: the trio shell that keeps this peer's instances in line.

The daemon hands it the committed plan's assignments and the desired service
specs whenever either changes (:meth:`Reconciler.set_desired`; committed
state only, never "I think I am leader"). The loop, in order, every round:

1. read the driver's statuses and ``clock()``;
2. compute the effects with :func:`nanomesh.reconcile.reconcile`;
3. start one task per effect, skipping instances that already have one in
   flight (so two effects on one instance never race, and a slow stop does
   not hold up the other instances);
4. forget resting (ended or idle) instances that are no longer wanted here (their story now
   belongs to the peer that runs them), so the status table stays bounded;
5. sleep until the desired state changes, a status changes, an effect
   finishes, or the earliest back-off expires (:func:`next_retry_at`).

Instance statuses for gossip come straight from ``driver.status()``; use
``driver.wait_changed()`` to learn when to republish.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import trio

from nanomesh.reconcile import (
    RESTING,
    BackoffPolicy,
    Effect,
    next_retry_at,
    reconcile,
    wanted_here,
)
from nanomesh.runtime.driver import DriverError, Fetch, InstanceDriver, StartContext, execute

log = logging.getLogger("nanomesh.runtime")


class Reconciler:
    """Runs :func:`~nanomesh.reconcile.reconcile` against ``driver`` for peer ``me``.

    ``log_dir``, ``host_ip``, ``peer_api`` and ``state_root`` are handed to every
    start (:class:`~nanomesh.runtime.driver.StartContext`); ``fetch`` gets a
    service's bundle before its start (:data:`~nanomesh.runtime.driver.Fetch`;
    None: bundles are not fetched, runs start in their ``run.cwd``).
    """

    def __init__(self, me: str, driver: InstanceDriver, log_dir: Path, *,
                 fetch: Fetch | None = None, host_ip: str = "127.0.0.1", peer_api: str = "",
                 state_root: Path | None = None,
                 backoff: BackoffPolicy | None = None, stop_timeout: float | None = None,
                 clock: Callable[[], float] = trio.current_time) -> None:
        self.me = me
        self.driver = driver
        self.log_dir = Path(log_dir)
        self.fetch = fetch
        self.context = StartContext(log_dir=self.log_dir, host_ip=host_ip, peer_api=peer_api,
                                    state_root=state_root)
        self.backoff = BackoffPolicy() if backoff is None else backoff
        self.stop_timeout = stop_timeout
        self._clock = clock
        self._assignments: dict[str, str] = {}
        self._services: dict[str, Mapping[str, Any]] = {}
        self._in_flight: set[str] = set()
        self._wake = trio.Event()
        self.rounds = 0
        """Reconcile rounds run so far (for tests and statistics)."""

    def set_desired(self, assignments: Mapping[str, str],
                    services: Mapping[str, Mapping[str, Any]]) -> None:
        """The committed plan's assignments (instance id -> peer) and the desired
        services (name -> spec dict) changed. Non-blocking; takes copies."""
        self._assignments = dict(assignments)
        self._services = dict(services)
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Reconcile until cancelled. Stopping the instances at shutdown is the
        driver's job (its own ``run`` task), not this loop's."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._forward_driver_changes)
            task_status.started()
            while True:
                self._wake = trio.Event()
                deadline = self._round(nursery)
                with trio.move_on_at(math.inf if deadline is None else deadline):
                    await self._wake.wait()

    def _round(self, nursery: trio.Nursery) -> float | None:
        self.rounds += 1
        statuses = self.driver.status()
        effects = reconcile(self.me, self._assignments, self._services, statuses,
                            self._clock(), self.backoff)
        for effect in effects:
            if effect.iid not in self._in_flight:
                self._in_flight.add(effect.iid)
                nursery.start_soon(self._carry_out, effect)
        wanted = wanted_here(self.me, self._assignments, self._services)
        for iid, status in statuses.items():
            if status.state in RESTING and iid not in wanted and iid not in self._in_flight:
                self.driver.forget(iid)
        return next_retry_at(self.me, self._assignments, self._services, self.driver.status(),
                             self.backoff)

    async def _carry_out(self, effect: Effect) -> None:
        try:
            await execute(self.driver, effect, self.context, fetch=self.fetch,
                          stop_timeout=self.stop_timeout)
        except DriverError as exc:  # e.g. the driver closed under us at shutdown
            log.warning("could not carry out %s: %s", effect, exc)
        finally:
            self._in_flight.discard(effect.iid)
            self._wake.set()

    async def _forward_driver_changes(self) -> None:
        seen = self.driver.version
        while True:
            seen = await self.driver.wait_changed(seen)
            self._wake.set()
