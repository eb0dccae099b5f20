"""The role manager (`nanomesh.consensus.role_manager`) with real pysyncobj nodes in
this process, one loopback address per peer (127.0.40.x, this suite's range),
a fake membership view the test controls, and the peer-API calls
(``ask_promote``/``ask_remove``, a learner's pulls and forwarded writes) as
direct calls between managers.

Timing is shrunk (`FAST`): the policy runs every 0.1 s and a dead voter is
replaced after 1 s; bounds on waits are generous (`SETTLE`).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from nanomesh.consensus import ConsensusError, ConsensusNode, RaftTiming
from nanomesh.consensus.follow_core import (
    FollowConfig,
    Version,
    announced_version,
    gossiped_leader,
    pull_sources,
)
from nanomesh.consensus.follower import FollowerNode, run_command, state_reply
from nanomesh.consensus.role_core import (
    TRANSITIONS,
    RaftRole,
    RoleConfig,
    voter_evidence,
    voters_from_profiles,
)
from nanomesh.consensus.role_manager import (
    ROLE_FILE,
    RaftRoleManager,
    Replica,
    raft_profile_section,
)
from nanomesh.consensus.voters import PeerInfo, VoterPolicy
from nanomesh.errors import ConfigError, IllegalTransition
from nanomesh.wire import Keyring, MemberState

KEYRING = Keyring([bytes(range(32))])

_IPS = itertools.cycle(range(1, 251))
SETTLE = 15.0
FAST = RoleConfig(target_voters=5, policy=VoterPolicy(stabilization=1.0, min_alive=0.0),
                  period=0.1, join_timeout=2.0, orphan_timeout=1.5, bootstrap_grace=0.0,
                  promote_backoff=2.0, call_timeout=5.0)
FOLLOW = FollowConfig(recheck_period=0.2, backoff_min=0.1, backoff_max=0.5)
"""Learners recheck every 0.2 s: this suite has no gossip to announce a commit."""


def next_ip() -> str:
    return f"127.0.40.{next(_IPS)}"


@dataclass
class Peer:
    name: str
    manager: RaftRoleManager
    scope: trio.CancelScope
    state: MemberState = MemberState.ALIVE
    since: float = 0.0
    last_section: dict[str, object] = field(default_factory=dict)

    @property
    def up(self) -> bool:
        return self.state in (MemberState.ALIVE, MemberState.SUSPECT)


class Mesh:
    """Peers in one process; `view` is what gossip would report."""

    def __init__(self, nursery: trio.Nursery, tmp_path: Path, config: RoleConfig) -> None:
        self.nursery = nursery
        self.tmp_path = tmp_path
        self.config = config
        self.peers: dict[str, Peer] = {}

    def view(self) -> list[PeerInfo]:
        out = []
        for p in self.peers.values():
            section = p.manager.profile_section() if p.up else p.last_section
            out.append(PeerInfo(p.name, p.manager.raft_addr, p.state, p.since,
                                mains_powered=True, cores=4, memory_mb=1024,
                                raft_role=str(section.get("role"))))
        return out

    def hint(self) -> frozenset[str]:
        return voters_from_profiles(self._sections())

    def term_hint(self) -> int:
        return voter_evidence(self._sections())[1]

    def _sections(self) -> list[dict[str, Any]]:
        return [raft_profile_section(p.manager) for p in self.peers.values() if p.up]

    async def ask_promote(self, name: str, voters: frozenset[str]) -> bool:
        p = self.peers[name]
        return p.up and await p.manager.become_joining_voter(voters)

    async def ask_remove(self, raft_addr: str) -> bool:
        """What the daemon does: ask the leader (as gossip reports it)."""
        for p in self.peers.values():
            node = p.manager.node
            if p.up and node is not None and node.is_leader and p.manager.raft_addr != raft_addr:
                return await p.manager.handle_remove(raft_addr)
        return False

    async def start(self, name: str, *, founder: bool = False, lead: bool = True,
                    ip: str | None = None) -> RaftRoleManager:
        old = self.peers.get(name)
        manager = RaftRoleManager(
            ip or (old.manager.address_ip if old else next_ip()),
            self.tmp_path / name, KEYRING, RaftTiming.lan(), founder, self.hint,
            config=self.config, view=self.view if lead else None,
            ask_promote=self.ask_promote, ask_remove=self.ask_remove, follow=LocalFollow(self),
            follow_config=FOLLOW, voters_term_hint=self.term_hint)
        scope = trio.CancelScope()

        async def host(task_status: trio.TaskStatus[None]) -> None:
            with scope:
                await manager.run(task_status=task_status)
        self.peers[name] = Peer(name, manager, scope, since=trio.current_time())
        await self.nursery.start(host)
        return manager

    def kill(self, name: str, state: MemberState = MemberState.DEAD) -> None:
        """Stop the peer at once (its node too) and let the view say `state`."""
        p = self.peers[name]
        p.last_section = p.manager.profile_section()
        p.scope.cancel()
        p.state, p.since = state, trio.current_time()

    def leader(self) -> RaftRoleManager | None:
        leaders = [p.manager for p in self.peers.values() if p.up and p.manager.node
                   and p.manager.node.is_leader]
        return leaders[0] if len(leaders) == 1 else None

    def voters(self) -> frozenset[str]:
        return frozenset(p.manager.raft_addr for p in self.peers.values()
                         if p.up and p.manager.role is RaftRole.VOTER)

    async def wait(self, what: str, predicate: Callable[[], object],
                   timeout: float = SETTLE) -> None:
        with trio.move_on_after(timeout):
            while not predicate():
                await trio.sleep(0.05)
            return
        roles = {n: (p.manager.role.value, p.manager.profile_section())
                 for n, p in self.peers.items()}
        pytest.fail(f"not within {timeout} s: {what}; roles {roles}")

    async def wait_settled(self, n: int) -> RaftRoleManager:
        """n voters, every live peer agreeing, one leader whose config is them."""
        def settled() -> bool:
            leader = self.leader()
            return (leader is not None and leader.node is not None
                    and leader.node.voters == self.voters() and len(self.voters()) == n
                    and all(p.manager.role is not RaftRole.JOINING
                            for p in self.peers.values() if p.up))
        await self.wait(f"{n} voters settled", settled)
        leader = self.leader()
        assert leader is not None
        return leader


class LocalFollow:
    """What the daemon's FollowCalls do over HTTP (gossip's announcements,
    pulls, forwarded writes), as direct calls between the mesh's managers."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh

    def _sections(self) -> list[dict[str, object]]:
        return [p.manager.profile_section() for p in self.mesh.peers.values() if p.up]

    def _voter_node(self, raft_addr: str) -> tuple[ConsensusNode, int]:
        for p in self.mesh.peers.values():
            node = p.manager.node
            if p.up and p.manager.raft_addr == raft_addr and isinstance(node, ConsensusNode):
                return node, p.manager.epoch
        raise ConsensusError(f"{raft_addr} is no voter")

    def sources(self) -> list[str]:
        return pull_sources(self._sections())

    def announced(self) -> Version | None:
        return announced_version(self._sections())

    def leader(self) -> tuple[str, int, frozenset[str]] | None:
        return gossiped_leader(self._sections())

    async def pull(self, source: str, have: Version | None) -> object:
        node, epoch = self._voter_node(source)
        await trio.sleep(0)
        return json.loads(json.dumps(state_reply(node.state, node.status, epoch,
                                                 None if have is None else list(have))))

    async def command(self, source: str, request: object) -> object:
        node, epoch = self._voter_node(source)
        return json.loads(json.dumps(await run_command(node, epoch, request)))


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    async with trio.open_nursery() as nursery:
        yield Mesh(nursery, tmp_path, FAST)
        nursery.cancel_scope.cancel()


