"""Service-to-service calls over ZeroMQ: `zmq_call` (client) and `serve_rpc`
(server), both native trio through `nanomesh.transport.zmqtrio`.

A server binds a ROUTER; a client talks to it through a DEALER, one call at a
time per DEALER. Frames and payloads are defined in `nanomesh.wire.service_traffic`: the
client sends ``[call_id, request]``, the server answers ``[call_id, response]``;
the client drops replies whose id is not the one it waits for (a late answer to
an earlier call that timed out).

Connections are reused: each thread keeps a small pool of connected DEALERs per
address, so a call costs one round trip instead of a TCP and ZMTP handshake.
Every pooled DEALER has a ZeroMQ monitor; it is how a call notices quickly that
the server is gone (connection refused, or the connection dropped mid-call) and
raises `RpcError` at once instead of waiting out its timeout. A DEALER whose
call failed or timed out is closed, never reused.

Two libzmq facts shape `_Link`. A monitor's events are sent by the context's
I/O thread and *block* it when nobody reads them (monitor consumer closed first,
or an idle link piling up reconnect events): every ZeroMQ socket of the process
would then stall. So a link never reconnects (``RECONNECT_IVL = -1``: a lost
connection ends the link, so an idle link emits a handful of events at most),
and closing stops the monitor before closing its reader.

Sockets are a bounded resource: libzmq's context allows 1023 sockets per
process (``ZMQ_MAX_SOCKETS``), each also an open file, and a link is three (its
DEALER, the monitor's PAIR and libzmq's end of it). So a thread keeps at most
`MAX_LINKS` links, pooled or in a call: a call that needs one more first closes
an idle link of another address, else waits (within its timeout) for a link to
be given back. Every ZeroMQ failure of a call surfaces as `RpcError`.

**Authentication.** With `nanomesh.security.servicekeys` keys (a mesh with a cluster
key), every link is a CURVE client and every server a CURVE server that
admits only clients holding the mesh's service key (ZAP): traffic is
encrypted and authenticated, and an outsider's handshake fails (the call
raises `RpcError`, as for a server that is down). ``keys`` defaults to this
process's installed keys; None means plain ZeroMQ (a mesh without a key).

Delivery is at most once per attempt, and a timed-out call may still have run on
the server: callers that retry (``nanomesh.sdk.client`` does) get at-least-once
semantics and should keep non-idempotent handlers tolerant of repeats.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import trio
import zmq
from zmq.utils.monitor import parse_monitor_message

from nanomesh.errors import ConfigError, RemoteProtocolError
from nanomesh.security import servicekeys
from nanomesh.security.servicekeys import ServiceKeys
from nanomesh.transport import zmqtrio
from nanomesh.transport.serving import Handler as Handler  # re-exported: this module's API
from nanomesh.transport.serving import HandshakeFailed as HandshakeFailed
from nanomesh.transport.serving import RpcError as RpcError
from nanomesh.transport.serving import RpcTimeout as RpcTimeout
from nanomesh.transport.serving import call_guarded as call_guarded
from nanomesh.wire.service_traffic import (
    Request,
    Response,
    call_frames,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
    error_response,
    split_call_frames,
)

log = logging.getLogger("nanomesh.transport.rpc")

T = TypeVar("T")


class InstalledKeys:
    """Default of ``keys=``: this process's `nanomesh.security.servicekeys.installed` keys."""


INSTALLED = InstalledKeys()
Keys = ServiceKeys | None | InstalledKeys


def resolve_keys(keys: Keys) -> ServiceKeys | None:
    return servicekeys.installed() if isinstance(keys, InstalledKeys) else keys

