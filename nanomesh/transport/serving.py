"""What every carrier of service traffic shares (ZeroMQ `rpc`, `httpio`,
`coapio`): the transport errors a call raises and the guard around a
handler. Kept apart from `nanomesh.transport.rpc` so that the HTTP and CoAP
paths, and the peer daemon that uses them, never import pyzmq."""

from __future__ import annotations

import collections
import logging
from collections.abc import Awaitable, Callable

from nanomesh.errors import NanomeshError
from nanomesh.wire.service_traffic import Request, Response, error_response

log = logging.getLogger("nanomesh.transport.rpc")

Handler = Callable[[Request], Awaitable[Response]]


class RpcError(NanomeshError):
    """A call failed in transport: the server is unreachable, went away
    mid-call, or answered with bytes that are not a response."""


class HandshakeFailed(RpcError):
    """The server refused our CURVE handshake (another key, or not ours)."""


class RpcTimeout(RpcError):
    """No response within the call's timeout. The server may still have run it."""


async def call_guarded(handler: Handler, request: Request,
                       stats: collections.Counter[str] | None = None) -> Response:
    """Run ``handler``; an exception or a non-`Response` result becomes a 500
    whose error names it (and is logged), so one request never stops a server."""
    try:
        response = await handler(request)
    except Exception as exc:
        if stats is not None:
            stats["handler-error"] += 1
        log.exception("handler for %s %s raised", request.method, request.path)
        return error_response(500, f"{type(exc).__name__}: {exc}")
    if not isinstance(response, Response):
        if stats is not None:
            stats["handler-error"] += 1
        return error_response(500, f"handler returned {type(response).__name__}, not Response")
    if stats is not None:
        stats["served"] += 1
    return response
