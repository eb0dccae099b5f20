"""Test doubles for the gateway: a tiny aiocoap server as a nanoservice
instance, a CoAP client, a gateway running in a nursery, and endpoints.

Addresses: 127.0.50.x only (the gateway on .1, instances on .2 upwards)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import aiocoap
import aiocoap.resource
import trio
import trio_asyncio

from nanomesh.gateway.core import Gateway
from nanomesh.gateway.forward import GatewayConfig
from nanomesh.gateway.observe import DEFAULT_OBSERVE, ObserveConfig
from nanomesh.naming import Endpoint

GATEWAY_IP = "127.0.50.1"
INSTANCE_IPS = ["127.0.50.2", "127.0.50.3", "127.0.50.4"]
GATEWAY_PORT = 5683
INSTANCE_PORT = 5701
BIG = bytes(range(256)) * 256
"""64 KiB, every byte value: a misplaced or lost block would show."""


def endpoint(instance: str, ip: str, port: int = INSTANCE_PORT, protocol: str = "coap",
             health: str = "healthy", peer: str | None = None) -> Endpoint:
    return Endpoint(instance.rpartition("/")[0], instance, peer or f"peer-{ip}", ip, "api",
                    protocol, port, health, "running")


@dataclass
class InstanceLog:
    """What a fake instance received, for assertions."""

    name: str
    requests: list[dict[str, Any]] = field(default_factory=list)


class _Instance(aiocoap.resource.Resource, aiocoap.resource.PathCapable):  # type: ignore[misc]
    """Answers every path: ``big`` returns 64 KiB, ``status/4.04`` that
    code, ``seen`` how many requests it got (text: changes on every GET);
    anything else a JSON description of the request it got."""

    def __init__(self, log: InstanceLog) -> None:
        super().__init__()
        self.log = log

    async def render(self, request: Any) -> Any:
        path = tuple(request.opt.uri_path)
        cf = request.opt.content_format
        seen = {"method": str(request.code), "path": list(path),
                "query": list(request.opt.uri_query), "size": len(request.payload),
                "content_format": None if cf is None else int(cf),
                "instance": self.log.name}
        self.log.requests.append({**seen, "payload": bytes(request.payload)})
        if path == ("big",):
            return aiocoap.Message(code=aiocoap.CONTENT, payload=BIG)
        if path == ("seen",):
            return aiocoap.Message(code=aiocoap.CONTENT, content_format=0,
                                   payload=str(len(self.log.requests)).encode())
        if path and path[0] == "echo":
            return aiocoap.Message(code=aiocoap.CHANGED, payload=bytes(request.payload),
                                   content_format=42)
        if len(path) == 2 and path[0] == "status":
            klass, detail = path[1].split(".")
            return aiocoap.Message(code=aiocoap.numbers.codes.Code(
                int(klass) << 5 | int(detail)), payload=b"as asked")
        code = aiocoap.CONTENT if str(request.code) == "GET" else aiocoap.CHANGED
        return aiocoap.Message(code=code, payload=json.dumps(seen).encode(), content_format=50)


async def serve_instance(ip: str, port: int, log: InstanceLog, *,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                         ) -> None:
    async with trio_asyncio.open_loop():
        ctx = await trio_asyncio.aio_as_trio(aiocoap.Context.create_server_context)(
            _Instance(log), bind=(ip, port), transports=["udp6"])
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio_asyncio.aio_as_trio(ctx.shutdown)()


Send = Callable[..., Awaitable[Any]]


@contextlib.asynccontextmanager
async def coap_client() -> AsyncIterator[Send]:
    """``await send(code, url, payload=b"", **options)`` -> the aiocoap response."""
    async with trio_asyncio.open_loop():
        ctx = await trio_asyncio.aio_as_trio(aiocoap.Context.create_client_context)(
            transports=["udp6"])

        async def _request(message: Any) -> Any:
            return await ctx.request(message).response

        async def send(code: Any, url: str, payload: bytes = b"", **options: Any) -> Any:
            message = aiocoap.Message(code=code, uri=url, payload=payload, **options)
            with trio.fail_after(30):
                return await trio_asyncio.aio_as_trio(_request)(message)

        try:
            yield send
        finally:
            with trio.CancelScope(shield=True):
                await trio_asyncio.aio_as_trio(ctx.shutdown)()


@contextlib.asynccontextmanager
async def running_gateway(resolver: Callable[[str], list[Endpoint]], *,
                          services: Collection[str] | None = None,
                          config: GatewayConfig | None = None,
                          observe: ObserveConfig = DEFAULT_OBSERVE,
                          bind: tuple[str, int] = (GATEWAY_IP, GATEWAY_PORT)
                          ) -> AsyncIterator[Gateway]:
    from nanomesh.gateway.coap import serve_coap_gateway

    async with trio.open_nursery() as nursery:
        gateway: Gateway = await nursery.start(lambda task_status: serve_coap_gateway(
            bind, resolver, services=(lambda: services) if services is not None else None,
            config=config or GatewayConfig(), observe=observe, task_status=task_status))
        yield gateway
        nursery.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def instances(*ips: str, port: int = INSTANCE_PORT) -> AsyncIterator[list[InstanceLog]]:
    logs = [InstanceLog(f"i{n}") for n in range(len(ips))]
    async with trio.open_nursery() as nursery:
        for ip, log in zip(ips, logs, strict=True):
            await nursery.start(serve_instance, ip, port, log)
        yield logs
        nursery.cancel_scope.cancel()


def url(path: str, ip: str = GATEWAY_IP, port: int = GATEWAY_PORT) -> str:
    return f"coap://{ip}:{port}{path}"
