"""A small HTTP/1.1 JSON server on trio, built on h11's sans-I/O parser.

Deliberately tiny: one request per connection, JSON in and out, bounded
request size and time. Routes are a plain dict of (method, path) to handler;
a handler returns (status, JSON-able body). Bad requests get a 4xx with a JSON
``{"error": ...}``; a handler bug gets a 500 and is logged, and never takes
the peer down. Every 401 carries ``WWW-Authenticate: Bearer realm="nanomesh"``;
every 429 and 503 ``Retry-After: 1``; every 405 ``Allow`` with the methods the
path has. HEAD is answered for every GET route: the GET's status and headers,
no body (RFC 9110 section 9.3.2).

Hostile and slow clients: which connections are served, for how long, and
how ``/v1/health`` and ``/v1/status`` stay answerable while others hold
sockets open, is decided by `nanomesh.daemon.http_limits` (its docstring
explains the design; `ServerLimits` holds the defaults: a head within 10 s,
a body within 10 s, 32 connections per client IP, 256 in all with the
oldest idle one evicted for a newcomer, 64 request slots plus 8 reserved
for health and status). This module applies those decisions to sockets and
counts what it refused in `ServerStats` (``/v1/health`` shows them).

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

And one for streams of unknown length (``GET /v1/events?follow=1``, Server-Sent
Events): ``(status, StreamBody(chunks, content_type))``. The request gives its
slot back once the head is sent and takes one of ``max_streams`` stream slots
instead (none free: 503), so followers never starve ordinary requests. The
chunks go out with chunked transfer coding as the generator yields them; the
stream ends when the generator does, when the client closes its side (a
reader task notices at once), or when one chunk cannot be sent within
STREAM_SEND_TIMEOUT: a client that stops reading is dropped, since the
kernel's socket buffer is the only buffer a stream has.

Every response says ``X-Content-Type-Options: nosniff``: a browser must not
guess that a JSON error or a log is HTML.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import tempfile
import urllib.parse
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from typing import IO, Any, BinaryIO

import h11
import trio

from nanomesh.daemon.http_limits import (
    UNMATCHED,
    ConnectionTable,
    Refused,
    ServerLimits,
    ServerStats,
)
from nanomesh.security.auth import TOKEN_SOURCES

log = logging.getLogger("nanomesh.api")
_STATUS_CODES = {s.value for s in HTTPStatus}

MAX_REQUEST_BYTES = 1 << 20
"""Largest JSON request body accepted, in bytes (bundle uploads: `BodyLimit`)."""
RESPONSE_TIMEOUT = 30.0
"""Seconds a client may take to read a reply, plus one second per
RESPONSE_BYTES_PER_SECOND bytes of it: a client that stops reading cannot
hold a connection (and an open file) forever."""
RESPONSE_BYTES_PER_SECOND = 500_000
"""The slowest reading rate allowed for a large reply (a poor Wi-Fi link)."""
REFUSAL_LINGER = 1.0
"""Seconds spent on a refusal (429, 503, 408): reading what the client sent,
so that closing does not reset the connection before it reads the answer."""
REPORT_INTERVAL = 60.0
"""Seconds between two log lines summarising refusals: an attack is logged,
but cannot flood the log."""
WWW_AUTHENTICATE = 'Bearer realm="nanomesh"'
"""The challenge of every 401 (RFC 6750): a bearer token is what we want."""
SPOOL_MEMORY_BYTES = 1 << 20
"""A large (spooled) request body stays in memory up to this size, then moves
to a temporary file, so a 100 MiB upload does not cost 100 MiB of RAM."""
STREAM_SEND_TIMEOUT = 10.0
"""Seconds one chunk of a stream (`StreamBody`) may take to be accepted by
the socket; longer means the client stopped reading, and it is dropped
rather than buffered for (a poor Wi-Fi link still moves 100 KB/s)."""
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
    spool a large body. It may raise `HttpError` to answer another status
    (503 while there is nothing yet to check the credentials against)."""


@dataclass(frozen=True)
class RawBody:
    """A non-JSON response body."""

    data: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()
    """Extra response headers (a page's security policy, caching)."""


