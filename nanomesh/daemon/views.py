"""Small shared types through which the daemon's parts see each other.

The composition root (`nanomesh.daemon.assemble`) builds every part and
hands each one these views instead of the part that owns the data, so no
part holds another part, let alone the root.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass, field

from nanomesh.consensus.role_manager import Replica
from nanomesh.daemon.http import Handler
from nanomesh.gossip.members import Member

Members = Callable[[], list[Member]]
"""The gossip view: every member this peer knows, itself included."""

NodeSource = Callable[[], Replica | None]
"""This peer's current consensus node: a voter's Raft node or a learner's
follower (None while the role manager runs none)."""

Routes = dict[tuple[str, str], Handler]
"""A route group: ``(method, path pattern) -> handler`` (`nanomesh.daemon.http`)."""


GOSSIP_UDP = "gossip_udp"
GOSSIP_TCP = "gossip_tcp"
"""The channels of `Traffic`: gossip datagrams, and gossip streams (joins,
push-pulls, TCP pings), each sealed message counted whole."""


@dataclass
class Traffic:
    """Gossip bytes in and out per channel, and packets dropped by reason
    (counted by `nanomesh.daemon.membership.GossipShell`, shown by ``GET
    /v1/health`` and ``GET /v1/metrics``)."""

    dropped: collections.Counter[str] = field(default_factory=collections.Counter)
    received: collections.Counter[str] = field(default_factory=collections.Counter)
    """Bytes received, by channel (`GOSSIP_UDP`, `GOSSIP_TCP`)."""
    sent: collections.Counter[str] = field(default_factory=collections.Counter)
    """Bytes sent, by channel."""

    @property
    def bytes_in(self) -> int:
        return sum(self.received.values())

    @property
    def bytes_out(self) -> int:
        return sum(self.sent.values())
