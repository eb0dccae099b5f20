"""Which facts become events (`nanomesh.monitor.derive`): one table per
source, each checking the type, the subject and the reason given."""

from __future__ import annotations

from typing import Any

from nanomesh.gossip.effects import (
    MemberFailed,
    MemberJoined,
    MemberRecovered,
    MemberSuspected,
    ProfileUpdated,
    Refuted,
)
from nanomesh.monitor.derive import (
    instance_facts,
    membership_fact,
    plan_facts,
    raft_basis,
    raft_facts,
    runs_seen,
)
from nanomesh.monitor.eventlog import Fact
from nanomesh.runtime.reconcile_core import InstanceStatus


def kinds(facts: list[Fact]) -> list[tuple[str, str]]:
    return [(f.type, f.subject) for f in facts]


# --------------------------------------------------------------------------- membership


def test_membership_notifications() -> None:
    table = [
        (MemberJoined("b", ("10.0.0.2", 7946), rejoined=True), "member.joined", "b",
         "rejoined at 10.0.0.2:7946"),
        (MemberSuspected("b", by="a"), "member.suspect", "b", "suspected by a"),
        (MemberRecovered("b"), "member.alive", "b", "refuted its suspicion: alive"),
        (MemberFailed("b", by="c"), "member.dead", "b", "declared dead by c"),
        (Refuted(incarnation=4, accuser="c"), "member.refuted", "me",
         "was suspected by c; refuted with incarnation 4"),
    ]
    for note, kind, subject, message in table:
        fact = membership_fact(note, "me")
        assert fact is not None and (fact.type, fact.subject, fact.message) == (
            kind, subject, message), note
    assert membership_fact(ProfileUpdated("b", 9), "me") is None  # every few seconds: not news


# --------------------------------------------------------------------------- Raft

NAMES = {"10.0.0.1:7948": "a", "10.0.0.2:7948": "b"}


def section(role: str = "voter", leader: str | None = "10.0.0.1:7948", term: int = 3,
            voters: tuple[str, ...] = ("10.0.0.1:7948", "10.0.0.2:7948")) -> dict[str, Any]:
    return {"role": role, "leader": leader, "term": term, "voters": list(voters)}


def test_a_starting_peer_reports_its_role_leader_and_voters() -> None:
    facts = raft_facts({}, section(), "b", NAMES)
    assert kinds(facts) == [("raft.role", "b"), ("leader.elected", "a"), ("raft.voters", "b")]
    assert facts[1].detail["term"] == 3
    assert raft_facts(section(), section(), "b", NAMES) == []


def test_a_new_term_with_another_leader_and_a_lost_leader() -> None:
    assert kinds(raft_facts(section(), section(leader="10.0.0.2:7948", term=4), "b",
                            NAMES)) == [("leader.elected", "b")]
    assert kinds(raft_facts(section(), section(leader=None), "b", NAMES)) == [
        ("leader.lost", "a")]
    lost = section(leader=None)
    assert kinds(raft_facts(lost, section(leader=None, term=5), "b", NAMES)) == [
        ("raft.term", "b")]


def test_a_node_restarted_for_a_role_change_is_no_leadership_news() -> None:
    """learner -> joining restarts the node: for a moment it knows no leader
    (term 0); only the role is an event, and the leader it hears next is the
    same one, not a new election."""
    learner = section(role="learner")
    gap = section(role="joining", leader=None, term=0, voters=())
    facts = raft_facts(learner, gap, "b", NAMES)
    assert kinds(facts) == [("raft.role", "b")]
    basis = raft_basis(learner, gap)
    assert kinds(raft_facts(basis, section(role="joining"), "b", NAMES)) == []


def test_voter_changes_name_who_came_and_went() -> None:
    facts = raft_facts(section(), section(voters=("10.0.0.1:7948", "10.0.0.9:7948")), "a",
                       NAMES)
    assert kinds(facts) == [("raft.voters", "a")]
    assert facts[0].detail["added"] == ["10.0.0.9:7948"] and facts[0].detail["removed"] == ["b"]


# --------------------------------------------------------------------------- placement


def plan(assignments: dict[str, str], unplaced: tuple[str, ...] = (), rebalanced: int = 0,
         unplaceable: dict[str, dict[str, str]] | None = None) -> dict[str, Any]:
    return {"assignments": assignments, "unplaced": list(unplaced),
            "unplaceable": unplaceable or {}, "stats": {"rebalanced": rebalanced}}


ALIVE = {"a": "alive", "b": "alive", "c": "alive"}


