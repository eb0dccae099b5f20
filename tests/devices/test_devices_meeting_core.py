"""The MCS state machine (nanomesh.devices.meeting_core): table tests of the
research's flow, its NOT-states, and the state blob a new MCS resumes from."""

from __future__ import annotations

import pytest

from nanomesh.devices.meeting_core import (
    TRANSITIONS,
    Authenticate,
    AuthResult,
    Config,
    Entered,
    Guide,
    GuideResult,
    Ignored,
    MeetingControl,
    Motion,
    Phase,
    Present,
    ScanResult,
    StopGuidance,
    Tick,
    Visit,
    enter,
)
from nanomesh.errors import IllegalTransition, RemoteProtocolError

TAG = "e2c56db5dffb48d2b060d0f5a71096e0"


def phases(effects: list) -> list[str]:
    return [e.phase.value for e in effects if isinstance(e, Entered)]


def to_guided(m: MeetingControl, t: float = 100.0) -> None:
    m.step(Motion("pd1"), t)
    m.step(ScanResult("bs1", 1, (TAG,)), t + 3)
    m.step(AuthResult(1, "alice", "room-101"), t + 3.1)
    m.step(GuideResult(1, True, "3 LEDs"), t + 3.2)


def test_happy_path_walks_every_phase_with_its_effects() -> None:
    m = MeetingControl()
    assert m.pending_scan("bs1") is None
    e = m.step(Motion("pd1"), 100.0)
    assert phases(e) == ["DETECTED"] and m.pending_scan("bs1") == 1
    assert m.pending_scan("bs2") is None
    e = m.step(ScanResult("bs1", 1, (TAG, "other")), 103.0)
    assert phases(e) == ["SCANNED"] and e[-1] == Authenticate(1, TAG)
    assert m.pending_scan("bs1") is None
    e = m.step(AuthResult(1, "alice", "room-101"), 103.5)
    assert phases(e) == ["AUTHENTICATED"] and e[-1] == Guide(1, "alice", "room-101")
    e = m.step(GuideResult(1, True, "3 LEDs"), 103.6)
    assert phases(e) == ["GUIDED"]
    assert m.pending_scan("bs2") is None  # not before PD2 sees the guest
    e = m.step(Motion("pd2"), 110.0)
    assert not phases(e) and m.pending_scan("bs2") == 1
    e = m.step(ScanResult("bs2", 1, (TAG,)), 113.0)
    assert phases(e) == ["PRESENTED"]
    assert StopGuidance(1) in e and Present(1, "alice", "room-101") in e
    assert m.current is not None and m.current.done
    assert [p for p, _ in m.finished[-1].trail] == [
        "DETECTED", "SCANNED", "AUTHENTICATED", "GUIDED", "PRESENTED"]


@pytest.mark.parametrize(("events", "end", "why"), [
    ([ScanResult("bs1", 1, ())], "NOT_SCANNED", "heard no tag"),
    ([Tick()], "NOT_SCANNED", "did not answer"),
    ([ScanResult("bs1", 1, (TAG,)), AuthResult(1, None)], "NOT_AUTHENTICATED", "unknown tag"),
    ([ScanResult("bs1", 1, (TAG,)), AuthResult(1, None, error="down")],
     "NOT_AUTHENTICATED", "did not answer: down"),
    ([ScanResult("bs1", 1, (TAG,)), AuthResult(1, "a", "r"), GuideResult(1, False, "no LEDs")],
     "NOT_GUIDED", "no LEDs"),
])
def test_failures_end_the_visit_in_their_not_state(events: list, end: str, why: str) -> None:
    m = MeetingControl()
    m.step(Motion("pd1"), 0.0)
    last: list = []
    for i, ev in enumerate(events):
        last = m.step(ev, 1.0 + i if not isinstance(ev, Tick) else 1000.0)
    assert phases(last) == [end]
    assert why in last[-1].why
    assert m.current is not None and m.current.done and m.finished[-1].phase.value == end
    assert not any(isinstance(e, Guide | Present) for e in last)


