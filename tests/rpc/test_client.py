"""`nanomesh.sdk.client`: calls by name through a fake resolve API to real ZeroMQ
replicas (fail-over, typed errors), the CoAP gateway path, and the pure
ordering of attempts."""

from __future__ import annotations

import collections
import socket

import pytest
import trio
from rpc_helpers import endpoint_json, fake_peer_api, free_port

from nanomesh.sdk import client as client_module
from nanomesh.sdk.client import (
    GATEWAY,
    CallTimeout,
    RemoteError,
    ServiceUnavailable,
    Target,
    attempt_order,
    connect,
    parse_resolution,
)
from nanomesh.transport.coapio import serve_coap
from nanomesh.transport.rpc import serve_rpc
from nanomesh.wire.service_traffic import Request, Response

IP_API, IP_A, IP_B = "127.0.51.20", "127.0.51.21", "127.0.51.22"


def replica(name: str, hits: collections.Counter[str]) -> object:
    async def handle(req: Request) -> Response:
        hits[name] += 1
        if req.path == "missing":
            return Response(404, error="nothing here")
        if req.path == "hang":
            await trio.sleep(30)
        return Response(200, name.encode())
    return handle


async def start_replica(nursery: trio.Nursery, ip: str, name: str,
                        hits: collections.Counter[str]) -> tuple[str, trio.CancelScope]:
    scope = trio.CancelScope()

    async def run(*, task_status: trio.TaskStatus[str]) -> None:
        with scope:
            await serve_rpc(f"{ip}:0", replica(name, hits), task_status=task_status)  # type: ignore[arg-type]

    return await nursery.start(run), scope


async def test_calls_fail_over_between_replicas(nursery: trio.Nursery) -> None:
    hits: collections.Counter[str] = collections.Counter()
    addr_a, scope_a = await start_replica(nursery, IP_A, "a", hits)
    addr_b, _ = await start_replica(nursery, IP_B, "b", hits)
    async with fake_peer_api(IP_API) as api:
        api.services["echo"] = [
            endpoint_json("echo", "echo/0", IP_A, "api", "zmq", int(addr_a.split(":")[1])),
            endpoint_json("echo", "echo/1", IP_B, "api", "zmq", int(addr_b.split(":")[1]))]
        async with connect(api.address) as mesh:
            with trio.fail_after(20):
                answers = {(await mesh.call("echo", "x")).body for _ in range(6)}
                assert answers == {b"a", b"b"}            # replicas take turns
                scope_a.cancel()                           # replica a dies
                await trio.sleep(0.05)
                for _ in range(6):
                    assert (await mesh.call("echo", "x", timeout=5)).body == b"b"
            assert api.resolves >= 2                       # a failure re-resolves


async def test_typed_errors(nursery: trio.Nursery) -> None:
    hits: collections.Counter[str] = collections.Counter()
    addr_a, _ = await start_replica(nursery, IP_A, "a", hits)
    async with fake_peer_api(IP_API) as api:
        port = int(addr_a.split(":")[1])
        api.services["echo"] = [endpoint_json("echo", "echo/0", IP_A, "api", "zmq", port)]
        api.services["stopped"] = [endpoint_json("stopped", "stopped/0", IP_A, "api", "zmq",
                                                 port, state="exited")]
        async with connect(api.address) as mesh:
            with trio.fail_after(20):
                with pytest.raises(RemoteError) as info:
                    await mesh.call("echo", "missing")
                assert (info.value.status, info.value.message) == (404, "nothing here")
                assert hits["a"] == 1                          # a 4xx is not retried
                with pytest.raises(CallTimeout):
                    await mesh.call("echo", "hang", timeout=0.2, retries=0)
                with pytest.raises(ServiceUnavailable, match="no service named"):
                    await mesh.call("ghost", "x")
                with pytest.raises(ServiceUnavailable, match="stopped/0:exited"):
                    await mesh.call("stopped", "x")
    async with connect(f"{IP_API}:{free_port(IP_API)}") as mesh:
        with trio.fail_after(10), pytest.raises(ServiceUnavailable, match="peer API"):
            await mesh.call("echo", "x")


async def test_while_the_peer_cannot_resolve_its_last_answer_is_used(
        nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch) -> None:
    """The peer restarts (503) while the replica it named runs elsewhere:
    calls go on with the last resolution for STALE_IF_ERROR seconds; a 404
    (the service is gone) is never overridden."""
    monkeypatch.setattr(client_module, "RESOLVE_TTL", 0.01)
    hits: collections.Counter[str] = collections.Counter()
    addr_a, _ = await start_replica(nursery, IP_A, "a", hits)
    async with fake_peer_api(IP_API) as api:
        api.services["echo"] = [
            endpoint_json("echo", "echo/0", IP_A, "api", "zmq", int(addr_a.split(":")[1]))]
        async with connect(api.address) as mesh:
            with trio.fail_after(20):
                assert (await mesh.call("echo", "x")).body == b"a"
                api.resolve_status = 503
                await trio.sleep(0.05)
                assert (await mesh.call("echo", "x")).body == b"a"
                assert api.resolves >= 2                  # it asked, then fell back
                monkeypatch.setattr(client_module, "STALE_IF_ERROR", 0.0)
                with pytest.raises(ServiceUnavailable,
                                   match=r"could not resolve 'echo': HTTP 503"):
                    await mesh.call("echo", "x", retries=0)
                monkeypatch.setattr(client_module, "STALE_IF_ERROR", 60.0)
                api.resolve_status = 404
                with pytest.raises(ServiceUnavailable, match="no service named"):
                    await mesh.call("echo", "x", retries=0)


