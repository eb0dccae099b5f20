"""Name resolution: service name -> the endpoints of its running instances.

Pure and clock-free: the gossip view (``peer.core.members()``) goes in, a list
of `Endpoint` values comes out. Every peer gossips, in its profile under
``"instances"``, the status of the instances it runs::

    "instances": {"hello/0": {"state": "running", "restarts": 0, "health": "healthy",
                              "endpoints": {"api": {"protocol": "coap", "port": 5701}}}}

An endpoint's host is the IP of that peer's gossip address. Profiles come from
other peers, possibly older or newer versions of nanomesh, so everything here
is read defensively: an entry that does not have the expected shape is
skipped, never raised on (one bad instance must not hide the good ones).

Order of `resolve`'s answer, which callers (the CoAP gateway, the client) try
front to back:
1. health: ``healthy`` and ``none`` (no health check) first, then ``starting``
   (checks not yet passed), then ``unhealthy`` (only when asked for);
2. locality: the asking peer's own instances first (no network hop);
3. peer name, instance id, endpoint name: a stable order, so that every
   caller on one peer sees the same list for the same view.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from nanomesh.checks import is_port
from nanomesh.config import host_port
from nanomesh.ids import service_of
from nanomesh.wire import Address, MemberState

INSTANCES_KEY = "instances"
"""Profile key under which a peer gossips the status of the instances it runs
(the same key as `nanomesh.daemon.api_mesh.INSTANCES_KEY`)."""

PROTOCOLS = ("coap", "zmq", "http")
"""Endpoint protocols a manifest may declare."""
HEALTH_VALUES = ("healthy", "unhealthy", "starting", "none")
"""``healthy``: checks pass; ``unhealthy``: checks fail; ``starting``: checks
not yet passed; ``none``: the service has no health check."""
INSTANCE_STATES = ("pending", "fetching", "starting", "running", "idle", "stopping",
                   "exited", "failed")
"""Lifecycle states an instance status may carry; only ``running`` resolves."""
LEGACY_HEALTH = "none"
"""Health assumed for an instance entry without a ``health`` key (gossiped by a
peer that predates health reporting): nothing is known against it."""

_LIVE = (MemberState.ALIVE, MemberState.SUSPECT)
_HEALTH_RANK = {"healthy": 0, "none": 0, "starting": 1, "unhealthy": 2}
_ENDPOINT_FIELDS = ("service", "instance", "peer", "host", "name", "protocol", "port",
                    "health", "state")


class MemberView(Protocol):
    """What resolution reads of a gossip member (`nanomesh.gossip.members.Member`)."""

    @property
    def name(self) -> str: ...
    @property
    def state(self) -> MemberState: ...
    @property
    def addr(self) -> Address: ...
    @property
    def profile(self) -> dict[str, Any] | None: ...


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One endpoint of one running instance, as some peer gossips it."""

    service: str
    instance: str
    """Instance id, ``SERVICE/INDEX``."""
    peer: str
    """Name of the peer that runs the instance."""
    host: str
    """IP to reach it: the IP of that peer's gossip address."""
    name: str
    """The endpoint's name in the manifest (``api``, ``events``, ...)."""
    protocol: str
    port: int
    health: str
    state: str

    @property
    def address(self) -> str:
        """``IP:PORT`` (IPv6 in brackets)."""
        return host_port(self.host, self.port)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of ``GET /v1/resolve/{name}``: the fields plus ``address``."""
        doc: dict[str, Any] = {f: getattr(self, f) for f in _ENDPOINT_FIELDS}
        doc["address"] = self.address
        return doc

    @classmethod
    def from_dict(cls, doc: Any) -> Endpoint:
        """Inverse of `to_dict`; ValueError naming the field if `doc` is not one
        (``address``, being derived, is ignored)."""
        if not isinstance(doc, Mapping):
            raise ValueError("endpoint: must be an object")
        values: dict[str, Any] = {}
        for f in _ENDPOINT_FIELDS:
            value = doc.get(f)
            if f == "port":
                if not is_port(value):
                    raise ValueError(f"endpoint.port: must be an integer 1-65535, got {value!r}")
            elif not isinstance(value, str) or not value:
                raise ValueError(f"endpoint.{f}: must be a non-empty string, got {value!r}")
            values[f] = value
        if values["protocol"] not in PROTOCOLS:
            raise ValueError(f"endpoint.protocol: must be one of {', '.join(PROTOCOLS)}")
        if values["health"] not in HEALTH_VALUES:
            raise ValueError(f"endpoint.health: must be one of {', '.join(HEALTH_VALUES)}")
        return cls(**values)


def resolve(members: Iterable[MemberView], service: str, *, protocol: str | None = None,
            me: str | None = None, include_unhealthy: bool = False) -> list[Endpoint]:
    """The endpoints of `service`'s running instances on live (alive or
    suspect) peers, best first (see the module docstring for the order).

    `protocol` keeps only endpoints of that protocol; `me` is the asking
    peer's name (its instances sort first); `include_unhealthy` also returns
    instances whose health checks fail (last). Never raises on malformed
    gossip: such entries are skipped.
    """
    found = [ep for m in members if m.state in _LIVE for ep in member_endpoints(m)
             if ep.service == service and ep.state == "running"
             and (protocol is None or ep.protocol == protocol)
             and (include_unhealthy or ep.health != "unhealthy")]
    return sorted(found, key=lambda ep: (_HEALTH_RANK[ep.health], ep.peer != me, ep.peer,
                                         ep.instance, ep.name))


def ready_on(members: Iterable[MemberView], peer: str, instance: str) -> bool:
    """Whether live member `peer` gossips `instance` running and passing its
    checks (or without any): a moved instance's new copy is ready, so the
    old one may stop (`nanomesh.runtime.reconcile_core.Handover`)."""
    for m in members:
        if m.name != peer or m.state not in _LIVE:
            continue
        for iid, status in _instance_entries(m.profile):
            if iid == instance:
                return (status.get("state") == "running"
                        and status.get("health", LEGACY_HEALTH) in ("healthy", "none"))
    return False


def known_services(members: Iterable[MemberView]) -> set[str]:
    """Names of the services that some live peer reports an instance of, in
    any state (what the mesh knows from gossip alone, without Raft)."""
    names: set[str] = set()
    for m in members:
        if m.state in _LIVE:
            names.update(service_of(iid) for iid, _ in _instance_entries(m.profile))
    names.discard("")
    return names


def member_endpoints(member: MemberView) -> list[Endpoint]:
    """Every well-formed endpoint that `member` gossips, whatever its state
    and health (unknown protocols and malformed entries are skipped)."""
    addr = member.addr
    if not (isinstance(addr, tuple) and addr and isinstance(addr[0], str) and addr[0]):
        return []
    out: list[Endpoint] = []
    for instance, status in _instance_entries(member.profile):
        service = service_of(instance)
        state = status.get("state")
        health = status.get("health", LEGACY_HEALTH)
        if not service or state not in INSTANCE_STATES or health not in HEALTH_VALUES:
            continue
        endpoints = status.get("endpoints")
        if not isinstance(endpoints, dict):
            continue
        for name, spec in endpoints.items():
            if not (isinstance(name, str) and name and isinstance(spec, dict)):
                continue
            proto, port = spec.get("protocol"), spec.get("port")
            if proto in PROTOCOLS and is_port(port):
                out.append(Endpoint(service, instance, member.name, addr[0], name, proto, port,
                                    health, state))
    return out


def _instance_entries(profile: Any) -> list[tuple[str, dict[str, Any]]]:
    if not isinstance(profile, dict):
        return []
    section = profile.get(INSTANCES_KEY)
    if not isinstance(section, dict):
        return []
    return [(k, v) for k, v in section.items() if isinstance(k, str) and isinstance(v, dict)]


