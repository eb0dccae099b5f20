"""The voter policy (`nanomesh.consensus.voters`): pure, so tables and
Hypothesis properties, no Raft. Section numbers refer to the Raft paper
(Ongaro & Ousterhout, 2014); §6 is cluster membership changes."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from nanomesh.consensus.voters import (
    SOON_PROMOTABLE_ROLES,
    PeerInfo,
    Promote,
    Remove,
    VoterAction,
    VoterPolicy,
    candidate_key,
    decide,
    majority,
    odd_floor,
    peer_info,
    removal_gains_tolerance,
    voter_goal,
    with_absent_voters,
)
from nanomesh.errors import ConfigError
from nanomesh.wire import MemberState

ALIVE, SUSPECT, DEAD, LEFT = (MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD,
                              MemberState.LEFT)
NOW = 1000.0
POLICY = VoterPolicy()  # stabilization 10 s, min_alive 5 s


def peer(name: str, state: MemberState = ALIVE, since: float = 0.0, *, mains: bool = True,
         battery: float | None = None, cores: int = 4, memory: int = 1024,
         role: str | None = "learner") -> PeerInfo:
    return PeerInfo(name, addr(name), state, since, mains, battery, cores, memory,
                    raft_role=role)


def addr(name: str) -> str:
    return f"10.0.0.{ord(name[0]) - ord('a') + 1}:7948"


def voters(*names: str) -> frozenset[str]:
    return frozenset(addr(n) for n in names)


def run(view: list[PeerInfo], vs: frozenset[str], target: int = 5,
        policy: VoterPolicy = POLICY, now: float = NOW) -> VoterAction | None:
    return decide(view, vs, target, now, policy, leader=addr("a"))


# --------------------------------------------------------------------------- formulas


@pytest.mark.parametrize(("n", "odd"), [(0, 1), (1, 1), (2, 1), (3, 3), (4, 3), (5, 5), (6, 5)])
def test_odd_floor(n: int, odd: int) -> None:
    assert odd_floor(n) == odd


@pytest.mark.parametrize(("target", "possible", "goal"), [
    (5, 1, 1), (5, 2, 1), (5, 3, 3), (5, 4, 3), (5, 5, 5), (5, 9, 5), (3, 9, 3), (4, 9, 3),
    (1, 9, 1)])
def test_voter_goal_is_odd_and_capped(target: int, possible: int, goal: int) -> None:
    assert voter_goal(target, possible) == goal


@pytest.mark.parametrize(("n", "failed", "gains"), [
    (3, 1, False),  # 2 of 3 or 2 of 2: no further failure tolerated either way
    (5, 1, False),  # 3 of 5 or 3 of 4
    (4, 1, True),   # 3 of 4 -> 2 of 3
    (5, 2, True),   # 3 of 5 -> 2 of 3
    (2, 1, True),   # 2 of 2 -> 1 of 1
])
def test_removal_gains_tolerance_only_from_an_even_remainder(n: int, failed: int,
                                                             gains: bool) -> None:
    assert removal_gains_tolerance(n, failed) is gains
    assert gains is (majority(n - failed) < majority(n))


def test_policy_rejects_impossible_values() -> None:
    VoterPolicy().check()
    with pytest.raises(ConfigError, match="stabilization"):
        VoterPolicy(stabilization=-1).check()
    with pytest.raises(ConfigError, match="stability_step"):
        VoterPolicy(stability_step=0).check()


# --------------------------------------------------------------------------- growth


def test_one_voter_and_one_peer_stays_at_one() -> None:
    """Two voters need both: less available than one. Never stop at 2."""
    assert run([peer("a", role="voter"), peer("b")], voters("a")) is None


def test_grows_1_then_3_then_5_passing_2_and_4_only_on_the_way() -> None:
    view = [peer("a", role="voter"), *(peer(n) for n in "bcde")]
    vs = voters("a")
    seen = []
    while (action := run(view, vs)) is not None:
        assert isinstance(action, Promote)
        vs |= {action.raft_addr}
        seen.append(len(vs))
    assert seen == [2, 3, 4, 5]
    # With one peer fewer, it stops at 3 rather than 4.
    assert run(view[:4], voters("a", "b", "c")) is None


def test_target_caps_the_voters() -> None:
    view = [peer("a", role="voter"), *(peer(n) for n in "bcdefg")]
    assert run(view, voters("a", "b", "c"), target=3) is None
    assert run(view, voters("a", "b", "c"), target=4) is None, "rounded down to odd"


def test_ranking_mains_then_stability_then_cores_then_memory_then_name() -> None:
    young, old = NOW - 40, NOW - 400  # 40 s and 400 s alive: different 30-s steps
    a = peer("a", role="voter")
    cases = [
        ([peer("b", mains=False, battery=100, since=old, cores=64), peer("c", since=young)], "c"),
        ([peer("b", since=young, cores=64), peer("c", since=old, cores=1)], "c"),
        ([peer("b", since=old, cores=2), peer("c", since=old, cores=8)], "c"),
        ([peer("b", since=old, memory=512), peer("c", since=old, memory=2048)], "c"),
        ([peer("c", since=old), peer("b", since=old)], "b"),
    ]
    for candidates, best in cases:
        action = run([a, *candidates, peer("d", mains=False, battery=60)], voters("a"))
        assert action == Promote(best, addr(best)), candidates


def test_stability_is_capped_and_stepped() -> None:
    policy = VoterPolicy(stability_cap=600, stability_step=30)
    long_ago = peer("b", since=NOW - 10_000, cores=1)
    a_while = peer("c", since=NOW - 601, cores=8)
    assert candidate_key(a_while, NOW, policy) < candidate_key(long_ago, NOW, policy)
    close = peer("d", since=NOW - 61, cores=1), peer("e", since=NOW - 89, cores=2)
    assert candidate_key(close[1], NOW, policy) < candidate_key(close[0], NOW, policy)


@pytest.mark.parametrize("candidate", [
    peer("b", since=NOW - 1),                            # alive for 1 s < min_alive
    peer("b", SUSPECT),
    peer("b", DEAD),
    peer("b", LEFT),
    peer("b", mains=False, battery=20),                  # battery too low
    peer("b", mains=False, battery=None),                # battery unknown
    peer("b", role=None),                                # profile not here yet
    peer("b", role="none"),                              # runs no Raft node
    peer("b", role="voter"),                             # a voter elsewhere?
], ids=["young", "suspect", "dead", "left", "low-battery", "battery-unknown", "no-profile",
        "no-node", "claims-voter"])
def test_ineligible_candidates_are_never_promoted(candidate: PeerInfo) -> None:
    view = [peer("a", role="voter"), peer("c"), candidate]
    assert run(view, voters("a")) is None, "only c is eligible: 2 possible, goal 1"


def test_memory_minimum() -> None:
    policy = VoterPolicy(min_memory_mb=512)
    view = [peer("a", role="voter"), peer("b", memory=256), peer("c", memory=256)]
    assert run(view, voters("a"), policy=policy) is None
    assert run(view, voters("a")) == Promote("b", addr("b"))


def test_no_promotion_while_a_voter_is_not_alive() -> None:
    """A change to n+1 voters needs maj(n+1) acks; with a voter down the new
    voter itself would be indispensable (§6, and the module's quorum notes)."""
    view = [peer("a", role="voter"), peer("b", SUSPECT, role="voter"), peer("c", role="voter"),
            peer("d"), peer("e")]
    assert run(view, voters("a", "b", "c")) is None
    view[1] = replace(view[1], state=ALIVE)
    assert run(view, voters("a", "b", "c")) == Promote("d", addr("d"))


# --------------------------------------------------------------------------- removal


def three_voters_one_dead(dead_since: float, spare: bool) -> list[PeerInfo]:
    view = [peer("a", role="voter"), peer("b", role="voter"),
            peer("c", DEAD, dead_since, role="voter")]
    return [*view, peer("d")] if spare else view


def test_dead_voter_replaced_after_stabilization() -> None:
    vs = voters("a", "b", "c")
    assert run(three_voters_one_dead(NOW - 9.9, spare=True), vs) is None, "still stabilizing"
    assert run(three_voters_one_dead(NOW - 10, spare=True), vs) == Remove(addr("c"), "dead")
    view = three_voters_one_dead(NOW - 10, spare=True)
    assert run(view, voters("a", "b")) == Promote("d", addr("d"))


def test_dead_voter_kept_when_removal_gains_nothing() -> None:
    """3 voters, 1 dead, no spare: 2 of 3 and 2 of 2 tolerate the same (no)
    failure; keeping it lets it come back with its journal."""
    assert run(three_voters_one_dead(0.0, spare=False), voters("a", "b", "c")) is None


def test_dead_voters_removed_when_that_raises_tolerance() -> None:
    view = [peer(n, role="voter") for n in "abc"] + [peer(n, DEAD, 0.0, role="voter")
                                                     for n in "de"]
    vs = voters(*"abcde")
    first = run(view, vs)
    assert first == Remove(addr("d"), "dead")
    assert run(view, vs - {addr("d")}) == Remove(addr("e"), "dead")
    assert run(view, voters(*"abc")) is None


def test_left_voter_removed_at_once_even_without_a_spare() -> None:
    view = [peer("a", role="voter"), peer("b", role="voter"),
            peer("c", LEFT, NOW - 0.1, role="voter")]
    assert run(view, voters("a", "b", "c")) == Remove(addr("c"), "left")
    # ...then 2 voters, nobody to add: shrink to 1 rather than stay at 2.
    assert run(view, voters("a", "b")) == Remove(addr("b"), "surplus")


def test_left_before_dead_then_oldest_first() -> None:
    view = [peer("a", role="voter"), peer("b", DEAD, 5.0, role="voter"),
            peer("c", DEAD, 1.0, role="voter"), peer("d", LEFT, 900.0, role="voter"),
            peer("e", role="voter")]
    vs = voters(*"abcde")
    assert run(view, vs) == Remove(addr("d"), "left")
    assert run(view, vs - {addr("d")}) == Remove(addr("c"), "dead")


def test_the_leader_is_never_removed() -> None:
    view = [peer("a", LEFT, 0.0, role="voter"), peer("b", role="voter"), peer("c", role="voter")]
    assert run(view, voters("a", "b", "c")) is None
    four = [replace(view[0], state=ALIVE), *view[1:], peer("d", role="voter")]
    assert run(four, voters(*"abcd"), target=3) is not None
    assert all(run(four, voters(*"abcd"), target=t) != Remove(addr("a"), "surplus")
               for t in range(1, 6))


def test_surplus_voters_removed_worst_first_when_target_lowered() -> None:
    view = [peer("a", role="voter", cores=1), peer("b", role="voter", cores=2),
            peer("c", role="voter", cores=8), peer("d", role="voter", cores=16),
            peer("e", role="voter", mains=False, battery=90)]
    vs = voters(*"abcde")
    assert run(view, vs, target=3) == Remove(addr("e"), "surplus")
    assert run(view, vs - {addr("e")}, target=3) == Remove(addr("b"), "surplus"), \
        "a is the leader: b is the worst of the rest"


def test_young_candidates_hold_off_a_shrink() -> None:
    view = [peer("a", role="voter"), peer("b", role="voter"), peer("c", since=NOW - 1)]
    assert run(view, voters("a", "b")) is None, "c will be ready in 4 s: grow, not shrink"
    assert run(view, voters("a", "b"), now=NOW + 5) == Promote("c", addr("c"))


@pytest.mark.parametrize("role", ["voter", "none"])
def test_soon_promotable_peers_hold_off_a_shrink(role: str) -> None:
    """A removed voter still says "voter" until it notices and restarts as a
    learner; a new peer says "none" until it knows the voters. Shrinking to
    1 meanwhile would only be undone a moment later."""
    view = [peer("a", role="voter"), peer("b", role="voter"), peer("c", role=role)]
    assert run(view, voters("a", "b")) is None
    assert run(view[:2], voters("a", "b")) == Remove(addr("b"), "surplus")


def test_voter_unknown_to_the_view_blocks_changes_until_absent_long_enough() -> None:
    view = [peer("a", role="voter"), peer("b", role="voter"), peer("d"), peer("e")]
    vs = voters("a", "b", "c")
    assert run(view, vs) is None, "c unknown: not removed, and no promotion either"
    assert run(with_absent_voters(view, vs, {addr("c"): NOW - 3}), vs) is None
    stand_in = with_absent_voters(view, vs, {addr("c"): NOW - 10})
    assert stand_in[-1].raft_addr == addr("c") and stand_in[-1].state is DEAD
    assert run(stand_in, vs) == Remove(addr("c"), "dead")


# --------------------------------------------------------------------------- from gossip


def test_peer_info_from_a_profile() -> None:
    profile = {"power": {"source": "battery", "battery_percent": 77.5},
               "cpu": {"cores": 4}, "memory": {"total_mb": 3800, "available_mb": 100},
               "raft": {"role": "learner", "addr": "192.168.1.5:7948"}}
    info = peer_info("pi", "192.168.1.5", ALIVE, 12.0, profile)
    assert info == PeerInfo("pi", "192.168.1.5:7948", ALIVE, 12.0, mains_powered=False,
                            battery_percent=77.5, cores=4, memory_mb=3800,
                            raft_role="learner")
    mains = peer_info("pc", "10.1.1.1", ALIVE, 0.0, {"power": {"source": "ac"}})
    assert mains.mains_powered and mains.raft_addr == "10.1.1.1:7948" and mains.raft_role is None


@pytest.mark.parametrize("profile", [
    None, {}, {"power": "ac"}, {"cpu": {"cores": "many"}}, {"memory": {"total_mb": -5}},
    {"cpu": {"cores": float("nan")}}, {"raft": {"role": 3, "addr": ""}},
    {"power": {"source": "ac", "battery_percent": True}}, {"raft": []},
])
def test_peer_info_never_raises_on_malformed_profiles(profile: object) -> None:
    info = peer_info("x", "10.0.0.9", DEAD, 1.0, profile)  # type: ignore[arg-type]
    assert info.raft_addr == "10.0.0.9:7948" and info.cores >= 0 and info.memory_mb >= 0


# --------------------------------------------------------------------------- properties

PROPERTY = settings(max_examples=300, deadline=None)
ROLES = st.sampled_from(["learner", "joining", "voter", "none", None])


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[PeerInfo], frozenset[str], int, VoterPolicy]:
    """A view of 1-8 peers, a configuration containing the leader ``a``
    (ALIVE), a target, a policy; ``now`` is NOW."""
    n = draw(st.integers(1, 8))
    view = []
    for i in range(n):
        name = "abcdefgh"[i]
        state = ALIVE if i == 0 else draw(st.sampled_from(list(MemberState)))
        view.append(PeerInfo(
            name, addr(name), state, draw(st.floats(NOW - 30, NOW)),
            mains_powered=draw(st.booleans()),
            battery_percent=draw(st.none() | st.floats(0, 100)),
            cores=draw(st.integers(0, 8)), memory_mb=draw(st.integers(0, 4096)),
            raft_role=draw(ROLES)))
    others = draw(st.sets(st.sampled_from([p.raft_addr for p in view[1:]]))) if n > 1 else set()
    target = draw(st.integers(1, 7))
    policy = VoterPolicy(stabilization=draw(st.sampled_from([0.0, 10.0])),
                         min_alive=draw(st.sampled_from([0.0, 5.0])))
    return view, frozenset({addr("a"), *others}), target, policy


