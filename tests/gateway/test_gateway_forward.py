"""The gateway's pure decisions (``nanomesh.gateway.forward``) and the trio
core's fail-over with fake upstreams (no sockets)."""

from __future__ import annotations

import pytest
import trio
from gateway_helpers import endpoint

from nanomesh.gateway.core import Gateway
from nanomesh.gateway.forward import (
    CONTENT,
    GATEWAY_TIMEOUT,
    METHOD_NOT_ALLOWED,
    NOT_FOUND,
    SERVICE_UNAVAILABLE,
    DescribeRoute,
    GatewayConfig,
    GatewayRequest,
    GatewayResponse,
    NoRoute,
    ServiceRoute,
    WellKnownRoute,
    code_text,
    pick_targets,
    route,
    well_known_core,
)
from nanomesh.gateway.upstream import UpstreamError, coap_response, rpc_request
from nanomesh.naming import Endpoint
from nanomesh.wire.service_traffic import Response


def req(*path: str, method: str = "GET") -> GatewayRequest:
    return GatewayRequest(method, path)


@pytest.mark.parametrize(("request_", "expected"), [
    (req("s", "hello", "a", "b"), ServiceRoute("hello", req("a", "b"))),
    (req("s", "hello"), DescribeRoute("hello")),
    (req("s", "hello", ""), ServiceRoute("hello", req(""))),
    (req(".well-known", "core"), WellKnownRoute()),
    (req("s"), NoRoute), (req("s", ""), NoRoute), (req(), NoRoute), (req("x", "hello"), NoRoute),
])
def test_route(request_: GatewayRequest, expected: object) -> None:
    got = route(request_)
    if expected is NoRoute:
        assert isinstance(got, NoRoute) and got.response.code == NOT_FOUND
    else:
        assert got == expected


def test_route_keeps_payload_and_options_and_rejects_non_get_well_known() -> None:
    r = GatewayRequest("POST", ("s", "x", "y"), ("a=1",), b"body", 50, 60)
    assert route(r) == ServiceRoute("x", GatewayRequest("POST", ("y",), ("a=1",), b"body", 50, 60))
    bad = route(req(".well-known", "core", method="PUT"))
    assert isinstance(bad, NoRoute) and bad.response.code == METHOD_NOT_ALLOWED


def test_well_known_core_sorted_unique_and_escaped() -> None:
    resp = well_known_core(["b", "a", "b", "we ird"])
    attrs = b';rt="nanomesh.service";ct=50;obs'
    assert resp.payload == b",".join(b"</s/" + n + b">" + attrs for n in (b"a", b"b", b"we%20ird"))
    assert resp.content_format == 40


def test_pick_targets_one_per_instance_coap_preferred_order_kept() -> None:
    def ep(inst: str, proto: str) -> Endpoint:
        return endpoint(inst, "10.0.0.1", protocol=proto)

    eps = [ep("s/1", "http"), ep("s/1", "coap"), ep("s/0", "zmq"), ep("s/2", "http"),
           ep("s/3", "coap")]
    assert [(e.instance, e.protocol) for e in pick_targets(eps, 3)] == [
        ("s/1", "coap"), ("s/0", "zmq"), ("s/2", "http")]
    assert pick_targets(eps, 1) == [ep("s/1", "coap")]


def test_code_text() -> None:
    assert code_text(CONTENT) == "2.05" and code_text(GATEWAY_TIMEOUT) == "5.04"


def test_rpc_request_and_response_mapping() -> None:
    r = rpc_request(GatewayRequest("PUT", ("room", "a/b"), ("unit=c", "x"), b"1", 0))
    assert (r.method, r.path, r.query, r.body, r.content_format) == (
        "PUT", "room/a%2Fb", "unit=c&x", b"1", 0)
    assert coap_response(Response(200, b"ok", 50), "GET") == GatewayResponse(CONTENT, b"ok", 50)
    assert coap_response(Response(200, b""), "POST").code == 68          # 2.04 Changed
    assert coap_response(Response(201), "POST").code == 65               # 2.01 Created
    err = coap_response(Response(503, error="busy"), "GET")
    assert (err.code, err.payload, err.content_format) == (SERVICE_UNAVAILABLE, b"busy", 0)


class FakeUpstreams:
    """Upstream callables whose behaviour per instance is scripted."""

    def __init__(self, script: dict[str, str]) -> None:
        self.script = script
        self.calls: list[str] = []

    async def __call__(self, ep: Endpoint, request: GatewayRequest, timeout: float
                       ) -> GatewayResponse:
        self.calls.append(ep.instance)
        match self.script.get(ep.instance, "ok"):
            case "refuse":
                raise UpstreamError("connection refused")
            case "hang":
                await trio.sleep_forever()
            case "bug":
                raise RuntimeError("upstream bug")
        return GatewayResponse(CONTENT, ep.instance.encode())


def gateway(script: dict[str, str], eps: list[Endpoint], **config: float) -> tuple[
        Gateway, FakeUpstreams]:
    up = FakeUpstreams(script)
    return Gateway(lambda s: eps if s == "s" else [], {"coap": up},
                   services=lambda: {"s", "empty"},
                   config=GatewayConfig(**config)), up  # type: ignore[arg-type]


EPS = [endpoint(f"s/{i}", "10.0.0.1") for i in range(4)]


async def test_core_fails_over_and_bounds_tries(autojump_clock: trio.abc.Clock) -> None:
    gw, up = gateway({"s/0": "refuse", "s/1": "hang"}, EPS, try_timeout=1, deadline=10)
    resp = await gw.handle(req("s", "s", "x"))
    assert resp.payload == b"s/2" and up.calls == ["s/0", "s/1", "s/2"]
    assert gw.failed_over == 2 and gw.forwarded == 1

    gw, up = gateway({f"s/{i}": "refuse" for i in range(4)}, EPS)
    resp = await gw.handle(req("s", "s", "x"))
    assert resp.code == SERVICE_UNAVAILABLE and up.calls == ["s/0", "s/1", "s/2"]


async def test_core_deadline_bounds_the_whole_request(autojump_clock: trio.abc.Clock) -> None:
    gw, up = gateway({f"s/{i}": "hang" for i in range(4)}, EPS, try_timeout=2, deadline=3)
    start = trio.current_time()
    resp = await gw.handle(req("s", "s", "x"))
    assert resp.code == GATEWAY_TIMEOUT and up.calls == ["s/0", "s/1"]
    assert trio.current_time() - start == pytest.approx(3)
    assert b"s/0 on peer-10.0.0.1 (coap://10.0.0.1:5701): no answer within 2.0s" in resp.payload
    assert b"no answer within 1.0s" in resp.payload


async def test_core_unknown_empty_and_buggy() -> None:
    gw, _ = gateway({"s/0": "bug"}, EPS)
    assert (await gw.handle(req("s", "nope"))).code == NOT_FOUND
    empty = await gw.handle(req("s", "empty", "x"))
    assert empty.code == SERVICE_UNAVAILABLE and empty.max_age == 2
    buggy = await gw.handle(req("s", "s", "x"))
    assert buggy.code == 160 and b"internal gateway error" in buggy.payload

