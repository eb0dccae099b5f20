"""What a scrape of ``GET /v1/metrics`` reads (`nanomesh.daemon.metrics`),
in a module of its own: the route and the collectors both need it, and the
collectors' module (which imports prometheus_client) must not be imported
by the route's until the first scrape.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nanomesh.consensus.role_effects import RaftRole
from nanomesh.daemon.api_auth import Access
from nanomesh.daemon.http_limits import ServerStats
from nanomesh.daemon.views import NodeSource, Traffic
from nanomesh.durations import Durations
from nanomesh.gossip.machine import Membership
from nanomesh.runtime.reconcile_core import InstanceStatus

if TYPE_CHECKING:  # the gateway's modules load only when it runs (--coap-port)
    from nanomesh.gateway.core import Gateway


@dataclass(frozen=True)
class MetricsContext:
    """Everything a scrape reads (each read when scraped, never copied)."""

    core: Membership
    """The gossip core: `Stats`, the member list, awareness."""
    traffic: Traffic
    consensus: NodeSource
    """This peer's Raft node or follower (term, commit index, leader, state)."""
    raft_role: Callable[[], RaftRole]
    """This peer's place in Raft (`RaftRoleManager.role`)."""
    control_epoch: Callable[[], int]
    placement_durations: Durations
    """The leader's placement runs on this peer (`ControlLoop`)."""
    plans_committed: Callable[[], int]
    instances: Callable[[], Mapping[str, InstanceStatus]]
    """This peer's instances (`ProcessDriver.status`)."""
    restarts: Counter[str]
    """Restarts by service (`Reconciler.restarts`)."""
    gateway: Callable[[], Gateway | None]
    """The CoAP gateway once it runs (None: not yet, or none configured)."""
    api_stats: ServerStats
    access: Access
    gateway_configured: bool = False
    """A CoAP gateway is configured: its series are exported (as 0) before
    it starts on its first datagram (`nanomesh.daemon.on_demand`)."""
