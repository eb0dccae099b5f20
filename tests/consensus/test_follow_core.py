"""When a learner pulls the committed state (`nanomesh.consensus.follow_core`):
a table of transitions, the back-off formula, the gossip readers, and a
Hypothesis machine for the invariants (the held version never decreases,
one pull at a time, a failure is never retried before its back-off)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from nanomesh.consensus.follow_core import (
    FollowConfig,
    FollowCore,
    Pull,
    announced_version,
    gossiped_leader,
    pull_sources,
    retry_delay,
)
from nanomesh.errors import ConfigError

CFG = FollowConfig()  # recheck 10 s, back-off 0.5 s -> 10 s
VOTERS = ["leader", "b", "c"]

# One step: ("announce", version) | ("poll", now) -> expected Pull or None
#           | ("pulled", now, version or None)
SCENARIOS: dict[str, tuple[tuple[int, int] | None, list[tuple[Any, ...]]]] = {
    "nothing held: pull from the leader at once": (None, [
        ("poll", 0.0, Pull("leader", None)),
    ]),
    "up to date: nothing until the recheck period": ((0, 5), [
        ("announce", (0, 5)), ("poll", 0.0, Pull("leader", (0, 5))), ("pulled", 0.1, (0, 5)),
        ("poll", 5.0, None), ("poll", 10.0, None), ("poll", 10.1, Pull("leader", (0, 5))),
    ]),
    "a newer announcement pulls at once": ((0, 5), [
        ("poll", 0.0, Pull("leader", (0, 5))), ("pulled", 0.0, (0, 5)),
        ("announce", (0, 6)), ("poll", 0.2, Pull("leader", (0, 5))), ("pulled", 0.3, (0, 6)),
        ("poll", 0.4, None),
    ]),
    "an older or equal announcement does not": ((0, 5), [
        ("poll", 0.0, Pull("leader", (0, 5))), ("pulled", 0.0, (0, 5)),
        ("announce", (0, 4)), ("poll", 1.0, None), ("announce", (0, 5)), ("poll", 1.0, None),
    ]),
    "a new control-plane epoch outranks any revision": ((0, 50), [
        ("poll", 0.0, Pull("leader", (0, 50))), ("pulled", 0.0, (0, 50)),
        ("announce", (1, 2)), ("poll", 0.1, Pull("leader", (0, 50))), ("pulled", 0.1, (1, 2)),
        ("poll", 0.2, None),
    ]),
    "failures back off 0.5, 1, 2 s and move to the next voter": (None, [
        ("poll", 0.0, Pull("leader", None)), ("pulled", 0.0, None),
        ("poll", 0.4, None), ("poll", 0.5, Pull("b", None)), ("pulled", 0.5, None),
        ("poll", 1.4, None), ("poll", 1.5, Pull("c", None)), ("pulled", 1.5, None),
        ("poll", 3.4, None), ("poll", 3.5, Pull("leader", None)), ("pulled", 3.5, (0, 1)),
        ("announce", (0, 2)), ("poll", 3.5, Pull("leader", (0, 1))),
    ]),
    "a lagging voter is no failure: the next one is asked soon": ((0, 1), [
        ("announce", (0, 3)), ("poll", 0.0, Pull("leader", (0, 1))), ("pulled", 0.0, (0, 2)),
        ("poll", 0.4, None), ("poll", 0.5, Pull("b", (0, 2))), ("pulled", 0.5, (0, 3)),
        ("poll", 0.6, None),
    ]),
    "an answer older than held (a superseded voter) is a failure": ((1, 3), [
        ("poll", 0.0, Pull("leader", (1, 3))), ("pulled", 0.0, (0, 9)),
        ("poll", 0.5, Pull("b", (1, 3))), ("pulled", 0.5, (1, 3)),
    ]),
    "one pull at a time": (None, [
        ("poll", 0.0, Pull("leader", None)), ("announce", (0, 9)), ("poll", 0.1, None),
        ("poll", 99.0, None), ("pulled", 99.0, (0, 9)), ("poll", 99.0, None),
    ]),
}


@pytest.mark.parametrize("held, steps", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_transitions(held: tuple[int, int] | None, steps: list[tuple[Any, ...]]) -> None:
    core = FollowCore(CFG, held)
    for i, step in enumerate(steps):
        match step:
            case ("announce", version):
                core.announce(version)
            case ("poll", now, expected):
                assert core.poll(now, VOTERS) == expected, f"step {i}: {step}"
            case ("pulled", now, version):
                core.pulled(now, version)


def test_rechecks_spread_over_the_voters_announcements_go_to_the_leader() -> None:
    core = FollowCore(CFG, (0, 1), spread=4)
    assert core.poll(0.0, VOTERS) == Pull("b", (0, 1)), "a recheck: voter 4 % 3"
    core.pulled(0.0, (0, 1))
    assert core.poll(10.0, VOTERS) == Pull("b", (0, 1)), "the same one next time"
    core.pulled(10.0, (0, 1))
    core.announce((0, 2))
    assert core.poll(10.0, VOTERS) == Pull("leader", (0, 1)), "news: the leader first"
    core.pulled(10.0, None)
    core.announce((0, 2))
    assert core.poll(10.5, VOTERS) == Pull("b", (0, 1)), "then the next one"


def test_no_voters_no_pull() -> None:
    core = FollowCore(CFG)
    assert core.poll(0.0, []) is None
    assert core.poll(0.0, ["a"]) == Pull("a", None)


def test_next_wakeup() -> None:
    core = FollowCore(CFG, (0, 1))
    assert core.next_wakeup() == -math.inf, "nothing asked yet: due now"
    assert core.poll(0.0, VOTERS) is not None
    assert core.next_wakeup() == math.inf, "a pull in flight: woken when it ends"
    core.pulled(1.0, (0, 1))
    assert core.next_wakeup() == 11.0, "up to date: the recheck"
    core.announce((0, 2))
    assert core.next_wakeup() == 1.0, "behind: at once"
    assert core.poll(1.0, VOTERS) is not None
    core.pulled(2.0, None)
    assert core.next_wakeup() == 2.5, "after a failure: its back-off"


@pytest.mark.parametrize("failures, delay", [(1, 0.5), (2, 1.0), (3, 2.0), (5, 8.0), (6, 10.0),
                                             (1000, 10.0)])
def test_retry_delay(failures: int, delay: float) -> None:
    assert retry_delay(failures, CFG) == delay


def test_config_rejects_impossible_values() -> None:
    with pytest.raises(ConfigError, match="recheck_period"):
        FollowConfig(recheck_period=0).check()
    with pytest.raises(ConfigError, match="backoff_max"):
        FollowConfig(backoff_min=2, backoff_max=1).check()


def test_announced_version_counts_voters_only() -> None:
    sections = [
        {"role": "voter", "addr": "a", "cluster_epoch": 0, "revision": 7},
        {"role": "learner", "addr": "b", "cluster_epoch": 0, "revision": 99},
        {"role": "voter", "addr": "c", "cluster_epoch": 1, "revision": 2},
        {"role": "voter", "addr": "d", "revision": True}, "garbage", None,
        {"role": "voter", "addr": "e", "cluster_epoch": -1, "revision": 100},
    ]
    assert announced_version(sections) == (1, 2)
    assert announced_version(sections[:2]) == (0, 7)
    assert announced_version(sections[1:2]) is None


def test_pull_sources_leader_first() -> None:
    sections = [
        {"role": "voter", "addr": "c", "leader": "b", "term": 4},
        {"role": "voter", "addr": "a", "leader": "a", "term": 3},  # deposed, says it leads
        {"role": "voter", "addr": "b", "leader": "b", "term": 4},
        {"role": "learner", "addr": "z", "leader": "b", "term": 4},
        {"role": "voter", "addr": 5}, "garbage",
    ]
    assert pull_sources(sections) == ["b", "a", "c"]
    assert pull_sources([]) == []


def test_gossiped_leader_is_the_self_declared_one_at_the_highest_term() -> None:
    sections = [
        {"role": "voter", "addr": "a", "leader": "a", "term": 3, "voters": ["a", "b"]},
        {"role": "voter", "addr": "b", "leader": "b", "term": 5, "voters": ["b", "c"]},
        {"role": "voter", "addr": "c", "leader": "b", "term": 5, "voters": ["b", "c"]},
        {"role": "learner", "addr": "z", "leader": "z", "term": 9, "voters": ["z"]},
        {"role": "voter", "addr": "d", "leader": "d", "term": 7, "voters": "x"}, None,
    ]
    assert gossiped_leader(sections) == ("b", 5, frozenset({"b", "c"}))
    assert gossiped_leader(sections[2:]) is None


class FollowMachine(RuleBasedStateMachine):
    """Any order of announcements, polls and pull results."""

    def __init__(self) -> None:
        super().__init__()
        self.core = FollowCore(FollowConfig(recheck_period=3.0, backoff_min=0.5,
                                            backoff_max=4.0))
        self.now = 0.0
        self.in_flight: Pull | None = None
        self.failed_at: float | None = None
        self.highest_held = (-1, -1)

    @rule(version=st.tuples(st.integers(0, 2), st.integers(0, 20)))
    def announce(self, version: tuple[int, int]) -> None:
        self.core.announce(version)

    @rule(dt=st.floats(0.0, 5.0))
    def poll(self, dt: float) -> None:
        self.now += dt
        pull = self.core.poll(self.now, VOTERS)
        if pull is not None:
            assert self.in_flight is None, "one pull at a time"
            if self.failed_at is not None:
                assert self.now - self.failed_at >= 0.5, "a failure waits its back-off"
            assert pull.have == self.core.held
            self.in_flight = pull

    @precondition(lambda self: self.in_flight is not None)
    @rule(result=st.none() | st.tuples(st.integers(0, 2), st.integers(0, 20)))
    def pulled(self, result: tuple[int, int] | None) -> None:
        self.core.pulled(self.now, result)
        self.in_flight = None
        good = result is not None and result >= self.highest_held
        self.failed_at = None if good else self.now

    @invariant()
    def held_never_decreases(self) -> None:
        held = self.core.held or (-1, -1)
        assert held >= self.highest_held
        self.highest_held = held


TestFollowMachine = FollowMachine.TestCase
TestFollowMachine.settings = settings(max_examples=200, stateful_step_count=40,
                                      deadline=None)
