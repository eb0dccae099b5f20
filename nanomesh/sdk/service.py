"""The SDK for nanoservice authors.

```python
from nanomesh.sdk.service import NanoService

svc = NanoService()

@svc.route("GET", "echo/{text}")
async def echo(call):
    return call.params["text"]                 # str -> text/plain

@svc.route("POST", "readings")
async def add(call):
    reading = call.json()
    await svc.publish("readings/new", reading)
    return {"stored": True}                    # dict/list -> JSON

@svc.on_stop
async def bye():
    await svc.save_state(b"...")               # handed to the runtime for a seed file

svc.run()
```

The nanomesh runtime starts the program as a process with this environment
(`ServiceEnv.from_environ` reads it): ``NANOMESH_SERVICE``,
``NANOMESH_INSTANCE`` (``name/index``), ``NANOMESH_HOST`` (the IP to bind),
``NANOMESH_ENDPOINTS`` (JSON ``{"api": {"protocol": "zmq", "port": 5701}}``),
``NANOMESH_PORT_<ENDPOINT>`` and ``NANOMESH_PORT`` (the same ports, for
programs that do not use this SDK), ``NANOMESH_PEER_API`` (``ip:port`` of the
local peer's HTTP API), ``NANOMESH_INSTANCE_TOKEN`` (bearer token for it),
``NANOMESH_VISIBILITY`` and, in a mesh with a cluster key, the CURVE keys of
service traffic (``NANOMESH_CURVE_*``, `nanomesh.security.servicekeys`).

**Who is answered.** In a mesh with a key, the ZeroMQ endpoints admit only
mesh members (CURVE, whatever the visibility). A ``private`` service's CoAP
and HTTP endpoints answer only the instance's own peer (its gateway, which
forwards members' requests) and refuse everyone else (4.01 / 403); a
``public`` one answers anyone.

`NanoService.run` serves every declared endpoint with the same routes, by
protocol: ``zmq`` (`nanomesh.transport.rpc.serve_rpc`), ``coap`` (`nanomesh.transport.coapio`) and
``http`` (`nanomesh.transport.httpio`). SIGTERM or SIGINT runs the ``on_stop`` hook (at
most `STOP_HOOK_TIMEOUT` seconds), then stops serving and returns.

A handler takes one `Call` and returns a `Response`, bytes, str, a JSON-able
value, or None (an empty 200); raising `ServiceError(status, message)` answers
that status; any other exception answers 500 with its message, and the
service carries on.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio

from nanomesh.errors import ConfigError, NanomeshError
from nanomesh.sdk.client import Mesh, Reply, connect
from nanomesh.security.servicekeys import ENV_VISIBILITY, ServiceKeys
from nanomesh.transport.coapio import serve_coap
from nanomesh.transport.httpio import http_request, serve_http_calls
from nanomesh.transport.rpc import serve_rpc
from nanomesh.wire.service_traffic import METHODS, Request, Response, encode_body

log = logging.getLogger("nanomesh.service")

STOP_HOOK_TIMEOUT = 5.0
"""Longest the ``on_stop`` hook may run, in seconds; keep it below the
runtime's stop timeout, after which the process group is SIGKILLed."""
STATE_TIMEOUT = 10.0
"""Seconds `NanoService.save_state` / `load_state` wait for the peer API."""
PROTOCOLS = ("zmq", "coap", "http")

RouteHandler = Callable[["Call"], Awaitable[Any]]
StopHook = Callable[[], Awaitable[None]]
F = TypeVar("F", bound=Callable[..., Any])


class ServiceError(NanomeshError):
    """Raise in a handler to answer ``status`` (4xx/5xx) with ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Call:
    """What a handler receives: the request and the route's path parameters."""

    method: str
    path: str
    params: Mapping[str, str]
    body: bytes
    content_format: int | None
    query: str

    def json(self) -> Any:
        """The body as JSON; ServiceError 400 if it is not."""
        try:
            return json.loads(self.body or b"null")
        except ValueError as exc:
            raise ServiceError(400, f"body is not JSON: {exc}") from None

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    @property
    def args(self) -> dict[str, str]:
        """The query string as a dict (last value wins)."""
        return dict(urllib.parse.parse_qsl(self.query))


# ------------------------------------------------------------------ routing (pure)


def split_route(pattern: str) -> tuple[str, ...]:
    """Segments of a route pattern or a request path, without empty ones."""
    return tuple(s for s in pattern.strip("/").split("/") if s)


def match_route(pattern: tuple[str, ...], path: str) -> dict[str, str] | None:
    """Path parameters if ``path`` matches ``pattern`` (``{name}`` matches one
    segment, percent-decoded), else None."""
    segments = split_route(path)
    if len(segments) != len(pattern):
        return None
    params = {}
    for want, got in zip(pattern, segments, strict=True):
        if want.startswith("{") and want.endswith("}"):
            params[want[1:-1]] = urllib.parse.unquote(got)
        elif want != got:
            return None
    return params


