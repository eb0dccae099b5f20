"""A small HTTP/1.1 JSON server on trio, built on h11's sans-I/O parser.

Deliberately tiny: one request per connection, JSON in and out, bounded
request size and time. Routes are a plain dict of (method, path) to handler;
a handler returns (status, JSON-able body). Bad requests get a 4xx with a JSON
``{"error": ...}``; a handler bug gets a 500 and is logged, and never takes
the peer down.

Two escapes from JSON, for bundles (``nanomesh.daemon.api_bundles``):

- ``serve_http(..., large_bodies={"/v1/bundles/": BodyLimit(max_bytes,
  timeout)})``: a request whose path starts with a listed prefix may send up
  to ``max_bytes`` within ``timeout`` seconds; its body is spooled (memory up
  to SPOOL_MEMORY_BYTES, then a temporary file) and handed to the handler as
  ``request.body_file`` (``request.body`` is then empty). A declared or actual
  body over the limit gets 413 without buffering more than the limit.
- A handler may return ``(status, RawBody(data, content_type))`` or
  ``(status, FileBody(file, size, content_type))``; the server sends the
  bytes, or streams the open file and closes it.
"""

from __future__ import annotations

import json
import logging
import tempfile
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from typing import IO, Any, BinaryIO

import h11
import trio

log = logging.getLogger("nanomesh.api")
_STATUS_CODES = {s.value for s in HTTPStatus}

MAX_REQUEST_BYTES = 1 << 20
"""Largest request (headers and body) accepted, in bytes."""
MAX_CONNECTIONS = 64
"""Requests served at once; one more is answered 503 at once. Bounds the
memory a flood of slow clients can pin (64 x MAX_REQUEST_BYTES) on a device
whose API serves an operator, a few peers and local nanoservices."""
RESPONSE_TIMEOUT = 30.0
"""Seconds a client may take to read a reply, plus one second per
RESPONSE_BYTES_PER_SECOND bytes of it: a client that stops reading cannot
hold a connection (and an open file) forever."""
RESPONSE_BYTES_PER_SECOND = 500_000
"""The slowest reading rate allowed for a large reply (a poor Wi-Fi link)."""
REQUEST_TIMEOUT = 10.0
"""Seconds a client may take to send its request."""
SPOOL_MEMORY_BYTES = 1 << 20
"""A large (spooled) request body stays in memory up to this size, then moves
to a temporary file, so a 100 MiB upload does not cost 100 MiB of RAM."""
_SEND_CHUNK = 1 << 18
"""Bytes read per thread hop when streaming a FileBody: 256 KiB served a 20 MiB
bundle over loopback about 20 % faster than 64 KiB, at a bounded buffer."""


@dataclass(frozen=True)
class BodyLimit:
    """Request-size rule for a path prefix (see the module docstring)."""

    max_bytes: int
    """Largest body accepted, in bytes; 413 beyond."""
    timeout: float
    """Seconds the client may take to send the whole request."""
    methods: frozenset[str] = frozenset({"PUT"})
    """Methods the rule is for; others keep the JSON limit."""
    admit: Callable[[Mapping[str, str]], bool] | None = None
    """Checked on the request's headers before any of the body is read: False
    answers 401 at once, so nobody without credentials can make the server
    spool a large body."""


@dataclass(frozen=True)
class RawBody:
    """A non-JSON response body."""

    data: bytes
    content_type: str


@dataclass(frozen=True)
class FileBody:
    """A response streamed from an open binary file of `size` bytes (from its
    current offset); the server closes the file when done or on error."""

    file: BinaryIO
    size: int
    content_type: str


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes
    params: Mapping[str, str] = field(default_factory=dict)
    """Path parameters: a route ``/v1/services/{name}`` fills ``name``."""
    body_file: IO[bytes] | None = None
    """The spooled body of a request under a `BodyLimit` prefix (else None),
    positioned at offset 0; closed by the server after the handler."""

    def json(self) -> Any:
        """The body as JSON; HttpError 400 if it is not."""
        try:
            return json.loads(self.body or b"null")
        except ValueError as exc:
            raise HttpError(400, f"request body is not JSON: {exc}") from None

    def bearer_token(self) -> str | None:
        return bearer_token(self.headers)


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header (lower-cased names)."""
    auth = headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


Handler = Callable[[Request], Awaitable[tuple[int, Any]]]


class _TooLarge(Exception):
    """The request body exceeds its limit (MAX_REQUEST_BYTES or a BodyLimit)."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit


