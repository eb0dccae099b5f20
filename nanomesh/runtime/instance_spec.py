"""The ``run`` section of a nanoservice spec: what to execute for one instance.

The service document is a plain dict, validated upstream
(:mod:`nanomesh.runtime.manifest`, :mod:`nanomesh.placement.requirements`); its ``run``
section is read again here, on the peer that runs it, just as strictly: the
document may come from the API or an older peer, and a bad field would
otherwise surface as a puzzling crash loop on some far-away peer::

    "run": {"command": ["python3", "-m", "sensor_reader", "--hz", "2"],
            "env": {"SENSOR": "pir"},
            "cwd": "/opt/nanomesh/services/sensor-reader"}

``command`` is an argv list (no shell), ``env`` is added to the daemon's
environment, ``cwd`` is a directory: absolute, or relative to the service's
bundle (``null``: the bundle's root, or the daemon's directory without one).
For ``kind = "container"`` the command is optional (the image's own).

:func:`instance_spec_from` reads everything else the runtime needs from a
service document into an :class:`InstanceSpec`: the kind, the container
section, the endpoints, the health check, the restart policy and the resource
limits (each documented on its class; manifest syntax in
:mod:`nanomesh.runtime.manifest`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from nanomesh.checks import is_int, is_number, is_port, is_sha256_hex, kind_name
from nanomesh.config import (
    DEFAULT_API_PORT,
    DEFAULT_COAP_PORT,
    DEFAULT_EVENTS_XPUB_PORT,
    DEFAULT_EVENTS_XSUB_PORT,
    DEFAULT_GOSSIP_PORT,
    DEFAULT_RAFT_PORT,
)
from nanomesh.placement.requirements import SpecError

RESERVED_ENV = frozenset({"NANOMESH_INSTANCE", "NANOMESH_SERVICE", "NANOMESH_HOST",
                          "NANOMESH_PORT", "NANOMESH_ENDPOINTS", "NANOMESH_PEER_API",
                          "NANOMESH_INSTANCE_TOKEN", "NANOMESH_VISIBILITY",
                          "NANOMESH_CURVE_SECRET", "NANOMESH_CURVE_ACCEPT",
                          "NANOMESH_CURVE_PUBLISHER"})
"""Variables the runtime sets for every instance (see :data:`ENV_CONTRACT`);
a spec may not override them, nor any ``NANOMESH_PORT_*``."""

ENV_CONTRACT = """\
NANOMESH_SERVICE        the service name
NANOMESH_INSTANCE       the instance id, "name/index"
NANOMESH_HOST           the IP to bind (the peer's gossip IP)
NANOMESH_PORT_<NAME>    the port of endpoint NAME (upper-cased, non-alphanumerics -> _)
NANOMESH_PORT           the first endpoint's port
NANOMESH_ENDPOINTS      JSON {"name": {"protocol": ..., "port": ...}}
NANOMESH_PEER_API       "ip:port" of the local peer's HTTP API
NANOMESH_INSTANCE_TOKEN bearer token for this instance's calls to that API
NANOMESH_VISIBILITY     "private" or "public" (the manifest's visibility)
NANOMESH_CURVE_SECRET   the mesh's service CURVE secret key (Z85), in a mesh with a
NANOMESH_CURVE_ACCEPT   cluster key: the keys of service traffic (nanomesh.security.servicekeys),
NANOMESH_CURVE_PUBLISHER derived from it; never the cluster key itself
PATH                    the daemon's PATH with its own Python's directory first, so
                        "python3" is the interpreter nanomesh (and its SDK) lives in"""
"""What every instance finds in its environment (the SDK, ``nanomesh.sdk.service``,
reads it)."""

RUN_KEYS = ("command", "env", "cwd")


class RunSpecError(SpecError):
    """The ``run`` section is invalid; ``field`` is its dotted path
    (``"run.command[0]"``)."""


def _frozen_env() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class RunSpec:
    """A validated ``run`` section."""

    command: tuple[str, ...]
    """argv; ``command[0]`` is looked up on ``PATH`` unless it contains a ``/``
    (a relative path is relative to ``cwd``)."""
    env: Mapping[str, str] = field(default_factory=_frozen_env)
    """Added to the daemon's environment (overriding it)."""
    cwd: str | None = None
    """Absolute working directory; ``None``: the daemon's."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "command", tuple(self.command))
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))

    def to_dict(self) -> dict[str, Any]:
        return {"command": list(self.command), "env": dict(self.env), "cwd": self.cwd}


def run_spec_from(spec: Mapping[str, Any], *, required: bool = True) -> RunSpec:
    """Read and check the ``run`` section of ``spec``: a service document
    (:mod:`nanomesh.runtime.manifest`) or any service dict with a ``run`` key.

    Raises :class:`RunSpecError` naming the field (``run``, ``run.command``,
    ``run.command[2]``, ``run.env.PORT``, ``run.cwd``, or an unknown
    ``run.<key>``) and the service when ``spec["name"]`` is a string.
    """
    name = spec.get("name") if isinstance(spec, Mapping) else None
    service = name if isinstance(name, str) else None
    if not isinstance(spec, Mapping):
        raise RunSpecError("spec", f"must be a mapping, got {kind_name(spec)}")
    run = spec.get("run")
    if run is None and not required:
        run = {}
    if run is None:
        raise RunSpecError("run", "missing: a nanoservice needs a run section with a command",
                           service)
    if not isinstance(run, Mapping):
        raise RunSpecError("run", f"must be a mapping, got {kind_name(run)}", service)
    for key in run:
        if key not in RUN_KEYS:
            raise RunSpecError(f"run.{key}", f"unknown key; expected one of {', '.join(RUN_KEYS)}",
                               service)
    return RunSpec(command=_command(run.get("command"), service, optional=not required),
                   env=_env(run.get("env"), service),
                   cwd=_cwd(run.get("cwd"), service))


def _command(value: Any, service: str | None, optional: bool = False) -> tuple[str, ...]:
    if optional and value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise RunSpecError("run.command", "must be a non-empty list of strings (argv, no shell), "
                                          f"got {kind_name(value)}", service)
    if not value:
        raise RunSpecError("run.command", "must not be empty", service)
    for i, arg in enumerate(value):
        if not isinstance(arg, str):
            raise RunSpecError(f"run.command[{i}]", f"must be a string, got {kind_name(arg)}",
                               service)
        if "\0" in arg:
            raise RunSpecError(f"run.command[{i}]", "must not contain NUL characters", service)
    if not value[0]:
        raise RunSpecError("run.command[0]", "the program must not be an empty string", service)
    return tuple(value)


def _env(value: Any, service: str | None) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise RunSpecError("run.env", f"must be a mapping of strings, got {kind_name(value)}",
                           service)
    for key, val in value.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise RunSpecError(f"run.env[{key!r}]",
                               "names must be non-empty strings without '=' or NUL", service)
        if key in RESERVED_ENV or key.startswith("NANOMESH_PORT_"):
            raise RunSpecError(f"run.env.{key}", "is set by the runtime and cannot be overridden",
                               service)
        if not isinstance(val, str):
            raise RunSpecError(f"run.env.{key}", f"must be a string, got {kind_name(val)}", service)
        if "\0" in val:
            raise RunSpecError(f"run.env.{key}", "must not contain NUL characters", service)
    return dict(value)


def _cwd(value: Any, service: str | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or "\0" in value:
        raise RunSpecError("run.cwd", f"must be a path or null, got {value!r}", service)
    if not os.path.isabs(value) and ".." in Path(value).parts:
        raise RunSpecError("run.cwd", f"a relative cwd must stay inside the bundle, got {value!r}",
                           service)
    return value


# -- the rest of the runtime's view of a service ---------------------------------------------

KINDS = ("process", "container")
PROTOCOLS = ("coap", "zmq", "http")
HEALTH_CHECKS = ("none", "tcp", "http", "coap", "zmq", "exec")
RESTART_POLICIES = ("always", "on-failure", "never")
MODES = ("active", "idle")

DEFAULT_HEALTH_INTERVAL = 5.0
"""Seconds between health checks of a healthy instance: a dead endpoint is
noticed within ``interval * retries`` (15 s), about when gossip would have
noticed a dead peer, at one connection per instance every 5 s."""
DEFAULT_HEALTH_TIMEOUT = 1.0
"""Seconds one check may take; loopback and LAN answers take milliseconds."""
DEFAULT_HEALTH_RETRIES = 3
"""Consecutive failed checks that make a healthy instance unhealthy (and, by
the restart policy, restarted): one lost datagram or a GC pause is not enough."""
DEFAULT_START_PERIOD = 30.0
"""Seconds a starting instance has to pass its first check before it counts
as failed (a Pi loading a model can take this long); checks run every
:data:`START_POLL` meanwhile, so a fast service is ``healthy`` within
milliseconds of answering."""
START_POLL = 0.02
"""Seconds between checks until the first success: placement-to-healthy is
a headline number (target 150 ms), so we look often while it matters."""
MAX_ENDPOINTS = 16

RESERVED_PORTS: Mapping[int, str] = MappingProxyType({
    DEFAULT_GOSSIP_PORT: "gossip", DEFAULT_API_PORT: "peer API", DEFAULT_RAFT_PORT: "Raft",
    DEFAULT_COAP_PORT: "CoAP gateway", DEFAULT_EVENTS_XPUB_PORT: "event relay XPUB",
    DEFAULT_EVENTS_XSUB_PORT: "event relay XSUB"})
"""nanomesh's default ports (on every peer's IP, where instances bind too),
refused as an endpoint's fixed port: an instance there fails to bind, or, for
the CoAP gateway (aiocoap binds with SO_REUSEPORT), silently shares the port
and gets the gateway's requests, which it may forward back to a gateway."""


class SpecFieldError(RunSpecError):
    """A section other than ``run`` is invalid (same shape: dotted field path)."""


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """One endpoint the service offers: ``[[endpoints]] name, protocol, port``."""

    name: str
    protocol: str
    """``coap`` (UDP), ``zmq`` (a ROUTER socket speaking :mod:`nanomesh.wire.service_traffic`)
    or ``http``."""
    port: int | None = None
    """A fixed port, or None (``"auto"``): the runtime picks a free one per
    instance and passes it in ``NANOMESH_PORT_<NAME>``."""

    @property
    def env_name(self) -> str:
        return "NANOMESH_PORT_" + "".join(c if c.isalnum() else "_" for c in self.name.upper())

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "protocol": self.protocol,
                "port": "auto" if self.port is None else self.port}


