"""Minimal HTTP/1.1 on trio with h11, for nanoservice calls, for talking
to the local peer's API from async code, and the peer daemon's one client for
calls to other peers (`nanomesh.daemon.peer_calls`, bundle fetching).

- `http_request`: one request on a fresh connection (``connection: close``);
  `connect`, `send_request` and `next_event` are its steps, for a caller
  that streams the reply (bundle transfers);
- `http_call`: a `Request` to a nanoservice's ``http`` endpoint;
- `serve_http_calls`: a nanoservice's ``http`` endpoint, sharing the
  ``async (Request) -> Response`` handler of the other transports.

Mapping: the request target is ``/<path>?<query>``; the body's content format
travels as ``content-type`` (`nanomesh.wire.service_traffic.MEDIA_TYPES`, else
``x-content-format: N``); an error response carries its message as a
``text/plain`` body. Deliberately small: one request per connection, bounded
size and time, no chunked uploads from us.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus

import h11
import trio

from nanomesh.errors import ConfigError
from nanomesh.transport.serving import RpcError, RpcTimeout, call_guarded
from nanomesh.wire.service_traffic import MAX_BODY, MAX_ERROR, MEDIA_TYPES, Request, Response

log = logging.getLogger("nanomesh.http")
Handler = Callable[[Request], Awaitable[Response]]

MAX_HTTP_MESSAGE = MAX_BODY + 64 * 1024
"""Largest HTTP message (head and body) read, in bytes."""
SERVE_TIMEOUT = 10.0
"""Seconds a client may take to send its request to a nanoservice."""

_STATUSES = frozenset(s.value for s in HTTPStatus)
_FORMAT_OF = {media.split(";")[0]: cf for cf, media in MEDIA_TYPES.items()}


@dataclass(frozen=True)
class HttpReply:
    status: int
    headers: dict[str, str]
    body: bytes


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def http_request(host: str, port: int, method: str, target: str, body: bytes = b"",
                       headers: Sequence[tuple[str, str]] = (),
                       local_address: str | None = None,
                       max_reply: int = MAX_HTTP_MESSAGE) -> HttpReply:
    """One request on a fresh connection (from `local_address` if given). No
    timeout of its own (wrap it). OSError / trio.BrokenResourceError /
    h11.ProtocolError on transport trouble, or a reply body over `max_reply`
    bytes."""
    stream, conn = await connect(host, port, local_address)
    async with stream:
        await send_request(stream, conn, method, target, body,
                           [("host", _host_port(host, port)), *headers])
        return await _read_reply(stream, conn, max_reply)


async def connect(host: str, port: int, local_address: str | None = None, *,
                  max_message: int = MAX_HTTP_MESSAGE
                  ) -> tuple[trio.SocketStream, h11.Connection]:
    """A fresh client connection: the stream (the caller closes it) and its
    h11 state, which buffers at most `max_message` bytes of one head or body
    chunk. For callers that stream a reply (`next_event`), such as bundle
    transfers (`nanomesh.bundles.fetch`); others use `http_request`."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_message)
    return await trio.open_tcp_stream(host, port, local_address=local_address), conn


async def send_request(stream: trio.SocketStream, conn: h11.Connection, method: str,
                       target: str, body: bytes = b"", headers: Sequence[tuple[str, str]] = ()
                       ) -> None:
    """Send one whole request (``connection: close``, a content-length) on
    `stream`; `headers` must include ``host``."""
    head = [("connection", "close"), ("content-length", str(len(body))), *headers]
    await stream.send_all(conn.send(h11.Request(method=method, target=target,
                                                headers=head)) or b"")
    await stream.send_all(conn.send(h11.Data(data=body)) or b"")
    await stream.send_all(conn.send(h11.EndOfMessage()) or b"")


async def next_event(stream: trio.SocketStream, conn: h11.Connection,
                     idle_timeout: float | None = None) -> h11.Event | type[h11.PAUSED]:
    """The next event of the reply, reading from `stream` as needed;
    trio.TooSlowError if the peer stays silent for `idle_timeout` seconds
    (an idle limit, not a total one: a large body on a slow link still
    arrives). Transport errors as `http_request`."""
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event  # type: ignore[return-value]
        if idle_timeout is None:
            data = await stream.receive_some(65536)
        else:
            with trio.fail_after(idle_timeout):
                data = await stream.receive_some(65536)
        conn.receive_data(data)


async def _read_reply(stream: trio.SocketStream, conn: h11.Connection,
                      max_reply: int = MAX_HTTP_MESSAGE) -> HttpReply:
    status, reply_headers, data = 0, {}, bytearray()
    while True:
        event = await next_event(stream, conn)
        if isinstance(event, h11.Response):
            status = event.status_code
            reply_headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                             for k, v in event.headers}
        elif isinstance(event, h11.Data):
            data += event.data
            if len(data) > max_reply:
                raise h11.RemoteProtocolError("response body too large")
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            return HttpReply(status, reply_headers, bytes(data))


