"""Health checks: the pure state machine (table tests), the CoAP bytes, and the
probes against real servers on loopback."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys

import pytest
import trio
from runtime_helpers import COAP_RESPONDER

from nanomesh.errors import RemoteProtocolError
from nanomesh.runtime.health import (
    ACK,
    CON,
    RST,
    Health,
    Target,
    begin,
    coap_get,
    coap_parse,
    coap_ping,
    observe,
    probe,
)
from nanomesh.runtime.instance_spec import START_POLL, HealthSpec
from nanomesh.wire.service_traffic import Request, Response

SPEC = HealthSpec(check="tcp", interval=5.0, retries=3, start_period=30.0)
T0 = 1000.0


def run(spec: HealthSpec, results: list[tuple[float, str | None]]) -> list[Health]:
    """Feed (time, error) check results through the machine from ``begin(T0)``."""
    state = begin(T0)
    out = []
    for at, error in results:
        state = observe(spec, state, error, T0 + at)
        out.append(state)
    return out


@pytest.mark.parametrize(("results", "state", "next_in", "failures", "give_up"), [
    # starting: failures poll fast and do not count against retries
    ([(0.0, "refused")], "starting", START_POLL, 1, False),
    ([(0.0, "refused"), (0.02, "refused"), (0.04, "refused"), (0.06, "refused")],
     "starting", START_POLL, 4, False),
    # the first success: healthy, then checked every interval
    ([(0.0, "refused"), (0.02, None)], "healthy", 5.0, 0, False),
    # never passed within start_period: give up
    ([(0.0, "refused"), (30.0, "refused")], "unhealthy", None, 2, True),
    # healthy: failures count; below retries it stays healthy
    ([(0.0, None), (5.0, "timeout"), (10.0, "timeout")], "healthy", 5.0, 2, False),
    # a success resets the count
    ([(0.0, None), (5.0, "x"), (10.0, "x"), (15.0, None), (20.0, "x"), (25.0, "x")],
     "healthy", 5.0, 2, False),
    # retries consecutive failures: unhealthy, give up
    ([(0.0, None), (5.0, "x"), (10.0, "x"), (15.0, "x")], "unhealthy", None, 3, True),
])
def test_the_health_state_machine(results: list[tuple[float, str | None]], state: str,
                                  next_in: float | None, failures: int, give_up: bool) -> None:
    final = run(SPEC, results)[-1]
    assert (final.state, final.failures, final.give_up) == (state, failures, give_up)
    if next_in is not None:
        assert final.next_check == pytest.approx(T0 + results[-1][0] + next_in)


def test_begin_checks_at_once_and_give_up_explains() -> None:
    assert begin(T0) == Health("starting", started=T0, next_check=T0)
    never = run(HealthSpec(check="tcp", start_period=1.0), [(0.0, "refused"), (1.5, "refused")])
    assert never[-1].reason == ("unhealthy: no successful check within 1 s of the start "
                                "(last: refused)")
    broke = run(HealthSpec(check="tcp", retries=1), [(0.0, None), (5.0, "tcp x: refused")])
    assert broke[-1].reason == "unhealthy: tcp x: refused"
    # once given up, further results change nothing
    assert observe(SPEC, broke[-1], None, T0 + 99) == broke[-1]


# -- CoAP bytes ---------------------------------------------------------------------------


def test_coap_ping_is_an_empty_confirmable_message() -> None:
    assert coap_ping(0x1234) == bytes([0x40, 0x00, 0x12, 0x34])


def test_coap_get_encodes_token_and_uri_path_options() -> None:
    msg = coap_get(7, b"\xaa\xbb", "health/deep-check-with-a-long-segment")
    assert msg[:6] == bytes([0x42, 0x01, 0x00, 0x07, 0xAA, 0xBB])
    # Uri-Path (11) "health": delta 11, length 6
    assert msg[6] == 0xB6 and msg[7:13] == b"health"
    # next segment: delta 0, length 30 -> nibble 13, extended byte 30 - 13
    assert len(b"deep-check-with-a-long-segment") == 30
    assert msg[13] == 0x0D and msg[14] == 30 - 13
    assert msg[15:] == b"deep-check-with-a-long-segment"


@pytest.mark.parametrize("garbage", [b"", b"\x40\x00", b"\x80\x00\x00\x01",
                                     b"\x49\x00\x00\x01", b"\x44\x00\x00\x01ab"])
def test_coap_parse_rejects_garbage(garbage: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        coap_parse(garbage)


def test_coap_parse_reads_the_header() -> None:
    header = coap_parse(bytes([0x62, 0x45, 0x00, 0x09, 0x01, 0x02, 0xFF]) + b"ok")
    assert (header.type, header.code_text, header.message_id, header.token) == (
        ACK, "2.05", 9, b"\x01\x02")


# -- probes against real servers ----------------------------------------------------------

HOST = "127.0.0.1"


async def test_tcp_probe() -> None:
    listener = (await trio.open_tcp_listeners(0, host=HOST))[0]
    port = listener.socket.getsockname()[1]
    async with listener:
        assert await probe(HealthSpec(check="tcp"), Target(HOST, port)) is None
    error = await probe(HealthSpec(check="tcp"), Target(HOST, port))
    assert error is not None and error.startswith(f"tcp {HOST}:{port}: ")


async def _http_server(status: int, task_status: trio.TaskStatus[int]) -> None:
    listener = (await trio.open_tcp_listeners(0, host=HOST))[0]
    task_status.started(listener.socket.getsockname()[1])

    async def answer(stream: trio.SocketStream) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            request += await stream.receive_some(1024)
        assert request.startswith(b"GET /healthz HTTP/1.1\r\n")
        await stream.send_all(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode())
        await stream.aclose()

    await trio.serve_listeners(answer, [listener])


@pytest.mark.parametrize(("status", "ok"), [(200, True), (204, True), (503, False)])
async def test_http_probe(status: int, ok: bool) -> None:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(_http_server, status)
        error = await probe(HealthSpec(check="http", path="/healthz"), Target(HOST, port))
        nursery.cancel_scope.cancel()
    assert (error is None) == ok
    if not ok:
        assert error == "http GET /healthz: HTTP/1.1 503 X"


async def test_coap_probes_against_a_stdlib_responder() -> None:
    server = await trio.lowlevel.open_process(
        [sys.executable, "-c", COAP_RESPONDER, HOST, "0"], stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None
        with trio.fail_after(15):
            port = int((await server.stdout.receive_some(100)).decode())
        target = Target(HOST, port)
        assert await probe(HealthSpec(check="coap"), target) is None
        assert await probe(HealthSpec(check="coap", path="/health"), target) is None
        assert await probe(HealthSpec(check="coap", path="missing"), target) == (
            "coap GET /missing: 4.04")
    finally:
        server.kill()
        await server.wait()


async def test_coap_probe_without_an_answer_times_out() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind((HOST, 0))
        port = silent.getsockname()[1]
        error = await probe(HealthSpec(check="coap", timeout=0.2), Target(HOST, port))
        assert error == f"coap {HOST}:{port}: no answer within 0.2 s"
        data, _ = silent.recvfrom(100)  # and it was a ping, sent twice
        assert data[0] == CON << 4 | 0x40 and data[1] == 0
        assert struct.unpack("!H", silent.recvfrom(100)[0][2:4]) == struct.unpack(
            "!H", data[2:4])


async def test_coap_ping_answered_wrongly_fails() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind((HOST, 0))
        server.setblocking(False)
        port = server.getsockname()[1]

        async def answer_with_ack() -> None:
            await trio.lowlevel.wait_readable(server)
            data, peer = server.recvfrom(100)
            server.sendto(bytes([0x60, 0x00]) + data[2:4], peer)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer_with_ack)
            error = await probe(HealthSpec(check="coap"), Target(HOST, port))
    assert error == "coap ping: expected a reset, got type 2 code 0.00"
    assert RST == 3


async def test_zmq_probe() -> None:
    from nanomesh.transport.rpc import close_pooled_connections, serve_rpc

    async def handler(request: Request) -> Response:
        return Response(200 if request.path == "health" else 404, error="nope")

    try:
        async with trio.open_nursery() as nursery:
            address = await nursery.start(serve_rpc, f"{HOST}:0", handler)
            port = int(address.rpartition(":")[2])
            assert await probe(HealthSpec(check="zmq", path="/health"), Target(HOST, port)) \
                is None
            assert await probe(HealthSpec(check="zmq", path="other"), Target(HOST, port)) == (
                "zmq GET /other: 404 nope")
            nursery.cancel_scope.cancel()
    finally:
        close_pooled_connections()


async def test_exec_probe_runs_in_the_instance_folder_and_environment(tmp_path: object) -> None:
    spec = HealthSpec(check="exec", command=("sh", "-c", 'test "$(pwd)" = /tmp && '
                                                           'test "$COLOUR" = green'))
    assert await probe(spec, Target(HOST, cwd="/tmp", env={"COLOUR": "green",
                                                            "PATH": "/usr/bin:/bin"})) is None
    failing = HealthSpec(check="exec", command=("sh", "-c", "echo broken; exit 3"))
    assert await probe(failing, Target(HOST)) == "exec 'sh' exited with 3: broken"
    slow = HealthSpec(check="exec", command=("sleep", "10"), timeout=0.2)
    assert await probe(slow, Target(HOST)) == "exec 'sleep': no answer within 0.2 s"
    missing = HealthSpec(check="exec", command=("no-such-probe-xyz",))
    error = await probe(missing, Target(HOST))
    assert error is not None and "no-such-probe-xyz" in error