@dataclass(frozen=True)
class StreamBody:
    """A response of unknown length, sent as `chunks` yields (module docstring)."""

    chunks: AsyncGenerator[bytes, None]
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()


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
                     limits: ServerLimits | None = None, stats: ServerStats | None = None,
                     task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve on already-open listeners (opened by the caller, so that a port in
    use is reported before anything starts). `large_bodies` maps path
    prefixes to their own body limit (see the module docstring); `limits`
    default to `ServerLimits()`; `stats`, if given, is kept up to date."""
    server = _Server(routes, dict(large_bodies or {}), limits or ServerLimits(),
                     stats if stats is not None else ServerStats())
    task_status.started()
    await trio.serve_listeners(server.handle, listeners)


class _Server:
    """The trio shell around `ConnectionTable`: one `handle` task per socket."""

    def __init__(self, routes: Mapping[tuple[str, str], Handler],
                 rules: Mapping[str, BodyLimit], limits: ServerLimits,
                 stats: ServerStats) -> None:
        self.routes = routes
        self.rules = rules
        self.limits = limits
        self.stats = stats
        self.table = ConnectionTable(limits)
        self.shared = trio.CapacityLimiter(limits.max_requests)
        self.reserve = trio.CapacityLimiter(limits.reserved_requests)
        self.streams = trio.CapacityLimiter(limits.max_streams)
        self._scopes: dict[int, trio.CancelScope] = {}
        self._ids = itertools.count()
        self._reported = ServerStats().to_dict()
        self._reported_at = -REPORT_INTERVAL

    async def handle(self, stream: trio.SocketStream) -> None:
        conn, client = next(self._ids), _client_ip(stream)
        try:
            decision = self.table.open(conn, client)
            if isinstance(decision, Refused):
                self._count("refused_per_client" if decision.status == 429 else "refused_full")
                await _refuse(stream, decision.status, decision.reason)
                return
            evicted = self._scopes.pop(decision.evict, None) if decision.evict is not None else None
            if evicted is not None:
                self._count("evicted")
                evicted.cancel()
            self.stats.open = len(self.table)
            with trio.CancelScope() as scope:
                self._scopes[conn] = scope
                await self._serve(stream, conn)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError,
                trio.TooSlowError):
            pass
        finally:
            self.table.close(conn)
            self._scopes.pop(conn, None)
            self.stats.open = len(self.table)
            await stream.aclose()

    async def _serve(self, stream: trio.SocketStream, conn: int) -> None:
        h11conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_head_bytes)
        with trio.move_on_after(self.limits.head_timeout) as head_scope:
            try:
                head = await _read_head(stream, h11conn, self.limits.max_head_bytes)
            except h11.RemoteProtocolError as exc:
                await _respond(stream, h11conn, exc.error_status_hint,
                               {"error": f"malformed HTTP request: {exc}"})
                await _drain(stream)
                return
        if head_scope.cancelled_caught:
            self._count("head_timeouts")
            await _refuse(stream, 408, f"no complete request head within "
                          f"{self.limits.head_timeout:g} s", drain=False)
            return
        if head is None:
            return
        self.table.head_complete(conn)
        method, target = head.method.decode("ascii"), head.target.decode("latin-1")
        priority = method == "GET" and target.partition("?")[0] in self.limits.priority_paths
        slots = self.reserve if priority else self.shared
        try:
            slots.acquire_nowait()
        except trio.WouldBlock:
            self._count("busy")
            await _respond(stream, h11conn, 503,
                           {"error": "too many concurrent requests; retry shortly"})
            await _drain(stream)
            return
        try:
            streaming = await self._serve_request(stream, h11conn, head,
                                                  read_body=not priority)
        finally:
            slots.release()
        if streaming is not None:
            await self._stream(stream, h11conn, streaming)

    async def _serve_request(self, stream: trio.SocketStream, conn: h11.Connection,
                             head: h11.Request, *, read_body: bool) -> StreamBody | None:
        """Answer the request; a stream's head only, returning its body (its
        stream slot taken) for `_stream` to send once the request slot is free."""
        request = await self._read_body(stream, conn, head) if read_body else _request_of(head)
        if request is None:
            return None
        head_only = request.method == "HEAD"
        try:
            status, body, route = await _dispatch(self.routes, replace(request, method="GET")
                                                  if head_only else request)
            self.stats.requests[request.method, route, status] += 1
            headers = _allow_header(self.routes, request) if status == 405 else []
            if isinstance(body, StreamBody):
                return await self._start_stream(stream, conn, status, body, head_only)
            size = body.size if isinstance(body, FileBody) and not head_only else 0
            with trio.move_on_after(RESPONSE_TIMEOUT + size / RESPONSE_BYTES_PER_SECOND):
                await _respond(stream, conn, status, body, headers, head_only=head_only)
            return None
        finally:
            if request.body_file is not None:
                request.body_file.close()

    async def _start_stream(self, stream: trio.SocketStream, conn: h11.Connection,
                            status: int, body: StreamBody, head_only: bool
                            ) -> StreamBody | None:
        """Send a stream's head if a stream slot is free (else 503); the body
        to stream, its slot taken, or None when there is none to send (HEAD,
        503). The generator is closed unless it is returned."""
        if head_only:
            await body.chunks.aclose()
            with trio.move_on_after(RESPONSE_TIMEOUT):
                await _send_head(stream, conn, status, body.content_type, None,
                                 [("cache-control", "no-store"), *body.headers])
                await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
            return None
        try:
            self.streams.acquire_nowait()
        except trio.WouldBlock:
            self._count("busy")
            await body.chunks.aclose()
            with trio.move_on_after(RESPONSE_TIMEOUT):
                await _respond(stream, conn, 503, {
                    "error": f"this peer already serves {self.limits.max_streams} streams; "
                             "retry shortly"})
            return None
        try:
            with trio.fail_after(RESPONSE_TIMEOUT):
                await _send_head(stream, conn, status, body.content_type, None,
                                 [("cache-control", "no-store"), *body.headers])
        except BaseException:
            self.streams.release()
            await body.chunks.aclose()  # never started: closing it does not block
            raise
        return body

    async def _stream(self, stream: trio.SocketStream, conn: h11.Connection,
                      body: StreamBody) -> None:
        """Send the chunks until the generator ends, the client goes, or it
        stops reading (STREAM_SEND_TIMEOUT); then give the stream slot back."""
        self.stats.streams += 1
        try:
            async with contextlib.aclosing(body.chunks) as chunks, \
                    trio.open_nursery() as nursery:
                nursery.start_soon(_cancel_when_closed, stream, nursery.cancel_scope)
                async for chunk in chunks:
                    with trio.move_on_after(STREAM_SEND_TIMEOUT) as scope:
                        await stream.send_all(conn.send(h11.Data(data=chunk)) or b"")
                    if scope.cancelled_caught:
                        self._count("streams_dropped")
                        break
                else:
                    with trio.move_on_after(STREAM_SEND_TIMEOUT):
                        await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
                nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away: the normal end of a stream
        except Exception:
            log.exception("BUG: an event stream failed; it was closed")
        finally:
            self.stats.streams -= 1
            self.streams.release()

    async def _read_body(self, stream: trio.SocketStream, conn: h11.Connection,
                         head: h11.Request) -> Request | None:
        """The whole request within the body deadline; None if it was answered
        already (4xx) or the client went away or was too slow."""
        with trio.move_on_after(self.limits.body_timeout) as scope:
            try:
                return await _read_body(stream, conn, head, self.rules, scope)
            except h11.RemoteProtocolError as exc:
                await _respond(stream, conn, exc.error_status_hint,
                               {"error": f"malformed HTTP request: {exc}"})
            except _TooLarge as exc:
                await _respond(stream, conn, 413,
                               {"error": f"request body over {exc.limit} bytes"})
            except _Refused as exc:
                await _respond(stream, conn, exc.status, {"error": exc.message})
            await _drain(stream)
            return None
        self._count("body_timeouts")
        return None

    def _count(self, what: str) -> None:
        """Count a refusal or a cut-off, and log a summary at most every
        REPORT_INTERVAL seconds (a flood of them must not flood the log)."""
        setattr(self.stats, what, getattr(self.stats, what) + 1)
        now = trio.current_time()
        if now - self._reported_at < REPORT_INTERVAL:
            return
        now_counts, before = self.stats.to_dict(), self._reported
        delta = {k: v - before[k] for k, v in now_counts.items() if k != "open"}
        log.warning("API under pressure (limits: %d per client, %d open, %d requests, head "
                    "within %gs): %s since the last report; %d connections open",
                    self.limits.max_per_client, self.limits.max_open, self.limits.max_requests,
                    self.limits.head_timeout,
                    ", ".join(f"{k} +{v}" for k, v in delta.items() if v) or "nothing",
                    len(self.table))
        self._reported = now_counts
        self._reported_at = now


def _client_ip(stream: trio.SocketStream) -> str:
    try:
        return str(stream.socket.getpeername()[0])
    except OSError:
        return "?"  # already gone; it is closed right away


async def _respond(stream: trio.SocketStream, conn: h11.Connection, status: int, body: Any,
                   headers: list[tuple[str, str]] | None = None, *, head_only: bool = False
                   ) -> None:
    """Send the reply; with `head_only` (a HEAD request) its head alone, with
    the length the body would have."""
    if isinstance(body, FileBody):
        if head_only:
            await trio.to_thread.run_sync(body.file.close)
            await _send_head(stream, conn, status, body.content_type, body.size, headers)
            await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
            return
        await _respond_file(stream, conn, status, body)
        return
    if isinstance(body, RawBody):
        payload, content_type = body.data, body.content_type
        headers = [*(headers or []), *body.headers]
    else:
        payload = (json.dumps(body, indent=None, sort_keys=True) + "\n").encode()
        content_type = "application/json"
    await _send_head(stream, conn, status, content_type, len(payload), headers)
    if not head_only:  # h11 knows a HEAD reply has no body, and would refuse one
        await stream.send_all(conn.send(h11.Data(data=payload)) or b"")
    await stream.send_all(conn.send(h11.EndOfMessage()) or b"")


def _extra_headers(status: int) -> list[tuple[str, str]]:
    """Headers a status always carries: every 401 names the scheme it wants
    (RFC 9110 section 11.6.1); a refusal for load says when to retry."""
    if status == 401:
        return [("www-authenticate", WWW_AUTHENTICATE)]
    if status in (429, 503):
        return [("retry-after", "1")]
    return []


async def _send_head(stream: trio.SocketStream, conn: h11.Connection, status: int,
                     content_type: str, length: int | None,
                     extra: list[tuple[str, str]] | None = None) -> None:
    """The response head; `length` None for a stream (chunked coding)."""
    sized = [("content-length", str(length))] if length is not None else []
    headers = [("content-type", content_type), *sized, ("connection", "close"),
               ("x-content-type-options", "nosniff"), *_extra_headers(status), *(extra or [])]
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


async def _refuse(stream: trio.SocketStream, status: int, message: str, *,
                  drain: bool = True) -> None:
    """Answer ``status`` without h11 (the request was not, or not wholly, read)
    and close. With `drain`, first take (and drop) what the client sent:
    closing a socket with unread data resets the connection, and the client
    would never see the answer. Bounded by REFUSAL_LINGER either way."""
    body = (json.dumps({"error": message}) + "\n").encode()
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n").encode()
    head += b"".join(f"{k}: {v}\r\n".encode() for k, v in _extra_headers(status))
    with trio.move_on_after(REFUSAL_LINGER):
        if drain:
            await stream.receive_some(65536)
        await stream.send_all(head + b"\r\n" + body)


async def _cancel_when_closed(stream: trio.SocketStream, scope: trio.CancelScope) -> None:
    """Beside a stream: cancel `scope` once the client closes its side (or
    resets), so a follower that went away frees its slot at once rather than
    at the next keepalive. What a client sends meanwhile is dropped."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        while await stream.receive_some(4096):
            pass
    scope.cancel()


