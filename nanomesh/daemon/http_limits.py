"""Who the HTTP API serves when clients misbehave: limits and admission, as
pure code (connection ids and client addresses in, decisions out; no
sockets, no clock). `nanomesh.daemon.http` is the shell that applies them.

Why it is shaped this way: a device's API must stay answerable to its
operator and to the mesh's health checks while anyone on the same network
holds sockets open. Before this module, every accepted socket took one of 64
request slots until its request arrived (or 10 s passed), so 70 idle sockets
made 18 of 29 ``/v1/health`` calls answer 503. Now:

1. **Idle costs no slot.** A connection is *pending* from accept until its
   request head (request line and headers) is complete. Pending connections
   hold a socket and a small task, never a request slot. The head must
   arrive within ``head_timeout`` of the accept, however it trickles in
   (slowloris), and be at most ``max_head_bytes``.
2. **Per client.** One source IP may hold ``max_per_client`` connections
   (pending or active); one more is answered 429 and closed at once, and
   nobody else notices.
3. **In all.** At most ``max_open`` connections are open. When that many
   are, a new connection evicts the one that has waited longest for its head
   (a real client sends its head in one segment, milliseconds after
   connecting; the oldest pending one is the likeliest attacker). Only if
   none is pending does the newcomer get 503.
4. **Slots.** A complete head takes a request slot for its body, handler
   and reply: ``max_requests`` shared slots, full = 503 with Retry-After.
   ``GET /v1/health`` and ``GET /v1/status`` (``priority_paths``) have
   ``reserved_requests`` slots of their own, are answered without reading a
   body, and their handlers never wait, so they answer even while every
   shared slot is held (64 slow uploads, 64 writes waiting for a quorum).
5. **Deadlines.** The body must arrive within ``body_timeout`` of its head
   (a `BodyLimit` may allow an upload longer), the reply be read within the
   response timeout of `nanomesh.daemon.http`.

The decisions are table-tested in ``tests/daemon/test_http_limits.py``; the
whole under attack against a real daemon in
``tests/integration/test_api_hardening.py``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ServerLimits:
    """The API server's limits (see the module docstring for how they fit)."""

    head_timeout: float = 10.0
    """Seconds from accept until the request head must be complete. A CLI or a
    peer sends its head in one segment; 10 s still covers three TCP
    retransmissions (1 + 2 + 4 s) on a lossy Wi-Fi link. A client slower
    than that gets 408 and is closed."""
    body_timeout: float = 10.0
    """Seconds from the head until a JSON body (at most 1 MiB) must be
    complete: about 100 KB/s, a poor Wi-Fi link. Bundle uploads have their
    own, longer rule (`BodyLimit.timeout`), and only with credentials."""
    max_head_bytes: int = 16 * 1024
    """Largest request head (request line and headers), in bytes: ours are a
    few hundred; 16 KiB is Node.js's default. Bounds what a pending
    connection can make us buffer. Beyond it: 431."""
    max_per_client: int = 32
    """Open connections (pending or active) allowed from one source IP. The
    CLI, a dashboard, a few peers fetching bundles and the local
    nanoservices saving state each use one short connection per call; 32
    leaves room for bursts while one address alone can take at most an
    eighth of ``max_open``. Beyond it: 429."""
    max_open: int = 256
    """Open connections in all (sockets and tasks the API may hold): a
    fraction of a Raspberry Pi's default 1,024 file descriptors, the rest
    being for gossip, Raft, the gateway and the instances' logs. When full, the
    oldest connection still waiting for its head is evicted for a new one."""
    max_requests: int = 64
    """Requests (complete heads) served at once by the shared slots: bounds
    the bodies held in memory (64 x 1 MiB) and the handlers waiting on
    consensus. Beyond it: 503 with Retry-After."""
    reserved_requests: int = 8
    """Slots only ``priority_paths`` may use, so that health checks and
    status answer while the shared slots are all taken. Their handlers return
    at once, so a handful is plenty."""
    priority_paths: frozenset[str] = frozenset({"/v1/health", "/v1/status"})
    """GET paths served from the reserve, without reading a request body."""
    max_streams: int = 16
    """Streams (``GET /v1/events?follow=1``: dashboards and ``nanomesh
    monitor``) served at once. A stream gives its request slot back once its
    head is sent and holds one of these instead, with a socket and a task but
    no buffer of its own. A handful of operators' tabs and terminals per
    peer; beyond it: 503, and an EventSource retries by itself."""

    def __post_init__(self) -> None:
        for name in ("head_timeout", "body_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 seconds")
        for name in ("max_head_bytes", "max_per_client", "max_open", "max_requests",
                     "reserved_requests", "max_streams"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_per_client > self.max_open:
            raise ValueError("max_per_client cannot exceed max_open")


UNMATCHED = "(unmatched)"
"""The route of a request no route matches, in `ServerStats.requests`."""


@dataclass
class ServerStats:
    """What the API server refused or cut off since it started (shown in
    ``/v1/health`` under ``"api"``)."""

    open: int = 0
    """Connections open now."""
    refused_per_client: int = 0
    """429: the client already had ``max_per_client`` connections."""
    refused_full: int = 0
    """503 at accept: ``max_open`` connections, none of them pending."""
    evicted: int = 0
    """Pending connections closed to make room for a new one."""
    head_timeouts: int = 0
    """408: no complete head within ``head_timeout``."""
    body_timeouts: int = 0
    """Connections closed because the body did not arrive in time."""
    busy: int = 0
    """503: no request slot (or stream slot) free."""
    streams: int = 0
    """Streams (`nanomesh.daemon.http.StreamBody`) being sent now."""
    streams_dropped: int = 0
    """Streams cut because their client stopped reading."""
    requests: Counter[tuple[str, str, int]] = field(
        default_factory=Counter)
    """Requests answered, by ``(method, route, status)``: ``route`` is the
    route's pattern (``/v1/services/{name}``), or `UNMATCHED` for a path no
    route has, so a scanner cannot grow this table without bound (``GET
    /v1/metrics`` shows it; not in ``/v1/health``)."""

    def to_dict(self) -> dict[str, int]:
        """The refusal counters (``/v1/health``'s ``"api"``)."""
        return {k: v for k, v in self.__dict__.items() if isinstance(v, int)}


@dataclass(frozen=True)
class Admitted:
    """Serve the connection; first close ``evict`` (a pending connection's id)
    if it is not None."""

    evict: int | None = None


@dataclass(frozen=True)
class Refused:
    """Answer ``status`` with ``reason`` and close, without reading the request."""

    status: int
    reason: str


@dataclass
class ConnectionTable:
    """The open connections, by client and by phase (pending: head not yet
    complete, oldest first; active: the rest). Pure bookkeeping; the shell
    closes what it is told to."""

    limits: ServerLimits = field(default_factory=ServerLimits)
    _clients: Counter[str] = field(default_factory=Counter)
    _pending: dict[int, str] = field(default_factory=dict)
    _active: dict[int, str] = field(default_factory=dict)

    def open(self, conn: int, client: str) -> Admitted | Refused:
        """A new connection ``conn`` from IP ``client``: admit it (possibly
        evicting the oldest pending connection) or refuse it."""
        if self._clients[client] >= self.limits.max_per_client:
            return Refused(429, f"too many connections from {client} (at most "
                           f"{self.limits.max_per_client}); retry shortly")
        evict = None
        if len(self) >= self.limits.max_open:
            if not self._pending:
                return Refused(503, "the API is at its connection limit; retry shortly")
            evict = next(iter(self._pending))
            self.close(evict)
        self._pending[conn] = client
        self._clients[client] += 1
        return Admitted(evict)

    def head_complete(self, conn: int) -> None:
        """``conn`` sent its whole head: it can no longer be evicted."""
        client = self._pending.pop(conn, None)
        if client is not None:
            self._active[conn] = client

    def close(self, conn: int) -> None:
        """Forget ``conn`` (idempotent: an evicted connection closes later)."""
        client = self._pending.pop(conn, None) or self._active.pop(conn, None)
        if client is None:
            return
        self._clients[client] -= 1
        if not self._clients[client]:
            del self._clients[client]

    def is_open(self, conn: int) -> bool:
        return conn in self._pending or conn in self._active

    def pending(self) -> int:
        return len(self._pending)

    def from_client(self, client: str) -> int:
        return self._clients[client]

    def __len__(self) -> int:
        return len(self._pending) + len(self._active)