class HttpError(Exception):
    """Raised by a handler to answer with a 4xx status and a message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def serve_http(routes: Mapping[tuple[str, str], Handler],
                     listeners: list[trio.SocketListener],
                     *, large_bodies: Mapping[str, BodyLimit] | None = None,
                     task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve on already-open listeners (opened by the caller, so that a port in
    use is reported before anything starts). `large_bodies` maps path
    prefixes to their own body limit (see the module docstring)."""
    rules = dict(large_bodies or {})
    slots = trio.CapacityLimiter(MAX_CONNECTIONS)

    async def handle(stream: trio.SocketStream) -> None:
        try:
            try:
                slots.acquire_nowait()
            except trio.WouldBlock:
                await _refuse_busy(stream)
                return
            try:
                await _serve_one(stream, routes, rules)
            finally:
                slots.release()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass
        finally:
            await stream.aclose()

    task_status.started()
    await trio.serve_listeners(handle, listeners)


async def _serve_one(stream: trio.SocketStream, routes: Mapping[tuple[str, str], Handler],
                     rules: Mapping[str, BodyLimit] | None = None) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
    request = None
    with trio.move_on_after(REQUEST_TIMEOUT) as scope:
        try:
            request = await _read_request(stream, conn, rules or {}, scope)
        except h11.RemoteProtocolError as exc:
            await _respond(stream, conn, exc.error_status_hint,
                           {"error": f"malformed HTTP request: {exc}"})
            return
        except _TooLarge as exc:
            await _respond(stream, conn, 413,
                           {"error": f"request body over {exc.limit} bytes"})
            return
        except _Refused as exc:
            await _respond(stream, conn, exc.status, {"error": exc.message})
            return
    if request is None:
        return
    try:
        status, body = await _dispatch(routes, request)
        size = body.size if isinstance(body, FileBody) else 0
        with trio.move_on_after(RESPONSE_TIMEOUT + size / RESPONSE_BYTES_PER_SECOND):
            await _respond(stream, conn, status, body)
    finally:
        if request.body_file is not None:
            request.body_file.close()


async def _respond(stream: trio.SocketStream, conn: h11.Connection, status: int, body: Any
                   ) -> None:
    if isinstance(body, FileBody):
        await _respond_file(stream, conn, status, body)
        return
    if isinstance(body, RawBody):
        payload, content_type = body.data, body.content_type
    else:
        payload = (json.dumps(body, indent=None, sort_keys=True) + "\n").encode()
        content_type = "application/json"
    await _send_head(stream, conn, status, content_type, len(payload))
    await stream.send_all(conn.send(h11.Data(data=payload)) or b"")
    await stream.send_all(conn.send(h11.EndOfMessage()) or b"")


async def _send_head(stream: trio.SocketStream, conn: h11.Connection, status: int,
                     content_type: str, length: int) -> None:
    headers = [("content-type", content_type), ("content-length", str(length)),
               ("connection", "close")]
    reason = HTTPStatus(status).phrase.encode() if status in _STATUS_CODES else b""
    await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers,
                                                 reason=reason)) or b"")


async def _respond_file(stream: trio.SocketStream, conn: h11.Connection, status: int,
                        body: FileBody) -> None:
    try:
        await _send_head(stream, conn, status, body.content_type, body.size)
        left = body.size
        while left > 0:
            chunk = await trio.to_thread.run_sync(body.file.read, min(left, _SEND_CHUNK))
            if not chunk:
                # The file shrank under us: h11 refuses to end a short body, and
                # closing the connection tells the client the reply is incomplete.
                raise trio.BrokenResourceError("response file ended early")
            left -= len(chunk)
            await stream.send_all(conn.send(h11.Data(data=chunk)) or b"")
        await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
    finally:
        await trio.to_thread.run_sync(body.file.close)


def _body_rule(rules: Mapping[str, BodyLimit], method: str, path: str) -> BodyLimit | None:
    return next((rule for prefix, rule in rules.items()
                 if path.startswith(prefix) and method in rule.methods), None)