async def _drain(stream: trio.SocketStream) -> None:
    """After answering a request we did not read whole: say we are done
    (FIN) and take (and drop) what the client still sends, for at most
    REFUSAL_LINGER seconds. Closing with unread data resets the connection,
    and the client would never see the answer."""
    with trio.move_on_after(REFUSAL_LINGER):
        await stream.send_eof()
        while await stream.receive_some(65536):
            pass


async def _read_head(stream: trio.SocketStream, conn: h11.Connection, max_bytes: int
                     ) -> h11.Request | None:
    """The request head, or None if the client went away first. Reads at most
    ``max_bytes`` at a time, so a pending connection never buffers much more
    than the head limit (h11 raises 431 beyond it)."""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(max_bytes)
            conn.receive_data(data)
            continue
        if isinstance(event, h11.Request):
            return event
        return None  # ConnectionClosed (h11 yields nothing else before a Request)


def _request_of(head: h11.Request, body: bytes = b"", body_file: IO[bytes] | None = None
                ) -> Request:
    path, _, query = head.target.decode("latin-1").partition("?")
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in head.headers}
    return Request(head.method.decode("ascii"), path, query, headers, body,
                   body_file=body_file)


async def _read_body(stream: trio.SocketStream, conn: h11.Connection, head: h11.Request,
                     rules: Mapping[str, BodyLimit], scope: trio.CancelScope
                     ) -> Request | None:
    """The whole request, once its body is in (None if the client went away).
    Raises _Refused, _TooLarge or h11.RemoteProtocolError."""
    limit = MAX_REQUEST_BYTES
    spool: IO[bytes] | None = None
    body = bytearray()
    size = 0
    rule = _body_rule(rules, head.method.decode("latin-1"),
                      head.target.decode("latin-1").partition("?")[0])
    if rule is not None and rule.admit is not None:
        try:
            admitted = rule.admit({k.decode("latin-1").lower(): v.decode("latin-1")
                                   for k, v in head.headers})
        except HttpError as exc:
            raise _Refused(exc.status, exc.message) from None
        if not admitted:
            raise _Refused(401, f"this upload needs the mesh's management token "
                           f"({TOKEN_SOURCES})")
    if rule is not None:
        limit = rule.max_bytes
        scope.deadline = trio.current_time() + rule.timeout
        # Not a `with`: on success the file outlives this function, owned by
        # the Request; the finally below closes it otherwise.
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)  # noqa: SIM115
    _check_declared_length(head, limit)
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                conn.receive_data(data)
                if not data and conn.their_state is not h11.DONE:
                    return None
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
            elif isinstance(event, h11.EndOfMessage):
                if spool is not None:
                    spool.seek(0)
                request = _request_of(head, bytes(body), spool)
                spool = None  # now owned by the request
                return request
            else:
                return None  # ConnectionClosed
    finally:
        if spool is not None:
            spool.close()