@dataclass(frozen=True, slots=True)
class HealthSpec:
    """``[health]``: how the runtime tells that a running instance works.

    ``check``: ``none`` (running is enough), ``tcp`` (the endpoint's port
    accepts a connection), ``http`` (``GET path`` answers 2xx), ``coap`` (a
    CoAP ping, or ``GET path`` answering 2.xx when ``path`` is set), ``zmq``
    (an rpc ``GET path`` answering 2xx), ``exec`` (``command`` exits 0).
    Without a ``[health]`` section: ``tcp`` for a first endpoint speaking zmq or
    http, ``coap`` (ping) for coap, ``none`` without endpoints.
    """

    check: str = "none"
    endpoint: str | None = None
    """Which endpoint to check (default: the first)."""
    path: str = ""
    command: tuple[str, ...] = ()
    interval: float = DEFAULT_HEALTH_INTERVAL
    timeout: float = DEFAULT_HEALTH_TIMEOUT
    retries: int = DEFAULT_HEALTH_RETRIES
    start_period: float = DEFAULT_START_PERIOD

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "endpoint": self.endpoint, "path": self.path,
                "command": list(self.command), "interval": self.interval,
                "timeout": self.timeout, "retries": self.retries,
                "start_period": self.start_period}


@dataclass(frozen=True, slots=True)
class Limits:
    """``[limits]``: enforced with cgroups where the machine offers them (the
    runtime warns where it cannot). None: no limit."""

    memory_mb: int | None = None
    """Hard memory limit; an instance above it is killed by the kernel (and
    reported as killed by its memory limit)."""
    cpu: float | None = None
    """CPU quota in cores (0.5 = half a core)."""
    pids: int | None = None
    """Most processes/threads the instance may have (a fork bomb stops here)."""

    def to_dict(self) -> dict[str, Any]:
        return {"memory_mb": self.memory_mb, "cpu": self.cpu, "pids": self.pids}

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.memory_mb, self.cpu, self.pids))


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    """``[container]`` of a ``kind = "container"`` service: an OCI image (run by
    podman or docker), or a root filesystem shipped in the service's bundle
    (``rootfs``: a folder, or a ``.tar``/``.tar.gz`` file, relative to the
    bundle; run by runc directly, or imported into podman/docker)."""

    image: str | None = None
    rootfs: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image, "rootfs": self.rootfs}


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    """Everything the runtime needs to run one instance of a service."""

    service: str
    kind: str
    run: RunSpec
    container: ContainerSpec | None = None
    endpoints: tuple[EndpointSpec, ...] = ()
    health: HealthSpec = field(default_factory=HealthSpec)
    restart: str = "always"
    """``always`` (default: a nanoservice should be up), ``on-failure`` (a job
    that may finish: exit 0 is final), ``never``."""
    limits: Limits = field(default_factory=Limits)
    bundle: str | None = None
    """sha256 of the service's bundle, fetched before the first start."""
    mode: str = "active"
    """``idle``: placed and prepared (bundle fetched) but not started until
    ``nanomesh activate``."""
    visibility: str = "private"
    """``private`` or ``public`` (`nanomesh.runtime.manifest.VISIBILITIES`); the
    instance learns it from ``NANOMESH_VISIBILITY``."""


