"""The placement's view of a peer, built from the capability profile it gossips.

Capacity — what the planner may commit on a peer in total — is read from the
profile as reported (the research's definition, node profile P_i):

* ``cpu_cores`` = ``cpu.cores``, all cores. Live CPU load does not shrink it:
  CPU is time-shared, so load only makes the peer rank lower
  (:mod:`nanomesh.placement.rank`).
* ``memory_mb`` = ``memory.available_mb`` (free + reclaimable cache, as the
  research measured it).
* ``storage_mb`` = ``storage.free_mb``.

The planner subtracts the reservations of every instance it assigns to the
peer from these and never lets the sum exceed them.

Caveat, known and accepted for now: available memory and free storage are
live figures, so once instances run, the figure already lacks what they
really use, and a view built from a fresh profile counts them twice (their
reservation, and their real use inside the figure). The error is on the safe
side — an instance may move off a peer that looks full, a peer is never
over-committed — and it disappears if the shell builds views from the
figures a peer reported before it started nanoservices, or if the runtime
adds its instances' use back into what the peer reports. Using
``memory.total_mb`` instead (static, like Kubernetes' allocatable) would
ignore everything else running on a small device, which on a 1 GB
Raspberry Pi is most of it.

Missing or malformed profile fields mean "has nothing": 0 cores / MB, no
devices, no networks, no labels, power source unknown (fails any power
requirement and any battery minimum) and battery 0 %. Missing live load counts
as 100 % busy, so a peer that reports nothing ranks last rather than first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, cast

from nanomesh.checks import is_number
from nanomesh.placement.requirements import (
    COMPUTE,
    NETWORK_KINDS,
    POWER_SOURCES,
    NetworkKind,
    PowerSource,
)


def _empty_labels() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class PeerView:
    """One peer as placement sees it: a snapshot, never updated in place."""

    name: str
    alive: bool = True
    """Only alive peers receive instances; the others are listed in reasons."""

    capabilities: frozenset[str] = frozenset()
    """Device types, plus ``"compute"`` when the peer has a CPU core."""

    cpu_cores: float = 0.0
    memory_mb: int = 0
    storage_mb: int = 0

    power: PowerSource | None = None
    battery_percent: float = 0.0
    """Charge of a battery-powered peer, 0-100 (0 when unknown)."""

    networks: frozenset[NetworkKind] = frozenset()
    labels: Mapping[str, str] = field(default_factory=_empty_labels)

    cpu_load_percent: float = 100.0
    """Live CPU load 0-100 (``load.cpu_percent``), used for ranking only."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "alive": self.alive,
            "capabilities": sorted(self.capabilities),
            "cpu_cores": self.cpu_cores, "memory_mb": self.memory_mb,
            "storage_mb": self.storage_mb, "power": self.power,
            "battery_percent": self.battery_percent,
            "networks": sorted(self.networks), "labels": dict(self.labels),
            "cpu_load_percent": self.cpu_load_percent,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PeerView:
        """Inverse of :meth:`to_dict` (trusted input: the plan's own output)."""
        return cls(
            name=data["name"], alive=data["alive"],
            capabilities=frozenset(data["capabilities"]),
            cpu_cores=data["cpu_cores"], memory_mb=data["memory_mb"],
            storage_mb=data["storage_mb"], power=data["power"],
            battery_percent=data["battery_percent"],
            networks=frozenset(data["networks"]), labels=data["labels"],
            cpu_load_percent=data["cpu_load_percent"],
        )


def peer_view_from_profile(name: str, profile: Mapping[str, Any], alive: bool) -> PeerView:
    """Convert a gossiped capability profile (shape in
    :mod:`nanomesh.discovery.profile`) into a :class:`PeerView`.

    Never raises on a malformed profile: anything missing or of the wrong type
    reads as "has nothing" (module docstring).
    """
    cpu, memory, storage = _section(profile, "cpu"), _section(profile, "memory"), \
        _section(profile, "storage")
    power, network, load = _section(profile, "power"), _section(profile, "network"), \
        _section(profile, "load")
    cores = _amount(cpu.get("cores"))
    source = power.get("source")
    devices = profile.get("devices")
    caps = {d["type"] for d in devices if isinstance(d, Mapping) and isinstance(d.get("type"), str)
            } if isinstance(devices, list) else set()
    if cores > 0:
        caps.add(COMPUTE)
    labels = profile.get("labels")
    cpu_load = load.get("cpu_percent")
    return PeerView(
        name=name,
        alive=alive,
        capabilities=frozenset(caps),
        cpu_cores=cores,
        memory_mb=int(_amount(memory.get("available_mb"))),
        storage_mb=int(_amount(storage.get("free_mb"))),
        power=cast(PowerSource, source) if source in POWER_SOURCES else None,
        battery_percent=min(100.0, _amount(power.get("battery_percent"))),
        networks=frozenset(k for k in NETWORK_KINDS if network.get(k) is True),
        labels={k: v for k, v in labels.items() if isinstance(k, str) and isinstance(v, str)}
        if isinstance(labels, Mapping) else {},
        cpu_load_percent=min(100.0, _amount(cpu_load)) if is_number(cpu_load) else 100.0,
    )


def _section(profile: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = profile.get(key)
    return value if isinstance(value, Mapping) else {}


def _amount(value: object) -> float:
    """A non-negative finite number, or 0 for anything else."""
    if not is_number(value):
        return 0.0
    return max(0.0, float(value))
