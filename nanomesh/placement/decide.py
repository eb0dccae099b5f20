"""The leader's decision: the placement plan the mesh should run, from the
committed desired state and the gossip view. Pure: the daemon calls it with a
snapshot and commits the result only if it differs from the committed plan.

Which peers count as alive for placement: gossip's *alive* and *suspect*
peers. A suspect may only have lost packets; moving its instances on
suspicion would churn services for every false alarm, so they move once the
peer is declared dead (about 1.2 s later with the ``lan`` preset).

The leader's other decision, whether a new version of a service is healthy
or must be reverted, is `nanomesh.runtime.deployment_core.judge`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nanomesh.gossip.members import Member
from nanomesh.placement import (
    PlacementConfig,
    Plan,
    ServiceSpec,
    SpecError,
    peer_view_from_profile,
    place,
)
from nanomesh.versions import compatible
from nanomesh.wire import MemberState

PLAN_SEED = 0
"""Seed of the RNG that orders equally good peers. Fixed, so that a new
leader computing the same view gets the same plan (no churn on failover)."""


@dataclass(frozen=True)
class Decision:
    plan: Plan
    invalid: Mapping[str, str]
    """Service documents that could not be read, name -> why (they are not placed)."""


def specs_of(services: Mapping[str, Mapping[str, Any]]) -> tuple[list[ServiceSpec],
                                                                 dict[str, str]]:
    specs, invalid = [], {}
    for name in sorted(services):
        try:
            specs.append(ServiceSpec.from_dict(services[name]["spec"]))
        except (SpecError, KeyError, TypeError) as exc:
            invalid[name] = str(exc)
    return specs, invalid


def decide(services: Mapping[str, Mapping[str, Any]], committed_plan: Mapping[str, Any],
           members: Sequence[Member], config: PlacementConfig) -> Decision:
    specs, invalid = specs_of(services)
    # An incompatible peer (`nanomesh.versions`) counts as gone: it may not
    # understand the plan, so nothing new is placed on it.
    peers = [peer_view_from_profile(m.name, m.profile or {},
                                    alive=m.state in (MemberState.ALIVE, MemberState.SUSPECT)
                                    and compatible(m.profile))
             for m in members]
    previous = _plan_or_none(committed_plan)
    plan = place(specs, peers, previous, config=config, rng=random.Random(PLAN_SEED))
    return Decision(plan, invalid)


def _plan_or_none(doc: Mapping[str, Any]) -> Plan | None:
    if not doc:
        return None
    try:
        return Plan.from_dict(doc)
    except ValueError:
        return None  # a plan from an incompatible version: plan afresh


def worth_committing(committed: Mapping[str, Any], plan: Plan) -> bool:
    """A new epoch only when what runs where changes, or which services wait
    for a peer, or which peers are settled. Reason texts include live numbers
    (free memory) that change all the time: they alone never make an epoch."""
    old = _plan_or_none(committed)
    if old is None:
        return True
    return (dict(old.assignments) != dict(plan.assignments)
            or old.unplaced != plan.unplaced
            or set(old.unplaceable) != set(plan.unplaceable)
            or old.settled_peers != plan.settled_peers)


def unknown_hosts(committed: Mapping[str, Any], members: Sequence[Member]) -> set[str]:
    """Peers the committed plan runs instances on that this view does not know,
    or knows without a profile. A leader that has just been elected (or just
    restarted) may not have heard of them yet; planning then would treat them
    as empty and move their healthy instances away (`VIEW_GRACE`)."""
    known = {m.name for m in members if m.profile is not None}
    hosts = committed.get("assignments", {})
    return {h for h in hosts.values() if isinstance(h, str)} - known if isinstance(
        hosts, dict) else set()


VIEW_GRACE = 5.0
"""Seconds the leader waits for gossip to show a peer the committed plan uses
before planning without it: a joining or restarted peer's profile arrives
within a second or two, while a peer that really vanished is reported dead by
gossip (and then moved) rather than unknown."""
