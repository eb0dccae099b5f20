"""The peer's event hub: the ring of recent mesh events (`nanomesh.monitor`)
with its wall clock, and the watchers that feed it.

Where each kind of event comes from (the facts are chosen in
`nanomesh.monitor.derive`; this module only carries them):

- membership: `GossipShell` hands every notification of the SWIM core to
  `EventHub.membership` as it executes it;
- leadership, term, voters, our Raft role: `watch_raft` waits on the role
  manager's profile section (it changes with each of those) and compares;
- placement: the control loop hands every committed state it follows to
  `PlanWatcher.committed`, which compares plans;
- our instances: `watch_instances` waits on the process driver's version
  and compares status snapshots.

Readers (``GET /v1/events``) read the ring; followers wait with
`EventHub.wait_after` and read what is new: a follower keeps no queue of its
own, so a slow one costs nothing here (it is lapped by the ring and dropped,
`nanomesh.daemon.api_events`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import trio

from nanomesh.daemon.views import Members
from nanomesh.gossip.effects import Notification
from nanomesh.monitor.derive import (
    instance_facts,
    membership_fact,
    plan_facts,
    raft_basis,
    raft_facts,
    runs_seen,
)
from nanomesh.monitor.eventlog import DEFAULT_CAPACITY, EventLog, Fact, Since
from nanomesh.monitor.sse import new_life
from nanomesh.runtime.reconcile_core import InstanceStatus

log = logging.getLogger("nanomesh.events")


class EventHub:
    """The ring and the wake-up of its followers."""

    def __init__(self, me: str, capacity: int = DEFAULT_CAPACITY,
                 clock: Callable[[], float] = time.time) -> None:
        self.me = me
        self.log = EventLog(capacity)
        self.life = new_life(os.urandom(8))
        """This daemon start's word in SSE ids (`nanomesh.monitor.sse`)."""
        self._clock = clock
        self._appended = trio.Event()

    def record(self, facts: Iterable[Fact]) -> None:
        """Log `facts` now and wake the followers."""
        added = False
        for fact in facts:
            event = self.log.append(fact, self._clock())
            log.debug("event %d %s %s: %s", event.seq, fact.type, fact.subject, fact.message)
            added = True
        if added:
            self._appended.set()
            self._appended = trio.Event()

    def record_from(self, derive: Callable[..., Iterable[Fact | None]], *args: Any) -> None:
        """Log the facts `derive(*args)` finds. Events are for watching the mesh,
        never a reason to stop it: a bug in deriving them (the caller runs
        in the gossip shell or the control loop) is logged and dropped."""
        try:
            facts = [f for f in derive(*args) if f is not None]
        except Exception:
            log.exception("BUG: deriving mesh events failed; they were dropped")
            return
        self.record(facts)

    def membership(self, note: Notification) -> None:
        """A gossip notification (`GossipShell` calls this for each)."""
        self.record_from(lambda: [membership_fact(note, self.me)])

    def since(self, seq: int) -> Since:
        return self.log.since(seq)

    async def wait_after(self, seq: int) -> None:
        """Return once an event numbered above `seq` is in the ring."""
        while self.log.last_seq <= seq:
            await self._appended.wait()


class RaftSections(Protocol):
    """What `watch_raft` reads of the Raft role manager."""

    async def wait_belief_change(self, last: Mapping[str, Any]) -> dict[str, Any]: ...


async def watch_raft(roles: RaftSections, hub: EventHub, members: Members) -> None:
    """Leadership, term, voter and role events, as this peer's Raft section changes."""
    seen: Mapping[str, Any] = {}
    basis: Mapping[str, Any] = {}
    while True:
        seen = await roles.wait_belief_change(seen)
        names = {str(raft.get("addr")): m.name for m in members()
                 if isinstance(raft := (m.profile or {}).get("raft"), dict)}
        hub.record_from(raft_facts, basis, seen, hub.me, names)
        basis = raft_basis(basis, seen)


class InstanceSource(Protocol):
    """What `watch_instances` reads of the process driver."""

    def status(self) -> dict[str, InstanceStatus]: ...

    async def wait_changed(self, seen: int) -> int: ...


async def watch_instances(driver: InstanceSource, hub: EventHub) -> None:
    """Lifecycle events of this peer's own instances."""
    seen: dict[str, InstanceStatus] = {}
    ran: frozenset[str] = frozenset()
    version = -1
    while True:
        version = await driver.wait_changed(version)
        now = driver.status()
        hub.record_from(instance_facts, seen, now, ran)
        seen, ran = now, runs_seen(ran, now)


class PlanWatcher:
    """Placement events, from each committed state the control loop follows.
    The first state seen is the baseline: a starting peer reports what
    changes, not every instance that already ran."""

    def __init__(self, hub: EventHub, members: Members) -> None:
        self._hub = hub
        self._members = members
        self._plan: Mapping[str, Any] | None = None

    def committed(self, plan: Mapping[str, Any], services: Mapping[str, Any]) -> None:
        if self._plan is not None and plan != self._plan:
            states = {m.name: m.state.label for m in self._members()}
            self._hub.record_from(plan_facts, self._plan, plan, services, states)
        self._plan = plan