def _alive(view: list[PeerInfo], vs: frozenset[str]) -> int:
    return sum(1 for p in view if p.raft_addr in vs and p.state in (ALIVE, SUSPECT))


@PROPERTY
@given(scenarios())
def test_an_action_is_always_allowed(s: tuple[list[PeerInfo], frozenset[str], int,
                                              VoterPolicy]) -> None:
    """At most one change (§6), and only a legal one: a promotion names an
    eligible ALIVE non-voter; a removal names a voter other than the leader,
    which has LEFT, has been DEAD for the stabilization time, or is a surplus
    while every voter is ALIVE."""
    view, vs, target, policy = s
    action = decide(view, vs, target, NOW, policy, leader=addr("a"))
    by_addr = {p.raft_addr: p for p in view}
    match action:
        case Promote(name=name, raft_addr=raft_addr):
            p = by_addr[raft_addr]
            assert p.name == name and raft_addr not in vs
            assert p.state is ALIVE and policy.eligible(p, NOW)
        case Remove(raft_addr=raft_addr, reason=reason):
            assert raft_addr in vs and raft_addr != addr("a")
            p = by_addr[raft_addr]
            assert {"left": p.state is LEFT,
                    "dead": p.state is DEAD and NOW - p.state_since >= policy.stabilization,
                    "surplus": all(by_addr[v].state is ALIVE for v in vs)}[reason]
        case None:
            pass
        case _:
            pytest.fail(f"not an action: {action!r}")