class _Refused(Exception):
    """A large-body request refused on its headers (`BodyLimit.admit`)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def _refuse_busy(stream: trio.SocketStream) -> None:
    """503 without reading the request: every slot is taken."""
    body = b'{"error": "too many concurrent requests; retry shortly"}\n'
    head = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n")
    with trio.move_on_after(1.0):
        # Take (and drop) what the client sent first: closing a socket with
        # unread data resets the connection, and the client would never see
        # the 503.
        await stream.receive_some(65536)
        await stream.send_all(head + body)


async def _read_request(stream: trio.SocketStream, conn: h11.Connection,
                        rules: Mapping[str, BodyLimit] | None = None,
                        scope: trio.CancelScope | None = None) -> Request | None:
    head: h11.Request | None = None
    body = bytearray()
    limit = MAX_REQUEST_BYTES
    spool: IO[bytes] | None = None
    size = 0
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                conn.receive_data(data)
                if not data and conn.their_state is not h11.DONE:
                    return None
                continue
            if isinstance(event, h11.Request):
                head = event
                rule = _body_rule(rules or {}, head.method.decode("latin-1"),
                                  head.target.decode("latin-1"))
                if rule is not None and rule.admit is not None and not rule.admit(
                        {k.decode("latin-1").lower(): v.decode("latin-1")
                         for k, v in head.headers}):
                    raise _Refused(401, "this upload needs the management token (or the "
                                   "mesh's internal secret)")
                if rule is not None:
                    limit = rule.max_bytes
                    # Not a `with`: on success the file outlives this function,
                    # owned by the Request; the finally below closes it otherwise.
                    spool = tempfile.SpooledTemporaryFile(  # noqa: SIM115
                        max_size=SPOOL_MEMORY_BYTES)
                    if scope is not None:
                        scope.deadline = trio.current_time() + rule.timeout
                _check_declared_length(head, limit)
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > limit:
                    raise _TooLarge(limit)
                if spool is not None:
                    # A bounded write (<= 64 KiB, to memory or the page cache):
                    # cheaper inline than a thread hop per chunk.
                    spool.write(event.data)
                else:
                    body += event.data
            elif isinstance(event, h11.EndOfMessage) and head is not None:
                target = head.target.decode("latin-1")
                path, _, query = target.partition("?")
                headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                           for k, v in head.headers}
                if spool is not None:
                    spool.seek(0)
                request = Request(head.method.decode("ascii"), path, query, headers,
                                  bytes(body), body_file=spool)
                spool = None  # now owned by the request
                return request
            elif isinstance(event, h11.ConnectionClosed):
                return None
    finally:
        if spool is not None:
            spool.close()


def _check_declared_length(head: h11.Request, limit: int) -> None:
    """413 before reading a body whose declared length is already too large."""
    for name, value in head.headers:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise _TooLarge(limit)


def _route(routes: Mapping[tuple[str, str], Handler], request: Request
           ) -> tuple[Handler | None, Request]:
    """Exact paths first, then patterns with ``{param}`` segments, each of
    which matches one non-empty path segment (``/v1/instances/{service}/{index}``)."""
    path = request.path.rstrip("/") or "/"
    handler = routes.get((request.method, path))
    if handler is not None:
        return handler, request
    segments = path.split("/")
    for (method, pattern), candidate in routes.items():
        if method != request.method or "{" not in pattern:
            continue
        params = _match(pattern.split("/"), segments)
        if params is not None:
            return candidate, replace(request, params=params)
    return None, request


def _match(pattern: list[str], segments: list[str]) -> dict[str, str] | None:
    if len(pattern) != len(segments):
        return None
    params: dict[str, str] = {}
    for want, got in zip(pattern, segments, strict=True):
        if want.startswith("{") and want.endswith("}"):
            if not got:
                return None
            params[want[1:-1]] = urllib.parse.unquote(got)
        elif want != got:
            return None
    return params


async def _dispatch(routes: Mapping[tuple[str, str], Handler], request: Request
                    ) -> tuple[int, Any]:
    handler, request = _route(routes, request)
    if handler is None:
        if any(_route(routes, replace(request, method=m))[0] for m, _ in routes):
            return 405, {"error": f"method {request.method} not allowed on {request.path}"}
        return 404, {"error": f"no such endpoint: {request.path}"}
    try:
        return await handler(request)
    except HttpError as exc:
        return exc.status, {"error": exc.message}
    except Exception:
        log.exception("API handler for %s %s failed", request.method, request.path)
        return 500, {"error": "internal error; see the peer's log"}
