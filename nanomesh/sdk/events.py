"""Publish/subscribe between nanoservices: a ZeroMQ relay on every peer.

Topology: each peer daemon runs `serve_event_relay` on its gossip IP, an XSUB
that local publishers connect to (`DEFAULT_XSUB_PORT`) and an XPUB that
subscribers anywhere connect to (`DEFAULT_XPUB_PORT`). The relay forwards
events downstream (XSUB -> XPUB) and subscriptions upstream (XPUB -> XSUB), so
publishers only send topics someone wants. A publisher connects one PUB to its
own peer's XSUB; a subscriber connects one SUB to the XPUB of every live peer
and refreshes that set every `SUBSCRIBER_REFRESH` seconds, so an event from any
peer reaches it exactly once, through the publisher's peer.

Delivery is ZeroMQ pub/sub's: best effort, at most once, in order per
publisher; nothing is stored for subscribers that are not connected. A brand
new publisher waits for its connection (`PUBLISHER_CONNECT_WAIT`) before its
first event, which narrows ZeroMQ's "slow joiner" window but cannot close it:
use calls, not events, for anything that must arrive. Frames are
`nanomesh.wire.service_traffic`'s event frames; the relay checks each one and drops
garbage (counted), so a broken publisher cannot feed subscribers junk.

**Authentication** (a mesh with a cluster key, `nanomesh.security.servicekeys`): both
relay sockets are CURVE servers. The XPUB admits members only (the service
or operator key), so only members subscribe and events travel encrypted.
The XSUB admits the operator key (daemons, clients that read the key file)
and the instance keys of the peer's own instances, and ZAP names each
connection: an instance's events must carry that instance's id as ``src``,
or the relay drops them (counted ``dropped-forged-source``); an operator
key's events keep the ``src`` they name. So an event's ``src`` is either an
instance id the relay verified or a claim by a holder of the cluster key.
Without a key (``credentials`` None) the relay is open and ``src`` is only
what the publisher claims.

Memory is bounded by bytes, not only by count: events are notifications, not
bulk data, so an event over `MAX_EVENT` is refused by `Publisher.publish`, and
a relay drops one (a frame over it makes ZeroMQ drop that publisher's
connection, which reconnects; a smaller oversize event is dropped and
counted). A relay queues at most `RELAY_HWM` events per connection and drops
beyond that (an XPUB never blocks), so a stalled subscriber pins at most
about ``RELAY_HWM * MAX_EVENT`` bytes (64 MiB with the defaults, plus kernel
socket buffers; little in practice: events are usually tens of bytes), and so
does a flooding publisher on the relay's XSUB side.
"""

from __future__ import annotations

import collections
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

import trio
import zmq

from nanomesh.errors import ConfigError, RemoteProtocolError
from nanomesh.security import servicekeys
from nanomesh.security.servicekeys import Credentials, ServiceKeys
from nanomesh.transport import zmqtrio
from nanomesh.wire.service_traffic import Event, decode_event, encode_event

log = logging.getLogger("nanomesh.sdk.events")

DEFAULT_XPUB_PORT = 7950
"""Port of each peer's relay XPUB, where subscribers connect (next to gossip
7946 and the API 7947)."""
DEFAULT_XSUB_PORT = 7951
"""Port of each peer's relay XSUB, where the peer's local publishers connect."""
SUBSCRIBER_REFRESH = 5.0
"""Seconds between a subscriber's looks at the member list: a peer that joins
is heard from within this long (gossip itself takes about a second to spread a
join on a LAN preset)."""
PUBLISHER_CONNECT_WAIT = 1.0
"""Longest wait, in seconds, for a new publisher's connection to its peer's
relay before its first event is sent anyway."""
SUBSCRIPTION_SETTLE = 0.02
"""Seconds a new publisher waits after connecting, so the relay's subscriptions
reach it before the first event (a PUB drops what no one subscribed to)."""
RELAY_HWM = 1000
"""Events a relay queues per connection (each subscriber; each publisher on
the way in) before dropping for that connection: with `MAX_EVENT`, the bound
on what a stalled subscriber can pin (see the module docstring). A thousand
covers a burst of a few seconds of a busy sensor."""
MAX_EVENT = 64 * 1024
"""Largest event, in bytes, over all its frames (topic, then source and data
encoded): publishers refuse, and relays drop, anything bigger. Events are
notifications; a large payload belongs in a call (1 MiB bodies)."""


def _tcp(ip: str, port: int) -> str:
    return f"tcp://[{ip}]:{port}" if ":" in ip else f"tcp://{ip}:{port}"


