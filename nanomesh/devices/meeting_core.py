"""The smart meeting room's control logic: the MCS state machine (issue 10).

The research's proof of concept (RESEARCH.md, scenario 1): a guest walks in
at the corridor's entrance; the PIR there (PD1) sees motion; the MCS has the
BLE scanner there (BS1) listen for the guest's tag; the authentication engine
(AE) says whose tag it is and which room they are invited to; user guidance
(UG) lights the LEDs towards the room; at the room's door the second PIR (PD2)
and scanner (BS2) confirm the same tag; the MCS stops the guidance and the
meeting room service (MRS) presents. Each visit walks

    DETECTED -> SCANNED -> AUTHENTICATED -> GUIDED -> PRESENTED

and a failure ends it in the matching NOT-state, logged and otherwise
ignored (the research: "an unknown tag or no tag: the person is ignored"):

- NOT_SCANNED: BS1 heard no tag (or did not answer in ``scan_timeout``);
- NOT_AUTHENTICATED: the tag is unknown to the AE (or the AE did not answer);
- NOT_GUIDED: UG could not guide;
- NOT_PRESENTED: PD2 saw motion but BS2 did not hear the guided tag ("PD2
  without BS2"), or the guest never reached the door in ``guide_timeout``.

This core decides and does no I/O: events and ``now`` (Unix seconds, so the
timeouts survive a restart on another peer) in, effects out. The shell
(``services/meeting-room/mcs``) calls the other nanoservices, feeds their
answers back, and saves `MeetingControl.to_json` in the instance's state blob
after every transition, so an MCS started elsewhere resumes the visit
(`MeetingControl.resume` re-issues what the current state still waits for).

Scans are *orders*: the core says which radio should scan for which visit
(`MeetingControl.pending_scan`); the BS instances ask for their orders and
post what they heard with the visit's number, so a result that arrives late,
or for an older visit, is ignored rather than moving a newer visit.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from nanomesh.errors import IllegalTransition, RemoteProtocolError


class Phase(enum.StrEnum):
    DETECTED = "DETECTED"
    SCANNED = "SCANNED"
    AUTHENTICATED = "AUTHENTICATED"
    GUIDED = "GUIDED"
    PRESENTED = "PRESENTED"
    NOT_SCANNED = "NOT_SCANNED"
    NOT_AUTHENTICATED = "NOT_AUTHENTICATED"
    NOT_GUIDED = "NOT_GUIDED"
    NOT_PRESENTED = "NOT_PRESENTED"


P = Phase
TRANSITIONS: Mapping[Phase, frozenset[Phase]] = {
    P.DETECTED: frozenset({P.SCANNED, P.NOT_SCANNED}),
    P.SCANNED: frozenset({P.AUTHENTICATED, P.NOT_AUTHENTICATED}),
    P.AUTHENTICATED: frozenset({P.GUIDED, P.NOT_GUIDED}),
    P.GUIDED: frozenset({P.PRESENTED, P.NOT_PRESENTED}),
    P.PRESENTED: frozenset(), P.NOT_SCANNED: frozenset(),
    P.NOT_AUTHENTICATED: frozenset(), P.NOT_GUIDED: frozenset(), P.NOT_PRESENTED: frozenset(),
}
"""Where each phase may go; a phase with nowhere to go ends the visit."""


@dataclass(frozen=True)
class Config:
    entrance_pir: str = "pd1"
    """The id (``[[devices]] id``) of the PIR at the corridor's entrance."""
    door_pir: str = "pd2"
    """The id of the PIR at the meeting room's door."""
    entrance_radio: str = "bs1"
    door_radio: str = "bs2"
    scan_timeout: float = 15.0
    """Seconds a scan order may take: the scan window (the research: 3-5 s)
    plus the scanner picking the order up and answering; then NOT_SCANNED
    (DETECTED) or NOT_PRESENTED (at the door)."""
    call_timeout: float = 15.0
    """Seconds the AE or UG may take to answer before the visit fails."""
    guide_timeout: float = 300.0
    """Seconds a guided guest has to reach the door (PD2) before NOT_PRESENTED."""
    history: int = 20
    """Finished visits kept (in the state blob, which is at most 64 KiB)."""


