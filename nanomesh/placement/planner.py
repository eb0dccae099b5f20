"""The entry point: desired services + peer snapshot (+ previous plan) -> plan."""

from __future__ import annotations

import random
from collections.abc import Sequence

from nanomesh.ids import service_of
from nanomesh.placement.balanced import plan_balanced
from nanomesh.placement.config import PlacementConfig
from nanomesh.placement.feasible import Usage
from nanomesh.placement.firstfit import plan_first_fit
from nanomesh.placement.peers import PeerView
from nanomesh.placement.plan import Plan
from nanomesh.placement.requirements import ServiceSpec

DEFAULT_CONFIG = PlacementConfig()


def place(specs: Sequence[ServiceSpec], peers: Sequence[PeerView],
          previous: Plan | None = None, *, config: PlacementConfig = DEFAULT_CONFIG,
          rng: random.Random | None = None) -> Plan:
    """Decide which instance of ``specs`` runs on which of ``peers``.

    A pure function: the same specs, peers, previous plan, config and RNG
    state give the same plan. ``rng`` only orders equally good peers (it is
    advanced, never read for anything else); ``None`` means ``Random(0)``.
    ``previous`` is the last committed plan: the balanced strategy keeps what
    still fits there and limits voluntary moves to ``config.max_moves``.

    Raises :class:`~nanomesh.placement.requirements.SpecError` for duplicate service
    names, ValueError for duplicate peer names, and
    :class:`~nanomesh.errors.ConfigError` for an invalid config.
    """
    config.validate()
    if config.strategy == "first-fit":
        return plan_first_fit(specs, peers, previous)
    return plan_balanced(specs, peers, previous, config,
                         rng if rng is not None else random.Random(0))


def usage_by_peer(plan: Plan, specs: Sequence[ServiceSpec]) -> dict[str, Usage]:
    """What ``plan`` reserves on each peer it uses (for dashboards and tests).
    Instances of services missing from ``specs`` are ignored."""
    by_name = {spec.name: spec for spec in specs}
    usage: dict[str, Usage] = {}
    for iid, peer in plan.assignments.items():
        spec = by_name.get(service_of(iid))
        if spec is not None:
            usage.setdefault(peer, Usage()).add(spec)
    return usage
