"""CoAP conformance of the gateway's decisions (issue 13): critical options
(RFC 7252 §5.4.1), methods (§5.9.2.6), Accept (§5.10.4), ``/.well-known/core``
and its links (RFC 6690), and Observe by polling (RFC 7641): tables over the
pure code, the trio watch loop under the autojump clock, and one observation
through the real aiocoap gateway. The same is checked with libcoap's
``coap-client`` against a real daemon in tests/integration/test_coap_conformance.py."""

from __future__ import annotations

import json

import aiocoap
import aiocoap.optiontypes
import pytest
import trio
import trio_asyncio
from gateway_helpers import (
    INSTANCE_IPS,
    coap_client,
    endpoint,
    instances,
    running_gateway,
    url,
)

from nanomesh.gateway.coap import gateway_request
from nanomesh.gateway.core import Gateway
from nanomesh.gateway.forward import (
    BAD_OPTION,
    CHANGED,
    CONTENT,
    JSON,
    LINK_FORMAT,
    METHOD_NOT_ALLOWED,
    NOT_ACCEPTABLE,
    NOT_FOUND,
    NOT_IMPLEMENTED,
    PROXYING_NOT_SUPPORTED,
    TEXT_PLAIN,
    UNAUTHORIZED,
    DescribeRoute,
    GatewayRequest,
    GatewayResponse,
    NoRoute,
    ServiceRoute,
    WellKnownRoute,
    negotiate,
    option_problem,
    route,
    well_known_core,
)
from nanomesh.gateway.observe import Observation, ObserveConfig, Step, refusal
from nanomesh.naming import Endpoint

# ------------------------------------------------------------ critical options


@pytest.mark.parametrize(("options", "code", "named"), [
    ((), None, ""),
    ((3, 7, 11, 11, 15, 17, 23, 27), None, ""),       # understood critical ones
    ((4, 6, 12, 14, 16, 28, 60, 252, 258, 2048), None, ""),  # elective: ignored
    ((11, 1), BAD_OPTION, "If-Match (1)"),
    ((5,), BAD_OPTION, "If-None-Match (5)"),
    ((9,), BAD_OPTION, "OSCORE (9)"),
    ((2049, 65001), BAD_OPTION, "2049, 65001"),
    ((35,), PROXYING_NOT_SUPPORTED, "Proxy-Uri (35)"),
    ((39, 11), PROXYING_NOT_SUPPORTED, "Proxy-Scheme (39)"),
    ((35, 1), BAD_OPTION, "If-Match (1), Proxy-Uri (35)"),
])
def test_critical_options(options: tuple[int, ...], code: int | None, named: str) -> None:
    problem = option_problem(options)
    if code is None:
        assert problem is None
    else:
        assert problem is not None and problem.code == code
        assert named in problem.payload.decode() and problem.content_format == TEXT_PLAIN


def test_a_bad_option_is_answered_before_anything_else() -> None:
    for path in [("s", "x", "y"), (".well-known", "core"), ("nowhere",)]:
        got = route(GatewayRequest("FETCH", path, options=(11, 2049)))
        assert isinstance(got, NoRoute) and got.response.code == BAD_OPTION


def test_options_are_read_from_the_coap_message() -> None:
    message = aiocoap.Message(code=aiocoap.GET, uri="coap://127.0.0.1/s/x/y?a=1")
    message.opt.accept = 50
    message.opt.add_option(aiocoap.optiontypes.OpaqueOption(2049, b"\x01"))
    ask = gateway_request(message)
    assert ask.path == ("s", "x", "y") and ask.accept == 50
    assert sorted(set(ask.options)) == [11, 15, 17, 2049]  # no Uri-Host for an IP
    assert option_problem(ask.options) is not None


# ------------------------------------------------------------ methods and Accept


def req(*path: str, method: str = "GET", accept: int | None = None) -> GatewayRequest:
    return GatewayRequest(method, path, accept=accept)


@pytest.mark.parametrize(("request_", "expected"), [
    *((req("s", "x", "y", method=m), ServiceRoute("x", req("y", method=m)))
      for m in ("GET", "POST", "PUT", "DELETE")),
    *((req("s", "x", "y", method=m), METHOD_NOT_ALLOWED) for m in ("FETCH", "PATCH", "iPATCH")),
    (req("s", "x"), DescribeRoute("x")),
    (req("s", "x", method="POST"), METHOD_NOT_ALLOWED),
    (req("s", "x", method="FETCH"), METHOD_NOT_ALLOWED),
    (req(".well-known", "core", method="FETCH"), METHOD_NOT_ALLOWED),
    (req(".well-known", "core"), WellKnownRoute()),
    (req(".well-known", "core", accept=LINK_FORMAT), WellKnownRoute()),
    (req(".well-known", "core", accept=JSON), NOT_ACCEPTABLE),
    (req("s", "x", accept=JSON), DescribeRoute("x")),
    (req("s", "x", accept=TEXT_PLAIN), NOT_ACCEPTABLE),
    # a service's answer is checked after forwarding (`negotiate`)
    (req("s", "x", "y", accept=TEXT_PLAIN), ServiceRoute("x", req("y", accept=TEXT_PLAIN))),
])
def test_route_methods_and_accept(request_: GatewayRequest, expected: object) -> None:
    got = route(request_)
    if isinstance(expected, int):
        assert isinstance(got, NoRoute) and got.response.code == expected, got
        assert got.response.payload and got.response.content_format == TEXT_PLAIN
    else:
        assert got == expected