def _format_headers(cf: int | None) -> list[tuple[str, str]]:
    if cf is None:
        return []
    if cf in MEDIA_TYPES:
        return [("content-type", MEDIA_TYPES[cf])]
    return [("content-type", "application/octet-stream"), ("x-content-format", str(cf))]


def _format_of(headers: dict[str, str]) -> int | None:
    explicit = headers.get("x-content-format", "")
    if explicit.isdigit() and int(explicit) <= 0xFFFF:
        return int(explicit)
    media = headers.get("content-type", "").split(";")[0].strip().lower()
    return _FORMAT_OF.get(media)


async def http_call(address: str, request: Request, timeout: float, *,
                    local_address: str | None = None) -> Response:
    """Send ``request`` to the nanoservice HTTP endpoint at ``IP:PORT`` (from
    `local_address` if given: a peer's gateway calls from its own IP, the one
    a private service answers). RpcTimeout / RpcError like `nanomesh.transport.rpc.zmq_call`."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    target = "/" + request.path + (f"?{request.query}" if request.query else "")
    try:
        with trio.fail_after(timeout):
            reply = await http_request(host, int(port), request.method, target, request.body,
                                       _format_headers(request.content_format), local_address)
    except trio.TooSlowError:
        raise RpcTimeout(f"HTTP call to {address}: no answer in {timeout:g}s") from None
    except (OSError, trio.BrokenResourceError, h11.ProtocolError, ValueError) as exc:
        raise RpcError(f"HTTP call to {address}: {type(exc).__name__}: {exc}") from None
    if not 100 <= reply.status <= 599 or len(reply.body) > MAX_BODY:
        raise RpcError(f"HTTP call to {address}: not a valid answer")
    if reply.status >= 400:
        return Response(reply.status, error=reply.body.decode("utf-8", "replace")[:MAX_ERROR])
    return Response(reply.status, reply.body, _format_of(reply.headers))


# ------------------------------------------------------------------ server


async def serve_http_calls(host: str, port: int, handler: Handler, *,
                           only_from: str | None = None,
                           task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                           ) -> None:
    """Serve ``handler`` over HTTP on ``host:port`` until cancelled. With
    ``only_from`` (a private service), a connection from any other IP is
    answered 403 (as `nanomesh.transport.coapio.serve_coap` does for CoAP)."""
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise ConfigError(f"cannot listen for HTTP on {host}:{port}: "
                          f"{exc.strerror or exc}") from None

    async def refuse(_request: Request) -> Response:
        return Response(403, error="private service: reach it through the mesh")

    async def serve_one(stream: trio.SocketStream) -> None:
        async with stream:
            with contextlib.suppress(trio.BrokenResourceError, h11.ProtocolError, OSError):
                allowed = only_from is None or stream.socket.getpeername()[0] == only_from
                await _serve_connection(stream, handler if allowed else refuse)

    task_status.started()
    await trio.serve_listeners(serve_one, listeners)


async def _serve_connection(stream: trio.SocketStream, handler: Handler) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HTTP_MESSAGE)
    request: Request | Response | None = None
    with trio.move_on_after(SERVE_TIMEOUT):
        request = await _read_request(stream, conn)
    if request is None:
        return
    response = request if isinstance(request, Response) else await call_guarded(handler, request)
    body = response.body if response.status < 400 else response.error.encode()
    headers = [("content-length", str(len(body))), ("connection", "close"),
               *(_format_headers(response.content_format) if response.status < 400
                 else [("content-type", "text/plain; charset=utf-8")])]
    reason = HTTPStatus(response.status).phrase.encode() if response.status in _STATUSES else b""
    await stream.send_all(conn.send(h11.Response(status_code=response.status, headers=headers,
                                                 reason=reason)) or b"")
    await stream.send_all(conn.send(h11.Data(data=body)) or b"")
    await stream.send_all(conn.send(h11.EndOfMessage()) or b"")


async def _read_request(stream: trio.SocketStream, conn: h11.Connection
                        ) -> Request | Response | None:
    """The request, or a 4xx `Response` to send instead, or None (client left)."""
    head: h11.Request | None = None
    body = bytearray()
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            return Response(exc.error_status_hint, error=f"malformed HTTP request: {exc}")
        if event is h11.NEED_DATA:
            data = await stream.receive_some(65536)
            if not data:
                return None
            conn.receive_data(data)
        elif isinstance(event, h11.Request):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY:
                return Response(413, error=f"request body over {MAX_BODY} bytes")
        elif isinstance(event, h11.EndOfMessage) and head is not None:
            target = head.target.decode("latin-1")
            path, _, query = target.partition("?")
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in head.headers}
            try:
                return Request(head.method.decode("ascii"), path.lstrip("/"), bytes(body),
                               _format_of(headers), query)
            except ValueError as exc:
                return Response(405 if str(exc).startswith("method") else 400, error=str(exc))
        elif isinstance(event, h11.ConnectionClosed):
            return None