IDLE_PER_ADDRESS = 8
"""Connected DEALERs kept per server address for reuse (one per concurrent call;
more concurrent calls open more, and the surplus is closed when they end)."""
MAX_POOLED_ADDRESSES = 256
"""Server addresses a thread keeps connections to; the least recently used
address's connections are closed beyond this."""
FAST_PATH = 0.005
"""Seconds a call waits for its answer before it also starts watching the
connection (see `_Link.call`); a refused or lost connection is noticed within
about this long."""
MAX_LINKS = 128
"""Links (3 ZeroMQ sockets each) a thread keeps open, idle or in a call: 384
sockets, well under libzmq's default 1023 per process, leaving room for
servers, the event relay and subscriptions (and under a small device's
1024-file limit, which raising ``ZMQ_MAX_SOCKETS`` would not lift). A call
beyond it waits for a link (see the module docstring)."""
MAX_CONCURRENT = 64
"""Requests one server runs at once; beyond this it answers 503 at once instead
of queueing (the caller fails over to another replica)."""


# ------------------------------------------------------------------ connection state

_UP, _CONNECTING, _REFUSED, _DOWN = "up", "connecting", "refused", "down"


def next_link_state(state: str, event: int) -> str:
    """How one monitor event moves a DEALER's link state. Pure.

    ``connecting`` -> ``up`` on a finished ZMTP handshake; a connect retry
    before that means nothing listens there (``refused``); a disconnect or a
    failed handshake after that means the server went away (``down``), and so
    does a disconnect before it: the server closed the connection during the
    handshake (a CURVE server that does not admit us, which libzmq does not
    always report as a failed handshake).
    ``refused`` and ``down`` are final: such a DEALER is closed."""
    if state in (_REFUSED, _DOWN):
        return state
    if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
        return _UP
    if event in (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                 zmq.EVENT_HANDSHAKE_FAILED_AUTH):
        return _DOWN
    if state == _CONNECTING and event in (zmq.EVENT_CONNECT_RETRIED, zmq.EVENT_CLOSED):
        return _REFUSED
    if state == _CONNECTING and event == zmq.EVENT_DISCONNECTED:
        return _DOWN
    if state == _UP and event in (zmq.EVENT_DISCONNECTED, zmq.EVENT_CONNECT_RETRIED,
                                  zmq.EVENT_CLOSED):
        return _DOWN
    return state


_HANDSHAKE_FAILED = {zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                     zmq.EVENT_HANDSHAKE_FAILED_AUTH}
_MONITORED = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
              | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
              | zmq.EVENT_CONNECT_RETRIED | zmq.EVENT_DISCONNECTED | zmq.EVENT_CLOSED)


def _pool_key(address: str, keys: ServiceKeys | None) -> str:
    """Links are pooled per address and client key: calls with other keys
    (a test's outsider, a rotated key) never share a connection."""
    if keys is None:
        return address
    server = keys.server or keys.service.public
    return f"{address} {keys.service.public.decode()} {server.decode()}"


def zmq_endpoint(address: str) -> str:
    """``tcp://`` endpoint for ``IP:PORT`` (IPv6 as ``[::1]:PORT``)."""
    return address if address.startswith("tcp://") else f"tcp://{address}"


