"""A learner's pulls and forwarded writes over the real peer API: a
`FollowerNode` with the daemon's `FollowCalls` (signed peer calls) against
`raft_routes` served by the daemon's HTTP server in front of a real
one-voter Raft node (127.0.41.x, this suite's range)."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import trio

from nanomesh.consensus import ConsensusConfig, ConsensusNode, open_consensus
from nanomesh.consensus.follower import FollowerNode
from nanomesh.daemon.api_auth import Access
from nanomesh.daemon.api_raft import FollowCalls, raft_routes
from nanomesh.daemon.http import serve_http
from nanomesh.daemon.peer_calls import PeerCalls
from nanomesh.gossip.members import Member
from nanomesh.security.auth import InternalCalls
from nanomesh.wire import Keyring, MemberState

_IPS = itertools.cycle(range(1, 250))
TIMEOUT = 15.0


async def _serve_voter(nursery: trio.Nursery, node: ConsensusNode, keyring: Keyring,
                       ip: str) -> str:
    roles: Any = SimpleNamespace(node=node, epoch=0)
    access = Access(keyring, InternalCalls(), lambda: node, lambda iid: None)
    listeners = await trio.open_tcp_listeners(0, host=ip)
    await nursery.start(serve_http, raft_routes(roles, access), listeners)
    return f"{ip}:{listeners[0].socket.getsockname()[1]}"


def _members(node: ConsensusNode, api: str) -> list[Member]:
    """What gossip would show: the voter's profile, as the leader gossips it."""
    addr = node.address
    assert addr is not None
    section = {"role": "voter", "addr": addr, "leader": node.leader, "term": node.term,
               "voters": sorted(node.voters), "cluster_epoch": 0,
               "revision": node.state.revision}
    return [Member("voter", (addr.split(":")[0], 7946), 1, MemberState.ALIVE, 0.0,
                   profile={"raft": section, "peer": {"api": api}})]


async def test_learner_pulls_and_forwards_over_the_peer_api(tmp_path: Path) -> None:
    keyring = Keyring([os.urandom(32)])
    ip = f"127.0.41.{next(_IPS)}"
    config = ConsensusConfig(address=(ip, 7948), data_dir=tmp_path / "voter", keyring=keyring)
    async with open_consensus(config) as voter, trio.open_nursery() as nursery:
        await voter.wait_leader(timeout=TIMEOUT)
        await voter.put_service("cam", {"image": "cam"}, timeout=TIMEOUT)
        api = await _serve_voter(nursery, voter, keyring, ip)
        calls = FollowCalls(lambda: _members(voter, api), PeerCalls(keyring))
        learner = FollowerNode(calls, tmp_path / "learner")
        await nursery.start(learner.run)
        await learner.wait_state(lambda s: "cam" in s.services, timeout=TIMEOUT)
        assert learner.leader == voter.address and not learner.is_leader

        outcome = await learner.put_service("door", {"image": "door"}, timeout=TIMEOUT)
        assert outcome.applied and "door" in voter.state.services, "forwarded and committed"
        assert "door" in learner.state.services, "the learner reads its own write"

        # A learner holding another cluster key is refused (401): it learns nothing.
        stranger = FollowerNode(FollowCalls(lambda: _members(voter, api),
                                            PeerCalls(Keyring([os.urandom(32)]))),
                                tmp_path / "stranger")
        await nursery.start(stranger.run)
        await trio.sleep(1.0)
        assert stranger.state.services == {} and stranger.leader is None
        nursery.cancel_scope.cancel()
