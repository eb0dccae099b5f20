"""Call nanoservices by name, and publish and subscribe to events.

```python
async with nanomesh.sdk.client.connect() as mesh:  # finds the peer as `nanomesh` does
    reply = await mesh.call("echo", "echo/hi")          # -> Reply
    await mesh.call("lamp", "state", {"on": True}, method="PUT")
    await mesh.publish("sensors/temp", {"c": 21.5})
    async with mesh.subscribe("sensors/") as events:
        async for ev in events:
            print(ev.topic, ev.source, ev.json())

nanomesh.sdk.client.call_sync("echo", "health")             # from plain scripts
```

**Keys.** In a mesh with a cluster key, calls, events and the gateway are
authenticated with CURVE keys derived from it (`nanomesh.security.servicekeys`). An
instance gets them from its environment; an operator's client reads the key
file: ``connect(key_file=...)``, else ``$NANOMESH_KEY_FILE``, else the running
lab's, else ``/etc/nanomesh/cluster.key`` (when readable). Without keys a
client speaks plain ZeroMQ and CoAP: it reaches only a mesh without a key,
and public services at the CoAP gateways.

**Resolution.** A name is resolved with ``GET /v1/resolve/<service>`` on the
peer API and cached for `RESOLVE_TTL` seconds. Endpoints of running instances
are tried in this order (`attempt_order`): ZeroMQ endpoints directly (rotating
between replicas call by call, healthy ones first), then the peer's CoAP
gateway (with keys its authenticated link, ``tcp://<peer>:5683``, see
`nanomesh.gateway.link`; without, ``coap://<peer>:5683/s/<service>/<path>``),
which can reach ZeroMQ, CoAP and HTTP instances, then HTTP endpoints directly.

**Failures are values the caller handles** (the actor model: a failed callee
never takes the caller down). Each attempt has ``timeout`` seconds; a
transport error, a timeout, or a 502/503/504 moves to the next target, drops
the cached resolution, and marks the target to be tried last for
`AVOID_FAILED` seconds; after ``1 + retries`` attempts the call raises
`CallTimeout` (the last attempt timed out) or `ServiceUnavailable`. A 4xx, or
a 500 (the handler itself raised: another replica would most likely raise
too), raises `RemoteError` at once. Retries give at-least-once delivery: a
timed-out attempt may have run.

**Non-idempotent calls are not repeated blindly.** An attempt that timed out,
or was answered 502/504 (`MAYBE_RAN_STATUSES`: a gateway or proxy gave up on
an instance that may have done the work; the gateway may itself have tried
several), may have run; after one, only an idempotent call is retried. By
default that is GET, PUT and DELETE (`IDEMPOTENT_METHODS`, HTTP's semantics:
their handlers must make a repeat harmless) and not POST, which then raises
`CallTimeout` / `RemoteError` after that one attempt. A failure that means the
request was not served (connection refused, 503 busy) is retried for every
method. ``call(..., idempotent=True)`` retries a POST the caller knows to be
safe to repeat; ``idempotent=False`` stops retries of a GET/PUT/DELETE with
side effects.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import urllib.parse
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h11
import trio

from nanomesh.errors import NanomeshError
from nanomesh.labstate import DEFAULT_PEER_API, default_peer_api
from nanomesh.naming import Endpoint
from nanomesh.sdk.events import (
    DEFAULT_XPUB_PORT,
    DEFAULT_XSUB_PORT,
    Publisher,
    Subscription,
    open_publisher,
    open_subscription,
)
from nanomesh.security import servicekeys
from nanomesh.security.servicekeys import ServiceKeys
from nanomesh.transport.coapio import CoapClient, open_coap_client
from nanomesh.transport.httpio import http_call, http_request
from nanomesh.transport.rpc import INSTALLED, InstalledKeys, Keys, RpcError, RpcTimeout, zmq_call
from nanomesh.wire.service_traffic import Event, Request, Response, encode_body

DEFAULT_PEER = DEFAULT_PEER_API
"""Peer API used when neither an argument, the environment nor a running lab
names one (`nanomesh.labstate.default_peer_api`)."""
DEFAULT_COAP_PORT = 5683
"""Port of every peer's CoAP gateway (RFC 7252's default CoAP port)."""
RESOLVE_TTL = 2.0
"""Seconds a resolution is reused. Short, because instances move when a peer
fails; a failed call drops it at once anyway."""
STALE_IF_ERROR = 60.0
"""Seconds the last resolution a peer gave stays usable while that peer
cannot answer (down, restarting, 5xx): the instances it named, elsewhere in
the mesh, usually still run (HTTP's stale-if-error, RFC 5861). A 404 (no such
service) is never overridden."""
AVOID_FAILED = 5.0
"""Seconds a target that just failed is tried after all others (about the
time gossip needs to declare its peer dead and resolution to stop naming it)."""
RETRYABLE_STATUSES = frozenset({502, 503, 504})
"""Answers meaning "this replica cannot serve now": try another."""
MAYBE_RAN_STATUSES = frozenset({502, 504})
"""Of those, the answers after which the request may have run (a gateway's
5.04: an instance did not answer in time; a proxy's 502): retried only for an
idempotent call. A 503 means it was not served (busy, or nothing reachable)."""
IDEMPOTENT_METHODS = frozenset({"GET", "PUT", "DELETE"})
"""Methods retried after an attempt that may have run (RFC 9110 §9.2.2): a
repeat has the effect of one call. POST is not: see the module docstring."""
USABLE_STATES = frozenset({"running"})
"""Instance states whose endpoints are called (`nanomesh.naming.INSTANCE_STATES`)."""
BAD_HEALTH = frozenset({"unhealthy"})
"""Health values whose endpoints are skipped (`nanomesh.naming.HEALTH_VALUES`)."""
GOOD_HEALTH = frozenset({"healthy", "none"})
"""Health values tried before the others (``starting``): checks pass, or there are none."""


class ClientError(NanomeshError):
    """Base of the errors a call raises."""


class ServiceUnavailable(ClientError):
    """No endpoint of the service could be reached (none running, unknown
    name, peer API down, or every attempt failed in transport)."""


class CallTimeout(ClientError):
    """Every attempt's answer took longer than the call's timeout."""


class RemoteError(ClientError):
    """The service answered with a 4xx/5xx status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status} {message}".strip())
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Reply:
    """A successful (2xx) answer."""

    status: int
    body: bytes
    content_format: int | None = None

    def json(self) -> Any:
        return json.loads(self.body)

    def text(self) -> str:
        return self.body.decode()


