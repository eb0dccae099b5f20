"""CoAP for nanoservices and their callers: aiocoap hosted in trio through
trio-asyncio, confined to this module.

- `serve_coap` serves a nanoservice's routes: one path-capable root resource
  hands every request (any path, GET/POST/PUT/DELETE) to the same
  ``async (Request) -> Response`` handler the ZeroMQ server uses.
- `CoapClient` sends one `Request` to a CoAP server (a nanoservice, or a
  peer's gateway at ``/s/<service>/<path>``) and returns a `Response`.

Bodies above one CoAP block use block-wise transfer (aiocoap does both sides).
A server reassembles a block-wise request body only up to the call body limit
(`nanomesh.wire.service_traffic.MAX_BODY`, 1 MiB): a larger one is answered 4.13 at its
first block past the limit, before it is buffered (as the gateway does).
Status codes map with `nanomesh.wire.service_traffic.status_to_coap_code` /
`coap_code_to_status`; an error response carries its message as the CoAP
diagnostic payload (text), as RFC 7252 section 5.5.2 suggests.

A private service's server (``only_from``, set by `nanomesh.sdk.service` from
``NANOMESH_VISIBILITY``) answers only requests from its own peer's IP, where
the peer's gateway (and health checks) come from; anything else gets 4.01.
Members elsewhere reach it through their gateway and this peer's
authenticated gateway link (`nanomesh.gateway.link`). On Linux a datagram
from the network claiming a local source address is dropped by the kernel
(``accept_local`` is off by default), so only this machine can pass that check.

Only the UDP transport is used (``udp6``, which also serves IPv4): CoAP over
TCP and WebSockets would open more listening ports than the manifest declares.
"""

from __future__ import annotations

import contextlib
import logging
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import aiocoap  # type: ignore[import-untyped]
import aiocoap.error  # type: ignore[import-untyped]
import aiocoap.resource  # type: ignore[import-untyped]
import trio
import trio_asyncio  # type: ignore[import-untyped]

from nanomesh.errors import ConfigError
from nanomesh.transport.serving import RpcError, RpcTimeout, call_guarded
from nanomesh.wire.service_traffic import (
    MAX_BODY,
    MAX_ERROR,
    METHODS,
    Request,
    Response,
    coap_code_to_status,
    status_to_coap_code,
)

Handler = Callable[[Request], Awaitable[Response]]
log = logging.getLogger("nanomesh.coap")

TRANSPORTS = ["udp6"]
"""aiocoap transports used for serving and calling (see the module docstring)."""


@contextlib.asynccontextmanager
async def asyncio_loop() -> AsyncIterator[None]:
    """Make an asyncio loop available to the code inside: the current
    trio-asyncio loop if there is one, else a new one for the duration."""
    if trio_asyncio.current_loop.get() is not None:
        yield
        return
    async with trio_asyncio.open_loop() as loop:
        # trio-asyncio's default handler re-raises an error of an asyncio
        # callback into its nursery: aiocoap 0.4.17 lets a datagram with a
        # non-UTF-8 Uri-Path escape its parser that way, which would end the
        # whole service. Log it and carry on (the gateway does the same).
        loop.set_exception_handler(_contain)
        yield


_dropped = 0


def _contain(_loop: object, context: dict[str, Any]) -> None:
    global _dropped
    _dropped += 1
    if _dropped in (1, 100, 10_000):
        log.warning("CoAP: dropped an input aiocoap failed on (%d so far): %s", _dropped,
                    context.get("message"), exc_info=context.get("exception"))


def split_path(path: str) -> tuple[str, ...]:
    """CoAP Uri-Path options of a request path (``"a/b%2Fc"`` -> ``("a", "b/c")``)."""
    return tuple(urllib.parse.unquote(s) for s in path.strip("/").split("/")) if path else ()


def join_path(segments: Sequence[str]) -> str:
    """The request path of Uri-Path options; a ``/`` inside a segment is escaped."""
    return "/".join(urllib.parse.quote(s, safe="") for s in segments)


# ------------------------------------------------------------------ server


def request_from_coap(message: Any) -> Request:
    """A `Request` from an incoming aiocoap message; ValueError if it cannot be one."""
    method = message.code.name if hasattr(message.code, "name") else str(message.code)
    if method not in METHODS:
        raise ValueError(f"method {method} not supported")
    return Request(method, join_path(message.opt.uri_path), bytes(message.payload),
                   message.opt.content_format if message.opt.content_format is None
                   else int(message.opt.content_format), "&".join(message.opt.uri_query))


def response_to_coap(response: Response, method: str) -> aiocoap.Message:
    code = aiocoap.numbers.codes.Code(status_to_coap_code(response.status, method))
    if response.status >= 400:
        return aiocoap.Message(code=code, payload=response.error.encode())
    message = aiocoap.Message(code=code, payload=response.body)
    if response.content_format is not None:
        message.opt.content_format = response.content_format
    return message


class _TooLarge(aiocoap.error.ConstructionRenderableError):  # type: ignore[misc]
    code = aiocoap.numbers.codes.Code.REQUEST_ENTITY_TOO_LARGE
    message = f"request body over the {MAX_BODY}-byte limit"


