"""The peer daemon runs the CoAP gateway and the resolve endpoint (a real
peer process on 127.0.10.x; the gateway's forwarding itself is tested in
tests/gateway/). The gateway starts on its first datagram
(`nanomesh.daemon.on_demand`): until then the peer has not loaded its
libraries, and the datagram that starts it is answered."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiocoap
import trio
import trio_asyncio
from mesh_harness import Cluster

from nanomesh.config import DEFAULT_COAP_PORT


async def coap_get(ip: str, path: str) -> Any:
    async with trio_asyncio.open_loop():
        ctx = await trio_asyncio.aio_as_trio(aiocoap.Context.create_client_context)(
            transports=["udp6"])

        async def request() -> Any:
            return await ctx.request(aiocoap.Message(
                code=aiocoap.GET, uri=f"coap://{ip}:{DEFAULT_COAP_PORT}{path}")).response

        try:
            with trio.fail_after(10):
                return await trio_asyncio.aio_as_trio(request)()
        finally:
            with trio.CancelScope(shield=True):
                await trio_asyncio.aio_as_trio(ctx.shutdown)()


def http_status(api: str, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://{api}{path}", timeout=5) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


async def test_peer_serves_coap_gateway_and_resolve(cluster: Cluster) -> None:
    peer = cluster.add("gw")
    cluster.wait(peer.health, what="the peer's API")
    maps = Path(f"/proc/{peer.pid}/maps")
    assert "libzmq" not in maps.read_text()       # no gateway (nor event relay) yet
    wk = await coap_get(peer.ip, "/.well-known/core")   # the first request: answered
    assert "libzmq" in maps.read_text()           # the gateway and its link run now
    assert str(wk.code) == "2.05 Content" and int(wk.opt.content_format) == 40
    missing = await coap_get(peer.ip, "/s/nosuch/x")
    assert str(missing.code) == "4.04 Not Found"
    assert b"no service named 'nosuch'" in missing.payload
    # Until it knows the committed state (a leader), a peer cannot call a
    # name unknown: 503 "catching up"; then 404.
    cluster.wait(lambda: peer.get("/v1/status").get("leader"), what="a leader")
    status, body = http_status(peer.api, "/v1/resolve/nosuch")
    assert status == 404 and "no service named 'nosuch'" in body["error"]
    status, body = http_status(peer.api, "/v1/resolve/nosuch?protocol=gopher")
    assert status == 400 and "protocol must be one of coap, zmq, http" in body["error"]
    assert peer.running


def test_peer_with_coap_port_taken_fails_cleanly(cluster: Cluster, tmp_path: Any) -> None:
    """A second peer on the same IP (free gossip and API ports) whose CoAP
    port is taken exits with one clear line, as for the other ports."""
    import subprocess
    import sys
    running = cluster.add("busy")
    cluster.wait(running.health, what="the peer's API")
    result = subprocess.run(
        [sys.executable, "-m", "nanomesh", "peer", "run", "--bind", f"{running.ip}:7960",
         "--api-port", "7961", "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode != 0
    assert (f"cannot listen for the CoAP gateway (UDP) on {running.ip}:5683: "
            "Address already in use") in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
