"""Leaves find peers by multicast (All CoAP Nodes, RFC 7252 §12.8): the
peer's responder (`nanomesh.gateway.coap.serve_leaf_discovery`) against the
firmware's `coap.discover` under MicroPython, on loopback multicast."""

from __future__ import annotations

import random
import socket

import aiocoap
import pytest
import trio

from nanomesh.gateway.coap import discovery_answer, serve_leaf_discovery
from nanomesh.testing.leaf import firmware_dir, micropython

LINK = b'<coap://127.0.16.20:5783/leaf>;rt="nanomesh.leaf"'


def request(uri_tail: str, code: aiocoap.numbers.codes.Code = aiocoap.GET) -> bytes:
    m = aiocoap.Message(code=code, uri=f"coap://224.0.1.187/{uri_tail}")
    m.mtype, m.mid, m.token = aiocoap.NON, 7, b"tk"
    return bytes(m.encode())


def test_only_a_get_of_well_known_core_for_leaves_is_answered() -> None:
    answer = discovery_answer(request(".well-known/core?rt=nanomesh.leaf"), LINK)
    assert answer is not None
    msg = aiocoap.Message.decode(answer)
    assert (str(msg.code), msg.token, bytes(msg.payload)) == ("2.05 Content", b"tk", LINK)
    assert discovery_answer(request(".well-known/core"), LINK) is not None
    assert discovery_answer(request(".well-known/core?rt=core.rd"), LINK) is None
    assert discovery_answer(request("leaf"), LINK) is None
    assert discovery_answer(request(".well-known/core", aiocoap.POST), LINK) is None


def test_garbage_on_the_group_gets_no_answer_and_no_exception() -> None:
    rng = random.Random(3)
    print("seed 3")
    valid = request(".well-known/core?rt=nanomesh.leaf")
    for _ in range(2000):
        data = bytearray(valid if rng.random() < 0.5 else rng.randbytes(rng.randrange(40)))
        for _ in range(rng.randrange(4)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        discovery_answer(bytes(data), LINK)  # returns or None; never raises


def _multicast_on_loopback() -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("224.0.1.187", 0))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                     socket.inet_aton("224.0.1.187") + socket.inet_aton("127.0.16.20"))
        return True
    except OSError:
        return False
    finally:
        s.close()


@pytest.mark.skipif(not _multicast_on_loopback(), reason="no multicast on loopback here")
async def test_the_firmware_discovers_a_peer_by_multicast() -> None:
    fw = firmware_dir()
    script = ("import socket, coap\n"
              "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
              "s.bind(socket.getaddrinfo('127.0.16.21', 0)[0][-1])\n"
              "s.setsockopt(0, 32, socket.inet_pton(socket.AF_INET, '127.0.16.21'))\n"
              "print(coap.discover(s, 1.0, port=5783))\n")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_leaf_discovery, ("127.0.16.20", 5783))
        await trio.sleep(0.2)
        result = await trio.run_process(
            [micropython(), "-c", script], capture_stdout=True, capture_stderr=True,
            env={"MICROPYPATH": f"{fw / 'unix'}:{fw}"})
        nursery.cancel_scope.cancel()
    assert result.stdout.decode().strip() == "['127.0.16.20:5783']", result.stderr
