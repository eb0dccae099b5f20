"""Service traffic on the wire: request/response calls and published events.

The one home of the bytes that nanoservices exchange over ZeroMQ (the CoAP and
HTTP transports carry the same `Request`/`Response` values in their own
framing; see `nanomesh.transport.coapio` and `nanomesh.transport.httpio`).

**Calls** (DEALER -> ROUTER, `nanomesh.transport.rpc`). A call is two ZeroMQ frames,
``[call_id, payload]``: ``call_id`` is 1..16 opaque bytes the server echoes
back so a client can drop a late reply to an earlier call; ``payload`` is a
msgpack map with short keys:

- request: ``{"v": 1, "m": method, "p": path, "q": query, "b": body, "cf": content_format}``
- response: ``{"v": 1, "s": status, "b": body, "cf": content_format, "e": error}``

Unknown keys are ignored (a newer version may append optional keys without a
version bump); a missing required key or a wrong type is a protocol error.

**Events** (PUB -> relay XSUB/XPUB -> SUB, `nanomesh.sdk.events`): two frames,
``[topic utf-8, msgpack {"v": 1, "src": source id, "data": bytes}]``.
ZeroMQ subscriptions are byte prefixes of the first frame.

``content_format`` numbers are CoAP Content-Formats (RFC 7252 section 12.3),
so a call keeps its meaning through the CoAP gateway: see `CONTENT_TEXT`,
`CONTENT_OCTETS`, `CONTENT_JSON`. Status codes are HTTP's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import msgpack

from nanomesh.errors import RemoteProtocolError

RPC_VERSION = 1
"""Version of the call and event payloads; a payload with another ``v`` is
refused (``reason="version"``)."""

MAX_BODY = 1 << 20
"""Largest call or event body, in bytes (1 MiB). Nanoservices exchange sensor
readings and commands; bulk data belongs elsewhere. CoAP moves bodies this large
with block-wise transfer; ZeroMQ in one message."""
MAX_PAYLOAD = MAX_BODY + 16 * 1024
"""Largest encoded payload accepted: the body plus room for the other fields."""
MAX_PATH = 1024
"""Longest path or query string, in characters."""
MAX_ERROR = 4096
"""Longest error message in a response, in characters (longer ones are cut by
`error_response`)."""
MAX_CALL_ID = 16
"""Longest call id frame, in bytes."""
MAX_TOPIC = 256
"""Longest event topic, in UTF-8 bytes."""
MAX_SOURCE = 256
"""Longest event source id (an instance id such as ``"echo/0"`` or a client id)."""

METHODS = ("GET", "POST", "PUT", "DELETE")
"""Methods a call may use: the four CoAP methods, so any call can go through the
CoAP gateway."""
STATUSES = (200, 201, 204, 400, 403, 404, 405, 413, 500, 502, 503, 504)
"""Common statuses; any 100..599 is accepted on the wire."""

CONTENT_TEXT = 0
"""CoAP Content-Format ``text/plain; charset=utf-8``."""
CONTENT_OCTETS = 42
"""CoAP Content-Format ``application/octet-stream``."""
CONTENT_JSON = 50
"""CoAP Content-Format ``application/json``."""

MEDIA_TYPES = {CONTENT_TEXT: "text/plain; charset=utf-8", CONTENT_OCTETS:
               "application/octet-stream", CONTENT_JSON: "application/json"}
"""The HTTP media type of each content format the HTTP transport translates."""


def _check_request(method: str, path: str, query: str, body: bytes,
                   content_format: int | None) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    _check_text(path, "path", MAX_PATH)
    _check_text(query, "query", MAX_PATH)
    _check_body(body)
    _check_format(content_format)


def _check_text(value: object, what: str, limit: int) -> None:
    if type(value) is not str or len(value) > limit or not value.isprintable():
        raise ValueError(f"{what} must be a printable string of at most {limit} characters")


def _check_body(body: object) -> None:
    if type(body) is not bytes:
        raise ValueError(f"body must be bytes, got {type(body).__name__}")
    if len(body) > MAX_BODY:
        raise ValueError(f"body of {len(body)} bytes exceeds the {MAX_BODY}-byte limit")


def _check_format(cf: object) -> None:
    if cf is not None and (type(cf) is not int or not 0 <= cf <= 0xFFFF):
        raise ValueError("content_format must be null or a CoAP Content-Format 0..65535")


@dataclass(frozen=True)
class Request:
    """One call to a nanoservice. ``path`` has no leading slash (``"echo/hi"``);
    ``content_format`` describes ``body`` (see the module docstring). Invalid
    values raise ValueError naming the field."""

    method: str
    path: str
    body: bytes = b""
    content_format: int | None = None
    query: str = ""

    def __post_init__(self) -> None:
        _check_request(self.method, self.path, self.query, self.body, self.content_format)


@dataclass(frozen=True)
class Response:
    """The answer to a `Request`: an HTTP-style ``status``, a body, and for
    4xx/5xx a human-readable ``error``."""

    status: int
    body: bytes = b""
    content_format: int | None = None
    error: str = ""

    def __post_init__(self) -> None:
        if type(self.status) is not int or not 100 <= self.status <= 599:
            raise ValueError(f"status must be an integer 100..599, got {self.status!r}")
        _check_body(self.body)
        _check_format(self.content_format)
        if type(self.error) is not str or len(self.error) > MAX_ERROR:
            raise ValueError(f"error must be a string of at most {MAX_ERROR} characters")

    @property
    def ok(self) -> bool:
        return self.status < 400


def error_response(status: int, message: str) -> Response:
    """A 4xx/5xx response whose message is cut to `MAX_ERROR` characters."""
    return Response(status, error=message[:MAX_ERROR])


@dataclass(frozen=True)
class Event:
    """One published event: ``source`` is the publishing instance or client id."""

    topic: str
    data: bytes
    source: str


# --------------------------------------------------------------------- encode


def _pack(obj: dict[str, Any]) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def encode_request(r: Request) -> bytes:
    return _pack({"v": RPC_VERSION, "m": r.method, "p": r.path, "q": r.query, "b": r.body,
                  "cf": r.content_format})


def encode_response(r: Response) -> bytes:
    return _pack({"v": RPC_VERSION, "s": r.status, "b": r.body, "cf": r.content_format,
                  "e": r.error})


def encode_event(topic: str, source: str, data: bytes) -> list[bytes]:
    """The two frames of an event; ValueError if a field is invalid."""
    _check_topic(topic)
    _check_text(source, "source", MAX_SOURCE)
    _check_body(data)
    return [topic.encode(), _pack({"v": RPC_VERSION, "src": source, "data": data})]


def _check_topic(topic: object) -> None:
    _check_text(topic, "topic", MAX_TOPIC)
    assert isinstance(topic, str)
    if len(topic.encode()) > MAX_TOPIC:
        raise ValueError(f"topic must be at most {MAX_TOPIC} UTF-8 bytes")


def call_frames(call_id: bytes, payload: bytes) -> list[bytes]:
    """The frames a DEALER sends (and a ROUTER answers after its identity frame)."""
    return [call_id, payload]


# --------------------------------------------------------------------- decode


def _bad(detail: str) -> RemoteProtocolError:
    return RemoteProtocolError("malformed", detail)


def _unpack_map(data: bytes) -> dict[str, Any]:
    if type(data) is not bytes:
        raise _bad("payload must be bytes")
    if len(data) > MAX_PAYLOAD:
        raise RemoteProtocolError("oversized", f"{len(data)} bytes")
    try:
        obj = msgpack.unpackb(
            # Lengths capped by the input size: a few bytes of headers cannot
            # make msgpack reserve megabytes before failing.
            data, raw=False, strict_map_key=True, max_str_len=MAX_BODY, max_bin_len=MAX_BODY,
            max_array_len=min(64, len(data)), max_map_len=min(64, len(data) // 2),
            max_ext_len=0,
        )
    except (ValueError, TypeError, RecursionError, msgpack.UnpackException) as exc:
        raise _bad(f"msgpack: {type(exc).__name__}") from None
    if type(obj) is not dict:
        raise _bad("payload must be a map")
    version = obj.get("v")
    if version != RPC_VERSION or type(version) is not int:
        raise RemoteProtocolError("version", f"payload version {version!r}, want {RPC_VERSION}")
    return obj


def _field(obj: dict[str, Any], key: str, what: str, default: Any = ...) -> Any:
    if key in obj:
        return obj[key]
    if default is ...:
        raise _bad(f"missing field {what!r}")
    return default


def decode_request(data: bytes) -> Request:
    """Validate a request payload; RemoteProtocolError if it is not one."""
    obj = _unpack_map(data)
    try:
        return Request(_field(obj, "m", "method"), _field(obj, "p", "path"),
                       _field(obj, "b", "body", b""), _field(obj, "cf", "content_format", None),
                       _field(obj, "q", "query", ""))
    except ValueError as exc:
        raise _bad(f"request: {exc}") from None


def decode_response(data: bytes) -> Response:
    """Validate a response payload; RemoteProtocolError if it is not one."""
    obj = _unpack_map(data)
    try:
        return Response(_field(obj, "s", "status"), _field(obj, "b", "body", b""),
                        _field(obj, "cf", "content_format", None), _field(obj, "e", "error", ""))
    except ValueError as exc:
        raise _bad(f"response: {exc}") from None


def split_call_frames(frames: list[bytes]) -> tuple[bytes, bytes]:
    """``(call_id, payload)`` from the frames after any ROUTER identity frame."""
    if len(frames) != 2:
        raise _bad(f"a call has 2 frames, got {len(frames)}")
    call_id, payload = frames
    if not 0 < len(call_id) <= MAX_CALL_ID:
        raise _bad(f"call id must be 1..{MAX_CALL_ID} bytes")
    return call_id, payload


def decode_event(frames: list[bytes]) -> Event:
    """Validate an event's frames; RemoteProtocolError if they are not one."""
    if len(frames) != 2:
        raise _bad(f"an event has 2 frames, got {len(frames)}")
    try:
        topic = frames[0].decode()
    except UnicodeDecodeError:
        raise _bad("topic is not UTF-8") from None
    obj = _unpack_map(frames[1])
    source, data = _field(obj, "src", "src"), _field(obj, "data", "data")
    try:
        _check_topic(topic)
        _check_text(source, "src", MAX_SOURCE)
        _check_body(data)
    except ValueError as exc:
        raise _bad(f"event: {exc}") from None
    return Event(topic, data, source)