async def _write(node: Replica, name: str) -> int:
    """A write through `node`, retried while there is no leader; the revision."""
    with trio.fail_after(SETTLE):
        while True:
            try:
                return (await node.put_service(name, {"image": name})).revision
            except ConsensusError:  # no leader yet, leader changed, timeout: retry
                await trio.sleep(0.1)


# --------------------------------------------------------------------------- tests


async def test_founder_alone_bootstraps_and_leads(mesh: Mesh) -> None:
    founder = await mesh.start("a", founder=True)
    with trio.fail_after(SETTLE):
        first = await founder.wait_profile_change({})
        while first["leader"] is None:
            first = await founder.wait_profile_change(first)
    node = await founder.wait_ready(timeout=SETTLE)
    assert founder.role is RaftRole.VOTER and node.is_leader
    assert node.voters == {founder.raft_addr}
    assert await _write(node, "cam") == 1
    section = raft_profile_section(founder)
    assert section == {"role": "voter", "addr": founder.raft_addr, "leader": founder.raft_addr,
                       "term": node.term, "voters": [founder.raft_addr], "cluster_epoch": 0,
                       "revision": 1}, "the leader announces the committed revision"
    stored = json.loads((mesh.tmp_path / "a" / ROLE_FILE).read_text())
    assert stored["role"] == "voter"