# ---------------------------------------------------------------- events in


@dataclass(frozen=True)
class Motion:
    """A PIR (by its id) saw motion."""
    pir: str


@dataclass(frozen=True)
class ScanResult:
    """A scanner's answer to a scan order: the tag UUIDs heard, strongest first."""
    radio: str
    visit: int
    tags: tuple[str, ...]


@dataclass(frozen=True)
class AuthResult:
    """The AE's answer for a tag: its person and room, or None (unknown tag)."""
    visit: int
    person: str | None
    room: str | None = None
    error: str = ""
    """Why there is no answer (the AE was unreachable), "" for an unknown tag."""


@dataclass(frozen=True)
class GuideResult:
    visit: int
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class Tick:
    """Time passed: timeouts are checked."""


Event = Motion | ScanResult | AuthResult | GuideResult | Tick


# ---------------------------------------------------------------- effects out


@dataclass(frozen=True)
class Authenticate:
    visit: int
    tag: str


@dataclass(frozen=True)
class Guide:
    visit: int
    person: str
    room: str


@dataclass(frozen=True)
class StopGuidance:
    visit: int


@dataclass(frozen=True)
class Present:
    visit: int
    person: str
    room: str


@dataclass(frozen=True)
class Entered:
    """Notification: a visit entered ``phase`` (the shell logs and saves)."""
    visit: int
    phase: Phase
    at: float
    why: str


@dataclass(frozen=True)
class Ignored:
    """Notification: an event that changed nothing, and why."""
    why: str


Effect = Authenticate | Guide | StopGuidance | Present | Entered | Ignored


# ---------------------------------------------------------------- the visit


@dataclass(frozen=True)
class Visit:
    id: int
    phase: Phase
    since: float
    """When it entered ``phase`` (Unix seconds)."""
    started: float
    tag: str | None = None
    person: str | None = None
    room: str | None = None
    door_at: float | None = None
    """When PD2 saw motion during GUIDED (a door scan is then pending)."""
    trail: tuple[tuple[str, float], ...] = ()
    """Every phase entered, with its time."""

    @property
    def done(self) -> bool:
        return not TRANSITIONS[self.phase]


def enter(visit: Visit, phase: Phase, now: float, **changes: Any) -> Visit:
    """``visit`` in ``phase``; IllegalTransition (and nothing changed) if the
    table forbids it."""
    if phase not in TRANSITIONS[visit.phase]:
        raise IllegalTransition(f"visit {visit.id}: {visit.phase} -> {phase} is not allowed")
    return replace(visit, phase=phase, since=now, trail=(*visit.trail, (phase.value, now)),
                   **changes)


