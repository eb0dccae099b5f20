"""The shape of a capability profile, written down once.

Other modules (gossip, placement, the API) read profiles that came over the
network as plain dicts, so the profile is a plain dict at runtime: str keys and
str/int/float/bool/None/list/dict values only, which both JSON and msgpack carry
without custom hooks. These TypedDicts exist so that mypy checks the code that
*builds* a profile against the documented shape; they cost nothing at runtime.

A profile has static parts (cpu, totals, networks, devices, hat, labels) that
are read once by :func:`nanomesh.discovery.discover`, and live parts
(``memory.available_mb``, ``storage.free_mb``, ``power``, ``load``) that
:func:`nanomesh.discovery.refresh_live` re-reads.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

InterfaceKind = Literal["ethernet", "wifi", "bluetooth", "loopback", "virtual", "other"]
PowerSource = Literal["ac", "battery"]
PowerDetector = Literal["sysfs", "psutil", "default"]

#: Top-level keys of every profile, in the documented order.
PROFILE_KEYS = (
    "cpu", "memory", "storage", "power", "network", "devices", "hat", "labels", "load",
)


class CpuProfile(TypedDict):
    cores: int
    mhz: float | None
    bogomips: float | None
    arch: str
    model: str | None


class MemoryProfile(TypedDict):
    total_mb: int
    available_mb: int


class StorageProfile(TypedDict):
    path: str
    total_mb: int
    free_mb: int


class PowerProfile(TypedDict):
    source: PowerSource
    battery_percent: float | None
    battery_health_percent: float | None
    detected_by: PowerDetector


class InterfaceProfile(TypedDict):
    name: str
    kind: InterfaceKind
    up: bool
    addresses: list[str]


class NetworkProfile(TypedDict):
    interfaces: list[InterfaceProfile]
    ethernet: bool
    wifi: bool
    bluetooth: bool


class HatProfile(TypedDict):
    vendor: str
    product: str
    product_id: str
    uuid: str


class LoadProfile(TypedDict):
    cpu_percent: float
    memory_percent: float
    load1: float


#: A device entry: ``type``, ``source`` ("config" | "hat"), ``driver`` plus any
#: extra keys from the peer config (``pin``, ``address``, ...). Extra keys make
#: this an open dict rather than a TypedDict.
DeviceProfile = dict[str, Any]