async def test_restarted_founder_resumes_from_its_journal(mesh: Mesh) -> None:
    """A founder is only a founder once: on restart it resumes its stored
    role and journal instead of bootstrapping a second cluster."""
    founder = await mesh.start("a", founder=True)
    await _write(await founder.wait_ready(timeout=SETTLE), "cam")
    mesh.kill("a")
    again = await mesh.start("a", founder=True)
    node = await again.wait_ready(timeout=SETTLE)
    assert again.role is RaftRole.VOTER
    assert (await node.wait_state(lambda s: "cam" in s.services, timeout=SETTLE)).revision == 1


async def test_non_founder_waits_for_voters_then_learns(mesh: Mesh) -> None:
    b = await mesh.start("b", lead=False)
    assert raft_profile_section(b)["role"] == "none" and b.node is None
    founder = await mesh.start("a", founder=True)
    await _write(await founder.wait_ready(timeout=SETTLE), "cam")
    node = await b.wait_ready(timeout=SETTLE)
    assert b.role is RaftRole.LEARNER, "2 peers: one voter"
    await node.wait_state(lambda s: "cam" in s.services, timeout=SETTLE)
    assert raft_profile_section(b) == {"role": "learner", "addr": b.raft_addr,
                                       "cluster_epoch": 0}, \
        "a learner gossips no leader, term or voters: an election leaves its profile alone"
    assert b.belief_section()["voters"] == [founder.raft_addr], "it knows them though"
    assert isinstance(node, FollowerNode), "a learner runs no Raft node"
    assert founder.node is not None and founder.node.status.learners == 0, \
        "no Raft link to the learner"
    assert await _write(node, "from-learner") == 2, "a learner forwards writes"
    assert node.state.revision == 2, "and reads its own write at once"


async def test_grows_to_3_then_5_voters_as_peers_join(mesh: Mesh) -> None:
    founder = await mesh.start("a", founder=True)
    await _write(await founder.wait_ready(timeout=SETTLE), "cam")
    for name in "bc":
        await mesh.start(name)
    await mesh.wait_settled(3)
    d = await mesh.start("d")
    await d.wait_ready(timeout=SETTLE)
    await trio.sleep(0.5)
    assert d.role is RaftRole.LEARNER and len(mesh.voters()) == 3, "never stop at 4"
    await mesh.start("e")
    await mesh.wait_settled(5)
    for p in mesh.peers.values():
        node = p.manager.node
        assert node is not None
        await node.wait_state(lambda s: "cam" in s.services, timeout=SETTLE)
    assert mesh.hint() == mesh.voters()


