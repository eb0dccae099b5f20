"""Power capability: mains or battery, charge and battery health.

Source of truth on Linux is ``/sys/class/power_supply/<name>/``:

* ``type`` is ``Mains``, ``USB`` (USB-C/PD chargers), ``Battery``, ``UPS``...;
* a mains/USB supply has ``online`` (1 = delivering power);
* a battery has ``capacity`` (percent), ``status`` (Charging, Discharging,
  Full, Not charging), ``present``, and its wear as ``energy_full`` /
  ``energy_full_design`` (µWh) or ``charge_full`` / ``charge_full_design``
  (µAh), depending on what the fuel gauge reports;
* ``scope = Device`` marks the battery of a peripheral (a wireless mouse),
  which says nothing about how *this* machine is powered.

Deciding the source:

1. any mains/USB supply online -> ``ac``;
2. a battery present and mains supplies listed but all offline -> ``battery``;
3. a battery present with no mains supply listed (some SBC UPS boards) ->
   ``battery`` only while it reports ``Discharging``;
4. no battery at all -> ``ac``: a machine without a battery can only be running
   from an external supply, and that is the fact placement cares about (it
   will not die when a charge runs out). Desktops, servers and Raspberry Pis
   land here, usually with no power_supply entries at all
   (``detected_by = "default"``).

psutil's ``sensors_battery()`` is only the fallback for systems without the
sysfs directory (macOS, Windows, BSD): on Linux psutil reads the same sysfs
files, so asking it again would add nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from nanomesh.discovery.profile import PowerProfile
from nanomesh.discovery.sysfs import list_dir, read_int, read_text

_MAINS_TYPES = frozenset({"Mains", "USB"})


class BatteryReading(Protocol):
    """What we use of ``psutil.sensors_battery()``'s result."""

    @property
    def percent(self) -> float: ...

    @property
    def power_plugged(self) -> bool | None: ...


@dataclass(frozen=True)
class Battery:
    """One battery as read from sysfs; fields are ``None`` when not reported."""

    percent: float | None
    status: str | None
    full: int | None
    design: int | None


@dataclass(frozen=True)
class Supplies:
    """Everything ``/sys/class/power_supply`` told us, before any decision."""

    mains_online: tuple[bool, ...]
    batteries: tuple[Battery, ...]


def _wear_pair(entry: Path) -> tuple[int | None, int | None]:
    """(full, design) capacity: energy (µWh) if reported, else charge (µAh)."""
    for unit in ("energy", "charge"):
        full = read_int(entry / f"{unit}_full")
        design = read_int(entry / f"{unit}_full_design")
        if full is not None and design:
            return full, design
    return None, None


def _battery_percent(entry: Path) -> float | None:
    """``capacity``, or energy/charge now over full when a gauge lacks it."""
    capacity = read_int(entry / "capacity")
    if capacity is not None:
        return float(capacity)
    for unit in ("energy", "charge"):
        now, full = read_int(entry / f"{unit}_now"), read_int(entry / f"{unit}_full")
        if now is not None and full:
            return round(100.0 * now / full, 1)
    return None


def _read_battery(entry: Path) -> Battery | None:
    """The battery in ``entry``; ``None`` if absent or a peripheral's."""
    if read_int(entry / "present") == 0 or read_text(entry / "scope") == "Device":
        return None
    full, design = _wear_pair(entry)
    return Battery(_battery_percent(entry), read_text(entry / "status"), full, design)


def read_power_supplies(power_dir: Path) -> Supplies | None:
    """Read every supply under ``power_dir``; ``None`` if the directory is missing."""
    if not power_dir.is_dir():
        return None
    mains: list[bool] = []
    batteries: list[Battery] = []
    for entry in list_dir(power_dir):
        kind = read_text(entry / "type")
        if kind in _MAINS_TYPES:
            mains.append(read_int(entry / "online") == 1)
        elif kind == "Battery" and (battery := _read_battery(entry)) is not None:
            batteries.append(battery)
    return Supplies(tuple(mains), tuple(batteries))


def _mean_percent(batteries: tuple[Battery, ...]) -> float | None:
    """Mean charge over batteries that report one (dual-battery laptops)."""
    values = [b.percent for b in batteries if b.percent is not None]
    return round(sum(values) / len(values), 1) if values else None


def _health_percent(batteries: tuple[Battery, ...]) -> float | None:
    """Total full capacity over total design capacity, in percent.

    Not capped at 100: a new cell can exceed its design rating, and hiding
    that would make a gauge bug look like a healthy battery.
    """
    pairs = [(b.full, b.design) for b in batteries if b.full is not None and b.design]
    if not pairs:
        return None
    return round(100.0 * sum(f for f, _ in pairs) / sum(d for _, d in pairs), 1)


def _on_battery(supplies: Supplies) -> bool:
    """Rules 1-3 of the module docstring."""
    if not supplies.batteries or any(supplies.mains_online):
        return False
    if supplies.mains_online:
        return True
    return any(b.status == "Discharging" for b in supplies.batteries)


def power_from_sysfs(supplies: Supplies) -> PowerProfile:
    """The ``power`` section from parsed sysfs supplies (pure)."""
    found = bool(supplies.mains_online or supplies.batteries)
    return {
        "source": "battery" if _on_battery(supplies) else "ac",
        "battery_percent": _mean_percent(supplies.batteries),
        "battery_health_percent": _health_percent(supplies.batteries),
        "detected_by": "sysfs" if found else "default",
    }


def power_from_psutil(reading: BatteryReading | None) -> PowerProfile:
    """The ``power`` section from ``psutil.sensors_battery()`` (pure).

    ``None`` means no battery, hence mains (rule 4). An unknown
    ``power_plugged`` is read as mains: a wrong "battery" would make placement
    move services away from a healthy peer, a wrong "ac" costs nothing until
    the charge is actually low, which ``battery_percent`` still shows.
    """
    if reading is None:
        return {"source": "ac", "battery_percent": None, "battery_health_percent": None,
                "detected_by": "default"}
    return {
        "source": "battery" if reading.power_plugged is False else "ac",
        "battery_percent": round(float(reading.percent), 1),
        "battery_health_percent": None,
        "detected_by": "psutil",
    }


def probe_power(sys_root: Path,
                psutil_battery: Callable[[], BatteryReading | None] | None) -> PowerProfile:
    """The ``power`` section of this machine: sysfs first, psutil as fallback."""
    supplies = read_power_supplies(sys_root / "class/power_supply")
    if supplies is not None:
        return power_from_sysfs(supplies)
    return power_from_psutil(psutil_battery() if psutil_battery is not None else None)