@dataclass
class MeetingControl:
    """The MCS's state: the current visit, the finished ones, the next number."""

    config: Config = field(default_factory=Config)
    current: Visit | None = None
    finished: list[Visit] = field(default_factory=list)
    next_id: int = 1

    # ------------------------------------------------------------ queries

    def pending_scan(self, radio: str) -> int | None:
        """The visit a scan at ``radio`` is wanted for, if any."""
        v, c = self.current, self.config
        if v is None:
            return None
        if v.phase is P.DETECTED and radio == c.entrance_radio:
            return v.id
        if v.phase is P.GUIDED and v.door_at is not None and radio == c.door_radio:
            return v.id
        return None

    def resume(self) -> list[Effect]:
        """What the current visit still waits for, to ask again after a restart
        (scans need nothing: the scanners poll `pending_scan`)."""
        v = self.current
        if v is None or v.done:
            return []
        if v.phase is P.SCANNED and v.tag is not None:
            return [Authenticate(v.id, v.tag)]
        if v.phase in (P.AUTHENTICATED, P.GUIDED) and v.person and v.room:
            return [Guide(v.id, v.person, v.room)]  # the guest may still be walking
        return []

    # ------------------------------------------------------------ the step

    def step(self, event: Event, now: float) -> list[Effect]:
        """Feed one event at ``now``; the effects to carry out, in order."""
        match event:
            case Motion(pir):
                return self._motion(pir, now)
            case ScanResult():
                return self._scanned(event, now)
            case AuthResult():
                return self._authenticated(event, now)
            case GuideResult():
                return self._guided(event, now)
            case Tick():
                return self._tick(now)
        raise TypeError(f"not a meeting-room event: {event!r}")

    def _motion(self, pir: str, now: float) -> list[Effect]:
        c, v = self.config, self.current
        if pir == c.entrance_pir:
            if v is not None and not v.done:
                return [Ignored(f"{pir}: motion during visit {v.id} ({v.phase}), one guest "
                                "at a time")]
            visit = Visit(self.next_id, P.DETECTED, now, now, trail=((P.DETECTED.value, now),))
            self.next_id += 1
            self.current = visit
            return [Entered(visit.id, P.DETECTED, now,
                            f"{pir} saw motion; {c.entrance_radio} ordered to scan")]
        if pir == c.door_pir:
            if v is None or v.phase is not P.GUIDED:
                return [Ignored(f"{pir}: motion at the door with no guided guest")]
            if v.door_at is not None:
                return [Ignored(f"{pir}: motion again; the door scan is under way")]
            self.current = replace(v, door_at=now)
            return [Ignored(f"{pir}: motion at the door; {c.door_radio} ordered to scan")]
        return [Ignored(f"motion from an unknown PIR {pir!r}")]

    def _scanned(self, r: ScanResult, now: float) -> list[Effect]:
        if self.pending_scan(r.radio) != r.visit:
            return [Ignored(f"{r.radio}: a scan result for visit {r.visit} nobody waits for")]
        v = self.current
        assert v is not None  # pending_scan found it
        if v.phase is P.DETECTED:
            if not r.tags:
                return self._end(v, P.NOT_SCANNED, now, f"{r.radio} heard no tag: ignored")
            tag = r.tags[0]
            self.current = enter(v, P.SCANNED, now, tag=tag)
            return [Entered(v.id, P.SCANNED, now, f"{r.radio} heard tag {tag}"),
                    Authenticate(v.id, tag)]
        if v.tag in r.tags:
            assert v.person is not None and v.room is not None
            self.current = enter(v, P.PRESENTED, now)
            self._finish()
            return [Entered(v.id, P.PRESENTED, now, f"{r.radio} confirmed tag {v.tag} at "
                            f"the door"), StopGuidance(v.id), Present(v.id, v.person, v.room)]
        heard = ", ".join(r.tags) or "no tag"
        return [StopGuidance(v.id),
                *self._end(v, P.NOT_PRESENTED, now, f"PD2 without BS2: {r.radio} heard "
                           f"{heard}, not the guided tag {v.tag}")]

    def _authenticated(self, r: AuthResult, now: float) -> list[Effect]:
        v = self.current
        if v is None or v.id != r.visit or v.phase is not P.SCANNED:
            return [Ignored(f"an authentication for visit {r.visit} nobody waits for")]
        if r.person is None or r.room is None:
            why = (f"the AE did not answer: {r.error}" if r.error
                   else f"unknown tag {v.tag}: ignored")
            return self._end(v, P.NOT_AUTHENTICATED, now, why)
        self.current = enter(v, P.AUTHENTICATED, now, person=r.person, room=r.room)
        return [Entered(v.id, P.AUTHENTICATED, now, f"tag {v.tag} is {r.person}, invited "
                        f"to {r.room}"), Guide(v.id, r.person, r.room)]

    def _guided(self, r: GuideResult, now: float) -> list[Effect]:
        v = self.current
        if v is None or v.id != r.visit or v.phase is not P.AUTHENTICATED:
            return [Ignored(f"guidance news for visit {r.visit}: nothing to do")]
        if not r.ok:
            return self._end(v, P.NOT_GUIDED, now, f"UG could not guide: {r.detail}")
        self.current = enter(v, P.GUIDED, now)
        return [Entered(v.id, P.GUIDED, now, f"UG guides {v.person} to {v.room}: {r.detail}")]

    def _tick(self, now: float) -> list[Effect]:
        v, c = self.current, self.config
        if v is None or v.done:
            return []
        waited = now - v.since
        if v.phase is P.DETECTED and waited > c.scan_timeout:
            return self._end(v, P.NOT_SCANNED, now, f"{c.entrance_radio} did not answer in "
                             f"{c.scan_timeout:g} s")
        if v.phase is P.SCANNED and waited > c.call_timeout:
            return self._end(v, P.NOT_AUTHENTICATED, now, "the AE did not answer in "
                             f"{c.call_timeout:g} s")
        if v.phase is P.AUTHENTICATED and waited > c.call_timeout:
            return self._end(v, P.NOT_GUIDED, now, f"UG did not answer in {c.call_timeout:g} s")
        if v.phase is P.GUIDED:
            if v.door_at is not None and now - v.door_at > c.scan_timeout:
                return [StopGuidance(v.id), *self._end(
                    v, P.NOT_PRESENTED, now, f"PD2 without BS2: {c.door_radio} did not "
                    f"answer in {c.scan_timeout:g} s")]
            if v.door_at is None and waited > c.guide_timeout:
                return [StopGuidance(v.id), *self._end(
                    v, P.NOT_PRESENTED, now, f"the guest did not reach the door in "
                    f"{c.guide_timeout:g} s")]
        return []

    def _end(self, v: Visit, phase: Phase, now: float, why: str) -> list[Effect]:
        self.current = enter(v, phase, now)
        self._finish()
        return [Entered(v.id, phase, now, why)]

    def _finish(self) -> None:
        if self.current is not None:
            self.finished = [*self.finished, self.current][-self.config.history:]

    # ------------------------------------------------------------ the state blob

    def to_json(self) -> dict[str, Any]:
        return {"current": _visit_json(self.current), "next_id": self.next_id,
                "finished": [_visit_json(v) for v in self.finished]}

    @classmethod
    def from_json(cls, doc: object, config: Config | None = None) -> MeetingControl:
        """The state `to_json` saved; RemoteProtocolError names a bad field."""
        if not isinstance(doc, dict):
            raise RemoteProtocolError("malformed", "meeting state: must be a JSON object")
        next_id = doc.get("next_id")
        if isinstance(next_id, bool) or not isinstance(next_id, int) or next_id < 1:
            raise RemoteProtocolError("malformed",
                                      "meeting state: next_id must be a positive integer")
        finished = doc.get("finished")
        if not isinstance(finished, list):
            raise RemoteProtocolError("malformed", "meeting state: finished must be a list")
        current = doc.get("current")
        return cls(config or Config(), None if current is None else _visit_from(current),
                   [_visit_from(v) for v in finished], next_id)