def _check_declared_length(head: h11.Request, limit: int) -> None:
    """413 before reading a body whose declared length is already too large."""
    for name, value in head.headers:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise _TooLarge(limit)


def _route(routes: Mapping[tuple[str, str], Handler], request: Request
           ) -> tuple[Handler | None, Request, str]:
    """The handler, the request with its path parameters, and the route's
    pattern (`UNMATCHED` if none). Exact paths first, then patterns with
    ``{param}`` segments, each of which matches one non-empty path segment
    (``/v1/instances/{service}/{index}``)."""
    path = request.path.rstrip("/") or "/"
    handler = routes.get((request.method, path))
    if handler is not None:
        return handler, request, path
    segments = path.split("/")
    for (method, pattern), candidate in routes.items():
        if method != request.method or "{" not in pattern:
            continue
        params = _match(pattern.split("/"), segments)
        if params is not None:
            return candidate, replace(request, params=params), pattern
    return None, request, UNMATCHED


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


def allowed_methods(routes: Mapping[tuple[str, str], Handler], request: Request) -> list[str]:
    """The methods `request`'s path has a route for (HEAD wherever GET is)."""
    methods = {m for m, _ in routes if _route(routes, replace(request, method=m))[0]}
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


def _allow_header(routes: Mapping[tuple[str, str], Handler], request: Request
                  ) -> list[tuple[str, str]]:
    allowed = allowed_methods(routes, request)
    return [("allow", ", ".join(allowed))] if allowed else []


async def _dispatch(routes: Mapping[tuple[str, str], Handler], request: Request
                    ) -> tuple[int, Any, str]:
    """``(status, body, route pattern)`` of `request` (see `_route`)."""
    handler, request, route = _route(routes, request)
    if handler is None:
        if allowed := allowed_methods(routes, request):
            return 405, {"error": f"method {request.method} not allowed on {request.path}; "
                                  f"allowed: {', '.join(allowed)}"}, route
        return 404, {"error": f"no such endpoint: {request.path}"}, route
    try:
        status, body = await handler(request)
    except HttpError as exc:
        return exc.status, {"error": exc.message}, route
    except Exception:
        log.exception("API handler for %s %s failed", request.method, request.path)
        return 500, {"error": "internal error; see the peer's log"}, route
    return status, body, route
