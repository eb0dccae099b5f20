"""Services started on first use (`nanomesh.daemon.on_demand`): the sockets
are bound first, nothing starts until one is used, and the datagram or
connection that woke the service is the first it serves (real loopback
sockets on 127.0.12.80; the daemon's use is in
tests/integration/test_gateway_daemon.py)."""

from __future__ import annotations

import functools
import socket

import aiocoap
import pytest
import trio
import trio.testing

from nanomesh.daemon.on_demand import (
    bind_udp_dual_stack,
    listen_tcp,
    serve_on_first_use,
    wait_first_use,
)
from nanomesh.errors import ConfigError
from nanomesh.gateway.coap import serve_coap_gateway
from nanomesh.transport.rpc import serve_rpc, zmq_call
from nanomesh.wire.service_traffic import Request, Response

IP = "127.0.12.80"


def coap_get(path: str, mid: int) -> bytes:
    """A confirmable GET, encoded by hand (no aiocoap client context)."""
    message = aiocoap.Message(code=aiocoap.GET, uri_path=tuple(path.split("/")))
    message.mtype, message.mid, message.token = aiocoap.CON, mid, b"t1"
    return bytes(message.encode())


async def test_nothing_starts_until_a_socket_is_used(nursery: trio.Nursery) -> None:
    udp = bind_udp_dual_stack((IP, 0), "test (UDP)")
    tcp = listen_tcp((IP, 0), "test (TCP)")
    started = trio.Event()

    async def serve() -> None:
        started.set()

    with udp, tcp:
        await nursery.start(serve_on_first_use, "test", [udp, tcp], serve)
        await trio.testing.wait_all_tasks_blocked()
        assert not started.is_set()
        with socket.create_connection(tcp.getsockname()[:2]):   # a connection in the backlog
            with trio.fail_after(5):
                await started.wait()


async def test_a_datagram_wakes_the_waiter_and_is_not_consumed() -> None:
    with bind_udp_dual_stack((IP, 0), "test (UDP)") as udp, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.sendto(b"hello", (IP, udp.getsockname()[1]))
        with trio.fail_after(5):
            await wait_first_use([udp])
        assert udp.recvfrom(100)[0] == b"hello"


async def test_the_gateway_answers_the_request_that_started_it(nursery: trio.Nursery) -> None:
    """A CoAP request sent before the gateway existed is answered once it
    starts on the handed-over socket: the first request is not lost."""
    udp = bind_udp_dual_stack((IP, 0), "the CoAP gateway (UDP)")
    port = udp.getsockname()[1]
    serve = functools.partial(serve_coap_gateway, (IP, port), lambda service: [], udp=udp)
    client = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with client:
        await client.sendto(coap_get(".well-known/core", 4711), (IP, port))
        await nursery.start(serve_on_first_use, "CoAP gateway", [udp], serve)
        replies = []
        with trio.fail_after(10):
            # The ACK (empty, or piggybacking the response), then a separate
            # response if the ACK was empty.
            while not replies or str(replies[-1].code) != "2.05 Content":
                replies.append(aiocoap.Message.decode(await client.recv(2048)))
    assert replies[0].mid == 4711 and replies[0].mtype == aiocoap.ACK
    assert replies[-1].token == b"t1"


async def echo(req: Request) -> Response:
    return Response(200, req.path.encode(), 0)


async def test_zeromq_takes_over_a_listening_socket_with_its_backlog(
        nursery: trio.Nursery) -> None:
    """The call connects before any ZeroMQ socket exists; the server started
    on first use (``ZMQ_USE_FD``) answers it."""
    tcp = listen_tcp((IP, 0), "test link (TCP)")
    address = f"{IP}:{tcp.getsockname()[1]}"
    calls_before_start: list[int] = []
    answers: list[Response] = []

    async def call() -> None:
        answers.append(await zmq_call(address, Request("GET", "first"), 10))

    async def serve() -> None:
        calls_before_start.append(len(answers))
        await serve_rpc(address, echo, fd=tcp.detach())

    with trio.fail_after(15):
        async with trio.open_nursery() as calls:
            calls.start_soon(call)
            await nursery.start(serve_on_first_use, "test link", [tcp], serve)
    assert calls_before_start == [0]
    assert answers == [Response(200, b"first", 0)]


def test_a_taken_port_is_one_clear_error() -> None:
    with bind_udp_dual_stack((IP, 0), "x") as udp, listen_tcp((IP, 0), "y") as tcp:
        with pytest.raises(ConfigError, match=r"cannot listen for the CoAP gateway \(UDP\) on "
                                              r"127\.0\.12\.80:\d+: Address already in use"):
            bind_udp_dual_stack((IP, udp.getsockname()[1]), "the CoAP gateway (UDP)")
        with pytest.raises(ConfigError, match=r"events \(XSUB\) .*in use; choose another"):
            listen_tcp((IP, tcp.getsockname()[1]), "events (XSUB)", "; choose another port")