# ------------------------------------------------------------------ resolution (pure)


@dataclass(frozen=True)
class Target:
    """One way to reach a service: ``("zmq"|"http", "IP:PORT")`` or
    ``("gateway", "")`` (the connected peer's CoAP gateway)."""

    kind: str
    address: str


GATEWAY = Target("gateway", "")


def parse_resolution(doc: Any) -> list[Endpoint]:
    """The endpoints of a ``/v1/resolve`` answer; malformed entries are skipped
    (a newer or broken peer must not break a caller)."""
    items = doc.get("endpoints") if isinstance(doc, dict) else None
    endpoints = []
    for item in items if isinstance(items, list) else []:
        try:
            endpoints.append(Endpoint.from_dict(item))
        except ValueError:
            continue
    return endpoints


def attempt_order(endpoints: Sequence[Endpoint], avoid: Iterable[Target], turn: int
                  ) -> list[Target]:
    """The targets to try, best first (see the module docstring). ``turn``
    rotates replicas of equal rank; targets in ``avoid`` go last. Pure."""
    usable = [e for e in endpoints if e.state in USABLE_STATES and e.health not in BAD_HEALTH]

    def direct(protocol: str) -> list[Target]:
        ranked = [e for e in usable if e.protocol == protocol]
        good = [e for e in ranked if e.health in GOOD_HEALTH]
        rest = [e for e in ranked if e.health not in GOOD_HEALTH]
        targets = []
        for group in (good, rest):
            k = turn % len(group) if group else 0
            targets += [Target(protocol, e.address) for e in group[k:] + group[:k]]
        return list(dict.fromkeys(targets))

    gateway = [GATEWAY] if any(e.protocol in ("coap", "zmq") for e in usable) else []
    order = direct("zmq") + gateway + direct("http")
    avoided = set(avoid)
    return [t for t in order if t not in avoided] + [t for t in order if t in avoided]