@pytest.mark.parametrize(("accept", "answer", "passes"), [
    (None, GatewayResponse(CONTENT, b"21.5", TEXT_PLAIN), True),
    (TEXT_PLAIN, GatewayResponse(CONTENT, b"21.5", TEXT_PLAIN), True),
    (JSON, GatewayResponse(CONTENT, b"21.5", TEXT_PLAIN), False),
    (JSON, GatewayResponse(CONTENT, b"\x01", None), False),     # no format said
    (JSON, GatewayResponse(CHANGED), True),                     # no representation
    (JSON, GatewayResponse(NOT_FOUND, b"no route", TEXT_PLAIN), True),  # errors pass
])
def test_negotiate(accept: int | None, answer: GatewayResponse, passes: bool) -> None:
    got = negotiate(accept, answer)
    if passes:
        assert got == answer
    else:
        assert got.code == NOT_ACCEPTABLE and b"content-format" in got.payload


# ------------------------------------------------------------ /.well-known/core links


def ep(instance: str, protocol: str = "coap") -> Endpoint:
    return endpoint(instance, "10.0.0.1", protocol=protocol)


def fake_gateway(answer: GatewayResponse, **observe: float) -> tuple[Gateway, list[str]]:
    calls: list[str] = []

    async def upstream(e: Endpoint, request: GatewayRequest, timeout: float) -> GatewayResponse:
        calls.append(e.instance)
        return answer

    table = {"pub": [ep("pub/0"), ep("pub/0", "zmq"), ep("pub/1", "zmq")], "priv": [ep("priv/0")]}
    gw = Gateway(lambda s: list(table.get(s, [])), {"coap": upstream, "zmq": upstream},
                 services=lambda: set(table) | {"idle"},
                 visibility=lambda s: "private" if s == "priv" else "public",
                 observe=ObserveConfig(**observe))  # type: ignore[arg-type]
    return gw, calls


async def test_every_listed_link_answers_with_what_it_says() -> None:
    gw, calls = fake_gateway(GatewayResponse(CONTENT, b"x", TEXT_PLAIN))
    listing = await gw.handle(req(".well-known", "core"))
    links = listing.payload.decode().split(",")
    assert links == ['</s/idle>;rt="nanomesh.service";ct=50;obs',
                     '</s/pub>;rt="nanomesh.service";ct=50;obs']
    for link in links:
        path = link[1:link.index(">")]
        answer = await gw.handle(req(*path.strip("/").split("/")))
        assert answer.code == CONTENT and answer.content_format == JSON, (path, answer)
    pub = json.loads((await gw.handle(req("s", "pub"))).payload)
    assert pub == {"service": "pub", "visibility": "public", "instances": ["pub/0", "pub/1"],
                   "protocols": ["coap", "zmq"], "paths": "/s/pub/<path>"}
    assert json.loads((await gw.handle(req("s", "idle"))).payload)["instances"] == []
    assert (await gw.handle(req("s", "priv"))).code == UNAUTHORIZED
    assert json.loads((await gw.handle(req("s", "priv"), member=True)).payload)[
        "visibility"] == "private"
    assert (await gw.handle(req("s", "nosuch"))).code == NOT_FOUND
    assert calls == []  # all answered by the gateway itself


@pytest.mark.parametrize(("query", "listed"), [
    ((), ["a", "b2"]),
    (("rt=nanomesh.service",), ["a", "b2"]),
    (("rt=nanomesh.*",), ["a", "b2"]),
    (("rt=core.rd",), []),
    (("ct=50",), ["a", "b2"]), (("ct=40",), []),
    (("obs",), ["a", "b2"]), (("if",), []),
    (("href=/s/b2",), ["b2"]), (("href=/s/b*",), ["b2"]), (("href=/s",), []),
    (("rt=nanomesh.service", "href=/s/a"), ["a"]),
])
def test_well_known_core_query_filters(query: tuple[str, ...], listed: list[str]) -> None:
    payload = well_known_core(["b2", "a"], query).payload.decode()
    assert [link[link.index("</s/") + 4:link.index(">")] for link in payload.split(",")
            if link] == listed


