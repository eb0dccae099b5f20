"""Forwarding loops between gateways end at the Hop-Limit (RFC 8768): two real
gateways on 127.0.56.x whose resolvers name each other as the CoAP instance."""

from __future__ import annotations

import aiocoap
import trio
from gateway_helpers import GATEWAY_PORT, coap_client, endpoint, running_gateway, url

from nanomesh.gateway.forward import DEFAULT_HOP_LIMIT, GatewayRequest, outgoing_hop_limit
from nanomesh.naming import Endpoint

GW_A, GW_B = "127.0.56.1", "127.0.56.2"


def towards(ip: str) -> list[Endpoint]:
    """Three "instances" of ``loop``, all the other gateway: fail-over would fan out."""
    return [endpoint(f"loop/{i}", ip, port=GATEWAY_PORT) for i in range(3)]


async def test_loop_between_two_gateways_ends_with_5_08_and_stops() -> None:
    deep = "/s/loop" * 40 + "/x"
    async with running_gateway(lambda s: towards(GW_B), bind=(GW_A, GATEWAY_PORT)) as a, \
            running_gateway(lambda s: towards(GW_A), bind=(GW_B, GATEWAY_PORT)) as b, \
            coap_client() as send:
        with trio.fail_after(15):
            resp = await send(aiocoap.GET, url(deep, ip=GW_A))
        assert str(resp.code) == "5.08 Hop Limit Reached"
        assert b"hop limit reached" in resp.payload

        def counters() -> list[int]:
            return [n for gw in (a, b) for n in (gw.forwarded, gw.failed_over, gw.hop_limited)]

        seen = counters()
        await trio.sleep(1.0)
        assert counters() == seen                    # nothing is still bouncing around
    # Client -> A (sets 8) -> B (7) -> ... -> the gateway that gets 1 answers 5.08:
    # one exchange per hop, no fail-over.
    assert a.forwarded + b.forwarded == DEFAULT_HOP_LIMIT
    assert a.hop_limited + b.hop_limited == 1
    assert a.failed_over == b.failed_over == 0


async def test_a_client_hop_limit_is_decremented_and_honoured() -> None:
    async with running_gateway(lambda s: towards(GW_B), bind=(GW_A, GATEWAY_PORT)) as a, \
            running_gateway(lambda s: towards(GW_A), bind=(GW_B, GATEWAY_PORT)) as b, \
            coap_client() as send:
        with trio.fail_after(15):
            resp = await send(aiocoap.GET, url("/s/loop" * 10, ip=GW_A), hop_limit=3)
    assert str(resp.code) == "5.08 Hop Limit Reached"
    assert a.forwarded + b.forwarded == 2 and a.hop_limited + b.hop_limited == 1


def test_outgoing_hop_limit() -> None:
    assert outgoing_hop_limit(None, 8) == 8
    assert outgoing_hop_limit(8, 8) == 7
    assert outgoing_hop_limit(2, 8) == 1
    assert outgoing_hop_limit(1, 8) is None and outgoing_hop_limit(0, 8) is None
    assert GatewayRequest("GET", ("a",)).hop_limit is None
