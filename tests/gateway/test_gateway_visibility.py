"""Private and public services at the gateway (issue 8 item 5): plain CoAP
reaches public services only; members reach every service through the
authenticated gateway link; a private service's CoAP instance on another
peer is reached through that peer's link, and answers nobody else.

Core decisions with fake upstreams; then two real gateways with keys on
127.0.50.1x and a real CoAP instance."""

from __future__ import annotations

import functools
import os
from collections.abc import AsyncIterator

import aiocoap
import pytest
import trio
from gateway_helpers import coap_client, endpoint

from nanomesh.gateway.core import LINK, Gateway
from nanomesh.gateway.forward import (
    CONTENT,
    SERVICE_UNAVAILABLE,
    UNAUTHORIZED,
    GatewayRequest,
    GatewayResponse,
)
from nanomesh.gateway.link import link_path
from nanomesh.naming import Endpoint
from nanomesh.security.servicekeys import ServiceKeys
from nanomesh.transport.coapio import serve_coap
from nanomesh.transport.httpio import http_call, serve_http_calls
from nanomesh.transport.rpc import RpcError, zmq_call
from nanomesh.wire.envelope import Keyring
from nanomesh.wire.service_traffic import Request, Response

VISIBILITY = {"pub": "public", "priv": "private"}


def req(*path: str) -> GatewayRequest:
    return GatewayRequest("GET", path)


def fake_gateway(eps: dict[str, list[Endpoint]]) -> tuple[Gateway, list[tuple[str, str]]]:
    calls: list[tuple[str, str]] = []

    def upstream(way: str) -> object:
        async def call(ep: Endpoint, request: GatewayRequest, timeout: float
                       ) -> GatewayResponse:
            calls.append((way, ep.instance))
            return GatewayResponse(CONTENT, way.encode())
        return call

    gw = Gateway(lambda s: eps.get(s, []),
                 {w: upstream(w) for w in ("coap", "zmq", "http", LINK)},  # type: ignore[misc]
                 services=lambda: set(VISIBILITY), visibility=VISIBILITY.__getitem__,
                 me="peer-a")
    return gw, calls


def ep(instance: str, protocol: str, peer: str) -> Endpoint:
    return endpoint(instance, "10.0.0.1", protocol=protocol, peer=peer)


async def test_outsiders_reach_public_services_only() -> None:
    gw, calls = fake_gateway({"pub": [ep("pub/0", "coap", "peer-b")],
                              "priv": [ep("priv/0", "coap", "peer-a")]})
    refused = await gw.handle(req("s", "priv", "count"))
    assert refused.code == UNAUTHORIZED and b"private service" in refused.payload
    assert calls == [] and gw.refused == 1
    assert (await gw.handle(req("s", "pub", "x"))).code == CONTENT
    listing = await gw.handle(req(".well-known", "core"))
    attrs = b';rt="nanomesh.service";ct=50;obs'
    assert listing.payload == b"</s/pub>" + attrs
    member_listing = await gw.handle(req(".well-known", "core"), member=True)
    assert member_listing.payload == b"</s/priv>" + attrs + b",</s/pub>" + attrs
    assert (await gw.handle(req("s", "priv", "count"), member=True)).code == CONTENT
    assert calls == [("coap", "pub/0"), ("coap", "priv/0")]


async def test_private_services_travel_authenticated() -> None:
    """ZeroMQ (CURVE) first; a CoAP instance on another peer through that
    peer's link; one on this peer directly; `local_only` never leaves it."""
    gw, calls = fake_gateway({"priv": [ep("priv/0", "coap", "peer-b"),
                                       ep("priv/0", "zmq", "peer-b"),
                                       ep("priv/1", "coap", "peer-b"),
                                       ep("priv/2", "http", "peer-a")]})
    for _ in range(1):
        await gw.forward("priv", req("x"), private=True)
    assert calls == [("zmq", "priv/0")]
    gw, calls = fake_gateway({"priv": [ep("priv/1", "coap", "peer-b")]})
    assert (await gw.forward("priv", req("x"), private=True)).payload == LINK.encode()
    assert calls == [(LINK, "priv/1")]
    gw, calls = fake_gateway({"priv": [ep("priv/2", "http", "peer-a")]})
    assert (await gw.forward("priv", req("x"), private=True)).payload == b"http"
    gw, calls = fake_gateway({"priv": [ep("priv/1", "coap", "peer-b")]})
    alone = await gw.forward("priv", req("x"), private=True, local_only=True)
    assert alone.code == SERVICE_UNAVAILABLE and calls == []


# ------------------------------------------------------------------ real sockets

IP_A, IP_B = "127.0.50.11", "127.0.50.12"
PORT = 5683
INSTANCE_PORT = 5791
HTTP_PORT = 5792


async def private_instance(request: Request) -> Response:
    return Response(200, f"secret {request.path}".encode(), 0)


@pytest.fixture
async def two_peers(nursery: trio.Nursery) -> AsyncIterator[ServiceKeys]:
    """Gateways of peers a and b with the mesh's keys; a private service's
    CoAP instance on b that answers b's IP only (as the SDK serves it)."""
    from nanomesh.gateway.coap import serve_coap_gateway
    keys = ServiceKeys.from_keyring(Keyring([os.urandom(32)]))
    eps = {"priv": [Endpoint("priv", "priv/0", "b", IP_B, "coap", "coap", INSTANCE_PORT,
                             "healthy", "running")],
           "privh": [Endpoint("privh", "privh/0", "b", IP_B, "http", "http", HTTP_PORT,
                              "healthy", "running")]}
    await nursery.start(functools.partial(serve_coap, only_from=IP_B), IP_B, INSTANCE_PORT,
                        private_instance)
    await nursery.start(functools.partial(serve_http_calls, only_from=IP_B), IP_B, HTTP_PORT,
                        private_instance)
    for ip, me in ((IP_A, "a"), (IP_B, "b")):
        await nursery.start(functools.partial(
            serve_coap_gateway, services=lambda: set(eps), visibility=lambda s: "private",
            me=me, keys=keys), (ip, PORT), lambda s: eps.get(s, []))
    yield keys


async def test_private_coap_service_answers_members_through_the_link_only(
        two_peers: ServiceKeys) -> None:
    keys = two_peers
    async with coap_client() as send:
        for ip in (IP_A, IP_B):
            reply = await send(aiocoap.GET, f"coap://{ip}:{PORT}/s/priv/x")
            assert str(reply.code) == "4.01 Unauthorized", (ip, reply)
        direct = await send(aiocoap.GET, f"coap://{IP_B}:{INSTANCE_PORT}/x")
        assert str(direct.code) == "4.01 Unauthorized", direct
    member = Request("GET", link_path("s", "priv", "x%2Fy"))
    answer = await zmq_call(f"{IP_A}:{PORT}", member, 10.0, keys=keys)
    assert answer.status == 200 and answer.body == b"secret x%2Fy", answer
    for outsider in (None, ServiceKeys.from_keyring(Keyring([os.urandom(32)]))):
        with pytest.raises(RpcError):
            await zmq_call(f"{IP_A}:{PORT}", member, 5.0, keys=outsider)
    # The same for a private HTTP instance (as the SDK serves one).
    via_link = await zmq_call(f"{IP_A}:{PORT}", Request("GET", "s/privh/y"), 10.0, keys=keys)
    assert via_link.status == 200 and via_link.body == b"secret y", via_link
    direct_http = await http_call(f"{IP_B}:{HTTP_PORT}", Request("GET", "y"), 5.0)
    assert direct_http.status == 403, direct_http
