"""Unit tests of the suspicion timer, local health and the broadcast queue."""

import pytest

from nanomesh.gossip.awareness import Awareness
from nanomesh.gossip.broadcast import BroadcastQueue
from nanomesh.gossip.suspicion import Suspicion
from nanomesh.wire import Alive, Suspect
from nanomesh.wire.codec import encoded_size


def test_suspicion_starts_at_max_and_first_accuser_is_not_a_confirmation() -> None:
    """Lifeguard §4.3: the accuser that started the suspicion is not independent."""
    s = Suspicion("a", start=100.0, expected=2, min_timeout=1.0, max_timeout=6.0)
    assert s.deadline == pytest.approx(106.0)
    assert not s.confirm("a")
    assert s.deadline == pytest.approx(106.0)


def test_suspicion_shrinks_with_independent_confirmations_down_to_min() -> None:
    s = Suspicion("a", start=100.0, expected=2, min_timeout=1.0, max_timeout=6.0)
    assert s.confirm("b")
    first = s.deadline
    assert 101.0 < first < 106.0
    assert not s.confirm("b"), "a repeated confirmation counts once"
    assert s.confirm("c")
    assert s.deadline == pytest.approx(101.0)
    assert not s.confirm("d"), "beyond K confirmations nothing changes"
    assert s.deadline == pytest.approx(101.0)


def test_awareness_is_bounded_and_scales_timeouts() -> None:
    """Lifeguard §4.1: timeouts stretch by (score + 1), score within [0, max-1]."""
    a = Awareness(max_multiplier=3)
    a.apply_delta(-1)
    assert a.score == 0
    a.apply_delta(5)
    assert a.score == 2
    assert a.scale(0.5) == pytest.approx(1.5)
    a.apply_delta(-1)
    assert a.scale(0.5) == pytest.approx(1.0)


def _alive(name: str, inc: int = 0) -> Alive:
    return Alive(name, ("10.0.0.1", 7946), inc, 0)


def test_broadcast_newer_update_about_a_peer_replaces_older() -> None:
    q = BroadcastQueue(encoded_size)
    q.queue("x", _alive("x", 1))
    q.queue("x", Suspect("x", 1, "y"))
    assert len(q) == 1
    assert q.take(1400, limit=3) == [Suspect("x", 1, "y")]


def test_broadcast_is_sent_limit_times_then_dropped() -> None:
    """SWIM §4.1 piggybacking with memberlist's bounded retransmits."""
    q = BroadcastQueue(encoded_size)
    q.queue("x", _alive("x"))
    sent = [q.take(1400, limit=3) for _ in range(5)]
    assert [len(s) for s in sent] == [1, 1, 1, 0, 0]


def test_broadcast_fewest_transmits_first_and_budget_respected() -> None:
    q = BroadcastQueue(encoded_size)
    q.queue("a", _alive("a"))
    q.take(1400, limit=10)  # "a" has now been sent once
    q.queue("b", _alive("b"))
    size = encoded_size(_alive("b"))
    assert q.take(size, limit=10) == [_alive("b")], "fresh news first; only one fits"
    assert q.take(0, limit=10) == []


def test_broadcast_prune_keeps_the_freshest() -> None:
    q = BroadcastQueue(encoded_size)
    for i in range(5):
        q.queue(f"n{i}", _alive(f"n{i}"))
    q.prune(2)
    assert {m.name for m in q.take(1400, limit=10)} == {"n4", "n3"}
