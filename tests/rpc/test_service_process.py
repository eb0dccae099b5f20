"""`nanomesh.sdk.service.NanoService` as a real process, started with the
runtime's environment contract, serving ZeroMQ and CoAP (services/echo) and
handing state to the peer API."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path

import pytest
import trio
from rpc_helpers import REPO, fake_peer_api, free_port, service_env, service_process, until

from nanomesh.errors import ConfigError
from nanomesh.sdk.service import NanoService, ServiceEnv, match_route, split_route
from nanomesh.transport.coapio import open_coap_client
from nanomesh.transport.rpc import zmq_call
from nanomesh.wire.service_traffic import CONTENT_JSON, Request

IP = "127.0.51.10"
ECHO = REPO / "services" / "echo" / "echo.py"
STATEFUL = Path(__file__).resolve().parent / "stateful_service.py"


async def test_echo_serves_zmq_and_coap_and_stops_on_sigterm() -> None:
    zport, cport = free_port(IP), free_port(IP, socket.SOCK_DGRAM)
    async with fake_peer_api(IP) as api:
        env = service_env("echo", "echo/3", IP, {"api": ("zmq", zport), "coap": ("coap", cport)},
                          api.address)
        async with service_process(ECHO, env, f"{IP}:{zport}") as proc:
            with trio.fail_after(20):
                z = f"{IP}:{zport}"
                assert (await zmq_call(z, Request("GET", "echo/hello%20there"), 2)).body == \
                    b"hello there"
                assert (await zmq_call(z, Request("GET", "whoami"), 2)).body == b"echo/3"
                posted = await zmq_call(z, Request("POST", "echo", b"\x00\x01", 42), 2)
                assert (posted.status, posted.body, posted.content_format) == (200, b"\x00\x01", 42)
                missing = await zmq_call(z, Request("GET", "nope"), 2)
                assert missing.status == 404
                wrong = await zmq_call(z, Request("DELETE", "whoami"), 2)
                assert wrong.status == 405
                async with open_coap_client() as coap:
                    r = await coap.call(IP, cport, (), Request("GET", "echo/coap"), 5)
                    assert (r.status, r.body) == (200, b"coap")
                    r = await coap.call(IP, cport, (), Request("GET", "health"), 5)
                    assert json.loads(r.body) == {"status": "ok"}
                    assert r.content_format == CONTENT_JSON
                    big = bytes(range(256)) * 20   # > one CoAP block: block-wise both ways
                    r = await coap.call(IP, cport, (), Request("POST", "echo", big, 42), 5)
                    assert r.body == big
                    r = await coap.call(IP, cport, (), Request("GET", "nope"), 5)
                    assert r.status == 404 and "no route" in r.error
            proc.send_signal(signal.SIGTERM)
            with trio.fail_after(15):
                assert await proc.wait() == 0


async def test_state_hand_off_and_on_stop_hook(tmp_path: Path) -> None:
    zport = free_port(IP)
    marker = tmp_path / "marker"
    async with fake_peer_api(IP) as api:
        env = service_env("keeper", "keeper/0", IP, {"api": ("zmq", zport)}, api.address,
                          MARKER=str(marker))
        z = f"{IP}:{zport}"
        async with service_process(STATEFUL, env, z) as proc:
            with trio.fail_after(20):
                assert (await zmq_call(z, Request("GET", "state"), 5)).status == 404
                assert (await zmq_call(z, Request("PUT", "state", b"blob-1"), 5)).status == 200
                assert api.states == {"keeper%2F0": b"blob-1"}
                assert (await zmq_call(z, Request("GET", "state"), 5)).body == b"blob-1"
                r = await zmq_call(z, Request("GET", "items/a%2Fb/sub/7", query="x=1"), 5)
                assert json.loads(r.body) == {"params": {"a": "a/b", "b": "7"},
                                              "args": {"x": "1"}}
            proc.send_signal(signal.SIGTERM)
            with trio.fail_after(15):
                assert await proc.wait() == 0
        await until(marker.exists)
        assert api.states["keeper%2F0"] == b"saved on stop"


def test_environment_errors_name_the_variable() -> None:
    good = {"NANOMESH_SERVICE": "s", "NANOMESH_INSTANCE": "s/0", "NANOMESH_HOST": IP,
            "NANOMESH_ENDPOINTS": '{"api": {"protocol": "zmq", "port": 5701}}'}
    assert ServiceEnv.from_environ(good).endpoints == {"api": ("zmq", 5701)}
    for change, message in [
        ({"NANOMESH_ENDPOINTS": ""}, r"\$NANOMESH_ENDPOINTS is not set"),
        ({"NANOMESH_ENDPOINTS": "{"}, "not JSON"),
        ({"NANOMESH_ENDPOINTS": '{"api": {"protocol": "mqtt", "port": 1}}'}, "protocol"),
        ({"NANOMESH_ENDPOINTS": '{"api": {"protocol": "zmq", "port": "auto"}}'}, "port"),
        ({"NANOMESH_HOST": ""}, "NANOMESH_HOST"),
    ]:
        with pytest.raises(ConfigError, match=message):
            ServiceEnv.from_environ({**good, **change})


def test_route_matching() -> None:
    assert match_route(split_route("echo/{text}"), "echo/hi") == {"text": "hi"}
    assert match_route(split_route("/echo/{text}/"), "/echo/a%20b") == {"text": "a b"}
    assert match_route(split_route("echo/{text}"), "echo") is None
    assert match_route(split_route("echo/{text}"), "echo/a/b") is None
    assert match_route(split_route("health"), "healthz") is None
    assert match_route(split_route(""), "") == {}


async def test_dispatch_turns_return_values_into_responses() -> None:
    svc = NanoService()

    @svc.route("GET", "none")
    async def none(call: object) -> None:
        return None

    @svc.route("GET", "list")
    async def listing(call: object) -> list[int]:
        return [1, 2]

    r = await svc.dispatch(Request("GET", "none"))
    assert (r.status, r.body) == (200, b"")
    r = await svc.dispatch(Request("GET", "list"))
    assert (r.body, r.content_format) == (b"[1,2]", CONTENT_JSON)
    with pytest.raises(ValueError, match="method"):
        svc.route("FETCH", "x")


async def test_a_task_runs_beside_the_endpoints_and_stops_with_the_service() -> None:
    """``@svc.task``: started once the endpoints serve (a route answers what
    the task wrote), cancelled when the service stops."""
    svc = NanoService()
    ticks: list[int] = []
    stopped = trio.Event()

    @svc.task
    async def sensor() -> None:
        try:
            while True:
                ticks.append(len(ticks))
                await trio.sleep(0.01)
        finally:
            stopped.set()

    @svc.route("GET", "ticks")
    async def get_ticks(call: object) -> dict[str, int]:
        return {"n": len(ticks)}

    zport = free_port(IP)
    async with fake_peer_api(IP) as api:
        env = ServiceEnv.from_environ(service_env("s", "s/0", IP, {"api": ("zmq", zport)},
                                                 api.address))
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                await nursery.start(svc.serve, env)
                await until(lambda: len(ticks) >= 3)
                reply = await zmq_call(f"{IP}:{zport}", Request("GET", "ticks"), 2)
                assert json.loads(reply.body)["n"] >= 3
                nursery.cancel_scope.cancel()
    assert stopped.is_set()
