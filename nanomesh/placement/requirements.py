"""What a service asks for: the research's requirement profile plus placement rules.

A service spec is the research's requirement profile
P_k = {T_k, c_k, m_k, b_k, n_k, s_k} (:class:`Requirements`) plus the
constraints operators expect from an orchestrator (:class:`Constraints`:
pin to a peer or to labels, spread replicas, cap instances per peer) and a
replica count. A field left 0, empty or ``None`` means "no requirement", as in
the research ("a service that does not care sets the field to 0").

Specs arrive as plain dicts (a manifest, the HTTP API, the Raft log), so
parsing is strict: an unknown key, a wrong type or an impossible value raises
:class:`SpecError` naming the service and the field, because a typo such as
``"memroy_mb"`` would otherwise silently drop a requirement. ``to_dict`` writes
every field, and ``from_dict(to_dict(x)) == x`` exactly (JSON and msgpack
carry the dict unchanged).

The dict shape::

    {"name": "spo2", "replicas": 1,
     "requires": {"capabilities": ["pulse-oximeter"], "cpu": 0.5, "memory_mb": 64,
                  "power": "battery", "min_battery_percent": 20,
                  "network": "bluetooth", "storage_mb": 10},
     "placement": {"peer": null, "labels": {}, "spread": true, "max_per_peer": 0}}
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, cast

from nanomesh.checks import is_number, kind_name
from nanomesh.errors import NanomeshError
from nanomesh.ids import SERVICE_NAME_RULE, instance_id, is_service_name

# Re-exported for nanomesh/daemon/api_runtime.py until it imports nanomesh.ids.

PowerSource = Literal["ac", "battery"]
NetworkKind = Literal["wifi", "ethernet", "bluetooth"]

POWER_SOURCES: tuple[PowerSource, ...] = ("ac", "battery")
NETWORK_KINDS: tuple[NetworkKind, ...] = ("wifi", "ethernet", "bluetooth")

COMPUTE = "compute"
"""The capability every peer with at least one CPU core offers (the research's
"compute" node type); device capabilities are the discovered device types."""

_TOKEN = re.compile(r"[a-z0-9][a-z0-9-]*")
"""Capability names are device types, so they follow discovery's token rule."""


class SpecError(NanomeshError, ValueError):
    """A service spec is invalid. ``field`` is the dotted path of the offending
    key (``"requires.memory_mb"``), ``service`` the service name when known."""

    def __init__(self, field: str, problem: str, service: str | None = None) -> None:
        self.field = field
        self.problem = problem
        self.service = service
        where = f"service {service!r}: {field}" if service is not None else field
        super().__init__(f"{where}: {problem}")


