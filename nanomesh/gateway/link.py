"""The gateway link: the members' authenticated way into a peer's gateway.

Plain CoAP cannot tell a member from an outsider, so the CoAP gateway
(`nanomesh.gateway.coap`) answers anyone for public services only. Each
peer's gateway also listens on **TCP** at the same port number (5683 by
default) for `nanomesh.wire.service_traffic` calls over ZeroMQ CURVE, keyed from the
cluster key (`nanomesh.security.servicekeys`): only members get through. Two kinds of
path:

- ``s/<service>/<path>``: the whole gateway, private services included, for
  member clients (`nanomesh.sdk.client` uses it for its "gateway" attempt);
- ``l/<service>/<path>``: only this peer's own instances, for another peer's
  gateway that forwards a private service's request to a CoAP or HTTP
  instance here (`link_upstream`). Such instances are then called from this
  peer itself, never across the network in plain text; and an ``l/`` request
  is never forwarded again, so links cannot loop.

Why this and not OSCORE or DTLS for CoAP: a constrained device without the
cluster key could not use either (public services are what it reaches);
between members, ZeroMQ CURVE is already there, keyed from the cluster key,
with no per-pair security contexts, sequence numbers to persist across
restarts (OSCORE), or experimental DTLS server code (aiocoap's tinydtls
server) to trust. The cost is one ZeroMQ hop in place of a CoAP one, which
is faster: measured with `experiments/name_latency.py --quick` on a loaded
2-core machine, a member's call of a private echo through its peer's link
(CURVE to the gateway, CURVE to the instance) p50 1.34 ms, against 3.9 ms for
plain CoAP through the gateway before this change (3.8 ms after, for a
public service: unchanged) and 0.41 -> 0.50 ms for a direct ZeroMQ call once
CURVE encrypts it.
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import Awaitable, Callable

import trio

from nanomesh.gateway.core import Gateway
from nanomesh.gateway.forward import GatewayRequest, GatewayResponse
from nanomesh.gateway.upstream import Upstream, keyed_zmq_upstream
from nanomesh.naming import Endpoint
from nanomesh.security.servicekeys import ServiceKeys
from nanomesh.transport.coapio import split_path
from nanomesh.transport.rpc import serve_rpc
from nanomesh.wire import Address
from nanomesh.wire.service_traffic import MAX_ERROR, Request, Response, coap_code_to_status

GATEWAY_PREFIX = "s"
"""``s/<service>/<path>``: the whole gateway (member clients)."""
LOCAL_PREFIX = "l"
"""``l/<service>/<path>``: this peer's instances only (other gateways)."""


def link_path(prefix: str, service: str, path: str) -> str:
    """The link request path for `path` (already percent-encoded, as in a `Request`)."""
    return "/".join(p for p in (prefix, urllib.parse.quote(service, safe=""), path) if p)


def to_gateway_request(request: Request) -> GatewayRequest:
    """The link request as the gateway takes it. ``s/<service>`` alone is
    the service's root here (a member calling path ``""``; a link path has
    no empty segment to say so), not the gateway's description of the
    service that a CoAP client gets at ``/s/<service>``."""
    path = split_path(request.path)
    if len(path) == 2 and path[0] == GATEWAY_PREFIX:
        path = (*path, "")
    return GatewayRequest(request.method, path,
                          tuple(request.query.split("&")) if request.query else (),
                          request.body, request.content_format)


def to_response(answer: GatewayResponse) -> Response:
    """A gateway answer (CoAP code) as a `Response` (HTTP-style status)."""
    status = coap_code_to_status(answer.code)
    if status >= 400:
        return Response(status, error=answer.payload.decode("utf-8", "replace")[:MAX_ERROR])
    return Response(status, answer.payload, answer.content_format)


def link_handler(gateway: Gateway) -> Callable[[Request], Awaitable[Response]]:
    async def handle(request: Request) -> Response:
        inner = to_gateway_request(request)
        if len(inner.path) >= 2 and inner.path[0] == LOCAL_PREFIX and inner.path[1]:
            local = dataclasses.replace(inner, path=inner.path[2:])
            return to_response(await gateway.forward(inner.path[1], local, private=True,
                                                     local_only=True))
        return to_response(await gateway.handle(inner, member=True))

    return handle


async def serve_gateway_link(bind: Address, gateway: Gateway, keys: ServiceKeys, *,
                             fd: int | None = None,
                             task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
                             ) -> None:
    """Serve the link on TCP `bind` until cancelled (ConfigError if it cannot
    bind). `fd`: a socket already listening there, taken over
    (`nanomesh.transport.rpc.bind_router`)."""
    host, port = bind
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    await serve_rpc(address, link_handler(gateway), keys=keys, fd=fd, task_status=task_status)


def link_upstream(port: int, keys: ServiceKeys | None) -> Upstream:
    """Forward to a CoAP or HTTP instance on another peer through that peer's
    link (at `port` on the instance's host, which is its peer's IP)."""
    zmq = keyed_zmq_upstream(keys)

    async def call(ep: Endpoint, request: GatewayRequest, timeout: float) -> GatewayResponse:
        via = dataclasses.replace(ep, port=port)
        inner = dataclasses.replace(request, path=(LOCAL_PREFIX, ep.service, *request.path))
        return await zmq(via, inner, timeout)

    return call
