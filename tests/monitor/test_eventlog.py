"""The event ring (`nanomesh.monitor.eventlog`): numbered, bounded, and
honest about what a reader missed; the decoder rejects what is not an event."""

from __future__ import annotations

import json

import pytest

from nanomesh.monitor.eventlog import Event, EventError, EventLog, Fact


def fact(i: int = 0) -> Fact:
    return Fact("member.suspect", f"peer-{i}", "suspected by peer-0", {"by": "peer-0"})


def test_sequence_numbers_start_at_one_and_since_reads_the_rest() -> None:
    log = EventLog(capacity=10)
    assert log.last_seq == 0 and log.since(0).events == []
    events = [log.append(fact(i), now=100.0 + i) for i in range(4)]
    assert [e.seq for e in events] == [1, 2, 3, 4]
    got = log.since(2)
    assert [e.seq for e in got.events] == [3, 4] and got.missed == 0
    assert log.since(4).events == []


def test_a_full_ring_drops_the_oldest_and_says_how_many_a_reader_missed() -> None:
    log = EventLog(capacity=3)
    for i in range(7):
        log.append(fact(i), now=float(i))
    assert len(log) == 3 and log.last_seq == 7
    got = log.since(2)  # saw 1-2; 3-4 fell out; 5-7 held
    assert [e.seq for e in got.events] == [5, 6, 7] and got.missed == 2
    assert log.since(0).missed == 4
    assert log.since(5).missed == 0


def test_a_number_from_a_previous_life_reads_from_the_start() -> None:
    log = EventLog()
    log.append(fact(), now=1.0)
    assert [e.seq for e in log.since(500).events] == [1]
    with pytest.raises(ValueError):
        log.since(-1)


def test_an_unknown_type_is_a_bug_of_ours() -> None:
    with pytest.raises(ValueError, match="unknown event type"):
        Fact("member.exploded", "x", "boom")


def test_json_round_trip_and_a_newer_peers_types_are_accepted() -> None:
    event = EventLog().append(fact(3), now=1796593519.2671)
    doc = json.loads(json.dumps(event.to_dict()))
    assert doc["time"] == 1796593519.267
    back = Event.from_dict(doc)
    assert back.seq == 1 and back.fact.subject == "peer-3" and dict(back.fact.detail) == {
        "by": "peer-0"}
    newer = Event.from_dict({**doc, "type": "member.teleported"})
    assert newer.fact.type == "member.teleported"


@pytest.mark.parametrize("doc, words", [
    ([], "JSON object"),
    ({"seq": 0, "time": 1, "type": "t", "subject": "s", "message": "m"}, "seq"),
    ({"seq": True, "time": 1, "type": "t", "subject": "s", "message": "m"}, "seq"),
    ({"seq": 1, "time": "now", "type": "t", "subject": "s", "message": "m"}, "time"),
    ({"seq": 1, "time": 1, "type": 5, "subject": "s", "message": "m"}, "type"),
    ({"seq": 1, "time": 1, "type": "t", "subject": "s"}, "message"),
    ({"seq": 1, "time": 1, "type": "t", "subject": "s", "message": "m",
      "detail": {"x": {"nested": 1}}}, "detail"),
])
def test_garbage_is_refused_with_a_clear_error(doc: object, words: str) -> None:
    with pytest.raises(EventError, match=words):
        Event.from_dict(doc)
