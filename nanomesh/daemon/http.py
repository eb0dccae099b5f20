"""A small HTTP/1.1 JSON server on trio, built on h11's sans-I/O parser.

Deliberately tiny: one request per connection, JSON in and out, bounded
request size and time. Routes are a plain dict of (method, path) to handler;
a handler returns (status, JSON-able body). Bad requests get a 4xx with a JSON
``{"error": ...}``; a handler bug gets a 500 and is logged, and never takes
the peer down.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from typing import Any

import h11
import trio

log = logging.getLogger("nanomesh.api")
_STATUS_CODES = {s.value for s in HTTPStatus}

MAX_REQUEST_BYTES = 1 << 20
"""Largest request (headers and body) accepted, in bytes."""
REQUEST_TIMEOUT = 10.0
"""Seconds a client may take to send its request."""


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes
    params: Mapping[str, str] = field(default_factory=dict)
    """Path parameters: a route ``/v1/services/{name}`` fills ``name``."""

    def json(self) -> Any:
        """The body as JSON; HttpError 400 if it is not."""
        try:
            return json.loads(self.body or b"null")
        except ValueError as exc:
            raise HttpError(400, f"request body is not JSON: {exc}") from None

    def bearer_token(self) -> str | None:
        auth = self.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None


Handler = Callable[[Request], Awaitable[tuple[int, Any]]]


class _TooLarge(Exception):
    """The request body exceeds MAX_REQUEST_BYTES."""


class HttpError(Exception):
    """Raised by a handler to answer with a 4xx status and a message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


async def serve_http(routes: Mapping[tuple[str, str], Handler],
                     listeners: list[trio.SocketListener],
                     *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve on already-open listeners (opened by the caller, so that a port in
    use is reported before anything starts)."""

    async def handle(stream: trio.SocketStream) -> None:
        try:
            await _serve_one(stream, routes)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass
        finally:
            await stream.aclose()

    task_status.started()
    await trio.serve_listeners(handle, listeners)


async def _serve_one(stream: trio.SocketStream, routes: Mapping[tuple[str, str], Handler]
                     ) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
    request = None
    with trio.move_on_after(REQUEST_TIMEOUT):
        try:
            request = await _read_request(stream, conn)
        except h11.RemoteProtocolError as exc:
            await _respond(stream, conn, exc.error_status_hint,
                           {"error": f"malformed HTTP request: {exc}"})
            return
        except _TooLarge:
            await _respond(stream, conn, 413,
                           {"error": f"request body over {MAX_REQUEST_BYTES} bytes"})
            return
    if request is None:
        return
    status, body = await _dispatch(routes, request)
    await _respond(stream, conn, status, body)


async def _respond(stream: trio.SocketStream, conn: h11.Connection, status: int, body: Any
                   ) -> None:
    payload = (json.dumps(body, indent=None, sort_keys=True) + "\n").encode()
    headers = [("content-type", "application/json"), ("content-length", str(len(payload))),
               ("connection", "close")]
    reason = HTTPStatus(status).phrase.encode() if status in _STATUS_CODES else b""
    await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers,
                                                 reason=reason)) or b"")
    await stream.send_all(conn.send(h11.Data(data=payload)) or b"")
    await stream.send_all(conn.send(h11.EndOfMessage()) or b"")


async def _read_request(stream: trio.SocketStream, conn: h11.Connection) -> Request | None:
    head: h11.Request | None = None
    body = bytearray()
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
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_REQUEST_BYTES:
                raise _TooLarge
        elif isinstance(event, h11.EndOfMessage) and head is not None:
            target = head.target.decode("latin-1")
            path, _, query = target.partition("?")
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in head.headers}
            return Request(head.method.decode("ascii"), path, query, headers, bytes(body))
        elif isinstance(event, h11.ConnectionClosed):
            return None


PARAM = "{name}"


def _route(routes: Mapping[tuple[str, str], Handler], request: Request
           ) -> tuple[Handler | None, Request]:
    """Exact paths first, then patterns whose last segment is ``{name}``."""
    path = request.path.rstrip("/") or "/"
    handler = routes.get((request.method, path))
    if handler is not None:
        return handler, request
    for (method, pattern), candidate in routes.items():
        if method != request.method or not pattern.endswith(PARAM):
            continue
        prefix = pattern[: -len(PARAM)]
        rest = path[len(prefix):]
        if path.startswith(prefix) and rest and "/" not in rest:
            return candidate, replace(request, params={"name": urllib.parse.unquote(rest)})
    return None, request


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