class _Link:
    """One connected DEALER with its monitor. ZMQError if the sockets cannot
    be made (too many), RpcError if the address is bad."""

    _ids = itertools.count(1)

    def __init__(self, address: str, keys: ServiceKeys | None = None) -> None:
        self.address = address
        self.key = _pool_key(address, keys)
        self.state = _CONNECTING
        self.on_close: Callable[[], None] | None = None
        """Called once when the link closes (the pool's slot comes back)."""
        self.dealer = zmqtrio.socket(zmq.DEALER)
        try:
            if "[" in address:
                self.dealer.raw.setsockopt(zmq.IPV6, 1)
            self.dealer.raw.setsockopt(zmq.RECONNECT_IVL, -1)  # see the module docstring
            if keys is not None:
                servicekeys.make_client(self.dealer.raw, keys)
            self.monitor = zmqtrio.monitor(self.dealer, _MONITORED)
        except zmq.ZMQError:
            self.dealer.close()
            raise
        try:
            self.dealer.raw.connect(zmq_endpoint(address))
        except zmq.ZMQError as exc:
            self.close()
            raise RpcError(f"bad ZeroMQ address {address!r}: {exc}") from None

    handshake_failed = False

    def _apply(self, frames: list[bytes]) -> None:
        event = parse_monitor_message(frames)["event"]
        if self.state == _CONNECTING and event in _HANDSHAKE_FAILED | {zmq.EVENT_DISCONNECTED}:
            # A CURVE server that does not admit us closes the connection
            # during the handshake: "disconnected" before "succeeded".
            self.handshake_failed = True
        self.state = next_link_state(self.state, event)

    def drain_events(self) -> None:
        """Apply the monitor events that arrived while the link was idle."""
        while not self.monitor.closed and self.state not in (_REFUSED, _DOWN):
            try:
                frames = self.monitor.raw.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            self._apply(frames)

    @property
    def usable(self) -> bool:
        return self.state not in (_REFUSED, _DOWN)

    async def call(self, payload: bytes) -> bytes:
        """One exchange; RpcError if the link breaks first. No timeout here.

        Most answers arrive within `FAST_PATH` seconds: waiting for them in
        this task alone saves the cost of a watcher task per call. Only a call
        that takes longer also watches the monitor for a lost connection. A
        request that cannot even be queued means the connection already ended
        (a CURVE server refused us in the handshake): the monitor says why."""
        call_id = next(self._ids).to_bytes(8, "big")
        frames = call_frames(call_id, payload)
        if not self.dealer.send_multipart_nowait(frames):
            await self._until_broken(lambda: self.dealer.send_multipart(frames))
        with trio.move_on_after(FAST_PATH):
            return await self._reply_to(call_id)
        return await self._until_broken(lambda: self._reply_to(call_id))

    async def _until_broken(self, operation: Callable[[], Awaitable[T]]) -> T:
        """`operation`'s result, or RpcError once the monitor says the link broke."""
        result: list[T] = []

        async def watch(scope: trio.CancelScope) -> None:
            while self.usable:
                self._apply(await self.monitor.recv_multipart())
            scope.cancel()

        async def run(scope: trio.CancelScope) -> None:
            result.append(await operation())
            scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch, nursery.cancel_scope)
            nursery.start_soon(run, nursery.cancel_scope)
        if not result:
            if self.handshake_failed:
                raise HandshakeFailed(f"ZeroMQ call to {self.address}: handshake failed "
                                      "(not the mesh's key?)")
            what = "connection refused" if self.state == _REFUSED else "connection lost"
            raise RpcError(f"ZeroMQ call to {self.address}: {what}")
        return result[0]

    async def _reply_to(self, call_id: bytes) -> bytes:
        while True:
            frames = await self.dealer.recv_multipart()
            if len(frames) == 2 and frames[0] == call_id:
                return frames[1]

    def close(self) -> None:
        # Stop the monitor before closing its reader: an unread monitor blocks
        # libzmq's I/O thread (see the module docstring).
        if not self.dealer.closed:
            with contextlib.suppress(zmq.ZMQError):
                self.dealer.raw.disable_monitor()
        self.dealer.close()
        self.monitor.close()
        release, self.on_close = self.on_close, None
        if release is not None:
            release()


