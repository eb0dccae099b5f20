"""Candidacies that elect nobody space out the next ones
(`nanomesh.consensus.election_backoff`)."""

from __future__ import annotations

import random

import pytest

from nanomesh.consensus.election_backoff import (
    MAX_DOUBLINGS,
    ElectionBackoff,
    stretched_deadline,
)


def test_a_failover_and_its_split_vote_retry_keep_the_timeout_then_it_doubles() -> None:
    backoff = ElectionBackoff()
    factors, caps = [], []
    for _ in range(MAX_DOUBLINGS + 4):
        factors.append(backoff.candidacy())
        caps.append(backoff.at_cap)
    assert factors == [1, 1, 2, 4, 8, 8, 8], \
        "x1 (failover), x1 (the retry after a split vote), then doubling, capped"
    assert caps == [False, False, False, False, True, False, False], "warn once, at the cap"


def test_a_leader_heard_ends_the_streak() -> None:
    backoff = ElectionBackoff()
    backoff.candidacy()
    backoff.candidacy()
    backoff.leader_known()
    assert backoff.streak == 0
    assert backoff.candidacy() == 1, "the next election after a leader is a normal one"


def test_zero_doublings_turns_it_off_and_negative_settings_are_refused() -> None:
    off = ElectionBackoff(max_doublings=0)
    assert [off.candidacy() for _ in range(4)] == [1, 1, 1, 1]
    eager = ElectionBackoff(free_retries=0)
    assert [eager.candidacy() for _ in range(3)] == [1, 2, 4]
    with pytest.raises(ValueError, match="max_doublings"):
        ElectionBackoff(max_doublings=-1)
    with pytest.raises(ValueError, match="free_retries"):
        ElectionBackoff(free_retries=-1)


def test_stretched_deadline_draws_a_timeout_and_scales_it() -> None:
    assert stretched_deadline(now=100.0, draw=0.0, low=0.35, high=0.7, factor=1) == 100.35
    assert stretched_deadline(now=100.0, draw=0.5, low=0.3, high=0.7, factor=4) == \
        pytest.approx(102.0)
    with pytest.raises(ValueError, match="draw"):
        stretched_deadline(now=0.0, draw=1.0, low=0.35, high=0.7, factor=2)


class _FakeSyncObj:
    """The pysyncobj fields `RaftNode._space_out_elections` reads and writes."""

    def __init__(self) -> None:
        self._SyncObj__raftState = 0  # follower
        self.raftCurrentTerm = 1
        self._SyncObj__raftElectionDeadline = 0.0
        self.leader: object | None = None

    def _getLeader(self) -> object | None:
        return self.leader

    def campaign(self, now: float, timeout: float = 0.5) -> None:
        """What pysyncobj's tick does when the election deadline passed."""
        self._SyncObj__raftState = 1
        self.raftCurrentTerm += 1
        self._SyncObj__raftElectionDeadline = now + timeout


def test_the_raft_shell_stretches_each_candidacy_of_a_streak_once() -> None:
    """`_pysyncobj.RaftNode._space_out_elections` on pysyncobj's fields: a
    new term as candidate is a candidacy (stretched once, however many ticks
    see it); a leader heard ends the streak."""
    import pysyncobj

    from nanomesh.consensus._pysyncobj import RaftNode

    obj = _FakeSyncObj()
    shell = RaftNode.__new__(RaftNode)  # only the fields the method uses
    shell._obj = obj
    shell._backoff = ElectionBackoff()
    shell._candidacy_term = -1
    shell._rng = random.Random(7)
    shell._election_timeout = (0.5, 0.5)
    clock = pysyncobj.syncobj.monotonicTime

    def timeout_after_tick() -> float:
        now = clock()
        shell._space_out_elections()
        return obj._SyncObj__raftElectionDeadline - now

    shell._space_out_elections()  # a follower without a leader: nothing
    waits = []
    for _ in range(3):
        obj.campaign(clock())
        waits.append(timeout_after_tick())
        assert timeout_after_tick() == pytest.approx(waits[-1], abs=0.05), "once per term"
    assert [round(w, 1) for w in waits] == [0.5, 0.5, 1.0]
    obj._SyncObj__raftState, obj.leader = 0, "b:7948"
    shell._space_out_elections()
    obj.campaign(clock())
    assert timeout_after_tick() == pytest.approx(0.5, abs=0.05), "a leader ended the streak"
