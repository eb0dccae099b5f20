"""Placement: which nanoservice instance runs on which peer.

Pure and deterministic: desired services (:class:`ServiceSpec`) and a
snapshot of the peers (:class:`PeerView`, built from gossiped profiles with
:func:`peer_view_from_profile`) go in, together with the previous plan and an
injected ``random.Random``; a :class:`Plan` comes out. No clock, no I/O, no
global random. The Raft leader runs :func:`place` and replicates the plan;
peers act on committed plans only.

Pipeline, after nomad's ``scheduler/``:

* :mod:`~nanomesh.placement.feasible`: one small filter per requirement,
  each returning a human-readable reason on failure; the reasons of every
  peer are reported for each service that could not be placed
  (``Plan.unplaceable``), and the next :func:`place` call places it as soon
  as a suitable peer appears.
* :mod:`~nanomesh.placement.rank`: one score per peer from planned
  utilisation, live CPU load and power (mains, battery charge).
* :mod:`~nanomesh.placement.balanced` (the default): keep what still fits,
  place the rest on the best peers, rebalance onto joining peers within a
  move budget. :mod:`~nanomesh.placement.firstfit`: the research's
  Algorithm 1, unchanged.

Capacity is the profile's ``cpu.cores``, ``memory.available_mb`` and
``storage.free_mb`` (see :mod:`~nanomesh.placement.peers` for why and for the
caveat about live figures); a plan never reserves more than that on a peer.

Instance identity is ``"<service>/<replica>"`` (:mod:`nanomesh.ids`); every data type is a frozen
dataclass with ``to_dict`` / ``from_dict`` that round-trip exactly through
JSON and msgpack.
"""

from nanomesh.ids import instance_id, split_instance_id
from nanomesh.placement.config import PlacementConfig
from nanomesh.placement.feasible import FILTERS, Usage, first_failure, why_not
from nanomesh.placement.peers import PeerView, peer_view_from_profile
from nanomesh.placement.plan import Plan, PlanStats
from nanomesh.placement.planner import place, usage_by_peer
from nanomesh.placement.rank import score
from nanomesh.placement.requirements import (
    Constraints,
    Requirements,
    ServiceSpec,
    SpecError,
    constraints_from_dict,
    requirements_from_dict,
    service_spec_from_dict,
    services_from_list,
)

__all__ = [
    "FILTERS",
    "Constraints",
    "PeerView",
    "PlacementConfig",
    "Plan",
    "PlanStats",
    "Requirements",
    "ServiceSpec",
    "SpecError",
    "Usage",
    "constraints_from_dict",
    "first_failure",
    "instance_id",
    "peer_view_from_profile",
    "place",
    "requirements_from_dict",
    "score",
    "service_spec_from_dict",
    "services_from_list",
    "split_instance_id",
    "usage_by_peer",
    "why_not",
]
