"""The pure Raft role core (`nanomesh.consensus.role_core`), rule by rule.

Each rule of the role protocol (module doc of
`nanomesh.consensus.role_manager`) is a row: a core in a given role, the
node status and gossip view it is fed at given times, and the actions it
must return (log lines left out; `test_log_lines_operators_read` checks
those). Outcomes are fed back by hand, so the sequences of promotion,
hand-over, requests, start and recovery are tables too. No trio, no
sockets, no files, no clock: these run in milliseconds.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from types import ModuleType

import pytest

from nanomesh.consensus import role_core, role_effects
from nanomesh.consensus.role_core import (
    PRUNE_BEFORE_LEAVE,
    TRANSITIONS,
    GossipView,
    RaftRole,
    RoleConfig,
    RoleCore,
    StoredRole,
    check_transition,
)
from nanomesh.consensus.role_effects import (
    Action,
    AskRemove,
    AwaitVoters,
    Log,
    Outcome,
    Promote,
    Promoted,
    PruneGenerations,
    RemovalAsked,
    RemoveVoter,
    Reply,
    RoleChanged,
    Started,
    StartLearner,
    StartVoter,
    StopNode,
    Stopped,
    Store,
    TransferLeadership,
    VoterRemoved,
    VotersAwaited,
)
from nanomesh.consensus.status import RaftStatus, Role
from nanomesh.consensus.voters import PeerInfo, VoterPolicy
from nanomesh.errors import IllegalTransition, NanomeshError
from nanomesh.runtime import lifecycle
from nanomesh.wire import MemberState

NONE, LEARNER, JOINING, VOTER = RaftRole.NONE, RaftRole.LEARNER, RaftRole.JOINING, RaftRole.VOTER
ME, B, C, D, E = (f"10.0.0.{i}:7948" for i in range(1, 6))
CFG = RoleConfig(policy=VoterPolicy(stabilization=10.0, min_alive=0.0), orphan_timeout=10.0,
                 join_timeout=15.0, promote_backoff=30.0, bootstrap_grace=3.0)
GEN = 1
"""The generation every core in a role starts on."""


def st(*, leader: str | None = None, voters: Sequence[str] = (), lead: bool = False,
       quorum: bool = True) -> RaftStatus:
    """A node status: `lead` makes this node the leader it reports."""
    return RaftStatus(ME, Role.LEADER if lead else Role.FOLLOWER, 3, ME if lead else leader,
                      frozenset(voters), 10, 10, quorum, True, 0, True)


def g(*voters: str, epoch: int = 0, peers: Sequence[PeerInfo] | None = None,
      term: int = 0) -> GossipView:
    """What gossip says; `term`: the term of the report behind `voters`."""
    return GossipView(frozenset(voters), epoch, peers, term)


def peer(name: str, addr: str, *, state: MemberState = MemberState.ALIVE, since: float = 0.0,
         role: str = "learner", cores: int = 4) -> PeerInfo:
    return PeerInfo(name, addr, state, since, mains_powered=True, cores=cores, memory_mb=1024,
                    raft_role=role)


def in_role(role: RaftRole, *, now: float = 0.0, epoch: int = 0, founder: bool = False,
            promotes: bool = True, peers: tuple[str, ...] = (B, C)) -> RoleCore:
    """A core that started in `role` at `now` (through its public calls)."""
    core = RoleCore(ME, CFG, founder=founder, promotes=promotes)
    if role is NONE:
        assert core.start(StoredRole(epoch=epoch), g()) == []
        return core
    if role is LEARNER:
        actions = core.start(StoredRole(LEARNER, GEN, (), epoch), g(*peers))
    else:
        actions = core.start(StoredRole(role, GEN, peers, epoch), g())
    [start] = [a for a in actions if isinstance(a, StartLearner | StartVoter)]
    core.feed(Started(start, True), None, g(), now)
    assert core.role is role
    return core


def acts(actions: Sequence[Action]) -> list[Action]:
    """The actions without the log lines."""
    return [a for a in actions if not isinstance(a, Log)]


# --------------------------------------------------------------------------- the periodic step

LEADING = st(lead=True, voters=(ME, B, C))
FOLLOWING = st(leader=B, voters=(ME, B, C))
LOST = st(voters=(ME, B, C))
"""A voter that hears no leader."""
ALONE = st(lead=True, voters=(ME,))
VIEW = [peer("me", ME, role="voter"), peer("b", B, role="voter"), peer("c", C, role="voter")]
SPARES = [*VIEW, peer("d", D), peer("e", E)]
"""Three voters and two learners: the policy grows to five."""


@dataclass(frozen=True)
class StepRow:
    """A core in `role` fed `steps` (now, status, gossip) in order; the last
    step must return `expect` (earlier ones must return nothing)."""

    id: str
    role: RaftRole
    steps: list[tuple[float, RaftStatus | None, GossipView]]
    expect: list[Action]
    epoch: int = 0
    promotes: bool = True


STEP_ROWS = [
    # none: wait for the voters, then learn from them
    StepRow("none, no voters known: wait", NONE, [(1, None, g())], []),
    StepRow("none, voters known: learner of them", NONE, [(1, None, g(C, B))],
            [StartLearner((B, C), 0)]),
    StepRow("none, gossip names only us: nobody to follow", NONE, [(1, None, g(ME))], []),
    StepRow("none, newer epoch: learner at that epoch", NONE, [(1, None, g(B, epoch=2))],
            [StartLearner((B,), 2)]),
    # an operator's recovery: every older peer follows the new epoch as a learner
    StepRow("voter of an older epoch follows the recovered one", VOTER,
            [(1, LEADING, g(D, epoch=1, peers=VIEW))], [StartLearner((D,), 1)]),
    StepRow("learner of the current epoch stays", LEARNER,
            [(1, st(leader=B, voters=(B, C)), g(B, C, epoch=1))], [], epoch=1),
    # learner: reconnect when no leader is heard and gossip names other voters
    StepRow("learner without leader, before orphan_timeout", LEARNER,
            [(1, st(voters=(B, C)), g(B, D)), (10.9, st(voters=(B, C)), g(B, D))], []),
    StepRow("learner without leader for orphan_timeout: reconnect", LEARNER,
            [(1, st(voters=(B, C)), g(B, D)), (11, st(voters=(B, C)), g(B, D))],
            [StartLearner((B, D), 0)]),
    StepRow("learner without leader, gossip agrees with its voters: keep", LEARNER,
            [(1, st(voters=(B, C)), g(B, C)), (11, st(voters=(B, C)), g(B, C))], []),
    StepRow("learner that heard a leader meanwhile: clock restarts", LEARNER,
            [(1, st(voters=(B, C)), g(B, D)), (5, st(leader=B, voters=(B, C)), g(B, D)),
             (6, st(voters=(B, C)), g(B, D)), (15, st(voters=(B, C)), g(B, D))], []),
    # learner that the configuration counts as a voter (a "ghost")
    StepRow("ghost learner, just seen", LEARNER,
            [(1, st(leader=B, voters=(ME, B, C)), g(ME, B, C))], []),
    StepRow("ghost learner for orphan_timeout: asks for its removal", LEARNER,
            [(1, st(leader=B, voters=(ME, B, C)), g(ME, B, C)),
             (11, st(leader=B, voters=(ME, B, C)), g(ME, B, C))], [AskRemove(ME)]),
    StepRow("learner no longer a ghost: clock restarts", LEARNER,
            [(1, st(leader=B, voters=(ME, B)), g()), (5, st(leader=B, voters=(B,)), g()),
             (12, st(leader=B, voters=(ME, B)), g())], []),
    # joining: hearing the leader means it was added
    StepRow("joining hears the leader: voter, stored", JOINING,
            [(1, st(leader=B, voters=(ME, B, C)), g(B, C))],
            [RoleChanged(JOINING, VOTER), Store(StoredRole(VOTER, GEN, (B, C), 0))]),
    StepRow("joining without leader, before join_timeout", JOINING,
            [(14.9, st(voters=(B, C)), g(B, C))], []),
    StepRow("joining not added within join_timeout: back to learner", JOINING,
            [(15, st(voters=(B, C)), g(B, D))], [StartLearner((B, D), 0)]),
    StepRow("joining not added, gossip knows no voters: learner of its peers", JOINING,
            [(15, st(voters=(B, C)), g())], [StartLearner((B, C), 0)]),
    StepRow("joining that gossip counts as a voter waits for the leader", JOINING,
            [(100, st(voters=(B, C)), g(ME, B))], []),
    # voter: orphaned
    StepRow("voter without leader, gossip excludes it, before orphan_timeout", VOTER,
            [(1, LOST, g(B, C)), (10.9, LOST, g(B, C))], []),
    StepRow("voter without leader for orphan_timeout, excluded: learner", VOTER,
            [(1, LOST, g(B, C)), (11, LOST, g(B, C))], [StartLearner((B, C), 0)]),
    # ... but only on gossip as new as the last leader it heard (term 3 here):
    # a stale profile from before it was added must not make it leave
    StepRow("voter that heard a leader at term 3, older gossip excludes it: keep", VOTER,
            [(0, FOLLOWING, g(ME, B, C, term=3)), (1, LOST, g(B, C, term=1)),
             (100, LOST, g(B, C, term=1))], []),
    StepRow("voter that heard a leader at term 3, gossip of term 3 excludes it: learner",
            VOTER, [(0, FOLLOWING, g(ME, B, C, term=3)), (1, LOST, g(B, C, term=3)),
                    (11, LOST, g(B, C, term=3))], [StartLearner((B, C), 0)]),
    StepRow("voter that heard a leader at term 3, later gossip excludes it: learner",
            VOTER, [(0, FOLLOWING, g(ME, B, C, term=3)), (1, LOST, g(B, C, term=7)),
                    (11, LOST, g(B, C, term=7))], [StartLearner((B, C), 0)]),
    StepRow("leader at term 3 that lost it, older gossip excludes it: keep", VOTER,
            [(0, LEADING, g(ME, B, C, term=3)), (1, LOST, g(B, C, term=2)),
             (100, LOST, g(B, C, term=2))], []),
    StepRow("voter without leader that gossip still counts: keep waiting", VOTER,
            [(1, LOST, g(ME, B)), (100, LOST, g(ME, B))], []),
    StepRow("voter without leader, gossip knows no voters: keep waiting", VOTER,
            [(1, LOST, g()), (100, LOST, g())], []),
    StepRow("follower voter hearing a leader: nothing to do", VOTER,
            [(1, FOLLOWING, g(B, C)), (100, FOLLOWING, g(B, C))], []),
    # voter that leads: the voter policy
    StepRow("leader grows 3 -> 5: promotes the best spare", VOTER,
            [(1, LEADING, g(ME, B, C, peers=[*VIEW, peer("e", E), peer("d", D, cores=8)]))],
            [Promote("d", D, frozenset({ME, B, C}))]),
    StepRow("leader never stops at 4 voters", VOTER,
            [(1, LEADING, g(ME, B, C, peers=[*VIEW, peer("d", D)]))], []),
    StepRow("leader without a quorum runs no policy", VOTER,
            [(1, st(lead=True, voters=(ME, B, C), quorum=False), g(ME, B, C, peers=SPARES))], []),
    StepRow("leader without a view changes nothing", VOTER, [(1, LEADING, g(ME, B, C))], []),
    StepRow("leader that cannot ask promotions never promotes", VOTER,
            [(1, LEADING, g(ME, B, C, peers=SPARES))], [], promotes=False),
    StepRow("leader removes a voter dead for stabilization, a spare ready", VOTER,
            [(20, LEADING, g(ME, B, C, peers=[*VIEW[:2], peer("c", C, state=MemberState.DEAD,
                                                                   since=10.0), peer("d", D)]))],
            [RemoveVoter(C, "dead")]),
    StepRow("leader waits for stabilization before removing a dead voter", VOTER,
            [(19.9, LEADING, g(ME, B, C, peers=[*VIEW[:2], peer("c", C, state=MemberState.DEAD,
                                                                     since=10.0), peer("d", D)]))],
            []),
    StepRow("a voter missing from the view counts as dead since first noticed", VOTER,
            [(1, LEADING, g(peers=[*VIEW[:2], peer("d", D)])),
             (11, LEADING, g(peers=[*VIEW[:2], peer("d", D)]))], [RemoveVoter(C, "dead")]),
    StepRow("... not before stabilization from first noticed", VOTER,
            [(1, LEADING, g(peers=[*VIEW[:2], peer("d", D)])),
             (10.9, LEADING, g(peers=[*VIEW[:2], peer("d", D)]))], []),
]


@pytest.mark.parametrize("row", STEP_ROWS, ids=[r.id for r in STEP_ROWS])
def test_step(row: StepRow) -> None:
    core = in_role(row.role, epoch=row.epoch, promotes=row.promotes)
    *before, (now, status, gossip) = row.steps
    for t, s, v in before:
        assert acts(core.step(s, v, t)) == [], f"nothing yet at {t}"
    assert acts(core.step(status, gossip, now)) == row.expect


def test_ghost_learner_asks_at_most_once_per_orphan_timeout() -> None:
    core = in_role(LEARNER)
    ghost = st(leader=B, voters=(ME, B, C))
    assert core.step(ghost, g(), 1) == []
    assert acts(core.step(ghost, g(), 11)) == [AskRemove(ME)]
    assert core.feed(RemovalAsked(False), ghost, g(), 12) == [], "a learner does not stop"
    assert core.step(ghost, g(), 20.9) == []
    assert acts(core.step(ghost, g(), 21)) == [AskRemove(ME)]


def test_step_without_a_node_in_a_running_role_is_a_bug() -> None:
    with pytest.raises(RuntimeError, match="without a node"):
        in_role(LEARNER).step(None, g(B), 1)


# --------------------------------------------------------------------------- promotion


def test_failed_promotion_backs_the_peer_off_for_promote_backoff() -> None:
    """A failed ask or add puts the peer on a back-off, counted from when the
    promotion was decided; the policy tries the next one meanwhile."""
    core = in_role(VOTER, peers=())
    view = g(ME, peers=[peer("me", ME, role="voter"), peer("b", B, cores=8), peer("c", C),
                        peer("d", D)])
    [promote] = acts(core.step(ALONE, view, 1))
    assert promote == Promote("b", B, frozenset({ME}))
    assert core.feed(Promoted("b", False), ALONE, view, 9) == []
    assert acts(core.step(ALONE, view, 10)) == [Promote("c", C, frozenset({ME}))]
    assert core.feed(Promoted("c", False), ALONE, view, 11) == []
    assert acts(core.step(ALONE, view, 30.9)) == [], "two backed off: 1 + 1 possible, goal 1"
    assert acts(core.step(ALONE, view, 31)) == [promote], "back-off over (from t=1)"


def test_successful_promotion_sets_no_back_off() -> None:
    core = in_role(VOTER)
    view = g(ME, B, C, peers=SPARES)
    [promote] = acts(core.step(LEADING, view, 1))
    assert core.feed(Promoted("d", True), LEADING, view, 2) == []
    assert acts(core.step(LEADING, view, 3)) == [promote], "no back-off"


# --------------------------------------------------------------------------- start


@dataclass(frozen=True)
class StartRow:
    id: str
    stored: StoredRole
    founder: bool
    gossip: GossipView
    expect: list[Action]


START_ROWS = [
    StartRow("stored voter resumes its journal", StoredRole(VOTER, 4, (B, C), 2), True, g(B),
             [StartVoter(VOTER, 4, (B, C), 2)]),
    StartRow("stored joining voter resumes joining", StoredRole(JOINING, 4, (B,), 0), False,
             g(), [StartVoter(JOINING, 4, (B,), 0)]),
    StartRow("founder without a stored role first waits for gossip", StoredRole(), True, g(B),
             [AwaitVoters(CFG.bootstrap_grace)]),
    StartRow("stored learner follows gossip's voters", StoredRole(LEARNER, 4, (), 1), True,
             g(B, ME), [StartLearner((B,), 1)]),
    StartRow("non-founder without voters waits", StoredRole(), False, g(), []),
    StartRow("non-founder learns from gossip's voters", StoredRole(), False, g(B, epoch=3),
             [StartLearner((B,), 3)]),
]


@pytest.mark.parametrize("row", START_ROWS, ids=[r.id for r in START_ROWS])
def test_start(row: StartRow) -> None:
    core = RoleCore(ME, CFG, founder=row.founder, promotes=True)
    assert acts(core.start(row.stored, row.gossip)) == row.expect
    assert core.stored == row.stored


@pytest.mark.parametrize(("gossip", "expect"), [
    (g(B), [StartLearner((B,), 0)]),
    (g(), [StartVoter(VOTER, 5, (), 0)]),
], ids=["cluster revealed: joins it", "alone: bootstraps one voter, next generation"])
def test_founder_after_bootstrap_grace(gossip: GossipView, expect: list[Action]) -> None:
    core = RoleCore(ME, CFG, founder=True, promotes=True)
    core.start(StoredRole(NONE, 4, (), 0), g())
    assert acts(core.feed(VotersAwaited(), None, gossip, 3)) == expect


@pytest.mark.parametrize(("start", "ok", "expect"), [
    (StartLearner((B,), 2), True,
     [RoleChanged(NONE, LEARNER), Store(StoredRole(LEARNER, 0, (), 2))]),
    (StartVoter(JOINING, 3, (B,), 1), True,
     [RoleChanged(NONE, JOINING), Store(StoredRole(JOINING, 3, (B,), 1))]),
    (StartVoter(VOTER, 3, (), 1, record=False), True, [RoleChanged(NONE, VOTER)]),
    (StartLearner((B,), 2), False, []),
], ids=["learner stored", "voter stored", "unrecorded voter", "failed start"])
def test_started(start: StartLearner | StartVoter, ok: bool, expect: list[Action]) -> None:
    core = RoleCore(ME, CFG, founder=False, promotes=True)
    assert core.feed(Started(start, ok), None, g(), 1) == expect
    stores = [a for a in expect if isinstance(a, Store)]
    assert core.stored == (stores[0].stored if stores else StoredRole())


def test_a_failed_start_leaves_role_none_and_keeps_the_store() -> None:
    """The old node was stopped before the new one failed: no role, but what
    is stored stays (the next step retries)."""
    core = in_role(LEARNER)
    stored = core.stored
    assert core.step(st(voters=(B, C)), g(B, D), 1) == []  # the no-leader clock starts
    [start] = acts(core.step(st(voters=(B, C)), g(B, D), 11))
    assert isinstance(start, StartLearner)
    assert core.feed(Started(start, False), None, g(B, D), 12) == [RoleChanged(LEARNER, NONE)]
    assert core.role is NONE and core.stored == stored


# --------------------------------------------------------------------------- recovery


def test_recovery_starts_one_voter_and_stores_only_once_restored() -> None:
    """A new generation (all others pruned but the recovered one), epoch one
    above the newest known; role.json changes only in `recovered`."""
    core = RoleCore(ME, CFG, founder=False, promotes=True)
    stored = StoredRole(VOTER, 3, (B, C), 1)
    assert core.recover(stored, 2, g(epoch=4)) == [
        PruneGenerations(2), StartVoter(VOTER, 4, (), 5, record=False)]
    assert core.feed(Started(StartVoter(VOTER, 4, (), 5, record=False), True), None, g(), 1) \
        == [RoleChanged(NONE, VOTER)]
    assert core.stored == stored and core.epoch == 1
    assert core.recovered() == [Store(StoredRole(VOTER, 4, (), 5))]
    assert core.epoch == 5


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class JoinRow:
    id: str
    role: RaftRole
    voters: tuple[str, ...]
    status: RaftStatus | None
    expect: list[Action]
    leaving: bool = False


JOIN_ROWS = [
    JoinRow("no voters", LEARNER, (), st(leader=B, voters=(B,)), [Reply(False)]),
    JoinRow("voters naming this peer", LEARNER, (ME, B), st(leader=B, voters=(B,)),
            [Reply(False)]),
    JoinRow("leaving", LEARNER, (B,), st(leader=B, voters=(B,)), [Reply(False)], leaving=True),
    JoinRow("joining the same voters: idempotent", JOINING, (C, B), st(voters=(B, C)),
            [Reply(True)]),
    JoinRow("a voter that hears a leader refuses", VOTER, (B,), st(leader=B, voters=(ME, B)),
            [Reply(False)]),
    JoinRow("learner: fresh generation, joining voter", LEARNER, (C, B),
            st(leader=B, voters=(B, C)),
            [PruneGenerations(GEN), StartVoter(JOINING, GEN + 1, (B, C), 2)]),
    JoinRow("joining other voters restarts", JOINING, (B, D), st(voters=(B, C)),
            [PruneGenerations(GEN), StartVoter(JOINING, GEN + 1, (B, D), 2)]),
    JoinRow("orphaned voter without leader may be asked back", VOTER, (B, D), LOST,
            [PruneGenerations(GEN), StartVoter(JOINING, GEN + 1, (B, D), 2)]),
    JoinRow("no role yet", NONE, (B,), None,
            [PruneGenerations(0), StartVoter(JOINING, 1, (B,), 2)]),
]


@pytest.mark.parametrize("row", JOIN_ROWS, ids=[r.id for r in JOIN_ROWS])
def test_join_request(row: JoinRow) -> None:
    core = in_role(row.role)
    if row.leaving:
        core.leave(row.status, g(), 0)
        core.feed(Stopped(), None, g(), 0)
    assert acts(core.join_request(row.voters, row.status, g(B, epoch=2))) == row.expect


@pytest.mark.parametrize("ok", [True, False])
def test_join_request_answers_with_the_start(ok: bool) -> None:
    """True once the joining voter runs (its port listens), False if it could not start."""
    core = in_role(LEARNER)
    *_, start = core.join_request((B, C), st(leader=B, voters=(B, C)), g())
    assert isinstance(start, StartVoter)
    out = core.feed(Started(start, ok), None, g(), 1)
    assert out[-1] == Reply(ok)
    assert core.role is (JOINING if ok else NONE)
    assert not [a for a in core.feed(Started(start, ok), None, g(), 2) if isinstance(a, Reply)], \
        "a later start answers nobody"


@pytest.mark.parametrize(("addr", "status", "expect"), [
    (B, FOLLOWING, [RemoveVoter(B, "request")]),
    (ME, FOLLOWING, [Reply(False)]),
    (B, None, [Reply(False)]),
], ids=["another voter", "itself: it would never hear the commit", "no node"])
def test_remove_request(addr: str, status: RaftStatus | None, expect: list[Action]) -> None:
    assert in_role(VOTER).remove_request(addr, status) == expect


@pytest.mark.parametrize("ok", [True, False])
def test_remove_request_answers_with_the_commit(ok: bool) -> None:
    core = in_role(VOTER)
    assert core.feed(VoterRemoved(B, "request", ok), FOLLOWING, g(), 1) == [Reply(ok)]
    assert core.feed(VoterRemoved(B, "dead", ok), LEADING, g(), 1) == [], "the policy's own"


# --------------------------------------------------------------------------- graceful leave


def run_leave(core: RoleCore, status: RaftStatus | None, gossip: GossipView, *,
              promotions: Sequence[tuple[bool, RaftStatus]] = (),
              asks: Sequence[bool] = (),
              removals: Sequence[tuple[bool, RaftStatus]] = ()) -> list[Action]:
    """Drive a leave to its end as the shell would, feeding each action's
    outcome back at once: promotions succeed or not (and leave the node in
    the given status) in the order of `promotions`, asks for removal in the
    order of `asks`, removals of other voters in the order of `removals`."""
    todo = list(core.leave(status, gossip, 0))
    done: list[Action] = []
    promoted, asked, removed = list(promotions), list(asks), list(removals)
    while todo:
        action = todo.pop(0)
        done.append(action)
        outcome: Outcome | None = None
        match action:
            case Promote(name=name):
                ok, status = promoted.pop(0)
                outcome = Promoted(name, ok)
            case AskRemove():
                outcome = RemovalAsked(asked.pop(0))
            case RemoveVoter(raft_addr=addr, reason=reason):
                ok, status = removed.pop(0)
                outcome = VoterRemoved(addr, reason, ok)
            case StopNode():
                outcome, status = Stopped(), None
        if outcome is not None:
            todo[:0] = core.feed(outcome, status, gossip, 1)
    return acts(done)


C_DEAD = g(peers=[peer("me", ME, role="voter"), peer("b", B, role="voter"),
                  peer("c", C, state=MemberState.DEAD, role="voter")])
"""Three voters, one just killed (gossip says dead; the leader's policy has
not removed it yet)."""


def test_a_leaving_leader_first_removes_a_voter_that_is_down() -> None:
    """Without it the removal leaves {B, C} with C dead: B can neither commit
    it nor win an election, and never votes for us again (its log is ahead):
    the mesh would stay without a leader for good (found by the dashboard's
    browser test: kill one of 3 voters, restart the leader)."""
    core = in_role(VOTER)
    after = st(lead=True, voters=(ME, B))
    done = run_leave(core, LEADING, C_DEAD, removals=[(True, after)], asks=[True])
    assert done == [RemoveVoter(C, PRUNE_BEFORE_LEAVE), TransferLeadership(), AskRemove(ME),
                    StopNode(), RoleChanged(VOTER, NONE), Store(StoredRole(LEARNER, GEN, (), 0))]


def test_a_leaving_leader_that_cannot_remove_the_dead_voter_stays_a_voter() -> None:
    core = in_role(VOTER)
    done = run_leave(core, LEADING, C_DEAD, removals=[(False, LEADING)])
    assert done == [RemoveVoter(C, PRUNE_BEFORE_LEAVE), StopNode(), RoleChanged(VOTER, NONE)]
    assert core.stored == StoredRole(VOTER, GEN, (B, C), 0)


def test_a_leaving_follower_does_not_ask_for_removal_when_the_rest_lack_a_majority() -> None:
    """It cannot remove the dead voter itself; leaving the configuration would
    wedge it, staying in it only costs a majority until it returns."""
    core = in_role(VOTER)
    following_b = st(leader=B, voters=(ME, B, C))
    assert run_leave(core, following_b, C_DEAD) == [StopNode(), RoleChanged(VOTER, NONE)]
    assert core.stored.role is VOTER


def test_a_leave_goes_ahead_when_the_rest_keep_a_majority() -> None:
    """Five voters, one down: the other four keep 3 alive of 4, a majority."""
    five = st(lead=True, voters=(ME, B, C, D, E))
    view = g(peers=[peer("me", ME, role="voter"), peer("b", B, role="voter"),
                    peer("c", C, role="voter"), peer("d", D, role="voter"),
                    peer("e", E, state=MemberState.DEAD, role="voter")])
    assert run_leave(in_role(VOTER), five, view, asks=[True])[:2] == [
        TransferLeadership(), AskRemove(ME)]


def test_leave_voter_leader_with_others_transfers_asks_and_stores_learner() -> None:
    core = in_role(VOTER)
    assert run_leave(core, LEADING, g(), asks=[True]) == [
        TransferLeadership(), AskRemove(ME), StopNode(), RoleChanged(VOTER, NONE),
        Store(StoredRole(LEARNER, GEN, (), 0))]
    assert core.stored.role is LEARNER and core.role is NONE


def test_leave_follower_voter_only_asks() -> None:
    assert run_leave(in_role(VOTER), FOLLOWING, g(), asks=[True])[:2] == [
        AskRemove(ME), StopNode()]


def test_leave_whose_removal_fails_keeps_the_stored_voter() -> None:
    """No quorum left to commit the removal: it must stay a voter on disk so
    the last configuration can re-form."""
    core = in_role(VOTER)
    assert run_leave(core, FOLLOWING, g(), asks=[False]) == [
        AskRemove(ME), StopNode(), RoleChanged(VOTER, NONE)]
    assert core.stored == StoredRole(VOTER, GEN, (B, C), 0)


def test_leave_last_voter_without_successor_stays_a_voter() -> None:
    core = in_role(VOTER, peers=())
    assert run_leave(core, ALONE, g(peers=[peer("me", ME, role="voter")])) == [
        StopNode(), RoleChanged(VOTER, NONE)]
    assert core.stored.role is VOTER


def test_leave_sole_voter_promotes_successors_in_rank_order() -> None:
    """The first candidate fails (backed off), the second is added; then it is
    one voter among two: transfer, ask, store learner."""
    core = in_role(VOTER, peers=())
    view = g(peers=[peer("me", ME, role="voter"), peer("c", C, cores=2), peer("b", B, cores=8)])
    done = run_leave(core, ALONE, view,
                     promotions=[(False, ALONE), (True, st(lead=True, voters=(ME, B)))],
                     asks=[True])
    assert done == [Promote("b", B, frozenset({ME})), Promote("c", C, frozenset({ME})),
                    TransferLeadership(), AskRemove(ME), StopNode(), RoleChanged(VOTER, NONE),
                    Store(StoredRole(LEARNER, GEN, (), 0))]


def test_leave_sole_voter_all_promotions_fail() -> None:
    core = in_role(VOTER, peers=())
    view = g(peers=[peer("b", B)])
    done = run_leave(core, ALONE, view, promotions=[(False, ALONE)])
    assert done == [Promote("b", B, frozenset({ME})), StopNode(), RoleChanged(VOTER, NONE)]
    assert core.stored.role is VOTER


@pytest.mark.parametrize(("role", "status"), [
    (LEARNER, st(leader=B, voters=(B, C))),
    (VOTER, LOST),
    (JOINING, st(voters=(B, C))),
    (NONE, None),
], ids=["learner", "voter without leader", "joining without leader", "no role"])
def test_leave_without_a_membership_to_hand_over_just_stops(role: RaftRole,
                                                            status: RaftStatus | None) -> None:
    core = in_role(role)
    stored = core.stored
    done = run_leave(core, status, g())
    assert done == [StopNode(), *([RoleChanged(role, NONE)] if role is not NONE else [])]
    assert core.stored == stored, "nothing stored: a restart resumes what was"


def test_a_leaving_core_takes_no_steps_and_no_promotions() -> None:
    core = in_role(VOTER)
    core.leave(LEADING, g(), 0)
    assert core.step(LEADING, g(ME, B, C, peers=SPARES), 1) == []
    assert core.join_request((B,), None, g()) == [Reply(False)]


# --------------------------------------------------------------------------- log lines


def test_log_lines_operators_read() -> None:
    """The decisions name their reason in the log (the shell prefixes
    "raft role: ")."""
    core = in_role(VOTER)
    core.step(LOST, g(B, C), 1)
    [line, _] = core.step(LOST, g(B, C), 11)
    assert line == Log("warning", f"no leader for 10 s and the voters ({B}, {C}) exclude {ME}: "
                                  "removed; restarting as a learner")
    core = in_role(JOINING)
    assert core.step(st(leader=B, voters=(ME, B)), g(), 1)[0] == Log(
        "info", f"added as a voter (leader {B})")
    assert RoleCore(ME, CFG, founder=False, promotes=True).start(
        StoredRole(VOTER, 7, (), 0), g())[0] == Log("info", "resuming as voter (generation 7)")


# --------------------------------------------------------------------------- transitions

LEGAL = {
    (NONE, LEARNER), (NONE, VOTER), (NONE, JOINING),
    (LEARNER, JOINING), (LEARNER, LEARNER), (LEARNER, NONE),
    (JOINING, VOTER), (JOINING, LEARNER), (JOINING, JOINING), (JOINING, NONE),
    (VOTER, LEARNER), (VOTER, JOINING), (VOTER, NONE),
}
"""The table, written out: promotion goes through joining, and a role is left
for none (stop), learner (removed, not added, new epoch) or joining (asked)."""


@pytest.mark.parametrize(("old", "new"), list(product(RaftRole, RaftRole)),
                         ids=lambda r: r.value)
def test_transition_table(old: RaftRole, new: RaftRole) -> None:
    assert (new in TRANSITIONS[old]) == ((old, new) in LEGAL)
    if (old, new) in LEGAL:
        check_transition(old, new)
    else:
        with pytest.raises(IllegalTransition, match=f"{old.value} -> {new.value}"):
            check_transition(old, new)


@pytest.mark.parametrize(("old", "new"), sorted(set(product(RaftRole, RaftRole)) - LEGAL,
                                                key=str), ids=lambda r: r.value)
def test_illegal_role_change_raises_and_changes_nothing(old: RaftRole, new: RaftRole) -> None:
    core = in_role(old)
    stored = core.stored
    with pytest.raises(IllegalTransition):
        core.set_role(new, 50)
    assert core.role is old and core.stored == stored


def test_a_learner_asked_straight_to_voter_is_refused_by_the_table() -> None:
    """Only the leader adds voters: a learner never starts as a voter directly."""
    core = in_role(LEARNER)
    with pytest.raises(IllegalTransition, match="learner -> voter"):
        core.set_role(VOTER, 1)


def test_one_illegal_transition_class_for_roles_and_instances() -> None:
    assert lifecycle.IllegalTransition is IllegalTransition
    assert issubclass(IllegalTransition, NanomeshError) and issubclass(IllegalTransition,
                                                                         ValueError)
    with pytest.raises(IllegalTransition):
        lifecycle.check_transition("running", "fetching")


# --------------------------------------------------------------------------- purity

IMPURE = {"trio", "socket", "os", "pathlib", "time", "random", "shutil", "json", "logging",
          "threading", "nanomesh.consensus.node", "nanomesh.consensus.role_manager"}


@pytest.mark.parametrize("module", [role_core, role_effects], ids=lambda m: m.__name__)
def test_the_core_imports_no_io(module: ModuleType) -> None:
    """No trio, socket, file, clock or randomness in the core's own imports."""
    assert module.__file__ is not None
    tree = ast.parse(Path(module.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {m for m in imported if m in IMPURE or m.split(".")[0] in IMPURE}


def test_a_crash_the_raft_connections_see_counts_before_gossip_sees_it() -> None:
    """C was killed a moment ago: gossip still says ALIVE, but the Raft
    connection to it is gone. The leaving leader removes it first."""
    core = in_role(VOTER)
    leading = dataclasses.replace(LEADING, connected=frozenset({ME, B}))
    after = st(lead=True, voters=(ME, B))
    done = run_leave(core, leading, g(peers=VIEW), removals=[(True, after)], asks=[True])
    assert done[:3] == [RemoveVoter(C, PRUNE_BEFORE_LEAVE), TransferLeadership(), AskRemove(ME)]


@pytest.mark.parametrize(("connected", "expect"), [
    (frozenset({ME, B, C}), [RemoveVoter(B, "request")]),
    (None, [RemoveVoter(B, "request")]),                 # unknown: as it always did
    (frozenset({ME, B}), [Reply(False)]),                # {ME, C} without C: no majority
])
def test_a_removal_request_is_refused_when_the_rest_could_not_commit_it(
        connected: frozenset[str] | None, expect: list[Action]) -> None:
    core = in_role(VOTER)
    status = dataclasses.replace(LEADING, connected=connected)
    assert acts(core.remove_request(B, status)) == expect
