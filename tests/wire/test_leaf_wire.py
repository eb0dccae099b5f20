"""Leaf messages (`nanomesh.wire.leaf`): tags, strict bodies, the key file.
Anything a leaf (or an attacker) sends becomes a RemoteProtocolError, never
another exception."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanomesh.errors import ConfigError, RemoteProtocolError
from nanomesh.wire.leaf import (
    HELLO_TTL,
    MAX_PAYLOAD,
    TAG_SIZE,
    Hello,
    LeafDevice,
    check_tag,
    decode_hello,
    decode_register,
    decode_report,
    hello_id,
    hello_leaf,
    open_answer,
    open_body,
    parse_leaf_keys,
    seal,
    seal_answer,
    tag,
)

KEY = bytes(range(32))
REG = ("leaf", "register")
REPORT = ("leaf", "bed-1", "report")
GOOD_REGISTER = {"leaf": "bed-1", "n": 7, "np": "00ff" * 4, "period": 10,
                 "dev": [{"r": "temp", "type": "body-temperature"}, {"r": "pir", "type": "pir"}]}


def test_the_tag_is_truncated_hmac_sha256_over_path_and_body() -> None:
    body = b'{"n": 1}'
    want = hmac.new(KEY, b"leaf/bed-1/report\n" + body, hashlib.sha256).digest()[:16]
    assert tag(KEY, REPORT, body) == want and TAG_SIZE == 16


def test_a_sealed_register_opens_checks_and_decodes() -> None:
    payload = seal(KEY, REG, GOOD_REGISTER)
    _tag, body = open_body(payload)
    check_tag(KEY, REG, payload)
    msg = decode_register(body)
    assert msg.leaf == "bed-1" and msg.counter == 7 and msg.period == 10.0
    assert msg.devices == (LeafDevice("temp", "body-temperature"), LeafDevice("pir", "pir"))


@pytest.mark.parametrize("change", ["key", "path", "body", "tag"])
def test_a_tag_fails_for_another_key_path_or_altered_bytes(change: str) -> None:
    payload = seal(KEY, REPORT, {"n": 3, "v": {"temp": 36.6}})
    key, path = KEY, REPORT
    if change == "key":
        key = bytes(32)
    elif change == "path":
        path = ("leaf", "bed-2", "report")
    elif change == "body":
        payload = payload.replace(b"36.6", b"39.9")
    else:
        payload = bytes([payload[0] ^ 1]) + payload[1:]
    with pytest.raises(RemoteProtocolError) as err:
        check_tag(key, path, payload)
    assert err.value.reason == "auth"


def test_a_report_decodes_with_its_age() -> None:
    msg = decode_report("bed-1", {"n": 9, "age": 1500, "v": {"temp": 36.6, "pir": True,
                                                             "x": None, "c": 3}})
    assert msg.counter == 9 and msg.age_ms == 1500
    assert msg.values == {"temp": 36.6, "pir": True, "x": None, "c": 3}


BAD_REGISTERS = [
    {**GOOD_REGISTER, "leaf": "Bed 1"},
    {**GOOD_REGISTER, "leaf": "x" * 33},
    {**GOOD_REGISTER, "n": -1},
    {**GOOD_REGISTER, "n": 2**63},
    {**GOOD_REGISTER, "n": True},
    {**GOOD_REGISTER, "n": 1.5},
    {**GOOD_REGISTER, "period": 0},
    {**GOOD_REGISTER, "period": "10"},
    {**GOOD_REGISTER, "period": 1e9},
    {**GOOD_REGISTER, "dev": []},
    {**GOOD_REGISTER, "dev": [{"r": "a", "type": "pir"}] * 2},
    {**GOOD_REGISTER, "dev": [{"r": f"r{i}", "type": "pir"} for i in range(17)]},
    {**GOOD_REGISTER, "dev": [{"r": "a"}]},
    {**GOOD_REGISTER, "dev": [{"r": "a", "type": "pir", "x": 1}]},
    {**GOOD_REGISTER, "dev": ["pir"]},
    {**GOOD_REGISTER, "extra": 1},
    {**GOOD_REGISTER, "np": "00ff"},
    {**GOOD_REGISTER, "np": "zz" * 8},
    {**GOOD_REGISTER, "np": 12},
    {k: v for k, v in GOOD_REGISTER.items() if k != "np"},
    {k: v for k, v in GOOD_REGISTER.items() if k != "leaf"},
]


@pytest.mark.parametrize("body", BAD_REGISTERS)
def test_bad_registers_are_refused(body: dict[str, object]) -> None:
    with pytest.raises(RemoteProtocolError) as err:
        decode_register(body)
    assert err.value.reason == "malformed"


@pytest.mark.parametrize("body", [
    {"n": 1, "v": {"Temp": 1}}, {"n": 1, "v": {"t": "hot"}}, {"n": 1, "v": {"t": [1]}},
    {"n": 1, "v": []}, {"n": 1, "age": -1, "v": {}}, {"n": 1, "age": 1.5, "v": {}},
    {"n": 1, "age": 10**12, "v": {}}, {"v": {}}, {"n": 1, "v": {"t": 1}, "z": 0},
    {"n": 1, "v": {"t": 10**400}},
])
def test_bad_reports_are_refused(body: dict[str, object]) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_report("bed-1", body)


@pytest.mark.parametrize("payload", [
    b"", b"x" * TAG_SIZE, b"x" * TAG_SIZE + b"{", b"x" * TAG_SIZE + b"[1]",
    b"x" * TAG_SIZE + b"\xff\xfe", b"x" * TAG_SIZE + b'{"n": NaN}',
    b"x" * TAG_SIZE + b"[" * 5000, b"x" * (MAX_PAYLOAD + 1),
])
def test_payloads_that_are_no_json_object_are_refused(payload: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        open_body(payload)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_payloads_never_raise_anything_else(payload: bytes) -> None:
    for path in (REG, REPORT):
        try:
            _tag, body = open_body(payload)
            check_tag(KEY, path, payload)
            decode_register(body) if path == REG else decode_report("bed-1", body)
        except RemoteProtocolError:
            pass


JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | st.floats()
                       | st.text(max_size=5),
                       lambda kids: st.lists(kids, max_size=3)
                       | st.dictionaries(st.text(max_size=5), kids, max_size=3), max_leaves=10)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["leaf", "n", "period", "dev", "age", "v", "r"]), JSONISH))
def test_random_bodies_never_raise_anything_else(body: dict[str, object]) -> None:
    for decode in (decode_register, lambda b: decode_report("bed-1", b)):
        with contextlib.suppress(RemoteProtocolError):
            decode(json.loads(json.dumps(body)))


def test_the_key_file_parses_names_and_hex_keys() -> None:
    keys = parse_leaf_keys("# leaves of room 1\nbed-1 " + "ab" * 16 + "\n\nbed-2 "
                           + "cd" * 32 + "  # the second\n")
    assert keys == {"bed-1": b"\xab" * 16, "bed-2": b"\xcd" * 32}


@pytest.mark.parametrize(("text", "words"), [
    ("bed-1", "expected '<leaf> <hex key>'"),
    ("Bed " + "ab" * 16, "lowercase token"),
    ("bed-1 zz" + "ab" * 16, "not hex"),
    ("bed-1 " + "ab" * 8, "16-64 bytes, this one 8"),
    ("a " + "ab" * 16 + "\na " + "ab" * 16, "line 2: leaf a listed twice"),
])
def test_a_bad_key_file_names_its_line(text: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        parse_leaf_keys(text)


def test_an_answer_opens_only_for_its_key_path_counter_and_code() -> None:
    """Issue 11: the peer's answers are bound to the leaf's key, the
    message's path and counter, and the answer's code; the tag is
    HMAC-SHA256 over "answer" + those, computed here independently."""
    sealed = seal_answer(KEY, REPORT, 7, 0x44, b"{}")
    want = hmac.new(KEY, b"answer\nleaf/bed-1/report\n7\n68\n{}", hashlib.sha256).digest()
    assert sealed == want[:TAG_SIZE] + b"{}"
    assert open_answer(KEY, REPORT, 7, 0x44, sealed) == b"{}"
    assert open_answer(KEY, REPORT, 7, 0x44, sealed[:TAG_SIZE]) is None  # body cut
    for other in [(bytes(32), REPORT, 7, 0x44), (KEY, REG, 7, 0x44), (KEY, REPORT, 8, 0x44),
                  (KEY, REPORT, 7, 0x84)]:
        assert open_answer(*other, sealed) is None, other
    # An answer tag never passes as a request tag (the "answer" prefix).
    with pytest.raises(RemoteProtocolError):
        check_tag(KEY, REPORT, sealed)


@given(st.binary(max_size=100), st.integers(0, 2**63 - 1), st.integers(0, 255))
def test_random_answers_do_not_open(payload: bytes, counter: int, code: int) -> None:
    assert open_answer(KEY, REPORT, counter, code, payload) is None


def test_a_hello_names_its_leaf_only_to_a_holder_of_its_key() -> None:
    """Issue 11: the id is HMAC(key, "hello\\n" + nonce)[:8]; another nonce,
    another id (an onlooker cannot follow the leaf), and only the key finds it."""
    nl = bytes(range(8))
    want = hmac.new(KEY, b"hello\n" + nl, hashlib.sha256).digest()[:8]
    assert hello_id(KEY, nl) == want != hello_id(KEY, bytes(8))
    hello = decode_hello(json.dumps({"id": want.hex(), "nl": nl.hex()}).encode())
    assert hello == Hello(want, nl)
    assert hello_leaf({"a": bytes(32), "bed-1": KEY}, hello) == "bed-1"
    assert hello_leaf({"a": bytes(32)}, hello) is None
    assert HELLO_TTL > 0


@given(st.one_of(st.binary(max_size=100), st.dictionaries(
    st.sampled_from(["id", "nl", "x"]), JSONISH).map(lambda d: json.dumps(d).encode())))
def test_garbage_hellos_are_refused_cleanly(payload: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        hello = decode_hello(payload)
        assert len(hello.ident) == 8 and len(hello.leaf_nonce) == 8