def reasons(facts: list[Fact]) -> list[tuple[str, str, str]]:
    return [(f.type, f.subject, str(f.detail["reason"])) for f in facts]


def test_placed_for_a_new_service_a_scale_up_and_an_unplaced_instance() -> None:
    before = plan({"web/0": "a"}, unplaced=("web/1",))
    after = plan({"web/0": "a", "web/1": "b", "web/2": "c", "db/0": "a"})
    assert reasons(plan_facts(before, after, {"web": {}, "db": {}}, ALIVE)) == [
        ("placement.placed", "db/0", "service deployed"),
        ("placement.placed", "web/1", "was unplaced"),
        ("placement.placed", "web/2", "scaled up")]


def test_moves_say_why() -> None:
    before = plan({"web/0": "a", "web/1": "b", "web/2": "c"})
    after = plan({"web/0": "c", "web/1": "c", "web/2": "a"}, rebalanced=1)
    states = {"a": "dead", "b": "left", "c": "alive"}
    assert reasons(plan_facts(before, after, {"web": {}}, states)) == [
        ("placement.moved", "web/0", "a is dead"),
        ("placement.moved", "web/1", "b is left"),
        ("placement.moved", "web/2", "rebalanced")]
    forced = plan_facts(plan({"web/0": "a"}), plan({"web/0": "b"}), {"web": {}}, ALIVE)
    assert reasons(forced) == [("placement.moved", "web/0", "a no longer fits")]
    gone = plan_facts(plan({"web/0": "x"}), plan({"web/0": "b"}), {"web": {}}, ALIVE)
    assert reasons(gone) == [("placement.moved", "web/0", "x is gone")]


def test_removed_by_an_undeploy_a_scale_down_or_for_want_of_a_peer() -> None:
    before = plan({"web/0": "a", "web/1": "b", "db/0": "c", "cam/0": "a"})
    after = plan({"web/0": "a"}, unplaced=("cam/0",),
                 unplaceable={"cam": {"a": "dead", "b": "no camera", "c": "no camera"}})
    assert reasons(plan_facts(before, after, {"web": {}, "cam": {}}, ALIVE)) == [
        ("placement.unplaced", "cam/0",
         "no peer can take it (a: dead; b: no camera; 1 more)"),
        ("placement.removed", "db/0", "service undeployed"),
        ("placement.removed", "web/1", "scaled down")]


def test_garbage_in_a_plan_reads_as_nothing() -> None:
    assert plan_facts({"assignments": [1]}, {"assignments": {"x/0": 5}}, {}, {}) == []


# --------------------------------------------------------------------------- instances


def status(state: Any, started_at: float | None = None, code: int | None = None,
           restarts: int = 0, message: str = "") -> InstanceStatus:
    return InstanceStatus("web/0", "web", state, since=0.0, started_at=started_at,
                          exit_code=code, restarts=restarts, message=message,
                          pid=42 if state == "running" else None)


def test_a_first_run_its_end_and_the_restart() -> None:
    steps = [status("starting"), status("running", 10.0),
             status("exited", 10.0, code=3, message="exited with status 3"),
             status("starting", restarts=1), status("running", 20.0, restarts=1)]
    seen: dict[str, InstanceStatus] = {}
    ran: frozenset[str] = frozenset()
    got = []
    for step in steps:
        now = {"web/0": step}
        got += [(f.type, f.message) for f in instance_facts(seen, now, ran)]
        seen, ran = now, runs_seen(ran, now)
    assert got == [("instance.started", "started, pid 42"),
                   ("instance.exited", "exited with code 3: exited with status 3"),
                   ("instance.restarted", "restarted (quick restart 1), pid 42")]


def test_an_end_the_watcher_did_not_see_is_still_reported() -> None:
    """running (run 1) -> running (run 2): the snapshot of its exit was skipped."""
    facts = instance_facts({"web/0": status("running", 10.0)},
                           {"web/0": status("running", 20.0)}, frozenset({"web/0"}))
    assert [(f.type, f.message) for f in facts] == [
        ("instance.exited", "ended (not seen how)"), ("instance.restarted", "restarted, pid 42")]


def test_killed_idle_and_unchanged() -> None:
    facts = instance_facts({"web/0": status("running", 1.0)},
                           {"web/0": status("failed", 1.0, code=-9)})
    assert [f.message for f in facts] == ["killed by signal 9"]
    assert [f.type for f in instance_facts({}, {"web/0": status("idle")})] == ["instance.idle"]
    same = {"web/0": status("running", 1.0)}
    assert instance_facts(same, same) == []
    assert runs_seen(frozenset({"gone/0"}), same) == frozenset({"web/0"})
