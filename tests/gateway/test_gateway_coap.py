"""The CoAP gateway over real UDP on 127.0.50.x: forwarding, errors,
fail-over, block-wise transfer both ways, garbage datagrams, start/stop."""

from __future__ import annotations

import json
import os
import random
import socket

import aiocoap
import pytest
import trio
from gateway_helpers import (
    BIG,
    GATEWAY_IP,
    GATEWAY_PORT,
    INSTANCE_IPS,
    INSTANCE_PORT,
    coap_client,
    endpoint,
    instances,
    running_gateway,
    url,
)

from nanomesh.errors import ConfigError
from nanomesh.gateway.coap import check_gateway_port
from nanomesh.gateway.forward import GatewayConfig
from nanomesh.naming import Endpoint

A, B, C = INSTANCE_IPS


def fixed(table: dict[str, list[Endpoint]]):  # type: ignore[no-untyped-def]
    return lambda service: list(table.get(service, []))


async def test_get_is_forwarded_with_path_query_and_format() -> None:
    """GET /s/hello/a/b?x=1 reaches the instance as GET /a/b?x=1 with the
    Accept and content-format intact; its 2.05 and JSON come back."""
    async with instances(A) as [log], running_gateway(
            fixed({"hello": [endpoint("hello/0", A)]})), coap_client() as send:
        resp = await send(aiocoap.GET, url("/s/hello/a/b?x=1&flag"))
    assert str(resp.code) == "2.05 Content"
    assert int(resp.opt.content_format) == 50
    seen = json.loads(resp.payload)
    assert seen["path"] == ["a", "b"] and seen["query"] == ["x=1", "flag"]
    assert seen["method"] == "GET" and seen["instance"] == "i0"
    assert len(log.requests) == 1


async def test_post_with_payload_is_forwarded() -> None:
    async with instances(A) as [log], running_gateway(
            fixed({"hello": [endpoint("hello/0", A)]})), coap_client() as send:
        resp = await send(aiocoap.POST, url("/s/hello/echo"), b"temperature=21.5",
                          content_format=0)
        put = await send(aiocoap.PUT, url("/s/hello/status/4.04"), b"x")
    assert str(resp.code) == "2.04 Changed"
    assert resp.payload == b"temperature=21.5" and int(resp.opt.content_format) == 42
    assert log.requests[0]["method"] == "POST" and log.requests[0]["content_format"] == 0
    assert str(put.code) == "4.04 Not Found" and put.payload == b"as asked"


async def test_unknown_service_is_404_and_no_healthy_instance_is_503() -> None:
    async with running_gateway(fixed({}), services=["hello"]), coap_client() as send:
        unknown = await send(aiocoap.GET, url("/s/nosuch/x"))
        none_healthy = await send(aiocoap.GET, url("/s/hello/x"))
        elsewhere = await send(aiocoap.GET, url("/not/under/s"))
    assert str(unknown.code) == "4.04 Not Found"
    assert b"no service named 'nosuch'" in unknown.payload
    assert str(none_healthy.code) == "5.03 Service Unavailable"
    assert none_healthy.payload == b"no healthy instance of hello"
    assert none_healthy.opt.max_age == 2
    assert str(elsewhere.code) == "4.04 Not Found"


async def test_well_known_core_lists_services() -> None:
    async with running_gateway(fixed({}), services=["hello", "temp"]), \
            coap_client() as send:
        resp = await send(aiocoap.GET, url("/.well-known/core"))
        post = await send(aiocoap.POST, url("/.well-known/core"))
    assert str(resp.code) == "2.05 Content" and int(resp.opt.content_format) == 40
    assert resp.payload == (b'</s/hello>;rt="nanomesh.service";ct=50;obs,'
                            b'</s/temp>;rt="nanomesh.service";ct=50;obs')
    assert str(post.code) == "4.05 Method Not Allowed"


async def test_failover_past_a_dead_endpoint() -> None:
    """The first endpoint's port is closed (ICMP unreachable): the gateway
    moves on to the second at once and counts the fail-over."""
    eps = [endpoint("hello/0", A, port=INSTANCE_PORT + 1), endpoint("hello/1", B)]
    async with instances(B) as [log], running_gateway(fixed({"hello": eps})) as gw, \
            coap_client() as send:
        with trio.fail_after(3):  # well under one try_timeout: no waiting on the dead one
            resp = await send(aiocoap.GET, url("/s/hello/x"))
    assert str(resp.code) == "2.05 Content" and json.loads(resp.payload)["instance"] == "i0"
    assert len(log.requests) == 1 and gw.failed_over == 1