class _Root(aiocoap.resource.Resource, aiocoap.resource.PathCapable):  # type: ignore[misc]
    """Every path on the server: hands the request to the trio handler."""

    def __init__(self, handler: Handler, only_from: str | None = None) -> None:
        super().__init__()
        self._raw = handler
        self._handler = trio_asyncio.trio_as_aio(call_guarded)
        self._only_from = only_from

    async def needs_blockwise_assembly(self, request: Any) -> bool:
        # aiocoap asks this for every Block1 block before adding it to the
        # request it reassembles: refuse the first block past the limit.
        block1 = request.opt.block1
        if block1 is not None and block1.start + len(request.payload) > MAX_BODY:
            raise _TooLarge()
        return True

    async def render(self, request: Any) -> aiocoap.Message:
        if self._only_from is not None and remote_ip(request) != self._only_from:
            return aiocoap.Message(code=aiocoap.numbers.codes.Code.UNAUTHORIZED,
                                   payload=b"private service: reach it through the mesh")
        if len(request.payload) > MAX_BODY:
            raise _TooLarge()
        if request.code.name not in METHODS:
            # FETCH, PATCH, iPATCH: nanoservices do not have them (RFC 7252 §5.9.2.6).
            return aiocoap.Message(code=aiocoap.numbers.codes.Code.METHOD_NOT_ALLOWED,
                                   payload=f"method {request.code.name} not allowed: "
                                           f"nanoservices answer {', '.join(METHODS)}".encode())
        try:
            req = request_from_coap(request)
        except ValueError as exc:
            return aiocoap.Message(code=aiocoap.numbers.codes.Code.BAD_REQUEST,
                                   payload=str(exc).encode()[:MAX_ERROR])
        response = await self._handler(self._raw, req)
        return response_to_coap(response, req.method)


def remote_ip(message: Any) -> str | None:
    """The source IP of an incoming message (IPv4-mapped addresses as IPv4)."""
    sockaddr = getattr(message.remote, "sockaddr", None)
    if not sockaddr:
        return None
    ip = str(sockaddr[0])
    return ip.removeprefix("::ffff:") if ip.startswith("::ffff:") and "." in ip else ip


async def serve_coap(host: str, port: int, handler: Handler, *, only_from: str | None = None,
                     task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``handler`` over CoAP on ``host:port`` (UDP) until cancelled. A
    handler that raises answers 5.00 with its message; the server carries on.
    With ``only_from``, requests from any other IP are answered 4.01 (see
    the module docstring)."""
    async with asyncio_loop():
        try:
            context = await trio_asyncio.aio_as_trio(aiocoap.Context.create_server_context)(
                _Root(handler, only_from), bind=(host, port), transports=TRANSPORTS)
        except OSError as exc:
            raise ConfigError(f"cannot listen for CoAP on {host}:{port}: "
                              f"{exc.strerror or exc}") from None
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await trio_asyncio.aio_as_trio(context.shutdown)()


# ------------------------------------------------------------------ client


class CoapClient:
    """A client context; open with `open_coap_client`. Its methods may be
    called from any task of the same trio run (the asyncio loop is passed
    explicitly, not taken from the calling task's context)."""

    def __init__(self, context: Any, loop: Any) -> None:
        self._context = context
        self._loop = loop

    async def call(self, host: str, port: int, prefix: Sequence[str], request: Request,
                   timeout: float) -> Response:
        """Send ``request`` to ``coap://host:port/<prefix>/<request.path>``.
        RpcTimeout after ``timeout`` seconds; RpcError if the server cannot be
        reached or answers with something that is not a response."""
        message = aiocoap.Message(code=getattr(aiocoap.numbers.codes.Code, request.method),
                                  payload=request.body)
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        message.set_request_uri(f"coap://{netloc}/")
        message.opt.uri_path = (*prefix, *split_path(request.path))
        if request.query:
            message.opt.uri_query = tuple(request.query.split("&"))
        if request.content_format is not None:
            message.opt.content_format = request.content_format
        url = f"coap://{netloc}/{join_path(message.opt.uri_path)}"
        try:
            with trio.fail_after(timeout):
                reply = await trio_asyncio.aio_as_trio(self._send, loop=self._loop)(message)
        except trio.TooSlowError:
            raise RpcTimeout(f"CoAP call to {url}: no answer in {timeout:g}s") from None
        except (aiocoap.error.Error, OSError) as exc:
            raise RpcError(f"CoAP call to {url}: {type(exc).__name__}: {exc}") from None
        return response_from_coap(reply, url)

    async def _send(self, message: aiocoap.Message) -> Any:
        return await self._context.request(message).response


def response_from_coap(reply: Any, url: str) -> Response:
    status = coap_code_to_status(int(reply.code))
    payload = bytes(reply.payload)
    if len(payload) > MAX_BODY:
        raise RpcError(f"CoAP call to {url}: {len(payload)}-byte answer over the limit")
    if status >= 400:
        return Response(status, error=payload.decode("utf-8", "replace")[:MAX_ERROR])
    cf = reply.opt.content_format
    return Response(status, payload, None if cf is None else int(cf))


@contextlib.asynccontextmanager
async def open_coap_client() -> AsyncIterator[CoapClient]:
    """A CoAP client context (one UDP socket) for the duration of the block."""
    async with asyncio_loop():
        loop = trio_asyncio.current_loop.get()
        context = await trio_asyncio.aio_as_trio(aiocoap.Context.create_client_context)(
            transports=TRANSPORTS)
        try:
            yield CoapClient(context, loop)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await trio_asyncio.aio_as_trio(context.shutdown)()