def make_request(method: str, path: str, data: object) -> Request:
    """A request for ``path`` with ``data`` encoded by `encode_body`;
    ValueError / TypeError on bad input."""
    path, _, query = path.partition("?")
    body, cf = encode_body(data)
    return Request(method.upper(), path.strip("/"), body, cf, query)


def default_peer() -> str:
    """The peer API `connect` asks without ``peer``: as the ``nanomesh``
    commands do (`nanomesh.labstate.default_peer_api`)."""
    return default_peer_api()


def _split_peer(peer: str) -> tuple[str, int]:
    host, sep, port = peer.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"peer {peer!r} must be IP:PORT")
    return host.strip("[]"), int(port)


# ------------------------------------------------------------------ the client


class Mesh:
    """A connection to the mesh through one peer; make one with `connect`."""

    def __init__(self, peer: str, nursery: trio.Nursery, *, coap_port: int,
                 xpub_port: int, xsub_port: int, token: str | None, source: str,
                 keys: ServiceKeys | None = None) -> None:
        self.peer = peer
        self.keys = keys
        """CURVE keys of service traffic; None: plain (see the module docstring)."""
        self.host, self.api_port = _split_peer(peer)
        self._nursery = nursery
        self._coap_port = coap_port
        self._xpub_port = xpub_port
        self._xsub_port = xsub_port
        self._token = token
        self.source = source
        self._cache: dict[str, tuple[float, list[Endpoint]]] = {}
        self._last_known: dict[str, tuple[float, list[Endpoint]]] = {}
        """Every service's last resolution and when it came (`STALE_IF_ERROR`)."""
        self._failed: dict[Target, float] = {}
        self._turns: dict[str, int] = {}
        self._coap: CoapClient | None = None
        self._publisher: Publisher | None = None
        self._lazy_lock = trio.Lock()

    # ------------------------------------------------------------ calls

    async def call(self, service: str, path: str, data: object = None, *, method: str = "GET",
                   timeout: float = 2.0, retries: int = 2,
                   idempotent: bool | None = None) -> Reply:
        """Call ``method path`` on ``service`` (see the module docstring).
        ``data``: bytes, str, or JSON-able. ``idempotent``: whether an attempt
        that may have run can be repeated (None: by the method, see
        `IDEMPOTENT_METHODS`). Raises ServiceUnavailable, CallTimeout,
        RemoteError; ValueError for a bad method, path or data."""
        request = make_request(method, path, data)
        repeatable = request.method in IDEMPOTENT_METHODS if idempotent is None else idempotent
        failure: ClientError | None = None
        for _ in range(1 + max(0, retries)):
            endpoints = await self.resolve(service, timeout)
            now = trio.current_time()
            avoid = [t for t, until in self._failed.items() if until > now]
            targets = attempt_order(endpoints, avoid, self._turns.get(service, 0))
            self._turns[service] = self._turns.get(service, 0) + 1
            if not targets:
                # Forget this answer: a cached "nothing runs" would hide an
                # instance that starts now for up to RESOLVE_TTL.
                self._cache.pop(service, None)
                states = sorted({f"{e.instance}:{e.state}/{e.health}" for e in endpoints})
                raise ServiceUnavailable(f"no running endpoint of {service!r} "
                                         f"({', '.join(states) or 'no instances'})")
            target = targets[0]
            may_have_run = False
            try:
                response = await self._attempt(target, service, request, timeout)
            except RpcTimeout as exc:
                failure = CallTimeout(f"{service}: {exc}")
                may_have_run = True
            except RpcError as exc:
                failure = ServiceUnavailable(f"{service}: {exc}")
            else:
                if response.status < 400:
                    return Reply(response.status, response.body, response.content_format)
                error = RemoteError(response.status, response.error)
                if response.status not in RETRYABLE_STATUSES:
                    raise error
                failure = error
                may_have_run = response.status in MAYBE_RAN_STATUSES
            self._failed[target] = trio.current_time() + AVOID_FAILED
            self._cache.pop(service, None)
            if may_have_run and not repeatable:
                raise failure
        assert failure is not None
        raise failure

    async def _attempt(self, target: Target, service: str, request: Request, timeout: float
                       ) -> Response:
        if target.kind == "zmq":
            return await zmq_call(target.address, request, timeout, keys=self.keys)
        if target.kind == "http":
            return await http_call(target.address, request, timeout)
        if self.keys is not None:  # the gateway's authenticated link
            from nanomesh.gateway.link import GATEWAY_PREFIX, link_path
            linked = Request(request.method, link_path(GATEWAY_PREFIX, service, request.path),
                             request.body, request.content_format, request.query)
            return await zmq_call(_host_port(self.host, self._coap_port), linked, timeout,
                                  keys=self.keys)
        coap = await self._coap_client()
        # A service's root is /s/<service>/ (an empty last segment): the
        # gateway answers /s/<service> itself (`nanomesh.gateway.forward.DescribeRoute`).
        prefix = ("s", service) if request.path else ("s", service, "")
        return await coap.call(self.host, self._coap_port, prefix, request, timeout)

    async def resolve(self, service: str, timeout: float = 2.0) -> list[Endpoint]:
        """The service's endpoints (cached `RESOLVE_TTL` seconds; while the peer
        cannot answer, its last answer for up to `STALE_IF_ERROR` seconds);
        ServiceUnavailable if the peer API is unreachable (and no answer is
        recent enough) or knows no such service."""
        now = trio.current_time()
        cached = self._cache.get(service)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            status, doc = await self._api(
                "GET", "/v1/resolve/" + urllib.parse.quote(service, safe=""), timeout)
        except ServiceUnavailable:
            return self._stale_or_raise(service, now)
        if status == 404:
            raise ServiceUnavailable(f"no service named {service!r} (peer {self.peer})")
        if status >= 500:
            with contextlib.suppress(ServiceUnavailable):
                return self._stale_or_raise(service, now)
        if status != 200:
            raise ServiceUnavailable(f"peer {self.peer} could not resolve {service!r}: "
                                     f"HTTP {status} {_api_error(doc)}")
        endpoints = parse_resolution(doc)
        self._cache[service] = (now + RESOLVE_TTL, endpoints)
        self._last_known[service] = (now, endpoints)
        return endpoints

    def _stale_or_raise(self, service: str, now: float) -> list[Endpoint]:
        known = self._last_known.get(service)
        if known is None or now - known[0] > STALE_IF_ERROR:
            raise ServiceUnavailable(f"cannot reach the peer API at {self.peer} to resolve "
                                     f"{service!r}, and no recent answer to fall back on")
        return known[1]

    async def _api(self, method: str, target: str, timeout: float) -> tuple[int, Any]:
        headers = [("authorization", f"Bearer {self._token}")] if self._token else []
        try:
            with trio.fail_after(timeout):
                reply = await http_request(self.host, self.api_port, method, target,
                                           headers=headers)
        except (trio.TooSlowError, OSError, trio.BrokenResourceError, h11.ProtocolError,
                ValueError) as exc:
            raise ServiceUnavailable(f"cannot reach the peer API at {self.peer}: "
                                     f"{type(exc).__name__} {exc}".rstrip()) from None
        try:
            return reply.status, json.loads(reply.body or b"null")
        except ValueError:
            return reply.status, {"error": reply.body[:200].decode("utf-8", "replace")}

    # ------------------------------------------------------------ events

    async def publish(self, topic: str, data: object) -> None:
        """Publish an event (best effort, see `nanomesh.sdk.events`) through the
        connected peer's relay. ``data`` as for `call`."""
        body, _ = encode_body(data)
        publisher = self._publisher or await self._start(self._host_publisher)
        publisher.publish(topic, body)

    @contextlib.asynccontextmanager
    async def subscribe(self, topic_prefix: str = "") -> AsyncIterator[Subscription]:
        """Events whose topic starts with ``topic_prefix``, from every live peer."""
        async with open_subscription(topic_prefix, self._relays, keys=self.keys) as sub:
            yield sub

    async def _relays(self) -> list[str]:
        status, members = await self._api("GET", "/v1/members", 5.0)
        if status != 200 or not isinstance(members, list):
            raise ServiceUnavailable(f"peer {self.peer}: /v1/members answered {status}")
        relays = []
        for m in members:
            if isinstance(m, dict) and m.get("state") in ("alive", "suspect"):
                host, _, _ = str(m.get("address", "")).rpartition(":")
                if host:
                    host = host.strip("[]")
                    relays.append(f"tcp://[{host}]:{self._xpub_port}" if ":" in host
                                  else f"tcp://{host}:{self._xpub_port}")
        return relays

    # ------------------------------------------------------------ lazily opened parts

    async def _coap_client(self) -> CoapClient:
        return self._coap or await self._start(self._host_coap)

    async def _start(self, host: Any) -> Any:
        """Start ``host`` once in the mesh's nursery (it keeps a context open
        for the mesh's lifetime) and return what it provides."""
        async with self._lazy_lock:
            return await self._nursery.start(host)

    async def _host_coap(self, *, task_status: trio.TaskStatus[CoapClient]) -> None:
        if self._coap is not None:
            task_status.started(self._coap)
            return
        async with open_coap_client() as coap:
            self._coap = coap
            task_status.started(coap)
            await trio.sleep_forever()

    async def _host_publisher(self, *, task_status: trio.TaskStatus[Publisher]) -> None:
        if self._publisher is not None:
            task_status.started(self._publisher)
            return
        async with open_publisher(self.host, self._xsub_port, self.source,
                                  keys=self.keys) as publisher:
            self._publisher = publisher
            task_status.started(publisher)
            await trio.sleep_forever()


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _api_error(doc: Any) -> str:
    return str(doc.get("error", "")) if isinstance(doc, dict) else ""