async def test_dead_voter_replaced_by_the_spare(mesh: Mesh) -> None:
    mesh.config = RoleConfig(**{**FAST.__dict__, "target_voters": 3})
    founder = await mesh.start("a", founder=True)
    await _write(await founder.wait_ready(timeout=SETTLE), "before")
    for name in "bcd":
        await mesh.start(name)
    leader = await mesh.wait_settled(3)
    spare = next(p.manager for p in mesh.peers.values() if p.manager.role is RaftRole.LEARNER)
    victim = next(n for n, p in mesh.peers.items()
                  if p.manager.role is RaftRole.VOTER and p.manager is not leader)
    victim_addr = mesh.peers[victim].manager.raft_addr
    mesh.kill(victim)
    t0 = trio.current_time()
    await mesh.wait_settled(3)
    assert trio.current_time() - t0 >= FAST.policy.stabilization, "waited for stabilization"
    new_leader = mesh.leader()
    assert new_leader is not None and new_leader.node is not None
    assert victim_addr not in new_leader.node.voters
    assert spare.role is RaftRole.VOTER and spare.node is not None
    await spare.node.wait_state(lambda s: "before" in s.services, timeout=SETTLE)
    assert await _write(spare.node, "after") == 2


async def test_leader_hands_over_gracefully(mesh: Mesh) -> None:
    mesh.config = RoleConfig(**{**FAST.__dict__, "target_voters": 3})
    founder = await mesh.start("a", founder=True)
    await _write(await founder.wait_ready(timeout=SETTLE), "before")
    for name in "bcd":
        await mesh.start(name)
    leader = await mesh.wait_settled(3)
    name = next(n for n, p in mesh.peers.items() if p.manager is leader)
    node = leader.node
    assert node is not None
    term = node.term
    with trio.fail_after(SETTLE):
        await leader.hand_over()
    assert leader.role is RaftRole.NONE and leader.node is None
    mesh.kill(name, MemberState.LEFT)  # the daemon then leaves gossip
    new = await mesh.wait_settled(3)
    assert new is not leader and new.node is not None and new.node.term > term
    assert leader.raft_addr not in new.node.voters
    await new.node.wait_state(lambda s: "before" in s.services, timeout=SETTLE)
    assert await _write(new.node, "after") == 2
    stored = json.loads((mesh.tmp_path / name / ROLE_FILE).read_text())
    assert stored["role"] == "learner", "a restart does not resume the old membership"


async def test_wait_leading_returns_on_the_leader_only_and_wakes_a_new_one(
        mesh: Mesh) -> None:
    """`wait_leading` (what the placement loop and the deployment watch sleep
    in on every peer): at once on the leader, never on a learner or a
    follower, and on a follower as soon as leadership passes to it."""
    mesh.config = RoleConfig(**{**FAST.__dict__, "target_voters": 3})
    founder = await mesh.start("a", founder=True)
    await founder.wait_ready(timeout=SETTLE)
    for name in "bcd":
        await mesh.start(name)
    leader = await mesh.wait_settled(3)
    with trio.fail_after(SETTLE):
        assert await leader.wait_leading() is leader.node
    others = [p.manager for p in mesh.peers.values() if p.manager is not leader]
    woke: list[RaftRoleManager] = []

    async def watch(manager: RaftRoleManager) -> None:
        await manager.wait_leading()
        woke.append(manager)

    async with trio.open_nursery() as nursery:
        for manager in others:
            nursery.start_soon(watch, manager)
        await trio.sleep(1.0)
        assert woke == [], "no follower or learner returns while another leads"
        with trio.fail_after(SETTLE):
            await leader.hand_over()
        name = next(n for n, p in mesh.peers.items() if p.manager is leader)
        mesh.kill(name, MemberState.LEFT)
        new = await mesh.wait_settled(3)
        with trio.fail_after(SETTLE):
            while new not in woke:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert woke == [new], "only the new leader woke"


async def test_sole_voter_promotes_a_successor_before_leaving(mesh: Mesh) -> None:
    founder = await mesh.start("a", founder=True)
    await _write(await founder.wait_ready(timeout=SETTLE), "before")
    b = await mesh.start("b")
    await b.wait_ready(timeout=SETTLE)
    assert b.role is RaftRole.LEARNER
    with trio.fail_after(SETTLE):
        await founder.hand_over()
    mesh.kill("a", MemberState.LEFT)
    leader = await mesh.wait_settled(1)
    assert leader is b and b.node is not None
    assert b.node.voters == {b.raft_addr}
    assert await _write(b.node, "after") == 2