def instance_spec_from(doc: Mapping[str, Any]) -> InstanceSpec:
    """Read a service document (see :mod:`nanomesh.runtime.manifest`) into an
    :class:`InstanceSpec`. Raises :class:`RunSpecError` naming the field."""
    if not isinstance(doc, Mapping):
        raise RunSpecError("spec", f"must be a mapping, got {kind_name(doc)}")
    name = doc.get("name")
    service = name if isinstance(name, str) else "?"
    kind = doc.get("kind", "process")
    if kind not in KINDS:
        raise SpecFieldError("kind", f"must be one of {', '.join(KINDS)}, got {kind!r}", service)
    run = run_spec_from(doc, required=kind == "process")
    container = _container(doc.get("container"), kind, service)
    endpoints = _endpoints(doc.get("endpoints"), service)
    return InstanceSpec(
        service=service, kind=kind, run=run, container=container, endpoints=endpoints,
        health=_health(doc.get("health"), endpoints, service),
        restart=_choice(_table(doc.get("restart"), "restart", service, ("policy",)).get(
            "policy", "always"), RESTART_POLICIES, "restart.policy", service),
        limits=_limits(doc.get("limits"), service),
        bundle=_bundle(doc.get("bundle"), service),
        mode=_choice(doc.get("mode", "active"), MODES, "mode", service),
        visibility=_choice(doc.get("visibility", "private"), ("private", "public"),
                           "visibility", service))


