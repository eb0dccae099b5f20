"""What the membership core asks its shell to do, and what it reports.

Commands are imperative (`SendDatagram`); notifications are past tense
(`MemberJoined`). The shell carries out commands in the order given and may
log or forward notifications; it never decides anything itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from nanomesh.wire import Address, DatagramMessage, StreamMessage

StreamPurpose = Literal["join", "push-pull", "reconnect", "profile", "ping"]


@dataclass(frozen=True, slots=True)
class SendDatagram:
    """Send these messages as one UDP datagram to `addr`."""

    addr: Address
    messages: tuple[DatagramMessage, ...]


@dataclass(frozen=True, slots=True)
class StreamCall:
    """Open a TCP stream to `addr`, send `request`, and feed the reply to
    `Membership.handle_stream_reply(call_id, ...)`, or report failure with
    `Membership.stream_failed(call_id, ...)` (within `stream_timeout`, or by
    `deadline` when it is set)."""

    call_id: int
    addr: Address
    request: StreamMessage
    purpose: StreamPurpose
    deadline: float | None = None
    """Give up at this time (the core's clock, as passed in `now`) instead of
    after `stream_timeout`: a TCP ping is worth nothing after its probe period."""


@dataclass(frozen=True, slots=True)
class MemberJoined:
    name: str
    addr: Address
    rejoined: bool


@dataclass(frozen=True, slots=True)
class MemberSuspected:
    name: str
    by: str


@dataclass(frozen=True, slots=True)
class MemberRecovered:
    """A suspected peer refuted the suspicion."""

    name: str


@dataclass(frozen=True, slots=True)
class MemberFailed:
    name: str
    by: str


@dataclass(frozen=True, slots=True)
class MemberLeft:
    name: str


@dataclass(frozen=True, slots=True)
class MemberReaped:
    name: str


@dataclass(frozen=True, slots=True)
class ProfileUpdated:
    name: str
    version: int


@dataclass(frozen=True, slots=True)
class Refuted:
    """We were suspected or declared dead, and answered with a new incarnation."""

    incarnation: int
    accuser: str


Notification = (MemberJoined | MemberSuspected | MemberRecovered | MemberFailed | MemberLeft
                | MemberReaped | ProfileUpdated | Refuted)
Effect = SendDatagram | StreamCall | Notification
