"""Calls from the gateway to an instance that speaks zmq or http, through the
same clients that nanoservices use (`nanomesh.transport.rpc.zmq_call`,
`nanomesh.transport.httpio.http_call`) and their `nanomesh.wire.service_traffic` values. (The CoAP
upstream forwards the CoAP message as it is, in `nanomesh.gateway.coap`.)

Each upstream is ``async (endpoint, request, timeout) -> GatewayResponse``
and raises `UpstreamError` when the instance could not be reached, broke the
exchange or did not answer in time: the gateway then tries the next
instance. An answer, even an error status, is the instance's and is passed
back (no fail-over on a 5xx: the request may have had its effect).
"""

from __future__ import annotations

import functools
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from nanomesh.gateway.forward import (
    BAD_REQUEST,
    METHOD_NOT_ALLOWED,
    TEXT_PLAIN,
    GatewayRequest,
    GatewayResponse,
    error_response,
)
from nanomesh.naming import Endpoint
from nanomesh.wire.service_traffic import METHODS, Request, Response, status_to_coap_code

if TYPE_CHECKING:
    from nanomesh.security.servicekeys import ServiceKeys

Upstream = Callable[[Endpoint, GatewayRequest, float], Awaitable[GatewayResponse]]
RpcCall = Callable[[str, Request, float], Awaitable[Response]]
"""``zmq_call`` / ``http_call``: (``IP:PORT``, request, timeout) -> response."""


class UpstreamError(Exception):
    """The instance could not be reached, broke the exchange, or (`timed_out`)
    did not answer in time."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


async def zmq_upstream(ep: Endpoint, request: GatewayRequest, timeout: float
                       ) -> GatewayResponse:
    """ZeroMQ with this process's installed keys (`nanomesh.security.servicekeys`)."""
    from nanomesh.transport.rpc import zmq_call  # pyzmq loads only once a zmq instance is called
    return await rpc_upstream(zmq_call, ep, request, timeout)


def bound_http_upstream(ip: str) -> Upstream:
    """HTTP from the gateway's own `ip`: a private service's SDK server answers
    only its peer's address (`nanomesh.sdk.service`)."""
    from nanomesh.transport.httpio import http_call

    async def call(ep: Endpoint, request: GatewayRequest, timeout: float) -> GatewayResponse:
        return await rpc_upstream(functools.partial(http_call, local_address=ip), ep, request,
                                  timeout)

    return call


def keyed_zmq_upstream(keys: ServiceKeys | None) -> Upstream:
    """ZeroMQ with `keys` (None: plain, a mesh without a cluster key)."""
    from nanomesh.transport.rpc import zmq_call

    async def call(ep: Endpoint, request: GatewayRequest, timeout: float) -> GatewayResponse:
        return await rpc_upstream(functools.partial(zmq_call, keys=keys), ep, request, timeout)

    return call


async def http_upstream(ep: Endpoint, request: GatewayRequest, timeout: float
                        ) -> GatewayResponse:
    from nanomesh.transport.httpio import http_call
    return await rpc_upstream(http_call, ep, request, timeout)


async def rpc_upstream(call: RpcCall, ep: Endpoint, request: GatewayRequest, timeout: float
                       ) -> GatewayResponse:
    """Forward `request` with `call`; CoAP-only methods (FETCH, PATCH, iPATCH)
    are answered 4.05 here, since these transports cannot carry them."""
    from nanomesh.transport.rpc import RpcError, RpcTimeout
    if request.method not in METHODS:
        return error_response(METHOD_NOT_ALLOWED, f"{request.method} cannot be forwarded to a "
                              f"{ep.protocol} instance (only {', '.join(METHODS)})")
    try:
        call_request = rpc_request(request)
    except ValueError as exc:
        return error_response(BAD_REQUEST, f"cannot forward: {exc}")
    try:
        reply = await call(ep.address, call_request, timeout)
    except RpcTimeout as exc:
        raise UpstreamError(str(exc), timed_out=True) from None
    except RpcError as exc:
        raise UpstreamError(str(exc)) from None
    return coap_response(reply, request.method)


def rpc_request(request: GatewayRequest) -> Request:
    """The `Request` a zmq/http instance gets: path without a leading slash,
    each segment percent-encoded (as `nanomesh.transport.coapio` builds it), query
    items joined by ``&``. ValueError if it cannot be one (too long, ...)."""
    path = "/".join(urllib.parse.quote(s, safe="") for s in request.path)
    return Request(request.method, path, request.payload, request.content_format,
                   "&".join(request.query))


def coap_response(reply: Response, method: str) -> GatewayResponse:
    """A zmq/http `Response` as CoAP: the status mapped by
    `nanomesh.wire.service_traffic.status_to_coap_code`; an error's message as the
    diagnostic payload (text/plain, RFC 7252 §5.5.2)."""
    code = status_to_coap_code(reply.status, method)
    if not reply.ok:
        return GatewayResponse(code, reply.error.encode(), TEXT_PLAIN if reply.error else None)
    return GatewayResponse(code, reply.body, reply.content_format)


__all__ = ["UpstreamError", "bound_http_upstream", "http_upstream", "keyed_zmq_upstream",
           "rpc_upstream", "zmq_upstream"]
