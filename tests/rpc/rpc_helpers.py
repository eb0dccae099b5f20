"""Helpers for the service-traffic tests: free ports, a fake peer API, and
nanoservice processes started with the runtime's environment contract."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from nanomesh.transport.httpio import serve_http_calls
from nanomesh.transport.rpc import RpcError, zmq_call
from nanomesh.wire.service_traffic import CONTENT_JSON, Request, Response

REPO = Path(__file__).resolve().parents[2]


def free_port(ip: str, kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


def endpoint_json(service: str, instance: str, host: str, name: str, protocol: str, port: int,
                  health: str = "healthy", state: str = "running") -> dict[str, Any]:
    return {"service": service, "instance": instance, "peer": f"peer-{host}", "host": host,
            "name": name, "protocol": protocol, "port": port, "health": health,
            "state": state}


@dataclass
class FakePeerApi:
    """The parts of a peer's HTTP API that clients and services use:
    ``/v1/resolve/<name>``, ``/v1/members`` and ``/v1/instances/<iid>/state``."""

    services: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    members: list[dict[str, Any]] = field(default_factory=list)
    states: dict[str, bytes] = field(default_factory=dict)
    resolves: int = 0
    address: str = ""
    resolve_status: int | None = None
    """Answer every resolve with this status (a peer that restarts: 503)."""

    async def handle(self, req: Request) -> Response:
        parts = req.path.split("/")
        if req.method == "GET" and parts[:2] == ["v1", "resolve"] and len(parts) == 3:
            self.resolves += 1
            if self.resolve_status is not None:
                return Response(self.resolve_status, error="refused by the test")
            if parts[2] not in self.services:
                return Response(404, error=f"no service {parts[2]}")
            return _json({"service": parts[2], "endpoints": self.services[parts[2]]})
        if req.method == "GET" and req.path == "v1/members":
            return _json(self.members)
        if parts[:2] == ["v1", "instances"] and len(parts) == 4 and parts[3] == "state":
            if req.method == "PUT":
                self.states[parts[2]] = req.body
                return Response(204)
            if parts[2] in self.states:
                return Response(200, self.states[parts[2]], 42)
            return Response(404, error="no state")
        return Response(404, error="no such endpoint")


def _json(doc: Any) -> Response:
    return Response(200, json.dumps(doc).encode(), CONTENT_JSON)


@contextlib.asynccontextmanager
async def fake_peer_api(ip: str) -> AsyncIterator[FakePeerApi]:
    api = FakePeerApi()
    port = free_port(ip)
    api.address = f"{ip}:{port}"
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_http_calls, ip, port, api.handle)
        yield api
        nursery.cancel_scope.cancel()


def service_env(service: str, instance: str, host: str, endpoints: dict[str, tuple[str, int]],
                peer_api: str, **extra: str) -> dict[str, str]:
    """The environment the runtime gives an instance (see nanomesh.sdk.service)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NANOMESH_")}
    env.update({
        "NANOMESH_SERVICE": service, "NANOMESH_INSTANCE": instance, "NANOMESH_HOST": host,
        "NANOMESH_ENDPOINTS": json.dumps({n: {"protocol": p, "port": port}
                                          for n, (p, port) in endpoints.items()}),
        "NANOMESH_PEER_API": peer_api, "NANOMESH_INSTANCE_TOKEN": "test-token",
        "PYTHONPATH": str(REPO),
    })
    for name, (_, port) in endpoints.items():
        env["NANOMESH_PORT_" + "".join(c if c.isalnum() else "_" for c in name.upper())] = \
            str(port)
    env["NANOMESH_PORT"] = str(next(iter(endpoints.values()))[1])
    env.update(extra)
    return env


@contextlib.asynccontextmanager
async def service_process(script: Path, env: dict[str, str], health_address: str
                          ) -> AsyncIterator[trio.Process]:
    """Start a nanoservice process and wait until its ZeroMQ ``health`` answers."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-u", str(script)], env=env, cwd=str(script.parent),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        await wait_healthy(health_address, proc)
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            await proc.wait()
        if proc.stderr is not None:
            await proc.stderr.aclose()


async def wait_healthy(address: str, proc: trio.Process, limit: float = 20.0) -> None:
    with trio.fail_after(limit):
        while True:
            if proc.returncode is not None:
                raise AssertionError(f"service exited with {proc.returncode}")
            with contextlib.suppress(RpcError):
                if (await zmq_call(address, Request("GET", "health"), 0.5)).status == 200:
                    return
            await trio.sleep(0.05)


async def until(predicate: Callable[[], bool], limit: float = 10.0) -> None:
    with trio.fail_after(limit):
        while not predicate():
            await trio.sleep(0.02)