def default_source() -> str:
    """Who publishes: this instance's id, or ``client:<host>:<pid>``."""
    return os.environ.get("NANOMESH_INSTANCE") or f"client:{socket.gethostname()}:{os.getpid()}"


@contextlib.asynccontextmanager
async def connect(peer: str | None = None, *, coap_port: int = DEFAULT_COAP_PORT,
                  events_xpub_port: int = DEFAULT_XPUB_PORT,
                  events_xsub_port: int = DEFAULT_XSUB_PORT,
                  token: str | None = None, key_file: Path | None = None,
                  keys: Keys = INSTALLED) -> AsyncIterator[Mesh]:
    """A `Mesh` talking to ``peer``'s API (``IP:PORT``; default
    ``$NANOMESH_PEER_API``, else ``$NANOMESH_PEER``, else the first alive
    peer of a running ``nanomesh lab``, else `DEFAULT_PEER`: the peer the
    ``nanomesh`` commands ask, see `nanomesh.labstate.default_peer_api`).
    ``token`` (default ``$NANOMESH_INSTANCE_TOKEN``) is sent to the peer API.
    ``keys`` (default: this process's, else read from ``key_file``, see the
    module docstring; None: plain) authenticate service traffic; ConfigError
    if a key file cannot be read. The ports must match the mesh's peer
    configuration."""
    own = servicekeys.client_keys(key_file) if isinstance(keys, InstalledKeys) else keys
    # An error in the caller's block is re-raised as itself after the nursery
    # closes, not wrapped in an ExceptionGroup, so `except RemoteError` works.
    error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        mesh = Mesh(peer or default_peer(), nursery, coap_port=coap_port,
                    xpub_port=events_xpub_port, xsub_port=events_xsub_port,
                    token=token or os.environ.get("NANOMESH_INSTANCE_TOKEN"),
                    source=default_source(), keys=own)
        try:
            yield mesh
        except BaseException as exc:
            error = exc
        nursery.cancel_scope.cancel()
    if error is not None:
        raise error


def call_sync(service: str, path: str, data: object = None, *, peer: str | None = None,
              method: str = "GET", timeout: float = 2.0, retries: int = 2,
              idempotent: bool | None = None, key_file: Path | None = None) -> Reply:
    """`Mesh.call` for code without an event loop (scripts, the CLI)."""

    async def run() -> Reply:
        async with connect(peer, key_file=key_file) as mesh:
            return await mesh.call(service, path, data, method=method, timeout=timeout,
                                   retries=retries, idempotent=idempotent)

    return trio.run(run)


__all__ = ["CallTimeout", "ClientError", "Endpoint", "Event", "Mesh", "RemoteError", "Reply",
           "ServiceUnavailable", "Target", "attempt_order", "call_sync", "connect",
           "parse_resolution"]
