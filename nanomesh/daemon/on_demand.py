"""Services a peer starts on first use: the CoAP gateway and the event relay
(issue 9).

Both are on every peer, but most peers of an idle mesh never see a CoAP
request or an event, and their libraries are the peer's heaviest: aiocoap,
trio-asyncio and pyzmq cost 7.1 MiB RSS (4.7 MiB PSS) per peer, measured with
``experiments/peer_memory.py``. So the daemon binds their sockets at start
(a taken port is still one clear error before anything runs, and the ports
are ours from the start) and only waits until one of them is *readable*: a
datagram queued on the CoAP port, a connection waiting in the backlog of the
gateway link or of a relay port. Nothing is read; the service is then
imported and started on those very sockets (aiocoap takes the UDP socket, ZeroMQ
takes the listening TCP sockets through ``ZMQ_USE_FD``), so the datagram or
connection that woke it is the first it serves and no request is lost. The
first request pays the start-up once (imports and set-up, about 0.1-0.3 s
on the project machine).

What wakes them: the gateway, a CoAP datagram from anyone or a member's
connection to the link (another peer's gateway forwarding to an instance
here, or a local client's "gateway" attempt); the relay, a local
publisher or any subscriber (subscribers connect to every live peer's relay,
so once any service subscribes, every relay starts).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable, Sequence

import trio

from nanomesh.config import host_port
from nanomesh.errors import ConfigError
from nanomesh.wire import Address

log = logging.getLogger("nanomesh.peer")


def bind_udp_dual_stack(addr: Address, what: str) -> socket.socket:
    """A UDP socket on `addr` bound as aiocoap's udp6 transport binds one
    (``AF_INET6``, dual-stack: an IPv4 address as ``::ffff:IP``), without
    ``SO_REUSEPORT``, so a second gateway on the address is an error, not a
    silent share of its requests. ConfigError naming `what` and the address."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.setblocking(False)
        sock.bind((addr[0] if ":" in addr[0] else f"::ffff:{addr[0]}", addr[1]))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen for {what} on {host_port(*addr)}: "
                          f"{exc.strerror or exc}") from None
    return sock


def listen_tcp(addr: Address, what: str, hint: str = "") -> socket.socket:
    """A TCP socket listening on `addr` (for ZeroMQ to take over); ConfigError
    naming `what` and the address (then `hint`) if it cannot."""
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setblocking(False)
        sock.bind(addr)
        # ZeroMQ's default backlog (ZMQ_BACKLOG); it listens again once it owns the socket.
        sock.listen(100)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen for {what} on {host_port(*addr)}: "
                          f"{exc.strerror or exc}{hint}") from None
    return sock


async def wait_first_use(socks: Sequence[socket.socket]) -> None:
    """Return once any of `socks` is readable (nothing is read)."""
    async with trio.open_nursery() as nursery:
        async def wait(sock: socket.socket) -> None:
            await trio.lowlevel.wait_readable(sock)
            nursery.cancel_scope.cancel()
        for sock in socks:
            nursery.start_soon(wait, sock)


async def serve_on_first_use(what: str, socks: Sequence[socket.socket],
                             serve: Callable[[], Awaitable[object]], *,
                             task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                             ) -> None:
    """Report readiness at once (the sockets are bound), wait for the first
    use of any of `socks`, then run `serve` (which takes the sockets over)."""
    task_status.started()
    await wait_first_use(socks)
    log.info("%s: first use, starting", what)
    await serve()
