"""Malformed, oversized, unauthenticated or wrong-version input is rejected at
the boundary as `RemoteProtocolError` with the right `.reason` token, and never
as any other exception. Each table row names the case it checks."""

from __future__ import annotations

import copy
import struct
import tracemalloc
from typing import Any

import msgpack
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st
from wire_strategies import exact, messages, msgpack_values, wire_settings

from nanomesh.errors import RemoteProtocolError
from nanomesh.wire import (
    MAX_DATAGRAM_IN,
    MAX_FRAME,
    PROTOCOL_MAX,
    PROTOCOL_MIN,
    Ack,
    Alive,
    IndirectPing,
    Keyring,
    MemberDigest,
    MemberState,
    Message,
    Ping,
    ProfileRecord,
    ProfileReply,
    PushPull,
    open_envelope,
    pack_messages,
    seal,
    unpack_messages,
)
from nanomesh.wire.codec import message_to_obj

KEY1 = bytes(range(32))
KEY2 = bytes(range(100, 116))
PLAIN_HEADER = b"NM" + bytes((PROTOCOL_MIN, 0))


def pk(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def plain(body: bytes) -> bytes:
    """A plaintext envelope around an arbitrary body."""
    return PLAIN_HEADER + body


def reject(fn: Any, *args: Any, **kwargs: Any) -> RemoteProtocolError:
    """Call fn and return the RemoteProtocolError it raises. Any other
    exception propagates and fails the test; returning normally fails too."""
    with pytest.raises(RemoteProtocolError) as info:
        fn(*args, **kwargs)
    assert type(info.value) is RemoteProtocolError
    return info.value


# ----------------------------------------------------------------- baselines

DIGEST = ["b", ["10.0.0.2", 7946], 3, int(MemberState.SUSPECT), 2]
PROFILE = {"cpu": {"cores": 4, "arch": "arm64"}, "gpio": [1, 2.5, None, True]}

VALID: dict[str, list[Any]] = {
    "ping": [1, 7, "b", "a", ["10.0.0.1", 7946]],
    "indirect_ping": [2, 7, "c", ["10.0.0.3", 7946], "a", ["10.0.0.1", 7946], True],
    "ack": [3, 7],
    "nack": [4, 7],
    "suspect": [5, "b", 3, "a"],
    "alive": [6, "b", ["2001:db8::2", 7946], 3, 2],
    "dead": [7, "b", 3, "a"],
    "push_pull": [8, "a", False, [DIGEST]],
    "push_pull_reply": [9, "a", [DIGEST]],
    "profile_request": [10, ["a", "b"]],
    "profile_reply": [11, [["a", 1, PROFILE]]],
}


def variant(kind: str, path: tuple[int, ...], value: Any) -> bytes:
    """A one-message compound: VALID[kind] with the element at `path` replaced."""
    obj = copy.deepcopy(VALID[kind])
    target = obj
    for i in path[:-1]:
        target = target[i]
    target[path[-1]] = value
    return pk([obj])


@pytest.mark.parametrize("kind", sorted(VALID))
def test_baseline_messages_decode(kind: str) -> None:
    """Each baseline object decodes (so every reject below is caused by the one
    field it changes, not by a broken baseline)."""
    (msg,) = unpack_messages(pk([VALID[kind]]))
    assert message_to_obj(msg) == VALID[kind]


# ----------------------------------------------------------------- codec table

def _nested_profile(levels: int, leaf: Any) -> dict[str, Any]:
    """A profile of exactly `levels` nested maps around `leaf`."""
    value: Any = leaf
    for _ in range(levels):
        value = {"k": value}
    assert isinstance(value, dict)
    return value


CODEC_REJECTS: list[Any] = [
    # --- the compound itself
    pytest.param(b"", "malformed", id="empty-bytes"),
    pytest.param(pk({"a": 1}), "malformed", id="compound-is-a-map"),
    pytest.param(pk(5), "malformed", id="compound-is-an-int"),
    pytest.param(pk("x"), "malformed", id="compound-is-a-str"),
    pytest.param(pk(None), "malformed", id="compound-is-nil"),
    pytest.param(pk(b"\x91\x93"), "malformed", id="compound-is-bytes"),
    pytest.param(pk([]), "malformed", id="empty-compound"),
    pytest.param(pk([5]), "malformed", id="message-is-an-int"),
    pytest.param(pk([[]]), "malformed", id="message-is-empty-array"),
    pytest.param(pk([{"type": 3}]), "malformed", id="message-is-a-map"),
    pytest.param(pk([VALID["ack"], 5]), "malformed", id="second-message-not-array"),
    # --- msgpack-level garbage
    pytest.param(pk([VALID["ack"]]) + b"\x00", "malformed", id="trailing-extra-byte"),
    pytest.param(pk([VALID["ack"]]) + pk([VALID["ack"]]), "malformed",
                 id="two-concatenated-compounds"),
    pytest.param(pk([VALID["ping"]])[:-1], "malformed", id="truncated-msgpack"),
    pytest.param(b"\x91" * 10_000 + b"\x90", "malformed", id="deep-nesting-10000-arrays"),
    pytest.param(b"\x81\xa1k" * 10_000 + b"\x80", "malformed", id="deep-nesting-10000-maps"),
    pytest.param(pk({1: 2}), "malformed", id="top-map-with-int-keys"),
    pytest.param(pk([[3, 7, {(1, 2): 3}]]), "malformed", id="extra-field-map-with-array-key"),
    pytest.param(b"\x91\x92\x03\xa2\xff\xfe", "malformed", id="str-with-invalid-utf8"),
    pytest.param(b"\xc1", "malformed", id="reserved-byte-0xc1"),
    pytest.param(b"\xdd\xff\xff\xff\xff", "malformed", id="array-claims-4G-items"),
    pytest.param(b"\xdf\xff\xff\xff\xff", "malformed", id="map-claims-4G-pairs"),
    pytest.param(b"\xdb\xff\xff\xff\xff", "malformed", id="str-claims-4GiB"),
    pytest.param(b"\xc6\x00\x20\x00\x00", "malformed", id="bin-claims-2MiB"),
    pytest.param(pk([[3, 7, msgpack.ExtType(5, b"x")]]), "malformed", id="ext-type"),
    pytest.param(pk([[3, 7, msgpack.Timestamp(1, 0)]]), "malformed", id="timestamp-ext"),
    # --- type tags
    pytest.param(pk([[0]]), "unknown-type", id="unknown-type-0"),
    pytest.param(pk([[12, 1]]), "unknown-type", id="unknown-type-12"),
    pytest.param(pk([[99, 1, 2, 3]]), "unknown-type", id="unknown-type-99"),
    pytest.param(pk([[-1, 7]]), "unknown-type", id="unknown-type-negative"),
    pytest.param(pk([[2**64 - 1, 7]]), "unknown-type", id="unknown-type-uint64-max"),
    pytest.param(pk([[True, 7]]), "malformed", id="bool-type-tag-is-not-ack"),
    pytest.param(pk([[3.0, 7]]), "malformed", id="float-type-tag-is-not-ack"),
    pytest.param(pk([["3", 7]]), "malformed", id="str-type-tag"),
    pytest.param(pk([[None, 7]]), "malformed", id="nil-type-tag"),
    pytest.param(pk([VALID["ack"], [99]]), "unknown-type", id="unknown-type-after-valid"),
    # --- profiles
    pytest.param(variant("profile_reply", (1, 0, 2), {"blob": b"\x00\x01"}), "malformed",
                 id="profile-bytes-value"),
    pytest.param(variant("profile_reply", (1, 0, 2), {b"k": 1}), "malformed",
                 id="profile-bytes-key"),
    pytest.param(variant("profile_reply", (1, 0, 2), {1: "x"}), "malformed",
                 id="profile-int-key"),
    pytest.param(variant("profile_reply", (1, 0, 2), {"a": {2: "x"}}), "malformed",
                 id="profile-nested-int-key"),
    pytest.param(variant("profile_reply", (1, 0, 2), {"x": float("nan")}), "malformed",
                 id="profile-nan"),
    pytest.param(variant("profile_reply", (1, 0, 2), {"x": [float("inf")]}), "malformed",
                 id="profile-inf"),
    pytest.param(variant("profile_reply", (1, 0, 2), {"x": float("-inf")}), "malformed",
                 id="profile-minus-inf"),
    pytest.param(variant("profile_reply", (1, 0, 2), {"x": 2**63}), "malformed",
                 id="profile-int-above-int64"),
    pytest.param(variant("profile_reply", (1, 0, 2), {"x": msgpack.ExtType(1, b"")}),
                 "malformed", id="profile-empty-ext"),
    pytest.param(variant("profile_reply", (1, 0, 2), _nested_profile(9, 1)), "malformed",
                 id="profile-nesting-depth-9"),
    pytest.param(variant("profile_reply", (1, 0, 2), _nested_profile(50, 1)), "malformed",
                 id="profile-nesting-depth-50"),
    pytest.param(variant("profile_reply", (1, 0, 2), ["a", "list"]), "malformed",
                 id="profile-is-a-list"),
    pytest.param(variant("profile_reply", (1, 0, 2), None), "malformed",
                 id="profile-is-nil"),
    pytest.param(variant("profile_reply", (1, 0), ["a", 1]), "malformed",
                 id="profile-record-too-few-fields"),
    pytest.param(variant("profile_reply", (1, 0), "a"), "malformed",
                 id="profile-record-not-array"),
    pytest.param(variant("profile_reply", (1,), {"a": 1}), "malformed",
                 id="profiles-not-array"),
    pytest.param(variant("profile_reply", (1, 0, 1), -1), "malformed",
                 id="profile-version-negative"),
    # --- digests and member states
    pytest.param(variant("push_pull", (3, 0, 3), 4), "malformed", id="member-state-4"),
    pytest.param(variant("push_pull", (3, 0, 3), 99), "malformed", id="member-state-99"),
    pytest.param(variant("push_pull", (3, 0, 3), -1), "malformed", id="member-state-negative"),
    pytest.param(variant("push_pull", (3, 0, 3), True), "malformed", id="member-state-bool"),
    pytest.param(variant("push_pull", (3, 0, 3), "alive"), "malformed", id="member-state-str"),
    pytest.param(variant("push_pull_reply", (2, 0), DIGEST[:4]), "malformed",
                 id="digest-too-few-fields"),
    pytest.param(variant("push_pull_reply", (2, 0), "b"), "malformed",
                 id="digest-not-array"),
    pytest.param(variant("push_pull", (3,), {"b": DIGEST}), "malformed",
                 id="members-is-a-map"),
    pytest.param(variant("push_pull", (2,), 0), "malformed", id="join-int-for-bool"),
    pytest.param(variant("push_pull", (2,), None), "malformed", id="join-nil-for-bool"),
    pytest.param(variant("indirect_ping", (6,), 1), "malformed", id="want-nack-int-for-bool"),
    pytest.param(variant("indirect_ping", (6,), "true"), "malformed",
                 id="want-nack-str-for-bool"),
    pytest.param(variant("profile_request", (1,), "a"), "malformed", id="names-is-a-str"),
]


# Too few fields: every message type with its last field dropped.
CODEC_REJECTS += [
    pytest.param(pk([obj[:-1]]), "malformed", id=f"too-few-fields-{kind}")
    for kind, obj in VALID.items()
]

# Wrong types / ranges for unsigned 63-bit fields, at several positions.
_BAD_U63 = {
    "str": "7", "negative": -1, "2**63": 2**63, "uint64-max": 2**64 - 1,
    "true": True, "false": False, "float": 7.0, "nil": None, "bytes": b"\x07", "array": [7],
}
_U63_FIELDS = {
    "ack.seq": ("ack", (1,)), "ping.seq": ("ping", (1,)),
    "suspect.incarnation": ("suspect", (2,)), "alive.profile_version": ("alive", (4,)),
    "digest.incarnation": ("push_pull", (3, 0, 2)),
    "record.version": ("profile_reply", (1, 0, 1)),
}
CODEC_REJECTS += [
    pytest.param(variant(kind, path, bad), "malformed", id=f"{where}-{label}")
    for where, (kind, path) in _U63_FIELDS.items()
    for label, bad in _BAD_U63.items()
]

# Bad IP strings and address shapes.
_BAD_IPS = {
    "empty": "", "three-octets": "1.2.3", "octet-256": "256.1.1.1", "hostname": "localhost",
    "trailing-space": "1.2.3.4 ", "leading-space": " 1.2.3.4", "trailing-newline": "1.2.3.4\n",
    "bad-hex": "::g", "leading-zero": "01.2.3.4", "empty-scope": "fe80::1%",
    "ipv4-with-scope": "1.2.3.4%eth0", "arabic-digits": "\u0661.\u0662.\u0663.\u0664",
    "with-port": "10.0.0.1:7946", "cidr": "10.0.0.0/8", "bytes": b"\x7f\x00\x00\x01",
    "int": 2130706433, "nil": None,
}
_ADDR_FIELDS = {
    "ping.source_addr": ("ping", (4,)), "indirect.target_addr": ("indirect_ping", (3,)),
    "alive.addr": ("alive", (2,)), "digest.addr": ("push_pull", (3, 0, 1)),
}
CODEC_REJECTS += [
    pytest.param(variant(kind, (*path, 0), bad), "malformed", id=f"{where}-ip-{label}")
    for where, (kind, path) in _ADDR_FIELDS.items()
    for label, bad in _BAD_IPS.items()
]
_BAD_ADDRS = {
    "str": "10.0.0.1:7946", "one-element": ["10.0.0.1"], "three-elements": ["10.0.0.1", 1, 2],
    "swapped": [7946, "10.0.0.1"], "map": {"ip": "10.0.0.1", "port": 7946}, "nil": None,
}
_BAD_PORTS = {
    "0": 0, "65536": 65536, "70000": 70000, "negative": -1, "true": True, "str": "7946",
    "float": 7946.0, "2**64-1": 2**64 - 1,
}
CODEC_REJECTS += [
    pytest.param(variant(kind, path, bad), "malformed", id=f"{where}-addr-{label}")
    for where, (kind, path) in _ADDR_FIELDS.items()
    for label, bad in _BAD_ADDRS.items()
]
CODEC_REJECTS += [
    pytest.param(variant(kind, (*path, 1), bad), "malformed", id=f"{where}-port-{label}")
    for where, (kind, path) in _ADDR_FIELDS.items()
    for label, bad in _BAD_PORTS.items()
]

# Bad names at every kind of name position.
_BAD_NAMES = {
    "empty": "", "129-chars": "a" * 129, "newline": "a\nb", "nul": "\x00", "tab": "a\tb",
    "del": "\x7f", "escape": "\x1b[31m", "zero-width-space": "\u200b",
    "line-separator": "\u2028", "bidi-override": "\u202e", "bytes": b"abc", "int": 5,
    "nil": None, "array": ["a"],
}
_NAME_FIELDS = {
    "ping.target": ("ping", (2,)), "ping.source": ("ping", (3,)),
    "indirect.target": ("indirect_ping", (2,)), "suspect.by": ("suspect", (3,)),
    "alive.name": ("alive", (1,)), "dead.name": ("dead", (1,)),
    "push_pull.source": ("push_pull", (1,)), "digest.name": ("push_pull_reply", (2, 0, 0)),
    "request.names[1]": ("profile_request", (1, 1)), "record.name": ("profile_reply", (1, 0, 0)),
}
CODEC_REJECTS += [
    pytest.param(variant(kind, path, bad), "malformed", id=f"{where}-name-{label}")
    for where, (kind, path) in _NAME_FIELDS.items()
    for label, bad in _BAD_NAMES.items()
]


@pytest.mark.parametrize(("body", "reason"), CODEC_REJECTS)
def test_codec_rejects(body: bytes, reason: str) -> None:
    """unpack_messages and a plaintext open_envelope both reject the body with
    exactly this reason token, and nothing but RemoteProtocolError escapes."""
    assert reject(unpack_messages, body).reason == reason
    assert reject(open_envelope, plain(body), Keyring(), limit=MAX_FRAME).reason == reason


def test_max_length_name_and_boundary_values_are_accepted() -> None:
    """The limits are inclusive: a 128-character name, seq 2**63-1, ports 1 and
    65535, every member state and a profile 8 maps deep are all accepted."""
    name = "n" * 128
    msgs: list[Message] = [
        Ping(2**63 - 1, name, "é✓ 名前", ("0.0.0.0", 1)),
        IndirectPing(0, name, ("::", 65535), "a", ("255.255.255.255", 65535), False),
        PushPull("a", True, tuple(
            MemberDigest("m", ("fe80::1", 1), 0, s, 0) for s in MemberState)),
        ProfileReply((ProfileRecord(name, 2**63 - 1, _nested_profile(8, -(2**63))),)),
    ]
    assert exact(unpack_messages(pack_messages(msgs)), msgs)


# ----------------------------------------------------------------- forward compatibility

def _append(obj: list[Any], extras: list[Any]) -> list[Any]:
    return [*obj, *extras]


@given(messages, st.lists(msgpack_values, min_size=1, max_size=3))
@wire_settings(max_examples=120)
def test_trailing_extra_message_fields_are_ignored(msg: Any, extras: list[Any]) -> None:
    """Forward compatibility (codec._fields): a newer peer may append optional
    fields of any type to any message; they are ignored and the message
    decodes to exactly what it would be without them."""
    body = pk([_append(message_to_obj(msg), extras)])
    assert exact(unpack_messages(body), [msg])


@given(st.lists(msgpack_values, min_size=1, max_size=3))
@wire_settings(max_examples=40)
def test_trailing_extra_digest_and_record_fields_are_ignored(extras: list[Any]) -> None:
    """The same holds for the nested member digest and profile record arrays."""
    body = pk([
        [8, "a", True, [_append(DIGEST, extras)]],
        [11, [_append(["a", 1, PROFILE], extras)]],
    ])
    (pp, reply) = unpack_messages(body)
    assert pp == PushPull("a", True, (
        MemberDigest("b", ("10.0.0.2", 7946), 3, MemberState.SUSPECT, 2),))
    assert reply == ProfileReply((ProfileRecord("a", 1, PROFILE),))


def test_extra_fields_do_not_relax_validation_of_known_ones() -> None:
    """Extra fields are ignored, but the known fields before them are still
    checked: a bad seq followed by extras is rejected."""
    assert unpack_messages(pk([[3, 7, "extra", b"bin", {"x": [1]}]])) == [Ack(7)]
    assert reject(unpack_messages, pk([[3, -7, "extra"]])).reason == "malformed"


# ----------------------------------------------------------------- envelope table

def _sealed(keys: list[bytes], msgs: list[Any] | None = None) -> bytes:
    return seal(msgs or [Ack(7), Alive("b", ("10.0.0.2", 7946), 3, 2)], Keyring(keys))


def _flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    out = bytearray(data)
    out[index] ^= mask
    return bytes(out)


def _authentic_garbage(key: bytes, body: bytes) -> bytes:
    """Correctly encrypted and authenticated, but the plaintext is not a compound."""
    header = b"NM" + bytes((PROTOCOL_MIN, 1))
    nonce = b"\x00" * 12
    return header + nonce + AESGCM(key).encrypt(nonce, body, header)


_VALID_PLAIN = _sealed([])
_VALID_KEYED = _sealed([KEY1])

ENVELOPE_REJECTS: list[Any] = [
    pytest.param(b"", [], "malformed", id="empty-bytes"),
    pytest.param(b"N", [], "malformed", id="one-byte"),
    pytest.param(b"NM\x01", [], "malformed", id="short-header"),
    pytest.param(b"NM\x01\x00", [], "malformed", id="header-only-plaintext"),
    pytest.param(b"XX" + _VALID_PLAIN[2:], [], "malformed", id="bad-magic"),
    pytest.param(b"nm" + _VALID_PLAIN[2:], [], "malformed", id="lowercase-magic"),
    pytest.param(b"XX" + _VALID_KEYED[2:], [KEY1], "malformed", id="bad-magic-keyed"),
    pytest.param(b"NM\x00" + _VALID_PLAIN[3:], [], "version", id="protocol-version-0"),
    pytest.param(b"NM" + bytes((PROTOCOL_MAX + 1,)) + _VALID_PLAIN[3:], [], "version",
                 id="protocol-version-max-plus-1"),
    pytest.param(b"NM\xff" + _VALID_PLAIN[3:], [], "version", id="protocol-version-255"),
    pytest.param(b"NM" + bytes((PROTOCOL_MAX + 1,)) + _VALID_KEYED[3:], [KEY1], "version",
                 id="protocol-version-max-plus-1-keyed"),
    pytest.param(_VALID_PLAIN, [KEY1], "decrypt", id="plaintext-to-keyed-peer"),
    pytest.param(_VALID_KEYED, [], "decrypt", id="ciphertext-to-unkeyed-peer"),
    pytest.param(_VALID_KEYED, [KEY2], "decrypt", id="wrong-key"),
    pytest.param(_sealed([KEY1[:16]]), [KEY1], "decrypt", id="wrong-key-size"),
    pytest.param(_VALID_KEYED[:4], [KEY1], "decrypt", id="ciphertext-header-only"),
    pytest.param(_VALID_KEYED[:16], [KEY1], "decrypt", id="ciphertext-nonce-only"),
    pytest.param(_VALID_KEYED[:4 + 12 + 15], [KEY1], "decrypt", id="ciphertext-shorter-than-tag"),
    pytest.param(_VALID_KEYED[:-1], [KEY1], "decrypt", id="ciphertext-truncated-by-1"),
    pytest.param(_VALID_KEYED + b"\x00", [KEY1], "decrypt", id="ciphertext-extended-by-1"),
    pytest.param(_flip(_VALID_KEYED, 4), [KEY1], "decrypt", id="flipped-nonce-bit"),
    pytest.param(_flip(_VALID_KEYED, 20), [KEY1], "decrypt", id="flipped-ciphertext-bit"),
    pytest.param(_flip(_VALID_KEYED, len(_VALID_KEYED) - 1), [KEY1], "decrypt",
                 id="flipped-tag-bit"),
    pytest.param(_flip(_VALID_KEYED, 3, 0x02), [KEY1], "malformed",
                 id="unknown-header-flag-bit"),
    pytest.param(_flip(_VALID_KEYED, 3, 0x80), [KEY1], "malformed",
                 id="unknown-header-high-flag-bit"),
    pytest.param(_authentic_garbage(KEY1, b"\xc1"), [KEY1], "malformed",
                 id="authentic-but-not-msgpack"),
    pytest.param(_authentic_garbage(KEY1, pk([])), [KEY1], "malformed",
                 id="authentic-but-empty-compound"),
    pytest.param(_authentic_garbage(KEY1, pk([[42]])), [KEY1], "unknown-type",
                 id="authentic-but-unknown-type"),
    pytest.param(b"\x00" * (MAX_DATAGRAM_IN + 1), [], "oversized", id="oversized-garbage"),
    pytest.param(plain(pk([[3, 7, "x" * MAX_DATAGRAM_IN]])), [], "oversized",
                 id="oversized-valid-plaintext"),
    pytest.param(b"NM\x01\x01" + b"\x00" * MAX_DATAGRAM_IN, [KEY1], "oversized",
                 id="oversized-before-decrypt"),
]


@pytest.mark.parametrize(("data", "keys", "reason"), ENVELOPE_REJECTS)
def test_envelope_rejects(data: bytes, keys: list[bytes], reason: str) -> None:
    """open_envelope refuses the datagram with exactly this reason token."""
    assert reject(open_envelope, data, Keyring(keys)).reason == reason


def test_every_single_bit_flip_of_a_sealed_envelope_is_refused() -> None:
    """Exhaustively: flipping any one bit of an encrypted envelope is detected
    (magic -> malformed, version -> version, an unknown flag bit -> malformed,
    the encryption flag/nonce/body/tag -> decrypt: the header is AES-GCM
    associated data)."""
    data = _sealed([KEY1], [Ack(1)])
    expected = ["malformed", "malformed", "version"] + ["decrypt"] * (len(data) - 3)
    for index in range(len(data)):
        for bit in range(8):
            err = reject(open_envelope, _flip(data, index, 1 << bit), Keyring([KEY1]))
            want = "malformed" if index == 3 and bit > 0 else expected[index]
            assert err.reason == want, (index, bit, err)


def test_size_limit_is_inclusive_and_per_call() -> None:
    """A valid envelope of exactly `limit` bytes opens; one byte over is
    'oversized'. Streams pass limit=MAX_FRAME to accept more than a datagram."""
    data = _sealed([])
    assert open_envelope(data, Keyring(), limit=len(data)) == [
        Ack(7), Alive("b", ("10.0.0.2", 7946), 3, 2)]
    assert reject(open_envelope, data, Keyring(), limit=len(data) - 1).reason == "oversized"

    big = seal([ProfileReply((ProfileRecord("a", 1, {"blob": "x" * 100_000}),))], Keyring([KEY1]))
    assert len(big) > MAX_DATAGRAM_IN
    assert reject(open_envelope, big, Keyring([KEY1])).reason == "oversized"
    (reply,) = open_envelope(big, Keyring([KEY1]), limit=MAX_FRAME)
    assert isinstance(reply, ProfileReply) and reply.profiles[0].profile["blob"] == "x" * 100_000


# ----------------------------------------------------------------- regressions found by fuzzing

@pytest.mark.parametrize("leaf", [{}, []], ids=["empty-map", "empty-array"])
def test_profile_nesting_depth_9_is_rejected_whatever_the_leaf(leaf: Any) -> None:
    """MAX_PROFILE_DEPTH bounds the nesting of maps and arrays; a 9-deep chain of
    containers must be refused like the scalar-leaf case above."""
    body = variant("profile_reply", (1, 0, 2), _nested_profile(8, leaf))
    assert reject(unpack_messages, body).reason == "malformed"


@pytest.mark.parametrize("ip", [
    "fe80::1%\n[fake log line]", "::1%\x1b[31m", "fe80::1%" + "x" * 10_000,
], ids=["newline-scope", "ansi-escape-scope", "10k-scope"])
def test_ip_scope_id_must_be_printable_and_short(ip: str) -> None:
    """An address is logged and handed to sockets: a non-printable or absurdly
    long IPv6 scope id must be refused like a non-printable name is."""
    assert reject(unpack_messages, variant("alive", (2, 0), ip)).reason == "malformed"


def test_small_hostile_datagram_cannot_make_decoder_allocate_much() -> None:
    """A 5 KB datagram of nested array headers that each claim 100 000 items is
    rejected, and decoding it must not allocate more than 32 MiB on the way."""
    data = (b"\xdd" + struct.pack(">I", 100_000)) * 1023
    tracemalloc.start()
    try:
        assert reject(unpack_messages, data).reason == "malformed"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 * 1024 * 1024, f"{len(data)} bytes made the decoder allocate {peak}"