def to_response(value: object) -> Response:
    """A handler's return value as a `Response` (see the module docstring)."""
    if isinstance(value, Response):
        return value
    body, cf = encode_body(value)
    return Response(200, body, cf)


@dataclass(frozen=True)
class Route:
    method: str
    pattern: tuple[str, ...]
    handler: RouteHandler


# ------------------------------------------------------------------ environment (pure)


@dataclass(frozen=True)
class ServiceEnv:
    service: str
    instance: str
    host: str
    endpoints: dict[str, tuple[str, int]]
    """name -> (protocol, port)"""
    peer_api: str | None
    token: str | None
    keys: ServiceKeys | None = None
    """CURVE keys of service traffic; None in a mesh without a cluster key."""
    visibility: str = "private"

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> ServiceEnv:
        """Read the runtime's variables; ConfigError naming a missing or bad one."""
        def need(key: str) -> str:
            value = env.get(key, "")
            if not value:
                raise ConfigError(f"${key} is not set: run this nanoservice through the "
                                  "nanomesh runtime, or set the NANOMESH_* variables yourself")
            return value

        try:
            raw = json.loads(need("NANOMESH_ENDPOINTS"))
        except ValueError as exc:
            raise ConfigError(f"$NANOMESH_ENDPOINTS is not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError("$NANOMESH_ENDPOINTS must be a JSON object of endpoints")
        endpoints = {str(name): _endpoint(str(name), spec) for name, spec in raw.items()}
        visibility = env.get(ENV_VISIBILITY) or "private"
        if visibility not in ("private", "public"):
            raise ConfigError(f"${ENV_VISIBILITY} must be private or public, got {visibility!r}")
        return cls(need("NANOMESH_SERVICE"), need("NANOMESH_INSTANCE"), need("NANOMESH_HOST"),
                   endpoints, env.get("NANOMESH_PEER_API") or None,
                   env.get("NANOMESH_INSTANCE_TOKEN") or None,
                   ServiceKeys.from_environ(env), visibility)


def _endpoint(name: str, spec: object) -> tuple[str, int]:
    where = f"$NANOMESH_ENDPOINTS[{name!r}]"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} must be an object with protocol and port")
    protocol, port = spec.get("protocol"), spec.get("port")
    if protocol not in PROTOCOLS:
        raise ConfigError(f"{where}.protocol must be one of {', '.join(PROTOCOLS)}, "
                          f"got {protocol!r}")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ConfigError(f"{where}.port must be 1-65535, got {port!r}")
    return protocol, port


# ------------------------------------------------------------------ the service


