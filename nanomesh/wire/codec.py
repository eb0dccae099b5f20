"""msgpack encoding of `messages`, with strict validation on decode.

A message is a msgpack array ``[type, field, field, ...]`` in dataclass field
order. Decoding checks every field's type and range, so that garbage becomes a
`RemoteProtocolError` here and never a `KeyError` or `TypeError` deep inside
the gossip core.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Sequence
from typing import Any

import msgpack

from nanomesh.errors import RemoteProtocolError
from nanomesh.wire.messages import (
    Ack,
    Address,
    Alive,
    Dead,
    IndirectPing,
    MemberDigest,
    MemberState,
    Message,
    MessageType,
    Nack,
    Ping,
    ProfileRecord,
    ProfileReply,
    ProfileRequest,
    PushPull,
    PushPullReply,
    Suspect,
)

MAX_NAME_LEN = 128
"""Longest peer name accepted, in characters (memberlist has no limit; 128 is
far above any hostname and keeps a hostile name from bloating every packet)."""

MAX_INT = 2**63 - 1
"""Sequence numbers, incarnations and versions are unsigned 63-bit counters."""

MAX_MEMBERS = 100_000
"""Most member digests one push-pull may carry."""

MAX_ITEM_LEN = 1 << 20
"""msgpack's own guard: no single string or binary may claim more than 1 MiB.
Nesting depth is bounded by msgpack's stack limit, which raises an error we
translate below."""
MAX_MAP_LEN = 1 << 16


# --------------------------------------------------------------------- encode


def _addr(a: Address) -> list[Any]:
    return [a[0], a[1]]


def _digest(d: MemberDigest) -> list[Any]:
    return [d.name, _addr(d.addr), d.incarnation, int(d.state), d.profile_version]


def message_to_obj(m: Message) -> list[Any]:
    """The msgpack-ready list for one message."""
    match m:
        case Ping():
            return [MessageType.PING, m.seq, m.target, m.source, _addr(m.source_addr)]
        case IndirectPing():
            return [
                MessageType.INDIRECT_PING, m.seq, m.target, _addr(m.target_addr),
                m.source, _addr(m.source_addr), m.want_nack,
            ]
        case Ack():
            return [MessageType.ACK, m.seq]
        case Nack():
            return [MessageType.NACK, m.seq]
        case Suspect():
            return [MessageType.SUSPECT, m.name, m.incarnation, m.by]
        case Alive():
            return [MessageType.ALIVE, m.name, _addr(m.addr), m.incarnation, m.profile_version]
        case Dead():
            return [MessageType.DEAD, m.name, m.incarnation, m.by]
        case PushPull():
            return [MessageType.PUSH_PULL, m.source, m.join, [_digest(d) for d in m.members]]
        case PushPullReply():
            return [MessageType.PUSH_PULL_REPLY, m.source, [_digest(d) for d in m.members]]
        case ProfileRequest():
            return [MessageType.PROFILE_REQUEST, list(m.names)]
        case ProfileReply():
            return [
                MessageType.PROFILE_REPLY,
                [[r.name, r.version, r.profile] for r in m.profiles],
            ]
    raise TypeError(f"not a nanomesh message: {m!r}")  # pragma: no cover


def pack_messages(messages: Sequence[Message]) -> bytes:
    """Serialize a compound of messages (one datagram or one stream frame)."""
    return msgpack.packb([message_to_obj(m) for m in messages], use_bin_type=True)


def pack_message_obj(obj: list[Any]) -> bytes:
    """Serialize one already-built message list (used to size broadcasts)."""
    return msgpack.packb(obj, use_bin_type=True)


# --------------------------------------------------------------------- decode


def _bad(detail: str) -> RemoteProtocolError:
    return RemoteProtocolError("malformed", detail)


def _int(v: object, what: str) -> int:
    if type(v) is not int or not 0 <= v <= MAX_INT:
        raise _bad(f"{what} must be an unsigned integer")
    return v


def _bool(v: object, what: str) -> bool:
    if type(v) is not bool:
        raise _bad(f"{what} must be a boolean")
    return v


def _name(v: object, what: str = "name") -> str:
    if type(v) is not str or not 0 < len(v) <= MAX_NAME_LEN or not v.isprintable():
        raise _bad(f"{what} must be a printable string of 1..{MAX_NAME_LEN} characters")
    return v


def _list(v: object, what: str) -> list[Any]:
    if type(v) is not list:
        raise _bad(f"{what} must be an array")
    return v


def _address(v: object, what: str) -> Address:
    parts = _list(v, what)
    if len(parts) != 2 or type(parts[0]) is not str:
        raise _bad(f"{what} must be [ip, port]")
    if "%" in parts[0]:
        # Scope ids (fe80::1%eth0) are local to one host and meaningless to a
        # peer; ipaddress would accept any text after '%', unprintable too.
        raise _bad(f"{what} must not carry an IPv6 scope id")
    try:
        ipaddress.ip_address(parts[0])
    except ValueError:
        raise _bad(f"{what} has an invalid IP {parts[0][:64]!r}") from None
    port = _int(parts[1], f"{what} port")
    if not 0 < port < 65536:
        raise _bad(f"{what} port out of range")
    return (parts[0], port)


def _fields(obj: list[Any], n: int, what: str) -> list[Any]:
    """The first `n` fields after the tag. Extra trailing fields are allowed:
    they are optional fields appended by a newer protocol version."""
    if len(obj) < n + 1:
        raise _bad(f"{what} needs {n} fields, got {len(obj) - 1}")
    return obj[1 : n + 1]


def _digest_from(v: object) -> MemberDigest:
    f = _list(v, "member digest")
    if len(f) < 5:
        raise _bad("member digest needs 5 fields")
    state = _int(f[3], "state")
    if state not in MemberState._value2member_map_:
        raise _bad(f"unknown member state {state}")
    return MemberDigest(
        _name(f[0]), _address(f[1], "addr"), _int(f[2], "incarnation"),
        MemberState(state), _int(f[4], "profile_version"),
    )


MAX_PROFILE_DEPTH = 8
"""Deepest nesting of maps and arrays accepted in a capability profile; real
profiles use 4."""


def _check_json_like(v: object, depth: int = 0) -> None:
    """Profiles are shown as JSON by the API: only JSON's types are allowed
    (no bytes, no integer keys), so nothing hostile reaches the API layer."""
    if isinstance(v, dict | list) and depth >= MAX_PROFILE_DEPTH:
        raise _bad("profile nested too deeply")
    if isinstance(v, dict):
        for key, item in v.items():
            if type(key) is not str:
                raise _bad("profile keys must be strings")
            _check_json_like(item, depth + 1)
    elif isinstance(v, list):
        for item in v:
            _check_json_like(item, depth + 1)
    elif v is not None and type(v) not in (str, int, float, bool):
        raise _bad(f"profile holds a {type(v).__name__}")
    elif type(v) is int and not -MAX_INT - 1 <= v <= MAX_INT:
        raise _bad("profile integer out of range")
    elif type(v) is float and not math.isfinite(v):
        raise _bad("profile number is not finite")


def _profile_from(v: object) -> ProfileRecord:
    f = _list(v, "profile record")
    if len(f) < 3 or type(f[2]) is not dict:
        raise _bad("profile record must be [name, version, map]")
    _check_json_like(f[2])
    return ProfileRecord(_name(f[0]), _int(f[1], "version"), f[2])


def _ping(f: list[Any]) -> Message:
    return Ping(_int(f[0], "seq"), _name(f[1], "target"), _name(f[2], "source"),
                _address(f[3], "source_addr"))


def _indirect_ping(f: list[Any]) -> Message:
    return IndirectPing(
        _int(f[0], "seq"), _name(f[1], "target"), _address(f[2], "target_addr"),
        _name(f[3], "source"), _address(f[4], "source_addr"), _bool(f[5], "want_nack"),
    )


def _alive(f: list[Any]) -> Message:
    return Alive(_name(f[0]), _address(f[1], "addr"), _int(f[2], "incarnation"),
                 _int(f[3], "profile_version"))


def _push_pull(f: list[Any]) -> Message:
    digests = tuple(_digest_from(d) for d in _list(f[2], "members"))
    return PushPull(_name(f[0], "source"), _bool(f[1], "join"), digests)


_DECODERS: dict[int, tuple[int, Callable[[list[Any]], Message]]] = {
    MessageType.PING: (4, _ping),
    MessageType.INDIRECT_PING: (6, _indirect_ping),
    MessageType.ACK: (1, lambda f: Ack(_int(f[0], "seq"))),
    MessageType.NACK: (1, lambda f: Nack(_int(f[0], "seq"))),
    MessageType.SUSPECT: (
        3, lambda f: Suspect(_name(f[0]), _int(f[1], "incarnation"), _name(f[2], "by"))),
    MessageType.ALIVE: (4, _alive),
    MessageType.DEAD: (
        3, lambda f: Dead(_name(f[0]), _int(f[1], "incarnation"), _name(f[2], "by"))),
    MessageType.PUSH_PULL: (3, _push_pull),
    MessageType.PUSH_PULL_REPLY: (
        2, lambda f: PushPullReply(
            _name(f[0], "source"), tuple(_digest_from(d) for d in _list(f[1], "members")))),
    MessageType.PROFILE_REQUEST: (
        1, lambda f: ProfileRequest(tuple(_name(n) for n in _list(f[0], "names")))),
    MessageType.PROFILE_REPLY: (
        1, lambda f: ProfileReply(tuple(_profile_from(r) for r in _list(f[0], "profiles")))),
}


def message_from_obj(obj: object) -> Message:
    """Validate one decoded msgpack object into a message."""
    fields = _list(obj, "message")
    if not fields or type(fields[0]) is not int:
        raise _bad("message must start with an integer type tag")
    try:
        arity, build = _DECODERS[fields[0]]
    except KeyError:
        raise RemoteProtocolError("unknown-type", f"message type {fields[0]}") from None
    return build(_fields(fields, arity, MessageType(fields[0]).name))


def unpack_messages(data: bytes) -> list[Message]:
    """Parse a compound produced by `pack_messages`; raise RemoteProtocolError."""
    try:
        obj = msgpack.unpackb(
            # No container can hold more items than the input has bytes: capping
            # the lengths by the input size stops a 5 KB datagram of array
            # headers from making msgpack reserve ~80 MB before failing.
            data, raw=False, strict_map_key=True, max_str_len=MAX_ITEM_LEN,
            max_bin_len=MAX_ITEM_LEN, max_array_len=min(MAX_MEMBERS, len(data)),
            max_map_len=min(MAX_MAP_LEN, len(data) // 2), max_ext_len=0,
        )
    except RemoteProtocolError:  # pragma: no cover - msgpack never raises ours
        raise
    except (ValueError, TypeError, RecursionError, msgpack.UnpackException) as exc:
        raise _bad(f"msgpack: {type(exc).__name__}") from None
    compound = _list(obj, "compound")
    if not compound:
        raise _bad("empty compound")
    return [message_from_obj(m) for m in compound]


def encoded_size(m: Message) -> int:
    """Bytes `m` takes inside a compound (used to fill datagrams)."""
    return len(pack_message_obj(message_to_obj(m)))