async def test_post_is_not_repeated_after_an_attempt_that_may_have_run(
        nursery: trio.Nursery) -> None:
    """A timed-out or 504-answered POST may have run: it is not retried (one
    run, not up to 1 + retries), unless the caller says it is idempotent; a GET
    is retried; a refused connection still fails over for a POST."""
    runs: collections.Counter[str] = collections.Counter()

    async def slow(req: Request) -> Response:
        runs[f"{req.method} {req.path}"] += 1
        if req.path == "slow":
            await trio.sleep(30)
        if req.path == "gateway-timeout":
            return Response(504, error="an instance did not answer")
        if req.path == "busy":
            return Response(503, error="busy")
        return Response(200, b"done")

    address = await nursery.start(serve_rpc, f"{IP_A}:0", slow)
    port = int(address.split(":")[1])
    async with fake_peer_api(IP_API) as api:
        api.services["slow"] = [endpoint_json("slow", "slow/0", IP_A, "api", "zmq", port)]
        api.services["half"] = [   # one replica refuses connections, the other works
            endpoint_json("half", "half/0", IP_B, "api", "zmq", free_port(IP_B)),
            endpoint_json("half", "half/1", IP_A, "api", "zmq", port)]
        async with connect(api.address) as mesh:
            with trio.fail_after(30):
                with pytest.raises(CallTimeout):
                    await mesh.call("slow", "slow", b"x", method="POST", timeout=0.3)
                assert runs["POST slow"] == 1
                with pytest.raises(RemoteError) as info:
                    await mesh.call("slow", "gateway-timeout", b"x", method="POST")
                assert info.value.status == 504 and runs["POST gateway-timeout"] == 1
                with pytest.raises(RemoteError):                      # 503: not served
                    await mesh.call("slow", "busy", b"x", method="POST")
                assert runs["POST busy"] == 3
                with pytest.raises(CallTimeout):
                    await mesh.call("slow", "slow", b"x", method="POST", timeout=0.3,
                                    idempotent=True)
                assert runs["POST slow"] == 1 + 3
                with pytest.raises(RemoteError):
                    await mesh.call("slow", "gateway-timeout", method="PUT")
                assert runs["PUT gateway-timeout"] == 3
                with pytest.raises(RemoteError):
                    await mesh.call("slow", "gateway-timeout", idempotent=False)
                assert runs["GET gateway-timeout"] == 1
                for _ in range(4):                 # whichever replica comes first
                    assert (await mesh.call("half", "ok", b"x", method="POST")).body == b"done"
                assert runs["POST ok"] == 4


async def test_coap_gateway_is_used_when_there_is_no_zmq_endpoint(
        nursery: trio.Nursery) -> None:
    seen: list[str] = []

    async def gateway(req: Request) -> Response:
        seen.append(req.path)
        return Response(200, b"via gateway " + req.body)

    coap_port = free_port(IP_API, socket.SOCK_DGRAM)
    await nursery.start(serve_coap, IP_API, coap_port, gateway)
    async with fake_peer_api(IP_API) as api:
        api.services["sensor"] = [endpoint_json("sensor", "sensor/0", IP_A, "c", "coap", 5999)]
        async with connect(api.address, coap_port=coap_port) as mesh:
            with trio.fail_after(20):
                reply = await mesh.call("sensor", "read/now", "hi", method="POST")
    assert reply.body == b"via gateway hi"
    assert seen == ["s/sensor/read/now"]


def ep(host: str, protocol: str, health: str = "healthy", state: str = "running",
       port: int = 1) -> object:
    return endpoint_json("s", f"s/{host}", host, "e", protocol, port, health, state)


def test_attempt_order() -> None:
    eps = parse_resolution({"endpoints": [
        ep("10.0.0.1", "zmq"), ep("10.0.0.2", "zmq", "starting"), ep("10.0.0.3", "zmq"),
        ep("10.0.0.4", "zmq", "unhealthy"), ep("10.0.0.5", "zmq", state="stopping"),
        ep("10.0.0.6", "http"), ep("10.0.0.7", "coap")]})
    z1, z2, z3 = (Target("zmq", f"10.0.0.{i}:1") for i in (1, 2, 3))
    http = Target("http", "10.0.0.6:1")
    assert attempt_order(eps, [], 0) == [z1, z3, z2, GATEWAY, http]
    assert attempt_order(eps, [], 1) == [z3, z1, z2, GATEWAY, http]   # healthy ones rotate
    assert attempt_order(eps, [z1], 0) == [z3, z2, GATEWAY, http, z1]  # failed goes last
    only_http = parse_resolution({"endpoints": [ep("10.0.0.6", "http")]})
    assert attempt_order(only_http, [], 0) == [http]
    assert attempt_order([], [], 0) == []


def test_parse_resolution_skips_malformed_entries() -> None:
    good = ep("10.0.0.1", "zmq")
    doc = {"endpoints": [good, {"port": "x"}, {"port": 0}, "junk", {**good, "port": True}]}
    assert len(parse_resolution(doc)) == 1
    assert parse_resolution(["not", "a", "map"]) == []