@dataclass
class _Pool:
    pid: int = field(default_factory=os.getpid)
    idle: collections.OrderedDict[str, list[_Link]] = field(
        default_factory=collections.OrderedDict)
    slots: trio.Semaphore = field(default_factory=lambda: trio.Semaphore(MAX_LINKS))
    """One per open link (`MAX_LINKS`), released when the link closes."""
    servers: dict[str, bytes] = field(default_factory=dict)
    """Address -> the server key that last answered there (see `server_order`)."""

    def server_order(self, address: str, keys: ServiceKeys | None
                     ) -> list[ServiceKeys | None]:
        """`keys` aimed at each server key it may meet at `address`: the one
        that worked there last first, then the primary's, then the others
        (a key rotation in progress, see `nanomesh.security.servicekeys`)."""
        if keys is None:
            return [None]
        if len(self.servers) > MAX_POOLED_ADDRESSES:
            self.servers.clear()
        known = self.servers.get(address)
        order = sorted(keys.server_keys, key=lambda k: k != known)
        return [dataclasses.replace(keys, server=k) for k in order]

    async def take(self, address: str, keys: ServiceKeys | None = None) -> _Link:
        """An idle link to `address` (with `keys`), or a new one once a slot is
        free. ZMQError if libzmq still refuses the sockets; RpcError for a bad address."""
        links = self.idle.get(_pool_key(address, keys), [])
        while links:
            link = links.pop()
            link.drain_events()
            if link.usable:
                return link
            link.close()
        await self._reserve()
        try:
            link = _Link(address, keys)
        except BaseException:
            self.slots.release()
            raise
        link.on_close = self.slots.release
        return link

    async def _reserve(self) -> None:
        while True:
            try:
                self.slots.acquire_nowait()
                return
            except trio.WouldBlock:
                pass
            if not self._close_oldest_idle():
                await self.slots.acquire()
                return

    def _close_oldest_idle(self) -> bool:
        """Close one idle link, least recently used address first (its slot
        comes free); False if none is idle."""
        for address, links in self.idle.items():
            if links:
                links.pop(0).close()
                if not links:
                    del self.idle[address]
                return True
        return False

    def give_back(self, link: _Link) -> None:
        links = self.idle.setdefault(link.key, [])
        self.idle.move_to_end(link.key)
        if len(links) >= IDLE_PER_ADDRESS or self.slots.statistics().tasks_waiting:
            link.close()  # a call waits for a slot: hand it this one
        else:
            links.append(link)
        while len(self.idle) > MAX_POOLED_ADDRESSES:
            _, old = self.idle.popitem(last=False)
            for stale in old:
                stale.close()


_local = threading.local()


def _pool() -> _Pool:
    pool: _Pool | None = getattr(_local, "pool", None)
    if pool is None or pool.pid != os.getpid():  # a forked child must not share sockets
        pool = _local.pool = _Pool()
    return pool


async def zmq_call(address: str, request: Request, timeout: float, *,
                   keys: Keys = INSTALLED) -> Response:
    """Call the nanoservice whose ROUTER listens at ``address`` (``IP:PORT``).

    Returns its `Response` (any status: a 4xx/5xx is an answer, not an error
    here). Raises `RpcTimeout` after ``timeout`` seconds without an answer,
    `RpcError` if the server is unreachable, drops the connection or answers
    with garbage, or ZeroMQ itself fails (too many sockets, ...). Waiting for
    a free link (`MAX_LINKS`) counts towards ``timeout``. ``keys``: see the
    module docstring."""
    payload = encode_request(request)
    pool = _pool()
    link: _Link | None = None
    reusable = False
    try:
        with trio.fail_after(timeout):
            candidates = pool.server_order(address, resolve_keys(keys))
            for i, attempt in enumerate(candidates):
                link = await pool.take(address, attempt)
                try:
                    raw = await link.call(payload)
                except HandshakeFailed:
                    if i + 1 == len(candidates):
                        raise
                    link.close()
                    link = None
                    continue
                if attempt is not None:
                    pool.servers[address] = attempt.server or attempt.service.public
                break
        response = decode_response(raw)
        reusable = True
        return response
    except trio.TooSlowError:
        what = "no answer" if link is not None else "no free connection"
        raise RpcTimeout(f"ZeroMQ call to {address}: {what} in {timeout:g}s") from None
    except RemoteProtocolError as exc:
        raise RpcError(f"ZeroMQ call to {address}: bad response ({exc})") from None
    except zmq.ZMQError as exc:
        raise RpcError(f"ZeroMQ call to {address}: {exc}") from None
    finally:
        if link is not None:
            if reusable:
                pool.give_back(link)
            else:
                link.close()


def close_pooled_connections() -> None:
    """Close this thread's idle connections (tests and clean shutdown)."""
    pool = _pool()
    for links in pool.idle.values():
        for link in links:
            link.close()
    pool.idle.clear()


# ------------------------------------------------------------------ server