@dataclass
class NanoService:
    """Routes plus the machinery to serve them; see the module docstring."""

    name: str | None = None
    routes: list[Route] = field(default_factory=list)
    env: ServiceEnv | None = None
    _stop_hooks: list[StopHook] = field(default_factory=list)
    _tasks: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    _mesh: Mesh | None = None

    def route(self, method: str, pattern: str) -> Callable[[F], F]:
        """Register ``async def handler(call: Call)`` for ``method pattern``."""
        method = method.upper()
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")

        def register(handler: F) -> F:
            self.routes.append(Route(method, split_route(pattern), handler))
            return handler

        return register

    def on_stop(self, hook: StopHook) -> StopHook:
        """Register ``async def hook()`` to run on SIGTERM before the service stops."""
        self._stop_hooks.append(hook)
        return hook

    def task(self, fn: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """Register ``async def fn()`` to run beside the endpoints once they
        serve (a sensor's read loop); cancelled when the service stops. An
        exception in it stops the service (the runtime restarts it)."""
        self._tasks.append(fn)
        return fn

    async def dispatch(self, request: Request) -> Response:
        """Answer one request from the routes (404 / 405 when none fits)."""
        allowed = False
        for route in self.routes:
            params = match_route(route.pattern, request.path)
            if params is None:
                continue
            if route.method != request.method:
                allowed = True
                continue
            call = Call(request.method, request.path, params, request.body,
                        request.content_format, request.query)
            try:
                return to_response(await route.handler(call))
            except ServiceError as exc:
                return Response(exc.status, error=exc.message[:4096])
        if allowed:
            return Response(405, error=f"method {request.method} not allowed on "
                                       f"/{request.path}")
        return Response(404, error=f"no route for /{request.path}")

    # ------------------------------------------------------------ running

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT (the program's entry point)."""
        if not logging.getLogger().handlers:
            logging.basicConfig(level=logging.INFO,
                                format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        trio.run(self.serve)

    async def serve(self, env: ServiceEnv | None = None, *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve every endpoint of ``env`` (default: the process environment)."""
        self.env = env or ServiceEnv.from_environ(os.environ)
        if self.name is None:
            self.name = self.env.service
        async with connect(self.env.peer_api, token=self.env.token, keys=self.env.keys) as mesh, \
                trio.open_nursery() as nursery:
            self._mesh = mesh
            await nursery.start(self._watch_signals, nursery.cancel_scope)
            for name, (protocol, port) in self.env.endpoints.items():
                await nursery.start(self._serve_endpoint, protocol, port)
                log.info("%s: endpoint %s (%s) on %s:%d", self.env.instance, name, protocol,
                         self.env.host, port)
            for fn in self._tasks:
                nursery.start_soon(fn)
            task_status.started()
        log.info("%s stopped", self.env.instance)

    async def _serve_endpoint(self, protocol: str, port: int, *,
                              task_status: trio.TaskStatus[Any]) -> None:
        assert self.env is not None
        host = self.env.host
        # A private service's plain endpoints answer only its own peer (see
        # the module docstring); without keys nothing is private.
        only = host if self.env.visibility == "private" and self.env.keys else None
        if protocol == "zmq":
            address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            await serve_rpc(address, self.dispatch, keys=self.env.keys, task_status=task_status)
        elif protocol == "coap":
            await serve_coap(host, port, self.dispatch, only_from=only, task_status=task_status)
        else:
            await serve_http_calls(host, port, self.dispatch, only_from=only,
                                   task_status=task_status)

    async def _watch_signals(self, scope: trio.CancelScope, *,
                             task_status: trio.TaskStatus[None]) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for signum in signals:
                log.info("received %s: stopping", signal.Signals(signum).name)
                with trio.move_on_after(STOP_HOOK_TIMEOUT) as hooks:
                    for hook in self._stop_hooks:
                        try:
                            await hook()
                        except Exception:
                            log.exception("on_stop hook %s failed", hook.__name__)
                if hooks.cancelled_caught:
                    log.warning("on_stop hooks took over %.0fs; stopping anyway",
                                STOP_HOOK_TIMEOUT)
                scope.cancel()
                return

    # ------------------------------------------------------------ talking to the mesh

    def _require_mesh(self) -> Mesh:
        if self._mesh is None:
            raise RuntimeError("the service is not running (call this from a handler or hook)")
        return self._mesh

    async def call(self, service: str, path: str, data: object = None, *, method: str = "GET",
                   timeout: float = 2.0, retries: int = 2, idempotent: bool | None = None
                   ) -> Reply:
        """Call another service by name (see `nanomesh.sdk.client.Mesh.call`)."""
        return await self._require_mesh().call(service, path, data, method=method,
                                               timeout=timeout, retries=retries,
                                               idempotent=idempotent)

    async def publish(self, topic: str, data: object) -> None:
        """Publish an event through the local peer's relay (`nanomesh.sdk.events`)."""
        await self._require_mesh().publish(topic, data)

    async def save_state(self, blob: bytes) -> None:
        """Hand a state blob to the local peer, which keeps it for the
        instance's seed file. NanomeshError if the peer refuses or is unreachable."""
        status, body = await self._state("PUT", blob)
        if status not in (200, 201, 204):
            raise NanomeshError(f"saving state: peer API answered {status} "
                                f"{body[:200].decode('utf-8', 'replace')}")

    async def load_state(self) -> bytes | None:
        """The state blob saved for this instance (e.g. restored from a seed
        file), or None if there is none."""
        status, body = await self._state("GET", b"")
        if status == 404:
            return None
        if status != 200:
            raise NanomeshError(f"loading state: peer API answered {status} "
                                f"{body[:200].decode('utf-8', 'replace')}")
        return body

    async def _state(self, method: str, blob: bytes) -> tuple[int, bytes]:
        env = self.env or ServiceEnv.from_environ(os.environ)
        if env.peer_api is None:
            raise NanomeshError("$NANOMESH_PEER_API is not set: no peer to keep the state")
        host, _, port = env.peer_api.rpartition(":")
        target = f"/v1/instances/{urllib.parse.quote(env.instance, safe='')}/state"
        headers = [("content-type", "application/octet-stream")]
        if env.token:
            headers.append(("authorization", f"Bearer {env.token}"))
        try:
            with trio.fail_after(STATE_TIMEOUT):
                reply = await http_request(host.strip("[]"), int(port), method, target, blob,
                                           headers)
        except (trio.TooSlowError, OSError, trio.BrokenResourceError) as exc:
            raise NanomeshError(f"cannot reach the peer API at {env.peer_api}: "
                                f"{type(exc).__name__} {exc}".rstrip()) from None
        return reply.status, reply.body