async def test_failover_past_a_silent_endpoint_after_try_timeout() -> None:
    """An endpoint that swallows datagrams is given up after try_timeout."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind((C, INSTANCE_PORT))
    eps = [endpoint("hello/0", C), endpoint("hello/1", B)]
    config = GatewayConfig(try_timeout=0.5, deadline=5)
    try:
        async with instances(B), running_gateway(fixed({"hello": eps}), config=config), \
                coap_client() as send:
            resp = await send(aiocoap.GET, url("/s/hello/x"))
    finally:
        silent.close()
    assert str(resp.code) == "2.05 Content"


async def test_all_endpoints_dead_gives_diagnostic_503_and_at_most_max_tries() -> None:
    eps = [endpoint(f"hello/{i}", ip, port=INSTANCE_PORT + 1)
           for i, ip in enumerate([A, B, C, A])]
    async with running_gateway(fixed({"hello": eps})), coap_client() as send:
        resp = await send(aiocoap.GET, url("/s/hello/x"))
    assert str(resp.code) == "5.03 Service Unavailable"
    text = resp.payload.decode()
    assert text.startswith("no instance of hello could be reached: ")
    assert all(f"hello/{i} on peer-" in text for i in range(3)) and "hello/3" not in text


async def test_silent_endpoints_give_504() -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind((C, INSTANCE_PORT))
    config = GatewayConfig(try_timeout=0.3, deadline=0.5)
    try:
        async with running_gateway(fixed({"hello": [endpoint("hello/0", C)] * 1}),
                                   config=config), coap_client() as send:
            resp = await send(aiocoap.GET, url("/s/hello/x"))
    finally:
        silent.close()
    assert str(resp.code) == "5.04 Gateway Timeout"
    assert b"no answer within 0.3s" in resp.payload


async def test_64_kib_request_and_response_blockwise() -> None:
    """64 KiB up (Block1) and down (Block2) through the gateway, byte for
    byte; the instance renders the large response once, not once per block."""
    async with instances(A) as [log], running_gateway(
            fixed({"hello": [endpoint("hello/0", A)]})), coap_client() as send:
        up = await send(aiocoap.POST, url("/s/hello/echo"), BIG)
        down = await send(aiocoap.GET, url("/s/hello/big"))
    assert str(up.code) == "2.04 Changed" and up.payload == BIG
    assert log.requests[0]["payload"] == BIG
    assert str(down.code) == "2.05 Content" and down.payload == BIG
    assert [r["path"] for r in log.requests] == [["echo"], ["big"]]


async def test_request_over_max_payload_is_413() -> None:
    config = GatewayConfig(max_payload=8 * 1024)
    async with instances(A) as [log], running_gateway(
            fixed({"hello": [endpoint("hello/0", A)]}), config=config), \
            coap_client() as send:
        resp = await send(aiocoap.POST, url("/s/hello/echo"), BIG)
        ok = await send(aiocoap.POST, url("/s/hello/echo"), BIG[:4096])
    assert str(resp.code) == "4.13 Request Entity Too Large"
    assert str(ok.code) == "2.04 Changed" and ok.payload == BIG[:4096]
    assert len(log.requests) == 1


def garbage_datagrams(rng: random.Random) -> list[bytes]:
    """Random bytes, truncated headers, and CoAP-looking messages with bad
    option encodings, bad token lengths and invalid UTF-8 paths."""
    out = [b"", b"\x40", b"\x40\x01", b"\xff" * 4, b"\x48\x01\x00\x01",  # TKL 8, no token
           b"\x40\x01\x00\x01\xf0",                                       # reserved delta 15
           b"\x40\x01\x00\x01\xbd\xff",                                   # extended length cut
           b"\x40\x01\x00\x01\xb2\xc3\x28",                               # Uri-Path not UTF-8
           b"\x40\x01\x00\x01\xff",                                       # marker, no payload
           b"\x60\x45\x00\x01",                                           # stray ACK 2.05
           b"\x50\x01\x00\x02" + b"\xb1s" + b"\x01" + b"\xff" * 9]        # NON, options junk
    out += [rng.randbytes(rng.randrange(1, 200)) for _ in range(150)]
    valid = b"\x40\x01\x12\x34\xb1s\x05hello\x01x"
    for _ in range(100):
        mutated = bytearray(valid)
        for _ in range(rng.randrange(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        out.append(bytes(mutated))
    return out


async def test_garbage_datagrams_never_crash_the_gateway() -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    print("seed", seed)
    async with instances(A), running_gateway(
            fixed({"hello": [endpoint("hello/0", A)]})) as gw, coap_client() as send:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            await sock.bind((GATEWAY_IP, 0))
            for data in garbage_datagrams(random.Random(seed)):
                await sock.sendto(data, (GATEWAY_IP, GATEWAY_PORT))
        await trio.sleep(0.2)
        resp = await send(aiocoap.GET, url("/s/hello/after"))
    assert str(resp.code) == "2.05 Content"
    assert gw.dropped >= 1  # the non-UTF-8 Uri-Path that aiocoap's parser raises on


async def test_port_taken_is_a_config_error() -> None:
    """A taken port is one clear ConfigError (raised through the nursery that
    started the gateway), also when the taker is another gateway, whose
    SO_REUSEPORT socket would otherwise share the port silently."""
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind((GATEWAY_IP, GATEWAY_PORT))
    try:
        with pytest.raises(ExceptionGroup) as info:
            async with running_gateway(fixed({})):
                pass
        assert info.group_contains(ConfigError, match=r"CoAP gateway \(UDP\) on "
                                   r"127.0.50.1:5683: Address already in use")
    finally:
        taken.close()
    with pytest.raises(ExceptionGroup) as info:
        async with running_gateway(fixed({})), running_gateway(fixed({})):
            pass
    assert info.group_contains(ConfigError, match="Address already in use")
    async with running_gateway(fixed({})):
        with pytest.raises(ConfigError, match=r"127\.0\.50\.1:5683"):
            check_gateway_port((GATEWAY_IP, GATEWAY_PORT))


async def test_cancel_releases_the_port() -> None:
    for _ in range(2):
        async with running_gateway(fixed({})), coap_client() as send:
            resp = await send(aiocoap.GET, url("/.well-known/core"))
            assert str(resp.code) == "2.05 Content"
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind((GATEWAY_IP, GATEWAY_PORT))
    probe.close()


async def test_concurrent_requests_spread_over_replicas_order() -> None:
    """Many concurrent clients all get answers (the gateway serves requests
    concurrently; resolve's order puts every request on the first replica)."""
    eps = [endpoint("hello/0", A), endpoint("hello/1", B)]
    async with instances(A, B) as logs, running_gateway(fixed({"hello": eps})), \
            coap_client() as send:
        codes: list[str] = []

        async def one(i: int) -> None:
            resp = await send(aiocoap.POST, url(f"/s/hello/echo/{i}"), str(i).encode())
            codes.append(f"{resp.code}:{resp.payload.decode()}")

        async with trio.open_nursery() as nursery:
            for i in range(32):
                nursery.start_soon(one, i)
    assert sorted(codes) == sorted(f"2.04 Changed:{i}" for i in range(32))
    assert len(logs[0].requests) == 32 and not logs[1].requests


async def test_garbage_datagrams_never_crash_a_nanoservice_coap_server() -> None:
    """The SDK's CoAP server (`nanomesh.transport.coapio.serve_coap`, what every
    nanoservice with a coap endpoint runs) survives the same garbage: the
    non-UTF-8 Uri-Path used to escape aiocoap into trio-asyncio's nursery and
    end the service."""
    from nanomesh.transport.coapio import serve_coap
    from nanomesh.wire.service_traffic import Request, Response

    async def handler(request: Request) -> Response:
        return Response(200, request.path.encode())

    host, port = "127.0.50.40", 5683
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_coap, host, port, handler)
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            await sock.bind((host, 0))
            for data in garbage_datagrams(random.Random(7)):
                await sock.sendto(data, (host, port))
        await trio.sleep(0.2)
        async with coap_client() as send:
            resp = await send(aiocoap.GET, f"coap://{host}:{port}/still/here")
        assert str(resp.code) == "2.05 Content" and resp.payload == b"still/here"
        nursery.cancel_scope.cancel()


async def test_nanoservice_coap_server_refuses_a_blockwise_body_over_the_limit() -> None:
    """The SDK's CoAP server stops reassembling a Block1 body at the call body
    limit (1 MiB): a 2 MiB POST gets 4.13 and the handler never sees it; a
    64 KiB one still goes through."""
    from nanomesh.transport.coapio import serve_coap
    from nanomesh.wire.service_traffic import MAX_BODY, Request, Response

    seen: list[int] = []

    async def handler(request: Request) -> Response:
        seen.append(len(request.body))
        return Response(200, str(len(request.body)).encode())

    host, port = "127.0.50.41", 5683
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_coap, host, port, handler)
        async with coap_client() as send:
            big = await send(aiocoap.POST, f"coap://{host}:{port}/up", bytes(2 * MAX_BODY))
            ok = await send(aiocoap.POST, f"coap://{host}:{port}/up", BIG)
        nursery.cancel_scope.cancel()
    assert str(big.code) == "4.13 Request Entity Too Large"
    assert str(ok.code) == "2.04 Changed" and ok.payload == str(len(BIG)).encode()
    assert seen == [len(BIG)]
