"""Which services a peer may call unknown (404) and when it must say it is
catching up (503): `nanomesh.daemon.api_naming.service_names` / `catching_up`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nanomesh.daemon.api_naming import catching_up, service_names
from nanomesh.gossip.members import Member
from nanomesh.wire import MemberState


@dataclass
class _State:
    services: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Node:
    """The reads of a Raft voter or a learner that these rules use."""

    running: bool = True
    leader: str | None = "10.0.0.1:7948"
    state: _State = field(default_factory=_State)


def gossiping(service: str) -> Member:
    m = Member("b", ("10.0.0.2", 7946), 1, MemberState.ALIVE, 0.0, 1)
    m.profile = {"instances": {f"{service}/0": {"state": "stopping"}}}
    return m


def test_a_caught_up_peer_knows_only_the_committed_services() -> None:
    node = _Node(state=_State({"echo": {}}))
    assert not catching_up(node)
    # a stopping instance still gossiped does not bring an undeployed name back
    assert set(service_names(node, [gossiping("old")])) == {"echo"}


def test_a_peer_that_knows_no_leader_yet_also_trusts_gossip() -> None:
    """A restarted voter replaying its journal, a learner before its first
    pull: its own state may lack a service the mesh runs."""
    for node in (_Node(leader=None), _Node(running=False), None):
        assert catching_up(node)
    node = _Node(leader=None, state=_State({"echo": {}}))
    assert set(service_names(node, [gossiping("counter")])) == {"echo", "counter"}
    assert set(service_names(None, [gossiping("counter")])) == {"counter"}