def _bind(kind: int, ip: str, port: int, what: str,
          credentials: Credentials | None = None, fd: int | None = None) -> zmqtrio.Socket:
    # MAXMSGSIZE applies per frame: a frame over it drops the sender's
    # connection. Whole-event size is checked again in `_downstream`.
    sock = zmqtrio.socket(kind, max_message=MAX_EVENT)
    if fd is not None:  # a socket already listening on ip:port, taken over with its backlog
        sock.raw.setsockopt(zmq.USE_FD, fd)
    if ":" in ip:
        sock.raw.setsockopt(zmq.IPV6, 1)
    sock.raw.setsockopt(zmq.SNDHWM, RELAY_HWM)
    sock.raw.setsockopt(zmq.RCVHWM, RELAY_HWM)
    if credentials is not None:
        if kind == zmq.XSUB:
            domain, policy = servicekeys.DOMAIN_EVENTS_PUB, credentials.publisher_identity
        else:
            domain, policy = servicekeys.DOMAIN_EVENTS_SUB, credentials.subscriber_identity
        domain = f"{domain}-{ip}-{port}"  # one policy per relay (tests run several)
        servicekeys.set_policy(domain, policy)
        servicekeys.make_server(sock.raw, credentials.keys, domain)
    try:
        sock.raw.bind(_tcp(ip, port))
    except zmq.ZMQError as exc:
        sock.close()
        raise ConfigError(f"cannot listen for events ({what}) on {ip}:{port}: {exc}; "
                          f"choose another port (peer.events_{what.lower()}_port, 0 disables)"
                          ) from None
    return sock


async def serve_event_relay(ip: str, xsub_port: int, xpub_port: int, *,
                            stats: collections.Counter[str] | None = None,
                            credentials: Credentials | None = None,
                            fds: tuple[int, int] | None = None,
                            task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                            ) -> None:
    """Relay events on ``ip`` until cancelled. Binds both sockets before
    reporting readiness; ConfigError (naming the port) if one cannot be bound.
    With ``credentials``, only members connect and sources are verified (see
    the module docstring). ``fds``: TCP sockets already listening on the XSUB
    and XPUB ports, which ZeroMQ takes over (``ZMQ_USE_FD``; the daemon starts
    the relay on first use, `nanomesh.daemon.on_demand`)."""
    stats = stats if stats is not None else collections.Counter()
    xsub_fd, xpub_fd = fds if fds is not None else (None, None)
    xsub = _bind(zmq.XSUB, ip, xsub_port, "XSUB", credentials, xsub_fd)
    try:
        xpub = _bind(zmq.XPUB, ip, xpub_port, "XPUB", credentials, xpub_fd)
    except ConfigError:
        xsub.close()
        raise
    async with xsub, xpub, trio.open_nursery() as nursery:
        nursery.start_soon(_downstream, xsub, xpub, stats, credentials is not None)
        nursery.start_soon(_upstream, xpub, xsub)
        task_status.started()


def check_source(event: Event, publisher: str | None) -> str | None:
    """Why an event from a connection ZAP admitted as `publisher` is dropped,
    or None to relay it. Pure."""
    if publisher is None:
        return "unauthenticated"
    if publisher != servicekeys.ANY_SOURCE and event.source != publisher:
        return "forged-source"
    return None


async def _downstream(xsub: zmqtrio.Socket, xpub: zmqtrio.Socket,
                      stats: collections.Counter[str], verify: bool) -> None:
    while True:
        raw = await xsub.recv_frames()
        frames = [f.bytes for f in raw]
        if sum(map(len, frames)) > MAX_EVENT:
            stats["dropped-oversize"] += 1
            continue
        try:
            event = decode_event(frames)
        except RemoteProtocolError as exc:
            stats[f"dropped-{exc.reason}"] += 1
            continue
        why = check_source(event, servicekeys.user_id(raw[0])) if verify else None
        if why is not None:
            stats[f"dropped-{why}"] += 1
            if stats[f"dropped-{why}"] in (1, 100, 10_000):
                log.warning("event relay: dropped an event on %r claiming source %r (%s; "
                            "%d so far)", event.topic, event.source, why,
                            stats[f"dropped-{why}"])
            continue
        xpub.send_multipart_nowait(frames)  # XPUB drops for a slow subscriber
        stats["relayed"] += 1


async def _upstream(xpub: zmqtrio.Socket, xsub: zmqtrio.Socket) -> None:
    while True:
        frames = await xpub.recv_multipart()
        # (Un)subscriptions: one frame, 0x01 or 0x00 then the topic prefix.
        if len(frames) == 1 and frames[0][:1] in (b"\x00", b"\x01"):
            xsub.send_multipart_nowait(frames)


# ------------------------------------------------------------------ publishing