# --------------------------------------------------------------------- CoAP mapping


def coap_code_to_status(code: int) -> int:
    """An HTTP-style status for a CoAP response code (``class << 5 | detail``):
    2.01 -> 201, other 2.xx -> 200, 4.dd -> 400 + dd, 5.dd -> 500 + dd."""
    klass, detail = code >> 5, code & 0x1F
    if klass == 2:
        return 201 if detail == 1 else 204 if detail == 2 else 200
    if klass in (4, 5) and detail < 100:
        return klass * 100 + detail
    return 502  # not a response code: the gateway or server misbehaved


def status_to_coap_code(status: int, method: str) -> int:
    """The CoAP response code for an HTTP-style status (RFC 8075's mapping):
    2xx -> 2.05 Content for GET, 2.01 Created for 201, else 2.04 Changed;
    4xx/5xx keep their class and detail (404 -> 4.04) where CoAP defines
    one, else x.00."""
    if 200 <= status < 300:
        if status == 201:
            return 2 << 5 | 1
        if status == 204 and method == "DELETE":
            return 2 << 5 | 2
        return 2 << 5 | (5 if method == "GET" else 4)
    klass = status // 100 if status >= 400 else 5
    detail = status % 100
    known = {4: (0, 1, 2, 3, 4, 5, 6, 8, 12, 13, 15, 29), 5: (0, 1, 2, 3, 4, 5)}
    return klass << 5 | (detail if detail in known[klass] else 0)


# --------------------------------------------------------------------- bodies


def encode_body(value: object) -> tuple[bytes, int | None]:
    """A body and its content format for a Python value: None -> empty; bytes
    as they are (octet-stream); str as UTF-8 text; anything else as JSON
    (TypeError if it is not JSON-serializable)."""
    if value is None:
        return b"", None
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value), CONTENT_OCTETS
    if isinstance(value, str):
        return value.encode(), CONTENT_TEXT
    return json.dumps(value, separators=(",", ":")).encode(), CONTENT_JSON