@PROPERTY
@given(scenarios())
def test_an_action_never_costs_the_quorum(s: tuple[list[PeerInfo], frozenset[str], int,
                                                   VoterPolicy]) -> None:
    """If the leader has a quorum now (it is acting), the configuration after
    the change still has one (a promoted peer is ALIVE and running)."""
    view, vs, target, policy = s
    assume(_alive(view, vs) >= majority(len(vs)))
    match decide(view, vs, target, NOW, policy, leader=addr("a")):
        case Promote(raft_addr=raft_addr):
            after = vs | {raft_addr}
        case Remove(raft_addr=raft_addr):
            after = vs - {raft_addr}
        case _:
            return
    assert _alive(view, after) >= majority(len(after))


@PROPERTY
@given(scenarios(), st.randoms(use_true_random=False))
def test_deterministic_whatever_the_view_order(s: tuple[list[PeerInfo], frozenset[str], int,
                                                        VoterPolicy],
                                               rng: random.Random) -> None:
    view, vs, target, policy = s
    first = decide(view, vs, target, NOW, policy, leader=addr("a"))
    shuffled = list(view)
    rng.shuffle(shuffled)
    assert decide(shuffled, vs, target, NOW, policy, leader=addr("a")) == first


@PROPERTY
@given(scenarios())
def test_converges_on_a_fixed_view_to_an_odd_count(s: tuple[list[PeerInfo], frozenset[str],
                                                            int, VoterPolicy]) -> None:
    """Applying the decisions over an unchanging view reaches a fixed point
    in a bounded number of changes, never promoting a peer it removed. At
    the fixed point no LEFT voter remains, and if every voter is ALIVE and
    nobody is waiting out `min_alive`, the count is the odd goal."""
    view, vs, target, policy = s
    removed: set[str] = set()
    for _ in range(2 * len(view) + 2):
        action = decide(view, vs, target, NOW, policy, leader=addr("a"))
        if action is None:
            break
        if isinstance(action, Promote):
            assert action.raft_addr not in removed, "oscillation"
            vs |= {action.raft_addr}
            view = [replace(p, raft_role="voter") if p.raft_addr == action.raft_addr else p
                    for p in view]
        else:
            removed.add(action.raft_addr)
            vs -= {action.raft_addr}
    else:
        pytest.fail("no fixed point")
    by_addr = {p.raft_addr: p for p in view}
    assert not any(by_addr[v].state is LEFT for v in vs if v != addr("a"))
    ready = [p for p in view if p.raft_addr not in vs and policy.eligible(p, NOW)]
    coming = [p for p in view if p.raft_addr not in vs and p.state is ALIVE
              and p.raft_role in SOON_PROMOTABLE_ROLES and policy.capable(p)]
    if all(by_addr[v].state is ALIVE for v in vs) and len(ready) == len(coming):
        assert len(vs) == voter_goal(target, len(vs) + len(ready))
        assert len(vs) % 2 == 1 and len(vs) <= max(1, target)
