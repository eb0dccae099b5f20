"""The ring of recent mesh events one peer keeps (``GET /v1/events``).

Like Consul's and Nomad's event streams, the log is in memory only and
bounded: it answers "what happened lately", not "everything since the mesh
began" (the peer's log file is for that). Every event gets the next sequence
number of this peer's life, so a reader that remembers the last number it
saw asks for the rest with `EventLog.since` and learns how many it missed if
the ring dropped them meanwhile. Sequence numbers start at 1 again when the
peer restarts; the SSE stream tells lives apart (`nanomesh.monitor.sse`).

Pure: the caller passes the time (seconds since the epoch: shown to people
and compared across peers, so wall clock rather than trio's).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

DEFAULT_CAPACITY = 1000
"""Events kept. About 300 bytes each, so ~300 KB at most on a Raspberry Pi;
a 20-peer mesh where one peer dies produces ~10 events (suspect, dead,
a plan with its moves, leadership if it led), so 1,000 covers a long
incident and the dashboard's history."""

EVENT_TYPES = (
    "member.joined", "member.alive", "member.suspect", "member.dead", "member.left",
    "member.reaped", "member.refuted",
    "leader.elected", "leader.lost", "raft.term", "raft.voters", "raft.role",
    "placement.placed", "placement.moved", "placement.removed", "placement.unplaced",
    "instance.started", "instance.exited", "instance.restarted", "instance.idle",
)
"""Every event type, grouped by the first word: membership (gossip), the
control plane (Raft), the committed plan, and this peer's own instances."""

_SCALARS = (str, int, float, bool, type(None))


class EventError(ValueError):
    """An event document that is not one (a peer or a proxy sent garbage)."""


@dataclass(frozen=True)
class Fact:
    """Something worth an event, before it has a number and a time."""

    type: str
    """One of `EVENT_TYPES`."""
    subject: str
    """Whom it is about: a member's name or an instance id."""
    message: str
    """One line for people, without the subject (the monitor prints both)."""
    detail: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    """The facts behind the message, for scripts (JSON scalars and lists of them)."""

    def __post_init__(self) -> None:
        if self.type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {self.type!r}")
        object.__setattr__(self, "detail", MappingProxyType(dict(self.detail)))


@dataclass(frozen=True)
class Event:
    """A logged `Fact`: its number in this peer's life and when it was logged."""

    seq: int
    time: float
    fact: Fact

    def to_dict(self) -> dict[str, Any]:
        f = self.fact
        return {"seq": self.seq, "time": round(self.time, 3), "type": f.type,
                "subject": f.subject, "message": f.message, "detail": dict(f.detail)}

    @classmethod
    def from_dict(cls, doc: Any) -> Event:
        """Inverse of `to_dict`, for clients. Raises EventError naming what is
        wrong; an unknown type is accepted (a newer peer may send more)."""
        if not isinstance(doc, dict):
            raise EventError(f"an event is a JSON object, not {type(doc).__name__}")
        seq, when = doc.get("seq"), doc.get("time")
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
            raise EventError(f"event seq must be a whole number >= 1, got {seq!r}")
        if isinstance(when, bool) or not isinstance(when, int | float):
            raise EventError(f"event time must be a number, got {when!r}")
        texts = {k: doc.get(k) for k in ("type", "subject", "message")}
        for key, value in texts.items():
            if not isinstance(value, str):
                raise EventError(f"event {key} must be a string, got {value!r}")
        detail = doc.get("detail", {})
        if not isinstance(detail, dict) or not all(
                isinstance(v, _SCALARS) or (isinstance(v, list)
                                            and all(isinstance(x, _SCALARS) for x in v))
                for v in detail.values()):
            raise EventError("event detail must map names to JSON scalars or lists of them")
        fact = Fact.__new__(Fact)  # skip the type check: a newer peer may know more types
        for name, value in (("type", texts["type"]), ("subject", texts["subject"]),
                            ("message", texts["message"]),
                            ("detail", MappingProxyType(dict(detail)))):
            object.__setattr__(fact, name, value)
        return cls(seq, float(when), fact)


@dataclass(frozen=True)
class Since:
    """What `EventLog.since` returns."""

    events: list[Event]
    """The events after the one asked for, oldest first."""
    missed: int
    """Events after it that the ring no longer holds (the reader was too slow
    or away too long); 0 when nothing was lost."""


class EventLog:
    """The bounded ring (see the module docstring)."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("an event log holds at least one event")
        self._events: deque[Event] = deque(maxlen=capacity)
        self._last = 0

    @property
    def last_seq(self) -> int:
        """The newest event's number (0: none yet)."""
        return self._last

    def __len__(self) -> int:
        return len(self._events)

    def append(self, fact: Fact, now: float) -> Event:
        """Log `fact` at `now`; the oldest event falls out when full."""
        self._last += 1
        event = Event(self._last, now, fact)
        self._events.append(event)
        return event

    def since(self, seq: int) -> Since:
        """The events numbered above `seq` (0: all held). A `seq` above
        `last_seq` (a number from the peer's previous life) reads as 0."""
        if seq < 0:
            raise ValueError("seq must be >= 0")
        if seq > self._last:
            seq = 0
        if not self._events:
            return Since([], 0)
        first = self._events[0].seq
        start = max(0, seq + 1 - first)
        return Since(list(itertools.islice(self._events, start, None)), max(0, first - seq - 1))