async def test_accept_is_checked_on_a_services_answer() -> None:
    gw, calls = fake_gateway(GatewayResponse(CONTENT, b"21.5", TEXT_PLAIN))
    assert (await gw.handle(req("s", "pub", "t", accept=TEXT_PLAIN))).code == CONTENT
    refused = await gw.handle(req("s", "pub", "t", accept=JSON))
    assert refused.code == NOT_ACCEPTABLE and len(calls) == 2


# ------------------------------------------------------------ observe, pure

CFG = ObserveConfig(period=5, max_age=60, lifetime=600, max_observers=2, max_payload=8)
A, B = GatewayResponse(CONTENT, b"a", TEXT_PLAIN), GatewayResponse(CONTENT, b"b", TEXT_PLAIN)


@pytest.mark.parametrize(("first", "observers", "refused"), [
    (A, 0, None), (A, 1, None),
    (A, 2, "2 observers already"),
    (GatewayResponse(NOT_FOUND, b"no", TEXT_PLAIN), 0, "error"),
    (GatewayResponse(CONTENT, b"123456789", TEXT_PLAIN), 0, "over 8 bytes"),
])
def test_refusal(first: GatewayResponse, observers: int, refused: str | None) -> None:
    why = refusal(first, observers, CFG)
    assert why is None if refused is None else refused in (why or "")


def test_observation_steps() -> None:
    obs, out = Observation.begin(CFG, A, now=0)
    assert out.max_age == 60 and out.payload == b"a"
    table = [  # (now, answer, step, payload sent)
        (5, A, Step.SKIP, None),
        (10, B, Step.NOTIFY, b"b"),           # changed
        (60, B, Step.SKIP, None),             # 50 s since last sent < 60 - 5
        (65, B, Step.NOTIFY, b"b"),           # refresh before Max-Age runs out
        (70, GatewayResponse(CONTENT, b"b", JSON), Step.NOTIFY, b"b"),  # format changed
        (75, GatewayResponse(CHANGED, b"b", JSON), Step.NOTIFY, b"b"),  # code changed
    ]
    for now, answer, step, payload in table:
        got, sent = obs.step(now, answer)
        assert got is step, (now, got)
        if payload is not None:
            assert sent.payload == payload and sent.max_age == 60


@pytest.mark.parametrize(("now", "answer", "code", "max_age"), [
    (5, GatewayResponse(NOT_FOUND, b"gone", TEXT_PLAIN), NOT_FOUND, None),
    (5, GatewayResponse(CONTENT, b"123456789", TEXT_PLAIN), NOT_IMPLEMENTED, None),
    (600, A, CONTENT, 60),                  # lifetime over: a last 2.05 without Observe
])
def test_observation_ends(now: float, answer: GatewayResponse, code: int,
                          max_age: int | None) -> None:
    obs, _ = Observation.begin(CFG, A, now=0)
    step, sent = obs.step(now, answer)
    assert step is Step.END and sent.code == code and sent.max_age == max_age


def test_observe_config_is_checked() -> None:
    for bad in ({"period": 0}, {"period": 70}, {"lifetime": 30}, {"max_observers": -1}):
        with pytest.raises(ValueError):
            ObserveConfig(**bad)  # type: ignore[arg-type]


# ------------------------------------------------------------ observe, the trio loop


async def test_watch_polls_and_notifies_on_change_until_the_lifetime(
        autojump_clock: trio.abc.Clock) -> None:
    values = iter([b"1", b"1", b"2", b"2", b"2", b"3"] + [b"3"] * 100)

    async def upstream(e: Endpoint, request: GatewayRequest, timeout: float) -> GatewayResponse:
        return GatewayResponse(CONTENT, next(values), TEXT_PLAIN)

    gw = Gateway(lambda s: [ep("t/0")], {"coap": upstream},
                 observe=ObserveConfig(period=1, max_age=10, lifetime=20))
    ask = req("s", "t", "v")
    first = await gw.handle(ask)
    assert gw.admit_observer(first) is None and gw.observers == 1
    sent: list[tuple[float, bytes, bool]] = []
    start = trio.current_time()
    await gw.watch(ask, first, lambda r, last: sent.append(
        (trio.current_time() - start, r.payload, last)))
    assert sent == [(0, b"1", False), (2, b"2", False), (5, b"3", False),
                    (14, b"3", False),      # refresh: 9 s unchanged, Max-Age 10, period 1
                    (20, b"3", True)]       # lifetime
    gw.observer_gone()
    assert gw.observers == 0


async def test_admission_is_bounded() -> None:
    gw, _ = fake_gateway(A, max_observers=1)
    assert gw.admit_observer(A) is None
    assert gw.admit_observer(A) == "1 observers already" and gw.observers == 1
    gw.observer_gone()
    assert gw.admit_observer(A) is None