def test_pd2_without_bs2_hearing_the_tag_is_not_presented() -> None:
    m = MeetingControl()
    to_guided(m)
    m.step(Motion("pd2"), 110.0)
    e = m.step(ScanResult("bs2", 1, ("someone-else",)), 112.0)
    assert phases(e) == ["NOT_PRESENTED"] and StopGuidance(1) in e
    assert "PD2 without BS2" in e[-1].why
    assert not any(isinstance(x, Present) for x in e)


def test_pd2_and_bs2_silent_times_out_not_presented() -> None:
    m = MeetingControl(Config(scan_timeout=5))
    to_guided(m)
    m.step(Motion("pd2"), 110.0)
    assert m.step(Tick(), 114.0) == []
    e = m.step(Tick(), 116.0)
    assert phases(e) == ["NOT_PRESENTED"] and "PD2 without BS2" in e[-1].why


def test_guest_never_at_the_door_times_out() -> None:
    m = MeetingControl(Config(guide_timeout=60))
    to_guided(m, 100.0)
    assert m.step(Tick(), 150.0) == []
    assert phases(m.step(Tick(), 170.0)) == ["NOT_PRESENTED"]


def test_ignored_events_change_nothing() -> None:
    m = MeetingControl()
    assert isinstance(m.step(Motion("pd2"), 1.0)[0], Ignored)  # door, nobody guided
    assert isinstance(m.step(Motion("pir9"), 1.0)[0], Ignored)
    m.step(Motion("pd1"), 2.0)
    before = m.to_json()
    for ev in (Motion("pd1"), ScanResult("bs2", 1, (TAG,)), ScanResult("bs1", 7, (TAG,)),
               AuthResult(1, "alice", "r"), GuideResult(1, True)):
        out = m.step(ev, 3.0)
        assert len(out) == 1 and isinstance(out[0], Ignored), ev
    assert m.to_json() == before


def test_a_new_visit_starts_after_one_ended() -> None:
    m = MeetingControl()
    m.step(Motion("pd1"), 1.0)
    m.step(ScanResult("bs1", 1, ()), 2.0)
    assert phases(m.step(Motion("pd1"), 3.0)) == ["DETECTED"]
    assert m.pending_scan("bs1") == 2 and len(m.finished) == 1


def test_transition_table_forbids_skipping_and_leaving_an_end() -> None:
    v = Visit(1, Phase.DETECTED, 0.0, 0.0)
    with pytest.raises(IllegalTransition):
        enter(v, Phase.GUIDED, 1.0)
    assert v.phase is Phase.DETECTED
    for phase, targets in TRANSITIONS.items():
        if not targets:
            with pytest.raises(IllegalTransition):
                enter(Visit(1, phase, 0.0, 0.0), Phase.DETECTED, 1.0)


def test_state_blob_round_trip_resumes_the_visit() -> None:
    m = MeetingControl()
    to_guided(m)
    m2 = MeetingControl.from_json(m.to_json())
    assert m2.to_json() == m.to_json()
    assert m2.resume() == [Guide(1, "alice", "room-101")]
    m2.step(Motion("pd2"), 120.0)
    assert phases(m2.step(ScanResult("bs2", 1, (TAG,)), 121.0)) == ["PRESENTED"]
    m3 = MeetingControl()
    m3.step(Motion("pd1"), 0.0)
    m3.step(ScanResult("bs1", 1, (TAG,)), 1.0)
    assert MeetingControl.from_json(m3.to_json()).resume() == [Authenticate(1, TAG)]


@pytest.mark.parametrize("doc", [
    None, [], {"next_id": 0, "finished": []}, {"next_id": 1, "finished": {}},
    {"next_id": 2, "finished": [], "current": {"id": 1, "phase": "LOST", "since": 0,
                                               "started": 0}},
    {"next_id": 2, "finished": [], "current": {"id": "1", "phase": "DETECTED", "since": 0,
                                               "started": 0}},
    {"next_id": 2, "finished": [], "current": {"id": 1, "phase": "DETECTED", "since": "x",
                                               "started": 0}},
])
def test_a_bad_state_blob_is_rejected_with_its_field(doc: object) -> None:
    with pytest.raises(RemoteProtocolError, match="meeting state"):
        MeetingControl.from_json(doc)