async def test_last_voter_leaving_stays_a_voter_and_resumes(mesh: Mesh) -> None:
    """Issue 8, item 8: the only peer stops gracefully with no successor to
    hand over to; it must remember itself as a voter (it used to record
    "learner", and the restarted mesh had no voter at all)."""
    founder = await mesh.start("a", founder=True)
    await _write(await founder.wait_ready(timeout=SETTLE), "cam")
    with trio.fail_after(SETTLE):
        await founder.hand_over()
    mesh.kill("a", MemberState.LEFT)
    assert json.loads((mesh.tmp_path / "a" / ROLE_FILE).read_text())["role"] == "voter"
    again = await mesh.start("a", founder=True)
    node = await again.wait_ready(timeout=SETTLE)
    assert again.role is RaftRole.VOTER and node.is_leader
    await node.wait_state(lambda s: "cam" in s.services, timeout=SETTLE)
    assert await _write(node, "after") == 2


async def test_voters_leaving_one_after_another_then_all_back(mesh: Mesh) -> None:
    """Three voters leave one after another: the first two are removed (the
    remaining set keeps its quorum), the last one remembers it is the voter;
    all restarted, the mesh has its leader and its state again."""
    mesh.config = RoleConfig(**{**FAST.__dict__, "target_voters": 3})
    founder = await mesh.start("a", founder=True)
    await _write(await founder.wait_ready(timeout=SETTLE), "cam")
    for name in "bc":
        await mesh.start(name)
    await mesh.wait_settled(3)
    stored = {}
    for name in "abc":
        with trio.fail_after(SETTLE):
            await mesh.peers[name].manager.hand_over()
        mesh.kill(name, MemberState.LEFT)
        stored[name] = json.loads((mesh.tmp_path / name / ROLE_FILE).read_text())["role"]
    assert stored == {"a": "learner", "b": "learner", "c": "voter"}
    for name in "abc":
        await mesh.start(name, founder=name == "a")
    leader = await mesh.wait_settled(3)
    assert leader.node is not None
    await leader.node.wait_state(lambda s: "cam" in s.services, timeout=SETTLE)
    assert await _write(leader.node, "after") == 2


async def test_voter_without_quorum_keeps_its_membership_on_leave(mesh: Mesh) -> None:
    """Two of three voters crash; the third is stopped gracefully: its
    removal cannot commit, so it must stay a voter, and the three restarted
    re-form the cluster."""
    mesh.config = RoleConfig(**{**FAST.__dict__, "target_voters": 3})
    founder = await mesh.start("a", founder=True)
    await _write(await founder.wait_ready(timeout=SETTLE), "cam")
    for name in "bc":
        await mesh.start(name)
    await mesh.wait_settled(3)
    mesh.kill("a")
    mesh.kill("b")
    with trio.fail_after(SETTLE):
        await mesh.peers["c"].manager.hand_over()
    mesh.kill("c", MemberState.LEFT)
    assert json.loads((mesh.tmp_path / "c" / ROLE_FILE).read_text())["role"] == "voter"
    for name in "abc":
        await mesh.start(name, founder=name == "a")
    leader = await mesh.wait_settled(3)
    assert leader.node is not None
    await leader.node.wait_state(lambda s: "cam" in s.services, timeout=SETTLE)


async def test_joining_node_not_added_returns_to_learner(mesh: Mesh) -> None:
    founder = await mesh.start("a", founder=True, lead=False)  # never adds anyone
    await _write(await founder.wait_ready(timeout=SETTLE), "cam")
    b = await mesh.start("b")
    await b.wait_ready(timeout=SETTLE)
    assert await b.become_joining_voter(mesh.hint())
    assert b.role is RaftRole.JOINING
    assert await b.become_joining_voter(mesh.hint()), "idempotent"
    assert not await b.become_joining_voter({b.raft_addr}), "it would be a voter already"
    await mesh.wait("back to learner", lambda: b.role is RaftRole.LEARNER)
    node = await b.wait_ready(timeout=SETTLE)
    await node.wait_state(lambda s: "cam" in s.services, timeout=SETTLE)
    assert founder.node is not None and founder.node.voters == {founder.raft_addr}