def bind_router(bind_address: str, keys: ServiceKeys | None = None, *,
                fd: int | None = None) -> zmqtrio.Socket:
    """A ROUTER bound to ``IP:PORT`` (port 0: any free port); ConfigError if
    the address cannot be bound, naming it. With `keys`, a CURVE server that
    admits holders of the service key (`nanomesh.security.servicekeys.member_policy`).
    With `fd`, a TCP socket already listening on that address: ZeroMQ takes
    it over (``ZMQ_USE_FD``) and closes it, connections waiting in its backlog
    included (`nanomesh.daemon.on_demand`)."""
    sock = zmqtrio.socket(zmq.ROUTER)
    if fd is not None:
        sock.raw.setsockopt(zmq.USE_FD, fd)
    if keys is not None:
        servicekeys.make_member_server(sock.raw, keys)
    if "[" in bind_address:
        sock.raw.setsockopt(zmq.IPV6, 1)
    endpoint = zmq_endpoint(bind_address)
    if endpoint.endswith(":0"):
        endpoint = endpoint[:-2] + ":*"
    try:
        sock.raw.bind(endpoint)
    except zmq.ZMQError as exc:
        sock.close()
        raise ConfigError(f"cannot listen for ZeroMQ calls on {bind_address}: {exc}") from None
    return sock


def bound_address(sock: zmqtrio.Socket) -> str:
    """``IP:PORT`` a bound socket listens on (the real port when bound to 0)."""
    endpoint = sock.raw.getsockopt(zmq.LAST_ENDPOINT)
    assert isinstance(endpoint, bytes)
    return endpoint.decode().removeprefix("tcp://")


async def serve_rpc(bind_address: str, handler: Handler, *,
                    stats: collections.Counter[str] | None = None, keys: Keys = INSTALLED,
                    fd: int | None = None,
                    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Answer calls on a ROUTER bound to ``bind_address`` (``IP:PORT``) until
    cancelled. Reports the bound ``IP:PORT`` to ``task_status``. `fd`: see
    `bind_router`.

    Requests run concurrently (up to `MAX_CONCURRENT`). Garbage frames are
    dropped and counted in ``stats``; a request that parses as frames but not
    as a request is answered 400; a handler that raises is answered 500 with
    its message; none of these stop the server. ``keys``: see the module
    docstring."""
    stats = stats if stats is not None else collections.Counter()
    slots = trio.Semaphore(MAX_CONCURRENT)
    async with bind_router(bind_address, resolve_keys(keys), fd=fd) as router, \
            trio.open_nursery() as nursery:
        task_status.started(bound_address(router))
        while True:
            frames = await router.recv_multipart()
            if len(frames) != 3:
                stats["dropped-frames"] += 1
                continue
            identity, rest = frames[0], frames[1:]
            try:
                call_id, payload = split_call_frames(rest)
            except RemoteProtocolError:
                stats["dropped-frames"] += 1
                continue
            try:
                slots.acquire_nowait()
            except trio.WouldBlock:
                stats["busy"] += 1
                _answer(router, identity, call_id, error_response(503, "server busy"))
                continue
            nursery.start_soon(_serve_one, router, handler, identity, call_id, payload,
                               slots, stats)


async def _serve_one(router: zmqtrio.Socket, handler: Handler, identity: bytes, call_id: bytes,
                     payload: bytes, slots: trio.Semaphore, stats: collections.Counter[str]
                     ) -> None:
    try:
        response = await run_handler(handler, payload, stats)
        if not router.closed:
            _answer(router, identity, call_id, response)
    finally:
        slots.release()


async def run_handler(handler: Handler, payload: bytes, stats: collections.Counter[str]
                      ) -> Response:
    """Decode, run the handler, and turn every failure into a response."""
    try:
        request = decode_request(payload)
    except RemoteProtocolError as exc:
        stats["bad-request"] += 1
        return error_response(400, f"bad request: {exc}")
    return await call_guarded(handler, request, stats)


def _answer(router: zmqtrio.Socket, identity: bytes, call_id: bytes, response: Response) -> None:
    # A ROUTER never blocks: a reply to a client that is gone, or over the
    # high-water mark, is dropped, which the client sees as a timeout.
    router.send_multipart_nowait([identity, *call_frames(call_id, encode_response(response))])
