"""The rolling upgrade's plan core (`nanomesh.cli.upgrade_core`): order, the
per-peer steps, stopping on the first failure, the health-gated rollback."""

from __future__ import annotations

import pytest

from nanomesh.cli.upgrade_core import (
    Ask,
    Confirm,
    Finished,
    PeerSeen,
    Phase,
    RollBack,
    Upgrade,
    Wait,
    order,
)
from nanomesh.errors import IllegalTransition

NEW, OLD = "0.2.0", "0.1.0"
HEALTHY_NEW = PeerSeen(alive=True, version=NEW, healthy=True)
HEALTHY_OLD = PeerSeen(alive=True, version=OLD, healthy=True, uptime=0.5)
"""Back on the old version after a restart (up for less than the wait)."""
STILL_OLD = PeerSeen(alive=True, version=OLD, healthy=True, uptime=3600.0)
"""The old process, not yet gone (its leave raises its incarnation meanwhile)."""
DOWN = PeerSeen(alive=False, version=None, healthy=False)
STARTING = PeerSeen(alive=True, version=NEW, healthy=False)


@pytest.mark.parametrize(("peers", "leader", "want"), [
    (["c", "a", "b"], "a", ["b", "c", "a"]),
    (["c", "a", "b"], None, ["a", "b", "c"]),
    (["a"], "a", ["a"]),
    (["b", "a"], "z", ["a", "b"]),               # a leader not among them: plain order
])
def test_order_is_by_name_with_the_leader_last(peers: list[str], leader: str | None,
                                                want: list[str]) -> None:
    assert order(peers, leader) == want


def run(up: Upgrade, script: dict[str, list[object]], step: float = 1.0
        ) -> tuple[Upgrade, list[object]]:
    """Drive `up` to the end: each peer's answers and observations are
    popped from ``script[peer]`` in order; returns the final state and the
    actions taken."""
    now, actions = 0.0, []
    for _ in range(1000):
        action = up.next_action()
        actions.append(action)
        match action:
            case Finished():
                return up, actions
            case Ask(peer) | RollBack(peer):
                accepted, detail = script[peer].pop(0)  # type: ignore[misc]
                up = up.answered(accepted, detail, now, old_version=OLD)
            case Wait(peer):
                seen = script[peer].pop(0) if script[peer] else script[peer + "*"][0]
                assert isinstance(seen, PeerSeen)
                up = up.seen(seen, now)
            case Confirm():
                up = up.confirmed(now)
        now += step
    raise AssertionError("did not finish")


def test_every_peer_in_turn_then_done() -> None:
    up = Upgrade(NEW, ("a", "b", "leader"))
    script: dict[str, list[object]] = {
        p: [(True, ""), STILL_OLD, DOWN, STARTING, HEALTHY_NEW] for p in up.peers}
    up, actions = run(up, script)
    assert up.phase is Phase.DONE
    assert [type(a).__name__ for a in actions[:7]] == ["Ask", "Wait", "Wait", "Wait", "Wait",
                                                         "Confirm", "Ask"]
    assert [a.peer for a in actions if isinstance(a, Ask)] == ["a", "b", "leader"]
    assert [r.outcome for r in up.results] == ["upgraded"] * 3
    assert up.report()[-1] == f"all 3 peers run {NEW}"


def test_a_refusal_stops_the_run_and_leaves_the_rest_on_the_old_version() -> None:
    up = Upgrade(NEW, ("a", "b", "c"))
    script: dict[str, list[object]] = {
        "a": [(True, ""), HEALTHY_NEW], "b": [(False, "no install root")], "c": []}
    up, actions = run(up, script)
    assert up.phase is Phase.FAILED
    assert not any(isinstance(a, Ask) and a.peer == "c" for a in actions)
    assert [(r.peer, r.outcome) for r in up.results] == [
        ("a", "upgraded"), ("b", "failed"), ("c", "not reached")]
    assert up.report()[-1] == "stopped: b: refused the upgrade: no install root"


