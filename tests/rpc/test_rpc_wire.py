"""The service wire format (`nanomesh.wire.service_traffic`): round trips, strict
decoding, and fuzzing that only RemoteProtocolError ever escapes."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanomesh.errors import RemoteProtocolError
from nanomesh.wire.service_traffic import (
    CONTENT_JSON,
    MAX_BODY,
    METHODS,
    Event,
    Request,
    Response,
    coap_code_to_status,
    decode_event,
    decode_request,
    decode_response,
    encode_body,
    encode_event,
    encode_request,
    encode_response,
    split_call_frames,
    status_to_coap_code,
)

texts = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp", "Co", "Cn")),
                max_size=60).filter(str.isprintable)
requests = st.builds(Request, st.sampled_from(METHODS), texts, st.binary(max_size=300),
                     st.none() | st.integers(0, 0xFFFF), texts)
responses = st.builds(Response, st.integers(100, 599), st.binary(max_size=300),
                      st.none() | st.integers(0, 0xFFFF), texts)
msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | texts
    | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(texts, inner, max_size=5),
    max_leaves=20)


@given(requests)
def test_request_round_trip(r: Request) -> None:
    assert decode_request(encode_request(r)) == r


@given(responses)
def test_response_round_trip(r: Response) -> None:
    assert decode_response(encode_response(r)) == r


@given(texts.filter(bool), texts.filter(bool), st.binary(max_size=300))
def test_event_round_trip(topic: str, source: str, data: bytes) -> None:
    assert decode_event(encode_event(topic, source, data)) == Event(topic, data, source)


def _only_protocol_errors(fn: object, *args: object) -> None:
    try:
        fn(*args)  # type: ignore[operator]
    except RemoteProtocolError as exc:
        assert exc.reason in {"malformed", "version", "oversized"}


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_random_bytes_only_raise_protocol_errors(data: bytes) -> None:
    _only_protocol_errors(decode_request, data)
    _only_protocol_errors(decode_response, data)
    _only_protocol_errors(decode_event, [b"t", data])
    _only_protocol_errors(decode_event, [data, data])


@settings(max_examples=300)
@given(st.dictionaries(st.sampled_from(["v", "m", "p", "q", "b", "cf", "s", "e", "src", "data"]),
                       msgpack_values, max_size=8))
def test_random_maps_only_raise_protocol_errors(obj: dict[str, object]) -> None:
    obj.setdefault("v", 1)
    data = msgpack.packb(obj, use_bin_type=True)
    _only_protocol_errors(decode_request, data)
    _only_protocol_errors(decode_response, data)
    _only_protocol_errors(decode_event, [b"topic", data])


@pytest.mark.parametrize(("payload", "reason"), [
    (msgpack.packb({"v": 2, "m": "GET", "p": ""}), "version"),
    (msgpack.packb({"v": True, "m": "GET", "p": ""}), "version"),
    (msgpack.packb({"m": "GET", "p": ""}), "version"),
    (msgpack.packb({"v": 1, "p": ""}), "malformed"),
    (msgpack.packb({"v": 1, "m": "FETCH", "p": ""}), "malformed"),
    (msgpack.packb({"v": 1, "m": "GET", "p": "a\nb"}), "malformed"),
    (msgpack.packb({"v": 1, "m": "GET", "p": "", "b": "text, not bytes"}), "malformed"),
    (msgpack.packb({"v": 1, "m": "GET", "p": "", "cf": 70000}), "malformed"),
    (msgpack.packb([1, "GET", ""]), "malformed"),
    (b"\xc1", "malformed"),
    (b"\x00" * (MAX_BODY + 20_000), "oversized"),
])
def test_bad_requests_name_their_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_request(payload)
    assert info.value.reason == reason


def test_unknown_keys_are_ignored_for_forward_compatibility() -> None:
    data = msgpack.packb({"v": 1, "m": "POST", "p": "x", "b": b"1", "future": [1, 2]},
                         use_bin_type=True)
    assert decode_request(data) == Request("POST", "x", b"1")


def test_local_values_are_checked_naming_the_field() -> None:
    with pytest.raises(ValueError, match="method"):
        Request("FETCH", "x")
    with pytest.raises(ValueError, match="body"):
        Request("POST", "x", b"x" * (MAX_BODY + 1))
    with pytest.raises(ValueError, match="status"):
        Response(99)
    with pytest.raises(ValueError, match="topic"):
        encode_event("t" * 300, "src", b"")


def test_call_frames_are_checked() -> None:
    assert split_call_frames([b"id", b"payload"]) == (b"id", b"payload")
    for frames in ([b"id"], [b"", b"p"], [b"x" * 17, b"p"], [b"a", b"b", b"c"]):
        with pytest.raises(RemoteProtocolError):
            split_call_frames(frames)


@pytest.mark.parametrize(("status", "method", "code"), [
    (200, "GET", 0x45), (200, "POST", 0x44), (201, "POST", 0x41), (204, "DELETE", 0x42),
    (400, "GET", 0x80), (404, "GET", 0x84), (405, "PUT", 0x85), (413, "POST", 0x8D),
    (418, "GET", 0x80), (500, "GET", 0xA0), (503, "GET", 0xA3), (504, "GET", 0xA4),
])
def test_status_to_coap_code(status: int, method: str, code: int) -> None:
    assert status_to_coap_code(status, method) == code


@pytest.mark.parametrize(("code", "status"), [
    (0x45, 200), (0x44, 200), (0x41, 201), (0x84, 404), (0x80, 400), (0xA3, 503), (0xA4, 504),
    (0x01, 502),
])
def test_coap_code_to_status(code: int, status: int) -> None:
    assert coap_code_to_status(code) == status


def test_encode_body() -> None:
    assert encode_body(None) == (b"", None)
    assert encode_body(b"\x00") == (b"\x00", 42)
    assert encode_body("hé") == ("hé".encode(), 0)
    assert encode_body({"a": [1]}) == (b'{"a":[1]}', CONTENT_JSON)
    with pytest.raises(TypeError):
        encode_body(object())
