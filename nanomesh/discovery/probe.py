"""The impure shell of discovery: read this machine, assemble the profile.

Decisions (how to parse, how to classify, what source a battery implies) live
in the pure modules next to this one; this module only reads files and
psutil and hands the results over, so it stays short and every rule stays
testable against fixture trees.

Cost: everything here is a handful of small file reads and syscalls (no
subprocess, no sleep, ~1 ms on the project machine). ``load.cpu_percent`` is
non-blocking too: it is the CPU use over the last completed window of at least
0.5 s (:class:`~nanomesh.discovery.cpuload.CpuSampler`), and the very first
sample in a process is ``0.0``. The first profile of a freshly started peer
therefore shows ``cpu_percent == 0.0``; a :func:`refresh_live` half a second
or more later has a real value.
"""

from __future__ import annotations

import copy
import platform
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil

from nanomesh.discovery.config import DiscoveryConfig
from nanomesh.discovery.cpu import parse_cpuinfo, read_max_khz
from nanomesh.discovery.cpuload import CpuSampler
from nanomesh.discovery.devices import config_devices, hat_devices
from nanomesh.discovery.hat import is_raspberry_pi, known_hat, read_hat
from nanomesh.discovery.network import has_bluetooth, network_profile, read_interfaces
from nanomesh.discovery.power import BatteryReading, probe_power
from nanomesh.discovery.profile import (
    CpuProfile,
    DeviceProfile,
    HatProfile,
    LoadProfile,
    NetworkProfile,
    StorageProfile,
)
from nanomesh.discovery.sysfs import read_text

_MIB = 1024 * 1024
_IP_FAMILIES = (socket.AF_INET, socket.AF_INET6)

#: One CPU window for the whole process, whichever thread samples (see
#: :mod:`nanomesh.discovery.cpuload` for why not ``psutil.cpu_percent``).
_CPU_SAMPLER = CpuSampler()


def _mib(n_bytes: int) -> int:
    """Bytes to whole MiB (rounded down: never advertise memory we lack)."""
    return n_bytes // _MIB


def probe_cpu(config: DiscoveryConfig) -> CpuProfile:
    """The ``cpu`` section: cpuinfo text plus psutil's logical CPU count."""
    text = read_text(config.proc_root / "cpuinfo") or ""
    return parse_cpuinfo(text, arch=platform.machine(), cores=psutil.cpu_count(logical=True),
                         max_khz=read_max_khz(config.sys_root))




def existing_ancestor(path: Path) -> Path:
    """``path`` or its nearest existing parent (the data dir may not exist yet)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or ".")


def probe_storage(data_dir: Path) -> StorageProfile:
    """The ``storage`` section for the filesystem that holds ``data_dir``.

    ``free_mb`` is what an unprivileged process may still write (statvfs
    ``f_bavail``), not the root-reserved blocks too.
    """
    usage = psutil.disk_usage(str(existing_ancestor(data_dir)))
    return {"path": str(data_dir), "total_mb": _mib(usage.total), "free_mb": _mib(usage.free)}


def _address(address: str) -> str:
    """Drop the ``%scope`` of a link-local IPv6 address: it names *our* interface,
    which means nothing to the peer reading the profile."""
    return address.partition("%")[0]


def _psutil_addresses() -> dict[str, list[str]]:
    """IPv4 and IPv6 addresses per interface (MAC addresses are left out)."""
    return {
        name: [_address(a.address) for a in addrs if a.family in _IP_FAMILIES]
        for name, addrs in psutil.net_if_addrs().items()
    }


def probe_network(sys_root: Path) -> NetworkProfile:
    """The ``network`` section: sysfs for kinds, psutil for state and addresses."""
    up = {name: stats.isup for name, stats in psutil.net_if_stats().items()}
    interfaces = read_interfaces(sys_root, _psutil_addresses(), up)
    return network_profile(interfaces, has_bluetooth(sys_root))


def _psutil_battery() -> BatteryReading | None:
    """psutil's battery reading, ``None`` where psutil has no battery support."""
    reader = getattr(psutil, "sensors_battery", None)
    if reader is None:
        return None
    reading: BatteryReading | None = reader()
    return reading


def read_load1(proc_root: Path) -> float:
    """1-minute load average: ``proc_root/loadavg``, psutil where that is absent."""
    text = read_text(proc_root / "loadavg")
    if text:
        try:
            return float(text.split()[0])
        except ValueError:
            pass
    return float(psutil.getloadavg()[0])


def _load(memory_percent: float, proc_root: Path) -> LoadProfile:
    """The ``load`` section, reusing a ``virtual_memory()`` percent already read."""
    return {
        "cpu_percent": _CPU_SAMPLER.sample(),
        "memory_percent": float(memory_percent),
        "load1": read_load1(proc_root),
    }


def probe_devices(config: DiscoveryConfig) -> tuple[list[DeviceProfile], HatProfile | None]:
    """Config devices plus HAT devices, and the ``hat`` section."""
    on_pi = is_raspberry_pi(config.proc_root)
    hat = read_hat(config.proc_root)
    product = hat["product"] if hat is not None else ""
    devices = config_devices(config.devices, on_pi)
    return devices + hat_devices(known_hat(hat), product, on_pi), hat


def discover(config: DiscoveryConfig) -> dict[str, Any]:
    """Probe this machine into a full capability profile (shape in
    :mod:`nanomesh.discovery.profile`).

    Raises :class:`~nanomesh.discovery.errors.DiscoveryConfigError` only for an
    invalid config; unreadable files degrade to ``None`` / defaults.
    """
    mem = psutil.virtual_memory()
    devices, hat = probe_devices(config)
    return {
        "cpu": probe_cpu(config),
        "memory": {"total_mb": _mib(mem.total), "available_mb": _mib(mem.available)},
        "storage": probe_storage(config.data_dir),
        "power": probe_power(config.sys_root, _psutil_battery),
        "network": probe_network(config.sys_root),
        "devices": devices,
        "hat": hat,
        "labels": dict(config.labels),
        "load": _load(mem.percent, config.proc_root),
    }


def sample_load(config: DiscoveryConfig) -> dict[str, Any]:
    """Just the ``load`` section: cheap enough to call every few seconds."""
    return dict(_load(psutil.virtual_memory().percent, config.proc_root))


def refresh_live(profile: Mapping[str, Any], config: DiscoveryConfig) -> dict[str, Any]:
    """A new profile with the live values re-read; ``profile`` is not modified.

    Re-read: ``memory.available_mb``, ``storage.free_mb``, ``power`` and
    ``load``. Everything else (CPU, totals, networks, devices, HAT, labels) is
    copied: it only changes with a restart or a config change, which runs a
    full :func:`discover`.
    """
    fresh = copy.deepcopy(dict(profile))
    mem = psutil.virtual_memory()
    fresh["memory"]["available_mb"] = _mib(mem.available)
    fresh["storage"]["free_mb"] = probe_storage(config.data_dir)["free_mb"]
    fresh["power"] = probe_power(config.sys_root, _psutil_battery)
    fresh["load"] = _load(mem.percent, config.proc_root)
    return fresh