def _empty_labels() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Requirements:
    """The research's service requirement profile P_k."""

    capabilities: frozenset[str] = frozenset()
    """T_k: capabilities the peer must all offer: device types (``"pir"``,
    ``"pulse-oximeter"``, ``"display"``) or ``"compute"``."""

    cpu: float = 0.0
    """c_k: CPU cores reserved on the peer (fractions allowed)."""

    memory_mb: int = 0
    """m_k: memory reserved on the peer, MB."""

    power: PowerSource | None = None
    """b_k: the peer's power source must be exactly this (the research matches
    b exactly). ``None``: any source."""

    min_battery_percent: float = 0.0
    """A peer running on battery must have at least this charge (0-100). Peers
    on mains always pass; with ``power="battery"`` only battery peers with this
    charge pass. 0: no minimum."""

    network: NetworkKind | None = None
    """n_k: the peer must have this network interface. ``None``: any."""

    storage_mb: int = 0
    """s_k: storage reserved on the peer, MB."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "capabilities": sorted(self.capabilities),
            "cpu": self.cpu,
            "memory_mb": self.memory_mb,
            "power": self.power,
            "min_battery_percent": self.min_battery_percent,
            "network": self.network,
            "storage_mb": self.storage_mb,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Requirements:
        return requirements_from_dict(data)


@dataclass(frozen=True, slots=True)
class Constraints:
    """Where the instances of a service may go, beyond what they require."""

    peer: str | None = None
    """Pin every instance to the peer with this name. ``None``: any peer."""

    labels: Mapping[str, str] = field(default_factory=_empty_labels)
    """The peer must carry every one of these labels with exactly this value."""

    spread: bool = True
    """Replicas go to distinct peers (an instance per peer at most)."""

    max_per_peer: int = 0
    """At most this many instances of the service on one peer. 0: no limit
    (``spread`` still applies)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))

    def per_peer_limit(self) -> int:
        """Instances of this service one peer may run; 0 means unlimited."""
        if self.spread:
            return 1
        return self.max_per_peer

    def to_dict(self) -> dict[str, Any]:
        return {"peer": self.peer, "labels": dict(self.labels), "spread": self.spread,
                "max_per_peer": self.max_per_peer}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Constraints:
        return constraints_from_dict(data)


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """One desired service: ``replicas`` instances ``name/0 .. name/replicas-1``."""

    name: str
    replicas: int = 1
    requires: Requirements = field(default_factory=Requirements)
    placement: Constraints = field(default_factory=Constraints)

    def instance_ids(self) -> list[str]:
        return [instance_id(self.name, i) for i in range(self.replicas)]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "replicas": self.replicas,
                "requires": self.requires.to_dict(), "placement": self.placement.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServiceSpec:
        return service_spec_from_dict(data)


MAX_REPLICAS = 1000
"""Most instances one service may ask for. An edge mesh has tens of peers; a
typo such as 500000 would otherwise make the leader plan half a million
instances (seen: 73 % CPU, an unresponsive API) instead of getting an error."""


def _replicas(r: _Reader) -> int:
    replicas = r.whole("replicas", 1)
    if replicas > MAX_REPLICAS:
        raise r.fail("replicas", f"must be at most {MAX_REPLICAS}, got {replicas}")
    return replicas


# -- parsing -------------------------------------------------------------------------------