# ------------------------------------------------------------ observe through aiocoap


async def test_observe_through_the_gateway_and_deregistration() -> None:
    """An aiocoap client observes /s/t/seen (the instance's request count:
    it changes on every poll) and gets the first answer and notifications;
    when it cancels, its next confirmable notification is answered with an
    RST and the gateway stops polling."""
    [a] = INSTANCE_IPS[:1]
    fast = ObserveConfig(period=0.3, max_age=2, lifetime=60)
    async with instances(a) as [log], running_gateway(
            lambda s: [endpoint("t/0", a)], observe=fast) as gw, trio_asyncio.open_loop():
        ctx = await trio_asyncio.aio_as_trio(aiocoap.Context.create_client_context)(
            transports=["udp6"])
        try:
            request = ctx.request(aiocoap.Message(code=aiocoap.GET, uri=url("/s/t/seen"),
                                                  observe=0))
            first = await trio_asyncio.aio_as_trio(lambda: request.response)()
            assert str(first.code) == "2.05 Content" and first.opt.observe == 0
            assert first.opt.max_age == 2 and gw.observers == 1

            async def notifications(n: int) -> list[bytes]:
                got = []
                async for note in request.observation:
                    got.append(bytes(note.payload))
                    if len(got) == n:
                        break
                return got

            with trio.fail_after(10):
                got = await trio_asyncio.aio_as_trio(notifications)(3)
            assert [int(p) for p in got] == sorted({int(p) for p in got})  # each one new
            request.observation.cancel()
            with trio.fail_after(10):
                while gw.observers:
                    await trio.sleep(0.1)
            polls = len(log.requests)
            await trio.sleep(1.0)
            assert len(log.requests) == polls  # no more polling
        finally:
            with trio.CancelScope(shield=True):
                await trio_asyncio.aio_as_trio(ctx.shutdown)()



async def test_a_members_call_of_a_service_root_is_not_the_description() -> None:
    """Over the link, ``s/<service>`` is the service's root path (the SDK
    client's call of path ``""``), forwarded to an instance."""
    from nanomesh.gateway.link import link_handler, link_path
    from nanomesh.wire.service_traffic import Request

    gw, calls = fake_gateway(GatewayResponse(CONTENT, b"root", TEXT_PLAIN))
    answer = await link_handler(gw)(Request("GET", link_path("s", "pub", "")))
    assert answer.status == 200 and answer.body == b"root" and calls == ["pub/0"]


async def test_over_coap_the_root_is_s_service_slash_and_s_service_the_description() -> None:
    [a] = INSTANCE_IPS[:1]
    async with instances(a) as [log], running_gateway(
            lambda s: [endpoint("t/0", a)] if s == "t" else [], services=["t"]), \
            coap_client() as send:
        root = await send(aiocoap.GET, url("/s/t/"))
        described = await send(aiocoap.GET, url("/s/t"))
        fetch = await send(aiocoap.FETCH, url("/s/t/x"))
    assert str(root.code) == "2.05 Content" and log.requests[0]["path"] == [""]
    assert json.loads(described.payload)["instances"] == ["t/0"] and len(log.requests) == 1
    assert str(fetch.code) == "4.05 Method Not Allowed" and fetch.payload


async def test_a_nanoservice_coap_server_answers_fetch_and_patch_4_05() -> None:
    """Straight to an instance too (the SDK's CoAP server): 4.05, not 4.00,
    and the handler is not called."""
    from nanomesh.transport.coapio import serve_coap
    from nanomesh.wire.service_traffic import Request, Response

    seen: list[str] = []

    async def handler(request: Request) -> Response:
        seen.append(request.method)
        return Response(200, b"ok")

    host, port = "127.0.50.42", 5683
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_coap, host, port, handler)
        async with coap_client() as send:
            answers = [await send(code, f"coap://{host}:{port}/x")
                       for code in (aiocoap.FETCH, aiocoap.PATCH, aiocoap.iPATCH, aiocoap.GET)]
        nursery.cancel_scope.cancel()
    assert [str(a.code) for a in answers] == ["4.05 Method Not Allowed"] * 3 + ["2.05 Content"]
    assert b"FETCH" in answers[0].payload and seen == ["GET"]


async def test_a_representation_over_one_block_is_answered_but_not_observed() -> None:
    """GET with Observe=0 of 64 KiB: the whole body, block-wise, and no
    observation (block-wise notifications are not implemented)."""
    from gateway_helpers import BIG

    [a] = INSTANCE_IPS[:1]
    async with instances(a), running_gateway(lambda s: [endpoint("t/0", a)]) as gw, \
            coap_client() as send:
        answer = await send(aiocoap.GET, url("/s/t/big"), observe=0)
        assert gw.observers == 0
    assert str(answer.code) == "2.05 Content" and answer.payload == BIG
    assert answer.opt.observe is None
