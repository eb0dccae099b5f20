"""Every message nanomesh peers exchange, as plain frozen dataclasses.

The numeric type tags in `MessageType` are the wire contract: ONLY APPEND new
types, never renumber or reuse one (memberlist's rule, for the same reason: a
mixed-version mesh must keep understanding the old tags). A new optional field
goes at the end of a message and is decoded with a default.

Datagram messages (UDP) carry the SWIM failure detector and the piggybacked
membership updates; stream messages (TCP) carry anti-entropy push-pull, the
capability profiles, which are too large for a datagram, and the failure
detector's TCP fallback: a `Ping` answered by an `Ack` on one stream (as
memberlist does), so the two are both datagram and stream messages.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

Address = tuple[str, int]
"""A peer's gossip address: (IP literal, port)."""


class MessageType(enum.IntEnum):
    PING = 1
    INDIRECT_PING = 2
    ACK = 3
    NACK = 4
    SUSPECT = 5
    ALIVE = 6
    DEAD = 7
    PUSH_PULL = 8
    PUSH_PULL_REPLY = 9
    PROFILE_REQUEST = 10
    PROFILE_REPLY = 11


class MemberState(enum.IntEnum):
    """Membership state of a peer, as SWIM §4.2 and memberlist define it."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Ping:
    """Direct probe (SWIM §3.1). `target` names whom we mean to probe, so a
    different peer that now owns the address does not answer for it."""

    seq: int
    target: str
    source: str
    source_addr: Address


@dataclass(frozen=True, slots=True)
class IndirectPing:
    """Ask a peer to probe `target` for us (SWIM §3.1 ping-req). With
    `want_nack` the relay answers Nack when its probe times out, so the asker
    can tell a failed target from its own lost packets (Lifeguard §4.1)."""

    seq: int
    target: str
    target_addr: Address
    source: str
    source_addr: Address
    want_nack: bool


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int


@dataclass(frozen=True, slots=True)
class Nack:
    seq: int


@dataclass(frozen=True, slots=True)
class Alive:
    """`name` is alive at `addr` with this incarnation. A changed capability
    profile is announced as a new incarnation carrying its `profile_version`;
    peers then pull the profile over a stream (it is too large to gossip)."""

    name: str
    addr: Address
    incarnation: int
    profile_version: int


@dataclass(frozen=True, slots=True)
class Suspect:
    name: str
    incarnation: int
    by: str


@dataclass(frozen=True, slots=True)
class Dead:
    """`by == name` means the peer left gracefully."""

    name: str
    incarnation: int
    by: str


@dataclass(frozen=True, slots=True)
class MemberDigest:
    """One member's entry in a push-pull state exchange."""

    name: str
    addr: Address
    incarnation: int
    state: MemberState
    profile_version: int


@dataclass(frozen=True, slots=True)
class PushPull:
    """Anti-entropy: the sender's full membership table (SWIM has none; memberlist
    adds it to heal partitions and speed up joins)."""

    source: str
    join: bool
    members: tuple[MemberDigest, ...]


@dataclass(frozen=True, slots=True)
class PushPullReply:
    source: str
    members: tuple[MemberDigest, ...]


@dataclass(frozen=True, slots=True)
class ProfileRequest:
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ProfileRecord:
    name: str
    version: int
    profile: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ProfileReply:
    profiles: tuple[ProfileRecord, ...]


DatagramMessage = Ping | IndirectPing | Ack | Nack | Suspect | Alive | Dead
StreamMessage = PushPull | PushPullReply | ProfileRequest | ProfileReply | Ping | Ack
Message = DatagramMessage | StreamMessage