class _Reader:
    """Reads one dict section, raising SpecError with the field's full path."""

    def __init__(self, data: object, where: str, service: str | None) -> None:
        self.where = where
        self.service = service
        if not isinstance(data, Mapping):
            raise SpecError(where or "spec", f"must be a mapping, got {kind_name(data)}", service)
        self.data: Mapping[str, Any] = data

    def fail(self, key: str, problem: str) -> SpecError:
        path = f"{self.where}.{key}" if self.where else key
        return SpecError(path, problem, self.service)

    def check_keys(self, allowed: Sequence[str]) -> None:
        for key in self.data:
            if key not in allowed:
                raise self.fail(str(key), f"unknown key; expected one of {', '.join(allowed)}")

    def number(self, key: str, default: float, upper: float = math.inf) -> float:
        value = self.data.get(key, default)
        if not is_number(value) or not 0 <= value <= upper:
            bound = f" and <= {upper:g}" if upper != math.inf else ""
            raise self.fail(key, f"must be a number >= 0{bound}, got {value!r}")
        return float(value)

    def whole(self, key: str, default: int, unit: str = "") -> int:
        value = self.data.get(key, default)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise self.fail(key, f"must be a whole number{unit} >= 0, got {value!r}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, f"must be true or false, got {value!r}")
        return value

    def choice(self, key: str, choices: Sequence[str]) -> str | None:
        value = self.data.get(key)
        if value is None or value in ("", 0):
            return None
        if value not in choices:
            raise self.fail(key, f"must be one of {', '.join(choices)} or null, got {value!r}")
        return cast(str, value)


def _or_empty(section: Any) -> Any:
    """A section left out or null is an empty one (no requirement)."""
    return {} if section is None else section


def requirements_from_dict(data: Mapping[str, Any], *, where: str = "requires",
                           service: str | None = None) -> Requirements:
    """Parse a ``requires`` section; missing keys mean "no requirement".

    Raises :class:`SpecError` naming ``where.<key>`` for an unknown key, a
    negative or non-numeric amount, a fractional MB, a capability that is not a
    lowercase token, or a power source / network kind outside the known set.
    """
    r = _Reader(data, where, service)
    r.check_keys(("capabilities", "cpu", "memory_mb", "power", "min_battery_percent",
                  "network", "storage_mb"))
    caps = r.data.get("capabilities", [])
    if not isinstance(caps, list | tuple | set | frozenset):
        raise r.fail("capabilities", f"must be a list of strings, got {kind_name(caps)}")
    for i, cap in enumerate(caps):
        if not isinstance(cap, str) or not _TOKEN.fullmatch(cap):
            raise r.fail(f"capabilities[{i}]",
                         f"must be a lowercase token like 'pulse-oximeter', got {cap!r}")
    return Requirements(
        capabilities=frozenset(caps),
        cpu=r.number("cpu", 0.0),
        memory_mb=r.whole("memory_mb", 0, " of MB"),
        power=cast(PowerSource | None, r.choice("power", POWER_SOURCES)),
        min_battery_percent=r.number("min_battery_percent", 0.0, upper=100.0),
        network=cast(NetworkKind | None, r.choice("network", NETWORK_KINDS)),
        storage_mb=r.whole("storage_mb", 0, " of MB"),
    )


def constraints_from_dict(data: Mapping[str, Any], *, where: str = "placement",
                          service: str | None = None) -> Constraints:
    """Parse a ``placement`` section; missing keys take the defaults of
    :class:`Constraints`. Raises :class:`SpecError` naming the field."""
    r = _Reader(data, where, service)
    r.check_keys(("peer", "labels", "spread", "max_per_peer"))
    peer = r.data.get("peer")
    if peer == "":
        peer = None
    if peer is not None and not isinstance(peer, str):
        raise r.fail("peer", f"must be a peer name or null, got {peer!r}")
    labels = r.data.get("labels", {})
    if labels is None:
        labels = {}
    if not isinstance(labels, Mapping):
        raise r.fail("labels", f"must be a mapping of strings, got {kind_name(labels)}")
    for key, value in labels.items():
        if not isinstance(key, str) or not key:
            raise r.fail(f"labels[{key!r}]", "keys must be non-empty strings")
        if not isinstance(value, str):
            raise r.fail(f"labels.{key}", f"must be a string, got {kind_name(value)}")
    return Constraints(peer=peer, labels=labels, spread=r.boolean("spread", True),
                       max_per_peer=r.whole("max_per_peer", 0))


def service_spec_from_dict(data: Mapping[str, Any]) -> ServiceSpec:
    """Parse one service (shape in the module docstring). Raises :class:`SpecError`."""
    r = _Reader(data, "", None)
    name = r.data.get("name")
    if not is_service_name(name):
        raise r.fail("name", f"must be {SERVICE_NAME_RULE}, got {name!r}")
    r.service = name
    r.check_keys(("name", "replicas", "requires", "placement"))
    return ServiceSpec(
        name=name,
        replicas=_replicas(r),
        requires=requirements_from_dict(_or_empty(r.data.get("requires")), service=name),
        placement=constraints_from_dict(_or_empty(r.data.get("placement")), service=name),
    )


def services_from_list(data: Sequence[Mapping[str, Any]]) -> list[ServiceSpec]:
    """Parse a list of services; duplicate names raise :class:`SpecError`."""
    if not isinstance(data, list | tuple):
        raise SpecError("services", f"must be a list, got {kind_name(data)}")
    specs = [service_spec_from_dict(item) for item in data]
    check_unique(specs)
    return specs


def check_unique(specs: Sequence[ServiceSpec]) -> None:
    """Raise :class:`SpecError` if two specs share a name."""
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise SpecError("name", "duplicate service name", spec.name)
        seen.add(spec.name)