class Publisher:
    """Sends events to the local peer's relay; open with `open_publisher`."""

    def __init__(self, sock: zmqtrio.Socket, source: str) -> None:
        self._sock = sock
        self.source = source

    def publish(self, topic: str, data: bytes) -> None:
        """Send one event (never blocks; dropped if nobody subscribed to it).
        ValueError if the topic or data break the wire format's limits, or the
        event is over `MAX_EVENT` bytes."""
        frames = encode_event(topic, self.source, data)
        size = sum(map(len, frames))
        if size > MAX_EVENT:
            raise ValueError(f"event of {size} bytes exceeds the {MAX_EVENT}-byte limit "
                             f"(events are notifications; send large data in a call)")
        self._sock.send_multipart_nowait(frames)


@contextlib.asynccontextmanager
async def open_publisher(ip: str, xsub_port: int, source: str,
                         keys: ServiceKeys | None = None) -> AsyncIterator[Publisher]:
    """A publisher connected to the relay at ``ip:xsub_port`` (with `keys`, as
    a CURVE client with their publisher key)."""
    sock = zmqtrio.socket(zmq.PUB)
    if ":" in ip:
        sock.raw.setsockopt(zmq.IPV6, 1)
    if keys is not None:
        servicekeys.make_client(sock.raw, keys, publisher=True)
    async with sock:
        monitor = zmqtrio.monitor(sock, zmq.EVENT_HANDSHAKE_SUCCEEDED)
        try:
            sock.raw.connect(_tcp(ip, xsub_port))
            with trio.move_on_after(PUBLISHER_CONNECT_WAIT):
                await monitor.recv_multipart()
                await trio.sleep(SUBSCRIPTION_SETTLE)
        finally:
            # Stop the monitor before closing its reader: an unread monitor
            # blocks libzmq's I/O thread (see nanomesh.transport.rpc).
            sock.raw.disable_monitor()
            monitor.close()
        yield Publisher(sock, source)


# ------------------------------------------------------------------ subscribing


Relays = Callable[[], Awaitable[Iterable[str]]]
"""Returns the relay XPUB addresses (``tcp://IP:PORT``) to listen to now."""


def relay_changes(current: set[str], wanted: set[str]) -> tuple[list[str], list[str]]:
    """``(connect, disconnect)`` that turn the current set into the wanted one. Pure."""
    return sorted(wanted - current), sorted(current - wanted)


class Subscription:
    """Events whose topic starts with a prefix; ``async for ev in sub``. An
    event's ``source`` was verified by its relay in a mesh with a key (see
    the module docstring)."""

    def __init__(self, sock: zmqtrio.Socket, stats: collections.Counter[str]) -> None:
        self._sock = sock
        self.stats = stats
        self.relays: set[str] = set()

    def update(self, wanted: set[str]) -> None:
        connect, disconnect = relay_changes(self.relays, wanted)
        for endpoint in connect:
            with contextlib.suppress(zmq.ZMQError):
                self._sock.raw.connect(endpoint)
                self.relays.add(endpoint)
        for endpoint in disconnect:
            with contextlib.suppress(zmq.ZMQError):
                self._sock.raw.disconnect(endpoint)
            self.relays.discard(endpoint)

    async def receive(self) -> Event:
        """The next event; garbage from a relay is dropped and counted."""
        while True:
            frames = await self._sock.recv_multipart()
            try:
                return decode_event(frames)
            except RemoteProtocolError as exc:
                self.stats[f"dropped-{exc.reason}"] += 1

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        return await self.receive()


@contextlib.asynccontextmanager
async def open_subscription(topic_prefix: str, relays: Relays,
                            refresh: float = SUBSCRIBER_REFRESH,
                            keys: ServiceKeys | None = None
                            ) -> AsyncIterator[Subscription]:
    """Subscribe to ``topic_prefix`` (``""``: everything) at every relay that
    ``relays()`` names, re-asking it every ``refresh`` seconds (with `keys`,
    as a CURVE client with the service key). A failing ``relays()`` keeps the
    current set (logged) until the next refresh."""
    sock = zmqtrio.socket(zmq.SUB, max_message=MAX_EVENT)
    sock.raw.setsockopt(zmq.IPV6, 1)
    if keys is not None:
        servicekeys.make_client(sock.raw, keys)
    sock.raw.setsockopt(zmq.SUBSCRIBE, topic_prefix.encode())
    sub = Subscription(sock, collections.Counter())
    sub.update(set(await relays()))
    error: BaseException | None = None  # re-raised unwrapped, as in client.connect
    async with sock, trio.open_nursery() as nursery:
        nursery.start_soon(_refresh, sub, relays, refresh)
        try:
            yield sub
        except BaseException as exc:
            error = exc
        nursery.cancel_scope.cancel()
    if error is not None:
        raise error


async def _refresh(sub: Subscription, relays: Relays, every: float) -> None:
    while True:
        await trio.sleep(every)
        try:
            sub.update(set(await relays()))
        except Exception as exc:  # the peer API may be restarting; try again later
            log.warning("cannot refresh the event relays: %s", exc)
