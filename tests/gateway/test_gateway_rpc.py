"""The gateway forwarding to zmq and http instances (real ROUTER / HTTP
servers from `nanomesh.transport.rpc` / `nanomesh.transport.httpio` on 127.0.50.x)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator

import aiocoap
import pytest
import trio
from gateway_helpers import BIG, INSTANCE_IPS, coap_client, endpoint, running_gateway, url

from nanomesh.naming import Endpoint

rpc = pytest.importorskip("nanomesh.transport.rpc", reason="the zmq call layer is not in this tree")
wire_rpc = pytest.importorskip("nanomesh.wire.service_traffic")
httpio = pytest.importorskip("nanomesh.transport.httpio")

A, B, _ = INSTANCE_IPS
ZMQ_PORT, HTTP_PORT = 5711, 5712


async def handler(request: wire_rpc.Request) -> wire_rpc.Response:
    if request.path == "missing":
        return wire_rpc.error_response(404, "no such reading")
    if request.path == "big":
        return wire_rpc.Response(200, BIG, 42)
    if request.method == "POST" and request.path == "made":
        return wire_rpc.Response(201, b"", None)
    seen = {"method": request.method, "path": request.path, "query": request.query,
            "size": len(request.body), "cf": request.content_format}
    return wire_rpc.Response(200, json.dumps(seen).encode(), 50)


@contextlib.asynccontextmanager
async def zmq_and_http_instances() -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        await nursery.start(rpc.serve_rpc, f"{A}:{ZMQ_PORT}", handler)
        await nursery.start(httpio.serve_http_calls, B, HTTP_PORT, handler)
        yield
        nursery.cancel_scope.cancel()


TABLE: dict[str, list[Endpoint]] = {
    "z": [endpoint("z/0", A, ZMQ_PORT, "zmq")],
    "h": [endpoint("h/0", B, HTTP_PORT, "http")],
}


@pytest.mark.parametrize("service", ["z", "h"])
async def test_forward_to_zmq_and_http_instances(service: str) -> None:
    async with zmq_and_http_instances(), running_gateway(lambda s: TABLE.get(s, [])), \
            coap_client() as send:
        get = await send(aiocoap.GET, url(f"/s/{service}/room/a%2Fb?unit=c"))
        post = await send(aiocoap.POST, url(f"/s/{service}/x"), b"21.5", content_format=0)
        made = await send(aiocoap.POST, url(f"/s/{service}/made"))
        missing = await send(aiocoap.GET, url(f"/s/{service}/missing"))
        big = await send(aiocoap.PUT, url(f"/s/{service}/big"), BIG)
        fetch = await send(aiocoap.FETCH, url(f"/s/{service}/x"))
    assert str(get.code) == "2.05 Content" and int(get.opt.content_format) == 50
    assert json.loads(get.payload) == {"method": "GET", "path": "room/a%2Fb",
                                       "query": "unit=c", "size": 0, "cf": None}
    assert str(post.code) == "2.04 Changed"
    assert json.loads(post.payload) == {"method": "POST", "path": "x", "query": "", "size": 4,
                                        "cf": 0}
    assert str(made.code) == "2.01 Created"
    assert str(missing.code) == "4.04 Not Found" and missing.payload == b"no such reading"
    assert str(big.code) == "2.04 Changed" and big.payload == BIG
    assert str(fetch.code) == "4.05 Method Not Allowed"


async def test_zmq_failover_past_a_dead_instance() -> None:
    eps = [endpoint("z/0", B, ZMQ_PORT + 5, "zmq"), endpoint("z/1", A, ZMQ_PORT, "zmq")]
    async with zmq_and_http_instances(), running_gateway(lambda s: eps) as gw, \
            coap_client() as send:
        resp = await send(aiocoap.GET, url("/s/z/x"))
    assert str(resp.code) == "2.05 Content" and gw.failed_over == 1
