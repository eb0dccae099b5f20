"""Hypothesis strategies for every nanomesh wire message, plus two oracles that
do not go through the codec: `exact` (type-strict structural equality, so a
bool that came back as an int or a tuple that came back as a list is caught)
and `assert_valid_message` (the field invariants the decoder promises).

Runs are derandomized by default so a failure reproduces on every machine;
set ``NANOMESH_HYPOTHESIS_RANDOM=1`` to fuzz with fresh random seeds and ten
times the examples (hypothesis then prints the seed / ``@reproduce_failure``
blob of any failure).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import typing
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from nanomesh.wire import (
    Ack,
    Alive,
    Dead,
    IndirectPing,
    Keyring,
    MemberDigest,
    MemberState,
    Message,
    Nack,
    Ping,
    ProfileRecord,
    ProfileReply,
    ProfileRequest,
    PushPull,
    PushPullReply,
    Suspect,
)

MAX_U63 = 2**63 - 1
RANDOM = os.environ.get("NANOMESH_HYPOTHESIS_RANDOM", "") not in ("", "0")


def wire_settings(max_examples: int) -> settings:
    """Moderate, reproducible hypothesis settings for this directory."""
    return settings(
        max_examples=max_examples * (10 if RANDOM else 1),
        deadline=None,
        derandomize=not RANDOM,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# ------------------------------------------------------------------ fields

names = st.text(
    # str.isprintable() is False exactly for these categories (space excepted).
    st.characters(
        exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"),
        include_characters=" ",
    ),
    min_size=1,
    max_size=128,
).filter(str.isprintable)  # guards against hypothesis/unicodedata version skew

u63 = st.integers(min_value=0, max_value=MAX_U63)
ports = st.integers(min_value=1, max_value=65535)
ips = st.ip_addresses().map(str)
addresses = st.tuples(ips, ports)

_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=MAX_U63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=24)
)


def _json_value(levels: int) -> st.SearchStrategy[Any]:
    """JSON-like values holding at most `levels` nested containers."""
    if levels == 0:
        return _json_scalars
    inner = _json_value(levels - 1)
    return (
        _json_scalars
        | st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    )


profiles = st.dictionaries(st.text(max_size=16), _json_value(3), max_size=5)
"""JSON-like capability profiles, the top map plus <= 3 more levels (nesting <= 4)."""

member_digests = st.builds(
    MemberDigest,
    name=names,
    addr=addresses,
    incarnation=u63,
    state=st.sampled_from(MemberState),
    profile_version=u63,
)
profile_records = st.builds(ProfileRecord, name=names, version=u63, profile=profiles)

MESSAGE_STRATEGIES: dict[type[Any], st.SearchStrategy[Any]] = {
    Ping: st.builds(Ping, seq=u63, target=names, source=names, source_addr=addresses),
    IndirectPing: st.builds(
        IndirectPing, seq=u63, target=names, target_addr=addresses, source=names,
        source_addr=addresses, want_nack=st.booleans(),
    ),
    Ack: st.builds(Ack, seq=u63),
    Nack: st.builds(Nack, seq=u63),
    Suspect: st.builds(Suspect, name=names, incarnation=u63, by=names),
    Alive: st.builds(Alive, name=names, addr=addresses, incarnation=u63, profile_version=u63),
    Dead: st.builds(Dead, name=names, incarnation=u63, by=names),
    PushPull: st.builds(
        PushPull, source=names, join=st.booleans(),
        members=st.lists(member_digests, max_size=4).map(tuple),
    ),
    PushPullReply: st.builds(
        PushPullReply, source=names, members=st.lists(member_digests, max_size=4).map(tuple),
    ),
    ProfileRequest: st.builds(ProfileRequest, names=st.lists(names, max_size=4).map(tuple)),
    ProfileReply: st.builds(
        ProfileReply, profiles=st.lists(profile_records, max_size=3).map(tuple),
    ),
}

MESSAGE_CLASSES = frozenset(typing.get_args(Message))

messages: st.SearchStrategy[Message] = st.one_of(*MESSAGE_STRATEGIES.values())
compounds = st.lists(messages, min_size=1, max_size=10)

keys = st.sampled_from((16, 24, 32)).flatmap(lambda n: st.binary(min_size=n, max_size=n))
keyrings = st.one_of(st.just(()), st.lists(keys, min_size=1, max_size=3)).map(Keyring)
"""An empty keyring (plaintext mesh) or one holding 1..3 keys of 16/24/32 bytes."""

# Arbitrary msgpack-encodable values, for garbage bodies and "extra" fields.
msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(max_size=8) | st.binary(max_size=8), children, max_size=5)
    ),
    max_leaves=25,
)


# ------------------------------------------------------------------ oracles


def exact(a: object, b: object) -> bool:
    """Structural equality that also demands identical types at every level
    (``True == 1`` and ``(1,) != [1]`` pitfalls) and the sign of zero."""
    if type(a) is not type(b):
        return False
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return all(
            exact(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a)
        )
    if isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple))
        return len(a) == len(b) and all(exact(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return a.keys() == b.keys() and all(exact(a[k], b[k]) for k in a)
    if isinstance(a, float):
        assert isinstance(b, float)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    return a == b


def _assert_name(v: object) -> None:
    assert type(v) is str and 1 <= len(v) <= 128 and v.isprintable(), repr(v)


def _assert_u63(v: object) -> None:
    assert type(v) is int and 0 <= v <= MAX_U63, repr(v)


def _assert_addr(v: object) -> None:
    assert type(v) is tuple and len(v) == 2, repr(v)
    assert type(v[0]) is str, repr(v)
    ipaddress.ip_address(v[0])
    assert type(v[1]) is int and 1 <= v[1] <= 65535, repr(v)


def _assert_json_like(v: object, containers: int = 0) -> None:
    if isinstance(v, dict):
        assert type(v) is dict and containers < 9
        for k, item in v.items():
            assert type(k) is str, repr(k)
            _assert_json_like(item, containers + 1)
    elif isinstance(v, list):
        assert type(v) is list and containers < 9
        for item in v:
            _assert_json_like(item, containers + 1)
    elif type(v) is float:
        assert math.isfinite(v)
    elif type(v) is int:
        assert -(2**63) <= v <= MAX_U63
    else:
        assert v is None or type(v) in (str, bool), repr(v)


def _assert_digest(d: object) -> None:
    assert type(d) is MemberDigest
    _assert_name(d.name)
    _assert_addr(d.addr)
    _assert_u63(d.incarnation)
    assert type(d.state) is MemberState
    _assert_u63(d.profile_version)


def assert_valid_message(m: object) -> None:
    """Check the invariants a decoded message must satisfy, field by field,
    without trusting the codec's own validators."""
    assert type(m) in MESSAGE_CLASSES, type(m)
    match m:
        case Ping():
            _assert_u63(m.seq)
            _assert_name(m.target)
            _assert_name(m.source)
            _assert_addr(m.source_addr)
        case IndirectPing():
            _assert_u63(m.seq)
            _assert_name(m.target)
            _assert_addr(m.target_addr)
            _assert_name(m.source)
            _assert_addr(m.source_addr)
            assert type(m.want_nack) is bool
        case Ack() | Nack():
            _assert_u63(m.seq)
        case Suspect() | Dead():
            _assert_name(m.name)
            _assert_u63(m.incarnation)
            _assert_name(m.by)
        case Alive():
            _assert_name(m.name)
            _assert_addr(m.addr)
            _assert_u63(m.incarnation)
            _assert_u63(m.profile_version)
        case PushPull():
            _assert_name(m.source)
            assert type(m.join) is bool
            assert type(m.members) is tuple
            for d in m.members:
                _assert_digest(d)
        case PushPullReply():
            _assert_name(m.source)
            assert type(m.members) is tuple
            for d in m.members:
                _assert_digest(d)
        case ProfileRequest():
            assert type(m.names) is tuple
            for n in m.names:
                _assert_name(n)
        case ProfileReply():
            assert type(m.profiles) is tuple
            for r in m.profiles:
                assert type(r) is ProfileRecord
                _assert_name(r.name)
                _assert_u63(r.version)
                assert type(r.profile) is dict
                _assert_json_like(r.profile)
        case _:  # pragma: no cover - guarded by the type check above
            raise AssertionError(f"unhandled message {m!r}")


def assert_valid_compound(msgs: object) -> None:
    """A decode result is a non-empty list of valid messages."""
    assert type(msgs) is list and msgs, repr(msgs)
    for m in msgs:
        assert_valid_message(m)