def test_a_peer_that_does_not_rejoin_is_rolled_back_and_the_run_stops() -> None:
    up = Upgrade(NEW, ("a", "b"), timeouts=(10.0, 10.0))
    script: dict[str, list[object]] = {
        "a": [(True, ""), *[STARTING] * 10, (True, ""), DOWN, HEALTHY_OLD], "b": []}
    up, actions = run(up, script)
    assert RollBack("a") in actions and Confirm("a") not in actions
    assert up.phase is Phase.FAILED
    assert [(r.peer, r.outcome) for r in up.results] == [("a", "rolled back"),
                                                         ("b", "not reached")]
    assert "not healthy on 0.2.0 within 10 s" in up.failure  # type: ignore[operator]
    assert up.failure.endswith("rolled back to 0.1.0")  # type: ignore[union-attr]


def test_a_peer_whose_launcher_rolled_it_back_stops_the_run_without_a_rollback() -> None:
    up = Upgrade(NEW, ("a", "b"))
    script: dict[str, list[object]] = {"a": [(True, ""), STILL_OLD, DOWN, HEALTHY_OLD],
                                       "b": []}
    up, actions = run(up, script)
    assert RollBack("a") not in actions
    assert up.results[0].outcome == "rolled back"
    assert "new version did not start" in up.results[0].detail


def test_a_rollback_that_fails_too_is_reported_as_failed() -> None:
    up = Upgrade(NEW, ("a",), timeouts=(3.0, 3.0))
    script: dict[str, list[object]] = {"a": [(True, ""), DOWN, DOWN, DOWN,
                                             (False, "connection refused")], "a*": [DOWN]}
    up, _ = run(up, script)
    assert up.results[0].outcome == "failed"
    assert "rollback request failed (connection refused)" in up.results[0].detail
    assert "not healthy on its old version 0.1.0 either" in up.results[0].detail


@pytest.mark.parametrize(("index", "leader", "want"), [
    (0, "a", ("b", "c", "a")),        # the leader moved to a: it goes last
    (0, "c", ("a", "b", "c")),        # already last
    (1, "a", ("a", "b", "c")),        # a is done: nothing to move
    (2, "c", ("a", "b", "c")),        # the last one left is the leader: it goes now
    (0, None, ("a", "b", "c")),
])
def test_the_leader_stays_last_when_it_moves(index: int, leader: str | None,
                                             want: tuple[str, ...]) -> None:
    up = Upgrade(NEW, ("a", "b", "c"), index=index)
    assert up.leader_now(leader).peers == want


def test_the_next_peer_waits_until_the_voters_are_back() -> None:
    """A restarted voter comes back as a learner and is promoted again a few
    seconds later: until the voter count is what it was, no next peer."""
    up = Upgrade(NEW, ("a", "b")).answered(True, "", 0.0, old_version=OLD, voters=3)
    fewer = PeerSeen(alive=True, version=NEW, healthy=True, voters=2, uptime=1.0)
    up = up.seen(fewer, 1.0)
    assert up.phase is Phase.REJOIN
    up = up.seen(PeerSeen(alive=True, version=NEW, healthy=True, voters=3, uptime=6.0), 6.0)
    assert up.phase is Phase.CONFIRM and up.results[0].seconds == 6.0


def test_a_peer_already_on_the_target_is_skipped() -> None:
    up = Upgrade(NEW, ("a", "b"))
    up = up.answered(True, "", 0.0, already=True)
    assert (up.current, up.phase) == ("b", Phase.ASK)
    assert up.results[0].outcome == "upgraded"


@pytest.mark.parametrize("phase", [Phase.ASK, Phase.CONFIRM, Phase.DONE])
def test_an_observation_out_of_phase_is_illegal_and_changes_nothing(phase: Phase) -> None:
    up = Upgrade(NEW, ("a",), phase=phase)
    with pytest.raises(IllegalTransition):
        up.seen(HEALTHY_NEW, 1.0)
    assert up.phase is phase


def test_a_confirmation_out_of_phase_is_illegal() -> None:
    with pytest.raises(IllegalTransition):
        Upgrade(NEW, ("a",), phase=Phase.REJOIN).confirmed(1.0)