async def test_removed_voter_becomes_learner_then_is_promoted_again(mesh: Mesh) -> None:
    """A voter removed behind its back (pysyncobj never tells it) notices it
    is orphaned, restarts as a learner, and — being the only spare — is
    promoted again with a fresh data directory."""
    founder = await mesh.start("a", founder=True)
    await _write(await founder.wait_ready(timeout=SETTLE), "cam")
    for name in "bc":
        await mesh.start(name)
    leader = await mesh.wait_settled(3)
    victim = next(p.manager for p in mesh.peers.values()
                  if p.manager.role is RaftRole.VOTER and p.manager is not leader)
    roles: list[RaftRole] = []

    async def record() -> None:
        while True:
            if not roles or roles[-1] is not victim.role:
                roles.append(victim.role)
            await trio.sleep(0.01)
    mesh.nursery.start_soon(record)
    assert leader.node is not None
    await leader.handle_remove(victim.raft_addr)
    await mesh.wait("victim re-promoted", lambda: RaftRole.LEARNER in roles
                    and victim.role is RaftRole.VOTER)
    await mesh.wait_settled(3)
    assert roles[:2] == [RaftRole.VOTER, RaftRole.LEARNER]
    assert victim.node is not None
    await victim.node.wait_state(lambda s: "cam" in s.services, timeout=SETTLE)
    gens = sorted(d.name for d in (mesh.tmp_path / next(
        n for n, p in mesh.peers.items() if p.manager is victim)).glob("raft-*"))
    assert len(gens) == 2, f"the new generation and the last old one: {gens}"


# --------------------------------------------------------------------------- pure parts


async def test_transition_table_and_illegal_transition() -> None:
    assert RaftRole.VOTER not in TRANSITIONS[RaftRole.LEARNER], "promotion goes via joining"
    assert all(RaftRole.NONE in TRANSITIONS[r] for r in RaftRole if r is not RaftRole.NONE)
    manager = RaftRoleManager("127.0.40.1", Path("/nonexistent"), KEYRING, RaftTiming(),
                              False, frozenset)
    await manager._set_role(RaftRole.LEARNER)
    with pytest.raises(IllegalTransition):
        await manager._set_role(RaftRole.VOTER)
    assert manager.role is RaftRole.LEARNER, "unchanged"


def test_role_config_rejects_impossible_values() -> None:
    RoleConfig().check()
    with pytest.raises(ConfigError, match="target_voters"):
        RoleConfig(target_voters=0).check()
    with pytest.raises(ConfigError, match="period"):
        RoleConfig(period=0).check()


def test_voters_from_profiles_trusts_the_highest_term_with_a_leader() -> None:
    a, b, c, d = (f"10.0.0.{i}:7948" for i in range(1, 5))
    sections = [
        {"role": "voter", "addr": a, "leader": a, "term": 4, "voters": [a, b, c]},
        {"role": "voter", "addr": b, "leader": a, "term": 4, "voters": [a, b, c]},
        # removed, campaigning: huge term, no leader
        {"role": "voter", "addr": d, "leader": None, "term": 90, "voters": [a, b, c, d]},
        # a stale leader, deposed at term 3
        {"role": "voter", "addr": c, "leader": c, "term": 3, "voters": [a, c, d]},
        "garbage", {"voters": "x"}, {"voters": [1, 2]},
    ]
    assert voters_from_profiles(sections) == {a, b, c}
    assert voters_from_profiles(sections[2:]) == {a, c, d}
    no_leader = [{"role": "voter", "addr": a, "leader": None, "term": 5, "voters": [a, b]},
                 {"role": "voter", "addr": c, "leader": None, "term": 2, "voters": [c]}]
    assert voters_from_profiles(no_leader) == {a, b, c}, "union: errs towards 'still a voter'"
    assert voters_from_profiles([]) == frozenset()
    assert voter_evidence(sections) == ({a, b, c}, 4), "with the term of the report"
    assert voter_evidence(no_leader) == ({a, b, c}, 0), "a union proves nothing: term 0"
