"""The reconcile loop: the trio shell that keeps this peer's instances in line.

The daemon hands it the committed plan's assignments and the desired service
specs whenever either changes (:meth:`Reconciler.set_desired`; committed
state only, never "I think I am leader"). The loop, in order, every round:

1. read the driver's statuses and ``clock()``;
2. compute the effects with :func:`nanomesh.runtime.reconcile_core.reconcile`;
3. start one task per effect, skipping instances that already have one in
   flight (so two effects on one instance never race, and a slow stop does
   not hold up the other instances);
4. forget resting (ended or idle) instances that are no longer wanted here (their story now
   belongs to the peer that runs them), so the status table stays bounded;
5. sleep until the desired state changes, a status changes, an effect
   finishes, or the earliest back-off expires (:func:`next_retry_at`); while
   an instance moved to another peer keeps running here (make before break,
   :class:`~nanomesh.runtime.reconcile_core.Handover`), also every
   `HANDOVER_POLL` s, to see in gossip whether its new copy is ready.

Instance statuses for gossip come straight from ``driver.status()``; use
``driver.wait_changed()`` to learn when to republish.

**Nothing a spec or an instance does may stop this loop** (it runs in the
daemon's nursery). Each service is reconciled on its own, so an exception
(a bug, or a spec nobody foresaw: a string that cannot be encoded makes
:func:`~nanomesh.runtime.reconcile_core.spec_digest` raise) is confined to that service:
it is logged once with its traceback (``BUG: ...``), and its resting
instances wanted here are recorded ``failed`` with the message (once: the
record is not rewritten while the message stays the same, so a spec that
cannot even be digested is not retried in a tight loop; a changed spec is
tried at once). Its running instances keep running the spec they started
with; those no longer wanted here are still stopped. An effect whose
execution raises is logged the same way, its instance recorded ``failed``
and held back (no effects for it) for the back-off delay. A start waits for
a bundle fetch; if the instance is no longer wanted once the bundle is here,
it is recorded ``exited`` (``"no longer wanted"``) instead of started.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from nanomesh.ids import service_of, split_instance_id
from nanomesh.runtime.driver import DriverError, Fetch, InstanceDriver, StartContext, execute
from nanomesh.runtime.reconcile_core import (
    ACTIVE,
    HANDOVER_TIMEOUT,
    RESTING,
    BackoffPolicy,
    Effect,
    Handover,
    InstanceStatus,
    StartInstance,
    StopInstance,
    handing_over,
    handover_deadline,
    next_retry_at,
    reconcile,
    restart_delay,
    spec_digest,
    wanted_here,
)

log = logging.getLogger("nanomesh.runtime")

BUG_TEXT = 300
"""Characters of an unexpected exception's text kept in an instance's message."""
HANDOVER_POLL = 0.25
"""Seconds between two looks at gossip while a moved instance waits for its
new copy to be ready: the stop follows readiness within about one gossip
round plus this, and no polling happens when no move is pending."""

ReadyElsewhere = Callable[[str, str], bool]
"""``(instance id, peer)`` -> whether that peer gossips the instance running
and passing its checks (`nanomesh.naming.ready_on` over the gossip view)."""


@dataclass
class _Part:
    """One service's share of the desired and the actual state."""

    assignments: dict[str, str] = field(default_factory=dict)
    services: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    statuses: dict[str, InstanceStatus] = field(default_factory=dict)


