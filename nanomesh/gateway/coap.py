"""The CoAP gateway's shell: aiocoap hosted in trio through trio-asyncio.

This is the only module that imports aiocoap (it has no type hints, hence the
few ``Any``). One aiocoap server context, bound to the peer's IP and the
gateway port, both serves clients and sends the forwarded requests to CoAP
instances (so instances see the gateway's address).

Block-wise transfer (RFC 7959) is aiocoap's, on both sides:
- towards clients, `_GatewayResource` asks for assembly, so aiocoap's
  `Block1Spool` reassembles a large request body before we see it (we refuse
  one over ``max_payload`` at its first block past the limit), and its
  `Block2Cache` renders a large response once and serves its blocks from the
  cache (the instance is not asked again per block);
- towards CoAP instances, ``Context.request`` splits a large body into Block1
  blocks and fetches every Block2 block of a large response.

Observe (RFC 7641): a GET with Observe=0 is answered, and then, if the
gateway admits the observation (`nanomesh.gateway.observe`), followed by
notifications from `Gateway.watch`, sent confirmable with increasing Observe
numbers. aiocoap ends the pipe, which cancels the watch, when the client
deregisters (an RST to a notification, a new request on the same token such
as a GET with Observe=1) or stops acknowledging.

Garbage datagrams are dropped by aiocoap's message parser, or, where that
parser itself fails, by the loop's exception handler (`_contain`); the test
suite sends random and mutated datagrams and checks the gateway still answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import socket
from collections.abc import Callable
from typing import Any

import aiocoap  # type: ignore[import-untyped,unused-ignore]
import aiocoap.error  # type: ignore[import-untyped,unused-ignore]
import aiocoap.resource  # type: ignore[import-untyped,unused-ignore]
import trio
import trio_asyncio  # type: ignore[import-untyped,unused-ignore]

from nanomesh.config import DEFAULT_COAP_PORT, host_port
from nanomesh.errors import ConfigError
from nanomesh.gateway.core import LINK, Gateway, Resolver, Services, Visibility
from nanomesh.gateway.forward import (
    DEFAULT_GATEWAY,
    METHOD_CODES,
    METHODS,
    GatewayConfig,
    GatewayRequest,
    GatewayResponse,
)
from nanomesh.gateway.leaf_core import LeafEndpoint
from nanomesh.gateway.link import link_upstream, serve_gateway_link
from nanomesh.gateway.observe import DEFAULT_OBSERVE, ObserveConfig
from nanomesh.gateway.upstream import (
    Upstream,
    UpstreamError,
    bound_http_upstream,
    keyed_zmq_upstream,
)
from nanomesh.naming import Endpoint
from nanomesh.security.servicekeys import ServiceKeys
from nanomesh.wire import Address

__all__ = ["DEFAULT_COAP_PORT", "check_gateway_port", "serve_coap_gateway"]

log = logging.getLogger("nanomesh.gateway")


async def serve_coap_gateway(bind: Address, resolver: Resolver, *,
                             services: Services | None = None,
                             config: GatewayConfig = DEFAULT_GATEWAY,
                             visibility: Visibility | None = None, me: str | None = None,
                             keys: ServiceKeys | None = None,
                             observe: ObserveConfig = DEFAULT_OBSERVE,
                             udp: socket.socket | None = None, link_fd: int | None = None,
                             leaves: LeafEndpoint | None = None,
                             leaves_changed: Callable[[], None] = lambda: None,
                             task_status: trio.TaskStatus[Gateway] = trio.TASK_STATUS_IGNORED
                             ) -> None:
    """Serve ``coap://IP:PORT/s/<service>/<path>`` on `bind` (UDP) until
    cancelled, forwarding to an instance that `resolver` names. Reports the
    `Gateway` (its counters) through ``task_status`` once it listens; raises
    ConfigError if it cannot listen (address not local, port taken).

    With `keys` (a mesh with a cluster key) the gateway also serves its link
    on TCP `bind` (`nanomesh.gateway.link`) and enforces `visibility`: plain
    CoAP reaches public services only. Without keys nothing can be
    authenticated and every service is public. `me` names this peer.

    With `leaves` the gateway takes microcontroller leaves at ``/leaf/...``
    (`nanomesh.gateway.leaf_core`), marks silent ones gone, and calls
    `leaves_changed` when the devices of the leaves that are up change.

    `udp` and `link_fd`: sockets the caller already bound on `bind` (UDP, a
    dual-stack ``AF_INET6`` one as aiocoap's udp6 transport binds, and TCP
    listening), taken over with whatever waits in them: the daemon binds them
    at start and starts the gateway on their first use
    (`nanomesh.daemon.on_demand`)."""
    if udp is None:
        check_gateway_port(bind)
    gateway = Gateway(resolver, {}, services=services, config=config,
                      visibility=visibility if keys is not None else None, me=me,
                      observe=observe, leaves=leaves, leaves_changed=leaves_changed)
    resource = _GatewayResource(gateway, config.max_payload)
    async with trio_asyncio.open_loop() as loop:
        # trio-asyncio's default handler re-raises an error in an asyncio
        # callback into its nursery, which would take the gateway (and the
        # peer) down. aiocoap 0.4.17 lets a datagram with a non-UTF-8
        # Uri-Path escape its parser that way; log and count instead.
        loop.set_exception_handler(lambda _loop, ctx: _contain(gateway, ctx))
        try:
            context = await trio_asyncio.aio_as_trio(_server_context)(resource, bind, udp)
        except (OSError, aiocoap.error.Error) as exc:
            raise ConfigError(f"cannot listen for the CoAP gateway (UDP) on "
                              f"{host_port(*bind)}: {getattr(exc, 'strerror', None) or exc}"
                              ) from None
        gateway.upstreams.update({"coap": _coap_upstream(context),
                                  "zmq": keyed_zmq_upstream(keys),
                                  "http": bound_http_upstream(bind[0]),
                                  LINK: link_upstream(bind[1], keys)})
        try:
            async with trio.open_nursery() as nursery:
                if keys is not None:
                    await nursery.start(functools.partial(serve_gateway_link, fd=link_fd),
                                        bind, gateway, keys)
                if leaves is not None:
                    nursery.start_soon(gateway.expire_leaves)
                    nursery.start_soon(serve_leaf_discovery, bind)
                log.info("CoAP gateway on coap://%s%s", host_port(*bind),
                         f", members' link on tcp://{host_port(*bind)} (CURVE)"
                         if keys is not None else " (no cluster key: every service public)")
                task_status.started(gateway)
                await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await trio_asyncio.aio_as_trio(context.shutdown)()


async def _server_context(resource: Any, bind: Address, udp: socket.socket | None) -> Any:
    """aiocoap's server context on `bind`, or on the bound socket `udp`.

    aiocoap 0.4 has no public way to serve on a socket it did not create:
    this builds what ``Context.create_server_context(transports=["udp6"])``
    builds, with `udp` in place of the socket its udp6 transport would bind
    (the same options: dual-stack, IPv6 packet info). Checked against the
    installed aiocoap by tests/gateway/test_gateway_on_demand.py."""
    if udp is None:
        return await aiocoap.Context.create_server_context(resource, bind=bind,
                                                           transports=["udp6"])
    from aiocoap.transports.udp6 import (  # type: ignore[import-untyped,unused-ignore]
        MessageInterfaceUDP6,
    )
    loop = asyncio.get_running_loop()
    context = aiocoap.Context(loop=loop, serversite=resource, loggername="coap-server")
    await context._append_tokenmanaged_messagemanaged_transport(
        lambda mman: MessageInterfaceUDP6._create_transport_endpoint(udp, mman, context.log,
                                                                     loop))
    return context


def _contain(gateway: Gateway, context: dict[str, Any]) -> None:
    gateway.dropped += 1
    if gateway.dropped in (1, 100, 10_000):
        log.warning("CoAP gateway: dropped an input aiocoap failed on (%d so far): %s",
                    gateway.dropped, context.get("message"), exc_info=context.get("exception"))


def check_gateway_port(bind: Address) -> None:
    """ConfigError if `bind` cannot be listened on. Called by
    `serve_coap_gateway`, and by a caller that wants the error before it
    starts anything. Needed because aiocoap binds with SO_REUSEPORT: a second
    gateway on the same address would silently share the port (and get half
    the requests); a plain bind first turns a taken port into a clear error."""
    family = socket.AF_INET6 if ":" in bind[0] else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_DGRAM)
    try:
        probe.bind(bind)
    except OSError as exc:
        raise ConfigError(f"cannot listen for the CoAP gateway (UDP) on {host_port(*bind)}: "
                          f"{exc.strerror or exc}") from None
    finally:
        probe.close()


# ------------------------------------------------------------ leaf discovery


ALL_COAP_NODES = "224.0.1.187"
"""IPv4 "All CoAP Nodes" (RFC 7252 §12.8), where leaves look for peers."""
LEAF_RESOURCE_TYPE = "nanomesh.leaf"
DISCOVERY_LEISURE = 0.2
"""Seconds over which a peer spreads its answer to a multicast request
(a random delay, RFC 7252 §8.2's Leisure; 5 s there, for large groups): a
handful of peers in one room need little, and the leaf waits 1 s."""
DISCOVERY_ANSWERS_PER_SECOND = 20
"""Answers at most, whatever arrives: a multicast flood on the LAN makes a
peer send at most this many small datagrams."""


async def serve_leaf_discovery(bind: Address) -> None:
    """Answer leaves' multicast ``GET /.well-known/core?rt=nanomesh.leaf`` on
    `ALL_COAP_NODES` with ``<coap://IP:PORT/leaf>;rt="nanomesh.leaf"``, sent
    unicast from our IP, until cancelled. Anything else, garbage included,
    gets no answer (RFC 7252 §8.1: no error responses to multicast). A host
    without multicast on that interface logs one warning: leaves then need
    configured peers."""
    ip, port = bind
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    reply = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # every peer on the host
        await sock.bind((ALL_COAP_NODES, port))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                        socket.inet_aton(ALL_COAP_NODES) + socket.inet_aton(ip))
        await reply.bind((ip, 0))
    except OSError as exc:
        log.warning("no leaf discovery on %s (leaves need configured peers): %s",
                    ALL_COAP_NODES, exc.strerror or exc)
        sock.close()
        reply.close()
        return
    link = f'<coap://{host_port(ip, port)}/leaf>;rt="{LEAF_RESOURCE_TYPE}"'.encode()
    window, answered = trio.current_time(), 0
    with sock, reply:
        async with trio.open_nursery() as nursery:
            while True:
                data, src = await sock.recvfrom(2048)
                answer = discovery_answer(data, link)
                if answer is None:
                    continue
                if trio.current_time() - window >= 1.0:
                    window, answered = trio.current_time(), 0
                if answered >= DISCOVERY_ANSWERS_PER_SECOND:
                    continue
                answered += 1
                nursery.start_soon(_answer_later, reply, answer, src)


async def _answer_later(sock: trio.socket.SocketType, answer: bytes, to: Any) -> None:
    await trio.sleep(random.uniform(0, DISCOVERY_LEISURE))
    # The leaf went away, or its address is unreachable: it will ask again.
    with contextlib.suppress(OSError):
        await sock.sendto(answer, to)


def discovery_answer(data: bytes, link: bytes) -> bytes | None:
    """The answer to a datagram on the discovery group, or None (garbage,
    not a GET of /.well-known/core, a query for another resource type)."""
    try:
        request = aiocoap.Message.decode(data)
        path, query = tuple(request.opt.uri_path), tuple(request.opt.uri_query)
    except Exception:  # aiocoap raises several kinds on garbage; none may stop us
        return None
    if request.code != aiocoap.GET or path != (".well-known", "core") or request.mtype not in (
            aiocoap.NON, aiocoap.CON):
        return None
    if any(q.startswith("rt=") and q != f"rt={LEAF_RESOURCE_TYPE}" for q in query):
        return None
    answer = aiocoap.Message(code=aiocoap.CONTENT, payload=link)
    answer.mtype = aiocoap.NON
    answer.token = request.token
    answer.mid = random.getrandbits(16)
    answer.opt.content_format = 40  # application/link-format
    return bytes(answer.encode())


# ------------------------------------------------------------ server side


class _TooLarge(aiocoap.error.ConstructionRenderableError):  # type: ignore[misc,unused-ignore]
    code = aiocoap.numbers.codes.Code.REQUEST_ENTITY_TOO_LARGE
    message = "request body too large"


class _GatewayResource(aiocoap.resource.Resource, aiocoap.resource.PathCapable):  # type: ignore[misc,unused-ignore]
    """The whole URI space of the gateway as one resource (PathCapable: it
    gets the full Uri-Path). Rendering hops into trio for `Gateway.handle`,
    an observation for `Gateway.watch`."""

    def __init__(self, gateway: Gateway, max_payload: int) -> None:
        super().__init__()
        self._gateway = gateway
        self._handle = trio_asyncio.trio_as_aio(gateway.handle)
        self._watch = trio_asyncio.trio_as_aio(gateway.watch)
        self._max_payload = max_payload

    async def render_to_pipe(self, pipe: Any) -> None:
        request = pipe.request
        block2 = request.opt.block2
        if (request.opt.observe != 0 or request.code != aiocoap.GET
                or request.opt.block1 is not None
                or (block2 is not None and block2.block_number > 0)):
            # Not the start of an observation (a later block of one is a
            # plain GET): aiocoap's path, with block-wise transfer.
            return await super().render_to_pipe(pipe)  # type: ignore[no-any-return]
        ask = gateway_request(request)
        first: GatewayResponse = await self._handle(ask)
        if self._gateway.admit_observer(first) is not None:
            if len(first.payload) > self._gateway.observe.max_payload:
                # Block-wise, through aiocoap's cache: the service is asked again.
                return await super().render_to_pipe(pipe)  # type: ignore[no-any-return]
            pipe.add_response(coap_message(first), is_last=True)
            return None
        sequence = 0

        def emit(response: GatewayResponse, last: bool) -> None:
            nonlocal sequence
            message = coap_message(response)
            if not last:
                message.opt.observe = sequence & 0xFFFFFF  # 24 bits, RFC 7641 §4.4
                sequence += 1
            if sequence > 1 or last:
                # Not the first (which may ride on the request's ACK):
                # confirmable, so an RST or silence ends the observation.
                message.mtype = aiocoap.CON
            pipe.add_response(message, is_last=last)

        try:
            await self._watch(ask, first, emit)
        finally:
            self._gateway.observer_gone()
        return None

    async def needs_blockwise_assembly(self, request: Any) -> bool:
        block1 = request.opt.block1
        if block1 is not None and block1.start + len(request.payload) > self._max_payload:
            raise _TooLarge()
        return True

    async def render(self, request: Any) -> Any:
        if int(request.code) not in METHODS:
            raise aiocoap.error.UnallowedMethod()
        if len(request.payload) > self._max_payload:
            raise _TooLarge()
        response: GatewayResponse = await self._handle(gateway_request(request))
        return coap_message(response)

    def get_link_description(self) -> None:
        return None  # /.well-known/core is ours to answer, not aiocoap's


def gateway_request(message: Any) -> GatewayRequest:
    """An incoming aiocoap request (of a method in `METHODS`) as a `GatewayRequest`."""
    return GatewayRequest(
        method=METHODS[int(message.code)],
        path=tuple(message.opt.uri_path), query=tuple(message.opt.uri_query),
        payload=bytes(message.payload), content_format=_int_or_none(message.opt.content_format),
        accept=_int_or_none(message.opt.accept), hop_limit=_int_or_none(message.opt.hop_limit),
        options=tuple(int(opt.number) for opt in message.opt.option_list()))


def coap_message(response: GatewayResponse) -> Any:
    message = aiocoap.Message(code=aiocoap.numbers.codes.Code(response.code),
                              payload=response.payload)
    if response.content_format is not None:
        message.opt.content_format = response.content_format
    if response.max_age is not None:
        message.opt.max_age = response.max_age
    return message


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


# ------------------------------------------------------------ upstream CoAP


REMOTE_CACHE = 1024
"""Instance addresses whose resolved aiocoap remote is kept (cleared when
full). Without it aiocoap resolves the URI's host with getaddrinfo, in a
worker thread, on every forwarded request."""


def _coap_upstream(context: Any) -> Upstream:
    remotes: dict[str, Any] = {}

    async def call(ep: Endpoint, request: GatewayRequest, timeout: float) -> GatewayResponse:
        # `timeout` is enforced by the caller's cancel scope, which cancels the
        # aiocoap request (and its retransmissions) with it.
        remote = remotes.get(ep.address)
        if remote is not None:
            message = aiocoap.Message(code=METHOD_CODES[request.method],
                                      payload=request.payload)
            message.remote = remote
        else:
            message = aiocoap.Message(code=METHOD_CODES[request.method],
                                      payload=request.payload, uri=f"coap://{ep.address}/")
        message.opt.uri_path = request.path
        message.opt.uri_query = request.query
        if request.content_format is not None:
            message.opt.content_format = request.content_format
        if request.accept is not None:
            message.opt.accept = request.accept
        if request.hop_limit is not None:
            message.opt.hop_limit = request.hop_limit  # see forward.DEFAULT_HOP_LIMIT
        try:
            answer = await trio_asyncio.aio_as_trio(_request)(context, message)
        except aiocoap.error.Error as exc:
            raise UpstreamError(f"coap: {_describe(exc)}") from None
        if remote is None:
            if len(remotes) >= REMOTE_CACHE:
                remotes.clear()
            remotes[ep.address] = message.remote
        return GatewayResponse(int(answer.code), bytes(answer.payload),
                               _int_or_none(answer.opt.content_format))

    return call


async def _request(context: Any, message: Any) -> Any:
    """Runs in asyncio: aiocoap creates its request tasks in the current loop."""
    return await context.request(message).response


def _describe(exc: Exception) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
