"""When is a change in live values worth telling the cluster?

Every change a peer announces bumps its profile version; gossip spreads the
version and *every* other peer then pulls the full profile (push-pull), so one
announcement costs O(cluster size) transfers. Load jitters all the time, so
:func:`load_changed` only reports moves big enough to change a placement
decision. The thresholds live in :class:`LoadThresholds`, each with its reason.

:func:`load_changed` is pure: the daemon samples with
:func:`nanomesh.discovery.refresh_live` every few seconds and compares against
the profile it last *announced* (not the last sample), so a slow drift still
gets announced once it adds up to a threshold.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LoadThresholds:
    """Minimum moves that make live values worth gossiping."""

    cpu_percent_points: float = 10.0
    """Absolute change in ``load.cpu_percent`` (percentage points). CPU use
    swings by several points between samples on an idle Pi; 10 points is the
    smallest move that changes which peer ranks as least loaded."""

    memory_percent_points: float = 5.0
    """Absolute change in ``load.memory_percent`` (percentage points). Memory
    moves slower and more meaningfully than CPU (a service started or
    stopped), so a tighter threshold than CPU still stays quiet."""

    available_memory_ratio: float = 0.10
    """Relative change in ``memory.available_mb`` (fraction of the old value).
    Relative, because 100 MiB matters on a 1 GiB Pi and not on a 32 GiB
    laptop; 10 % is roughly one more nanoservice's worth on a small peer."""

    free_storage_ratio: float = 0.10
    """Relative change in ``storage.free_mb`` (fraction of the old value).
    Logs and journals grow steadily; only a 10 % move changes whether a
    service's storage request still fits."""

    battery_percent_points: float = 5.0
    """Absolute change in ``power.battery_percent`` (percentage points). A
    battery drains ~1 point per minute or slower; 5 points lets placement see
    a draining peer without an announcement per minute. A change of
    ``power.source`` (unplugged / plugged in) is always announced."""



def _value(profile: Mapping[str, Any], section: str, key: str) -> Any:
    """``profile[section][key]``, or ``None`` if either level is missing."""
    part = profile.get(section)
    return part.get(key) if isinstance(part, Mapping) else None


def moved_points(old: float | None, new: float | None, points: float) -> bool:
    """True if an absolute value moved by at least ``points`` or (dis)appeared."""
    if old is None or new is None:
        return (old is None) != (new is None)
    return abs(new - old) >= points


def moved_ratio(old: float | None, new: float | None, ratio: float) -> bool:
    """True if a value moved by at least ``ratio`` of ``old`` or (dis)appeared.

    From zero, any growth counts (there is no scale to be relative to).
    """
    if old is None or new is None:
        return (old is None) != (new is None)
    if old == 0:
        return new != 0
    return abs(new - old) >= ratio * abs(old)


def load_changed(old: Mapping[str, Any], new: Mapping[str, Any],
                 thresholds: LoadThresholds = LoadThresholds()) -> bool:
    """True when the live values of ``new`` differ enough from ``old`` to gossip.

    ``old`` and ``new`` are profiles (or any mappings holding the live
    sections). A value missing from both is ignored; one that appears or
    disappears counts as a change.
    """
    t = thresholds
    checks = (
        moved_points(_value(old, "load", "cpu_percent"), _value(new, "load", "cpu_percent"),
                     t.cpu_percent_points),
        moved_points(_value(old, "load", "memory_percent"),
                     _value(new, "load", "memory_percent"), t.memory_percent_points),
        moved_ratio(_value(old, "memory", "available_mb"), _value(new, "memory", "available_mb"),
                    t.available_memory_ratio),
        moved_ratio(_value(old, "storage", "free_mb"), _value(new, "storage", "free_mb"),
                    t.free_storage_ratio),
        moved_points(_value(old, "power", "battery_percent"),
                     _value(new, "power", "battery_percent"), t.battery_percent_points),
        _value(old, "power", "source") != _value(new, "power", "source"),
    )
    return any(checks)