class Reconciler:
    """Runs :func:`~nanomesh.runtime.reconcile_core.reconcile` against ``driver`` for peer ``me``.

    ``log_dir``, ``host_ip``, ``peer_api``, ``state_root`` and ``credentials`` are handed to every
    start (:class:`~nanomesh.runtime.driver.StartContext`); ``fetch`` gets a
    service's bundle before its start (:data:`~nanomesh.runtime.driver.Fetch`;
    None: bundles are not fetched, runs start in their ``run.cwd``).
    """

    def __init__(self, me: str, driver: InstanceDriver, log_dir: Path, *,
                 fetch: Fetch | None = None, host_ip: str = "127.0.0.1", peer_api: str = "",
                 state_root: Path | None = None,
                 backoff: BackoffPolicy | None = None, stop_timeout: float | None = None,
                 clock: Callable[[], float] = trio.current_time,
                 credentials: Callable[[str, str], Mapping[str, str]] | None = None,
                 ready_elsewhere: ReadyElsewhere | None = None) -> None:
        self.me = me
        self.driver = driver
        self.log_dir = Path(log_dir)
        self.fetch = fetch
        self.context = StartContext(log_dir=self.log_dir, host_ip=host_ip, peer_api=peer_api,
                                    state_root=state_root, credentials=credentials)
        self.backoff = BackoffPolicy() if backoff is None else backoff
        self.stop_timeout = stop_timeout
        self._clock = clock
        self._assignments: dict[str, str] = {}
        self._services: dict[str, Mapping[str, Any]] = {}
        self._in_flight: set[str] = set()
        self._held: dict[str, tuple[float, int]] = {}
        """Instance id -> (no effects before, consecutive failed executions):
        an effect whose execution raised is not retried at once."""
        self._reported: dict[str, str] = {}
        """Service -> the failure last logged for it (each is logged once)."""
        self._ready_elsewhere = ready_elsewhere
        """None: a moved instance stops at once (no gossip to ask)."""
        self._moved_at: dict[str, float] = {}
        """Instance id -> when a move of it away from here was first seen."""
        self._wake = trio.Event()
        self.rounds = 0
        """Reconcile rounds run so far (for tests and statistics)."""
        self.restarts: Counter[str] = Counter()
        """Starts of an instance whose previous run on this peer ended, by
        service (``nanomesh_instance_restarts_total``). Unlike
        `InstanceStatus.restarts` (the back-off exponent) it never resets."""

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
                try:
                    deadline = self._round(nursery)
                except Exception:  # _round contains its own; this is the last line
                    log.exception("BUG: a reconcile round raised; next round in %g s",
                                  self.backoff.maximum)
                    deadline = self._clock() + self.backoff.maximum
                with trio.move_on_at(math.inf if deadline is None else deadline):
                    await self._wake.wait()

    def _round(self, nursery: trio.Nursery) -> float | None:
        self.rounds += 1
        statuses = self.driver.status()
        now = self._clock()
        effects: list[Effect] = []
        deadlines: list[float] = []
        handover = self._handover(statuses, now)
        if handover is not None and handover_deadline(
                self.me, self._assignments, self._services, statuses, now, handover) is not None:
            deadlines.append(now + HANDOVER_POLL)
        for service, part in self._partition(statuses).items():
            try:
                effects += reconcile(self.me, part.assignments, part.services, part.statuses,
                                     now, self.backoff, handover)
                at = next_retry_at(self.me, part.assignments, part.services, part.statuses,
                                   self.backoff)
            except Exception as exc:
                effects += self._broken(service, part, exc, now)
                continue
            self._reported.pop(service, None)
            if at is not None:
                deadlines.append(at)
        for iid, (until, _) in list(self._held.items()):
            if iid not in statuses and iid not in self._assignments:
                del self._held[iid]  # gone from here: nothing left to hold
            elif until > now:
                deadlines.append(until)
        effects.sort(key=lambda e: not isinstance(e, StopInstance))  # stops first, stable
        for effect in effects:
            held = self._held.get(effect.iid)
            if effect.iid not in self._in_flight and (held is None or held[0] <= now):
                self._in_flight.add(effect.iid)
                nursery.start_soon(self._carry_out, effect)
        wanted = wanted_here(self.me, self._assignments, self._services)
        for iid, status in statuses.items():
            if status.state in RESTING and iid not in wanted and iid not in self._in_flight:
                self.driver.forget(iid)
        self._reported = {k: v for k, v in self._reported.items() if k in self._services}
        return min(deadlines, default=None)

    def _handover(self, statuses: Mapping[str, InstanceStatus], now: float
                  ) -> Handover | None:
        """The moves in progress: when each began (logged once) and which new
        copies gossip says are ready. None without a gossip view."""
        if self._ready_elsewhere is None:
            return None
        moving = {iid: self._assignments[iid] for iid, status in statuses.items()
                  if handing_over(iid, status, self.me, self._assignments, self._services)}
        for iid, peer in sorted(moving.items()):
            if iid not in self._moved_at:
                self._moved_at[iid] = now
                log.info("%s moved to %s: it keeps running here until its copy there is "
                         "ready (at most %g s)", iid, peer, HANDOVER_TIMEOUT)
        self._moved_at = {iid: t for iid, t in self._moved_at.items() if iid in moving}
        ready = frozenset(iid for iid, peer in moving.items()
                          if self._ready_elsewhere(iid, peer))
        return Handover(ready_elsewhere=ready, moved_at=dict(self._moved_at))

    def _partition(self, statuses: Mapping[str, InstanceStatus]) -> dict[str, _Part]:
        """The desired and actual state split by service, so each service is
        reconciled on its own (:func:`~nanomesh.runtime.reconcile_core.reconcile` decides
        per instance, so the union of the parts' effects is the whole's)."""
        parts: dict[str, _Part] = {}
        for iid, peer in self._assignments.items():
            try:
                service = split_instance_id(iid)[0]
            except ValueError:
                continue  # reconcile skips malformed ids too
            parts.setdefault(service, _Part()).assignments[iid] = peer
        for iid, status in statuses.items():
            parts.setdefault(status.service, _Part()).statuses[iid] = status
        for service, part in parts.items():
            if service in self._services:
                part.services[service] = self._services[service]
        return parts

    def _broken(self, service: str, part: _Part, exc: Exception, now: float) -> list[Effect]:
        """Reconciling ``service`` raised: log it (once per distinct failure),
        record its resting instances wanted here ``failed``, and return the
        stops of its instances that are no longer wanted here."""
        text = f"{type(exc).__name__}: {exc}"[:BUG_TEXT]
        spec = part.services.get(service)
        try:
            if spec is not None:
                spec_digest(spec)
            message = f"cannot reconcile (BUG): {text}"
        except Exception:
            message = f"invalid spec: cannot digest it: {text}"
        if self._reported.get(service) != message:
            self._reported[service] = message
            log.error("BUG: reconciling service %s raised (%s); its instances here are "
                      "left as they are", service, message, exc_info=exc)
        mine = {iid for iid, peer in part.assignments.items() if peer == self.me}
        if spec is not None:
            for iid in sorted(mine - self._in_flight):
                status = part.statuses.get(iid)
                if status is not None and (status.state in ACTIVE or (
                        status.state == "failed" and status.message == message)):
                    continue
                self._record_failed(iid, message, "", 0)
        others = {iid: p for iid, p in part.assignments.items() if p != self.me}
        rest = {iid: st for iid, st in part.statuses.items() if iid not in mine}
        try:  # without this peer's instances nothing is digested
            return [e for e in reconcile(self.me, others, part.services, rest, now,
                                         self.backoff) if isinstance(e, StopInstance)]
        except Exception:
            log.exception("BUG: cannot even stop the unwanted instances of %s", service)
            return []

    def _still_wanted(self, iid: str) -> bool:
        return iid in wanted_here(self.me, self._assignments, self._services)

    async def _carry_out(self, effect: Effect) -> None:
        if isinstance(effect, StartInstance):
            before = self.driver.status().get(effect.iid)
            if before is not None and before.state in ("exited", "failed"):
                self.restarts[service_of(effect.iid)] += 1
        try:
            await execute(self.driver, effect, self.context, fetch=self.fetch,
                          stop_timeout=self.stop_timeout, still_wanted=self._still_wanted)
        except DriverError as exc:  # e.g. the driver closed under us at shutdown
            log.warning("could not carry out %s: %s", effect, exc)
        except Exception as exc:
            self._execution_failed(effect, exc)
        else:
            self._held.pop(effect.iid, None)
        finally:
            self._in_flight.discard(effect.iid)
            self._wake.set()

    def _execution_failed(self, effect: Effect, exc: Exception) -> None:
        """``effect`` raised: log it, record the instance ``failed`` (unless it
        is active), and hold its effects back for the back-off delay."""
        log.error("BUG: carrying out %s raised", effect, exc_info=exc)
        _, count = self._held.get(effect.iid, (0.0, 0))
        self._held[effect.iid] = (self._clock() + restart_delay(count, self.backoff), count + 1)
        if isinstance(effect, StopInstance):
            return
        status = self.driver.status().get(effect.iid)
        if status is not None and status.state in ACTIVE:
            return
        restarts = effect.restarts if isinstance(effect, StartInstance) else 0
        self._record_failed(effect.iid, f"BUG: {type(exc).__name__}: {exc}"[:BUG_TEXT],
                            effect.spec_digest, restarts)

    def _record_failed(self, iid: str, message: str, digest: str, restarts: int) -> None:
        try:
            self.driver.record(iid, "failed", message, spec_digest=digest, restarts=restarts)
        except Exception:  # the driver refused (closing, active): the log has it
            log.exception("could not record %s failed (%s)", iid, message)

    async def _forward_driver_changes(self) -> None:
        seen = self.driver.version
        while True:
            seen = await self.driver.wait_changed(seen)
            self._wake.set()