def _visit_json(v: Visit | None) -> dict[str, Any] | None:
    if v is None:
        return None
    return {"id": v.id, "phase": v.phase.value, "since": v.since, "started": v.started,
            "tag": v.tag, "person": v.person, "room": v.room, "door_at": v.door_at,
            "trail": [list(t) for t in v.trail]}


def _visit_from(d: object) -> Visit:
    def bad(what: str) -> RemoteProtocolError:
        return RemoteProtocolError("malformed", f"meeting state: visit {what}")

    if not isinstance(d, dict):
        raise bad("must be an object")
    try:
        phase = Phase(str(d.get("phase")))
    except ValueError:
        raise bad(f"phase {d.get('phase')!r} is not a phase") from None
    vid = d.get("id")
    if isinstance(vid, bool) or not isinstance(vid, int):
        raise bad("id must be an integer")
    nums = [d.get(k) for k in ("since", "started")]
    if not all(isinstance(x, int | float) and not isinstance(x, bool) for x in nums):
        raise bad("since and started must be numbers")
    strs = {k: d.get(k) for k in ("tag", "person", "room")}
    if not all(x is None or isinstance(x, str) for x in strs.values()):
        raise bad("tag, person and room must be strings or null")
    door = d.get("door_at")
    if door is not None and (isinstance(door, bool) or not isinstance(door, int | float)):
        raise bad("door_at must be a number or null")
    trail = d.get("trail", [])
    if not isinstance(trail, list) or not all(
            isinstance(t, list) and len(t) == 2 and isinstance(t[0], str)
            and isinstance(t[1], int | float) for t in trail):
        raise bad("trail must be a list of [phase, time]")
    return Visit(vid, phase, float(nums[0]), float(nums[1]),  # type: ignore[arg-type]
                 strs["tag"], strs["person"], strs["room"],
                 None if door is None else float(door), tuple((p, float(t)) for p, t in trail))