def runtime_sections(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The validated runtime sections of a manifest, normalised for the
    replicated service document (``run``, ``container``, ``endpoints``,
    ``health``, ``restart``, ``limits``). Raises :class:`RunSpecError`."""
    spec = instance_spec_from(doc)
    out: dict[str, Any] = {"run": spec.run.to_dict(),
                           "endpoints": [e.to_dict() for e in spec.endpoints],
                           "health": spec.health.to_dict(), "restart": {"policy": spec.restart},
                           "limits": spec.limits.to_dict()}
    if spec.container is not None:
        out["container"] = spec.container.to_dict()
    return out


def _table(value: Any, where: str, service: str, keys: tuple[str, ...]) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecFieldError(where, f"must be a table, got {kind_name(value)}", service)
    for key in value:
        if key not in keys:
            raise SpecFieldError(f"{where}.{key}", f"unknown key; expected one of "
                                 f"{', '.join(keys)}", service)
    return value


def _choice(value: Any, choices: tuple[str, ...], where: str, service: str) -> str:
    if value not in choices:
        raise SpecFieldError(where, f"must be one of {', '.join(choices)}, got {value!r}",
                             service)
    return str(value)


def _container(value: Any, kind: str, service: str) -> ContainerSpec | None:
    if kind != "container":
        if value is not None:
            raise SpecFieldError("container", 'only for kind = "container"', service)
        return None
    table = _table(value, "container", service, ("image", "rootfs"))
    image, rootfs = table.get("image"), table.get("rootfs")
    for key, val in (("image", image), ("rootfs", rootfs)):
        if val is not None and (not isinstance(val, str) or not val or "\0" in val):
            raise SpecFieldError(f"container.{key}", f"must be a non-empty string, got {val!r}",
                                 service)
    if (image is None) == (rootfs is None):
        raise SpecFieldError("container", "give exactly one of image (an OCI image for "
                             "podman/docker) or rootfs (a folder or tarball in the service "
                             "folder)", service)
    if rootfs is not None and (os.path.isabs(rootfs) or ".." in Path(rootfs).parts):
        raise SpecFieldError("container.rootfs", "must be a path inside the service folder, "
                             f"got {rootfs!r}", service)
    return ContainerSpec(image=image, rootfs=rootfs)


def _endpoints(value: Any, service: str) -> tuple[EndpointSpec, ...]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise SpecFieldError("endpoints", "must be a list of tables ([[endpoints]])", service)
    if len(value) > MAX_ENDPOINTS:
        raise SpecFieldError("endpoints", f"at most {MAX_ENDPOINTS}", service)
    out: list[EndpointSpec] = []
    for i, item in enumerate(value):
        where = f"endpoints[{i}]"
        table = _table(item, where, service, ("name", "protocol", "port"))
        name = table.get("name")
        if not (isinstance(name, str) and name and len(name) <= 32
                and all(c.isalnum() or c in "-_" for c in name)):
            raise SpecFieldError(f"{where}.name", "must be 1-32 letters, digits, - or _, got "
                                 f"{name!r}", service)
        if any(e.name == name for e in out):
            raise SpecFieldError(f"{where}.name", f"duplicate endpoint name {name!r}", service)
        protocol = _choice(table.get("protocol"), PROTOCOLS, f"{where}.protocol", service)
        port = table.get("port", "auto")
        if port == "auto":
            port = None
        elif not is_port(port):
            raise SpecFieldError(f"{where}.port", f'must be 1-65535 or "auto", got {port!r}',
                                 service)
        elif port in RESERVED_PORTS:
            raise SpecFieldError(f"{where}.port", f"{port} is nanomesh's {RESERVED_PORTS[port]} "
                                 f'port on every peer; choose another port or "auto"', service)
        out.append(EndpointSpec(name, protocol, port))
    return tuple(out)


def _health(value: Any, endpoints: tuple[EndpointSpec, ...], service: str) -> HealthSpec:
    table = _table(value, "health", service, ("check", "endpoint", "path", "command",
                                              "interval", "timeout", "retries",
                                              "start_period"))
    default = "none"
    if endpoints:
        default = "coap" if endpoints[0].protocol == "coap" else "tcp"
    check = _choice(table.get("check", default), HEALTH_CHECKS, "health.check", service)
    endpoint = table.get("endpoint")
    if check in ("tcp", "http", "coap", "zmq"):
        if not endpoints:
            raise SpecFieldError("health.check", f"a {check} check needs an endpoint; declare "
                                 "one in [[endpoints]] or use exec/none", service)
        if endpoint is None:
            endpoint = endpoints[0].name
        if not any(e.name == endpoint for e in endpoints):
            raise SpecFieldError("health.endpoint", f"no endpoint named {endpoint!r}", service)
    elif endpoint is not None:
        raise SpecFieldError("health.endpoint", f"not used by a {check} check", service)
    path = _health_path(table.get("path", ""), service)
    command: tuple[str, ...] = ()
    if check == "exec":
        command = _command(table.get("command"), service)
    elif table.get("command"):  # [] is the normalised "no command"
        raise SpecFieldError("health.command", "only for an exec check", service)
    numbers = {}
    for key, default_value, minimum in (("interval", DEFAULT_HEALTH_INTERVAL, 0.05),
                                        ("timeout", DEFAULT_HEALTH_TIMEOUT, 0.01),
                                        ("start_period", DEFAULT_START_PERIOD, 0.0)):
        v = table.get(key, default_value)
        if not (is_number(v) and minimum <= v <= 3600):
            raise SpecFieldError(f"health.{key}", f"must be seconds in [{minimum}, 3600], "
                                 f"got {v!r}", service)
        numbers[key] = float(v)
    retries = table.get("retries", DEFAULT_HEALTH_RETRIES)
    if not (is_int(retries) and 1 <= retries <= 100):
        raise SpecFieldError("health.retries", f"must be an integer 1-100, got {retries!r}",
                             service)
    return HealthSpec(check=check, endpoint=endpoint, path=path, command=command,
                      retries=retries, **numbers)


HEALTH_PATH_MAX = 1024
"""Longest ``health.path`` (characters): what the zmq rpc wire accepts for a
request path; a URL path longer than that is not a health endpoint."""
HEALTH_SEGMENT_MAX = 255
"""Longest ``/``-separated segment of ``health.path``, in UTF-8 bytes: a CoAP
Uri-Path option (RFC 7252 §5.10.1)."""


def _health_path(path: Any, service: str) -> str:
    """``health.path``: printable text (no control characters: it goes into an
    HTTP request line, a CoAP option, an rpc request), valid UTF-8, at most
    :data:`HEALTH_PATH_MAX` characters, segments of at most
    :data:`HEALTH_SEGMENT_MAX` bytes."""
    if not isinstance(path, str):
        raise SpecFieldError("health.path", f"must be a string, got {kind_name(path)}", service)
    if len(path) > HEALTH_PATH_MAX:
        raise SpecFieldError("health.path", f"at most {HEALTH_PATH_MAX} characters, got "
                             f"{len(path)}", service)
    try:
        segments = [s.encode() for s in path.split("/")]
    except UnicodeEncodeError:
        raise SpecFieldError("health.path", "not valid UTF-8 text (a lone surrogate?)",
                             service) from None
    if not path.isprintable():
        raise SpecFieldError("health.path", f"must be printable text, got {path!r}", service)
    if any(len(s) > HEALTH_SEGMENT_MAX for s in segments):
        raise SpecFieldError("health.path", f"each /-separated segment at most "
                             f"{HEALTH_SEGMENT_MAX} bytes (UTF-8)", service)
    return path


def _limits(value: Any, service: str) -> Limits:
    table = _table(value, "limits", service, ("memory_mb", "cpu", "pids"))
    memory, cpu, pids = table.get("memory_mb"), table.get("cpu"), table.get("pids")
    if memory is not None and not (is_int(memory) and 4 <= memory <= 1 << 20):
        raise SpecFieldError("limits.memory_mb", f"must be an integer >= 4 (MiB), got {memory!r}",
                             service)
    if cpu is not None and not (is_number(cpu) and 0.01 <= cpu <= 1024):
        raise SpecFieldError("limits.cpu", f"must be cores in [0.01, 1024], got {cpu!r}",
                             service)
    if pids is not None and not (is_int(pids) and 1 <= pids <= 1 << 22):
        raise SpecFieldError("limits.pids", f"must be an integer >= 1, got {pids!r}", service)
    return Limits(memory_mb=memory, cpu=None if cpu is None else float(cpu), pids=pids)


def _bundle(value: Any, service: str) -> str | None:
    if value is None:
        return None
    sha = value.get("sha256") if isinstance(value, Mapping) else None
    if not is_sha256_hex(sha):
        raise SpecFieldError("bundle.sha256", "must be 64 lowercase hex digits", service)
    return sha
