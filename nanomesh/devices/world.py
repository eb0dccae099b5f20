"""The simulated world: a scenario file, and what every sensor reads at a time.

A scenario (TOML) scripts what the simulated hardware sees, in seconds from
the world's start. Devices are named as the peers declare them in
``[[devices]]`` (an oximeter by its BLE ``address``, a thermometer by its
1-Wire ``id``, a PIR or a BLE radio by the ``id`` its entry carries), so the
same file serves every peer and a device that moves to another peer keeps its
readings::

    [[oximeter]]                      # a BerryMed BM1000 over BLE
    address = "00:1C:05:00:00:12"
    readings = [{at = 0, spo2 = 97, pulse = 72},
                {at = 20, spo2 = 86, pulse = 118},
                {at = 40, finger = false}]          # probe off: invalid values

    [[thermometer]]                   # a DS18B20 on 1-Wire
    id = "28-0000000a0012"
    readings = [{at = 0, celsius = 36.8}, {at = 30, celsius = 38.9}]

    [[pir]]                           # a PIR on a peer's GPIO, by the entry's id
    id = "pd1"
    motion = [{from = 5, to = 8}]     # seconds with motion in front of it

    [[tag]]                           # a BLE beacon someone carries
    uuid = "e2c56db5-dffb-48d2-b060-d0f5a71096e0"
    name = "alice"
    near = [{at = 4, radio = "bs1"}, {at = 20, radio = "bs2"}, {at = 40, radio = ""}]

Readings are steps: a value holds from its ``at`` until the next one (before
the first, the device reads nothing). `World.at` is pure (seconds in, a
`Snapshot` out); `parse_world` checks a whole file and names the first bad
field (``oximeter[0].readings[1].spo2: must be an integer 0-100``), so a typo
fails before a demo starts, not midway.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nanomesh.errors import ConfigError

ENV_WORLD = "NANOMESH_WORLD"
"""The scenario file of the simulated world (`nanomesh.devices.simworld`)."""
ENV_START = "NANOMESH_WORLD_START"
"""Unix seconds when the world's time was 0."""

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9:._-]*")
_TOP = ("oximeter", "thermometer", "pir", "tag", "description")


class WorldError(ConfigError):
    """A scenario file breaks a rule; the message names the field."""


@dataclass(frozen=True, slots=True)
class Vitals:
    """What an oximeter measures at an instant (None: no valid value)."""

    spo2: int | None
    pulse: int | None
    finger: bool = True


@dataclass(frozen=True)
class Snapshot:
    """Every simulated device's reading at one instant."""

    t: float
    oximeters: Mapping[str, Vitals] = field(default_factory=dict)
    """By BLE address (upper case); absent: the device is off."""
    thermometers: Mapping[str, float] = field(default_factory=dict)
    """Degrees Celsius by 1-Wire id."""
    motion: frozenset[str] = frozenset()
    """Ids of the PIRs that see motion."""
    tags_near: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Tag UUIDs within range, by BLE radio id."""


@dataclass(frozen=True)
class Steps:
    """A value over time: each holds from its time until the next."""

    times: tuple[float, ...]
    values: tuple[Any, ...]

    def at(self, t: float) -> Any:
        i = bisect.bisect_right(self.times, t)
        return self.values[i - 1] if i else None


@dataclass(frozen=True)
class Tag:
    uuid: str
    name: str
    near: Steps


@dataclass(frozen=True)
class World:
    """A parsed scenario (`parse_world`)."""

    oximeters: Mapping[str, Steps] = field(default_factory=dict)
    thermometers: Mapping[str, Steps] = field(default_factory=dict)
    pirs: Mapping[str, tuple[tuple[float, float], ...]] = field(default_factory=dict)
    tags: tuple[Tag, ...] = ()
    description: str = ""

    def at(self, t: float) -> Snapshot:
        """Every device's reading ``t`` seconds after the world's start."""
        oxi = {a: v for a, s in self.oximeters.items() if (v := s.at(t)) is not None}
        therm = {i: v for i, s in self.thermometers.items() if (v := s.at(t)) is not None}
        motion = frozenset(i for i, spans in self.pirs.items()
                           if any(a <= t < b for a, b in spans))
        near: dict[str, set[str]] = {}
        for tag in self.tags:
            radio = tag.near.at(t)
            if radio:
                near.setdefault(radio, set()).add(tag.uuid)
        return Snapshot(t, oxi, therm, motion, {r: frozenset(u) for r, u in near.items()})

    def tag_names(self) -> dict[str, str]:
        return {t.uuid: t.name for t in self.tags}


# ------------------------------------------------------------------ parsing


def _fail(where: str, why: str) -> WorldError:
    return WorldError(f"{where}: {why}")


def _number(v: object, where: str, lo: float, hi: float, integer: bool = False) -> Any:
    ok = (isinstance(v, int) if integer else isinstance(v, int | float))
    if isinstance(v, bool) or not ok or not lo <= v <= hi:  # type: ignore[operator]
        kind = "an integer" if integer else "a number"
        raise _fail(where, f"must be {kind} {lo:g}-{hi:g}, got {v!r}")
    return v


def _table_list(raw: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    items = raw.get(key, [])
    if not isinstance(items, list) or not all(isinstance(x, Mapping) for x in items):
        raise _fail(key, "must be an array of tables ([[" + key + "]])")
    return items


def _keys(entry: Mapping[str, Any], where: str, allowed: Sequence[str],
          required: Sequence[str]) -> None:
    for k in entry:
        if k not in allowed:
            raise _fail(f"{where}.{k}", f"unknown key (allowed: {', '.join(allowed)})")
    for k in required:
        if k not in entry:
            raise _fail(f"{where}.{k}", "is required")


def _ident(v: object, where: str) -> str:
    if not isinstance(v, str) or not _ID.fullmatch(v):
        raise _fail(where, f"must be an identifier [A-Za-z0-9:._-], got {v!r}")
    return v


def _steps(items: object, where: str, value: Any) -> Steps:
    """``items``: a list of tables with ``at``; ``value(entry, where)`` makes the value."""
    if not isinstance(items, list) or not items:
        raise _fail(where, "must be a non-empty array of tables")
    times: list[float] = []
    values: list[Any] = []
    for i, entry in enumerate(items):
        w = f"{where}[{i}]"
        if not isinstance(entry, Mapping) or "at" not in entry:
            raise _fail(w, "must be a table with 'at' (seconds)")
        at = float(_number(entry["at"], f"{w}.at", 0, 1e9))
        if times and at <= times[-1]:
            raise _fail(f"{w}.at", f"must come after {times[-1]:g} (times increase)")
        times.append(at)
        values.append(value(entry, w))
    return Steps(tuple(times), tuple(values))


def _vitals(entry: Mapping[str, Any], w: str) -> Vitals:
    _keys(entry, w, ("at", "spo2", "pulse", "finger"), ())
    finger = entry.get("finger", True)
    if not isinstance(finger, bool):
        raise _fail(f"{w}.finger", f"must be true or false, got {finger!r}")
    if finger and not {"spo2", "pulse"} <= set(entry):
        raise _fail(w, "needs spo2 and pulse (or finger = false)")
    spo2 = _number(entry["spo2"], f"{w}.spo2", 0, 100, True) if "spo2" in entry else None
    pulse = _number(entry["pulse"], f"{w}.pulse", 0, 254, True) if "pulse" in entry else None
    return Vitals(spo2, pulse, True) if finger else Vitals(None, None, False)


def _celsius(entry: Mapping[str, Any], w: str) -> float:
    _keys(entry, w, ("at", "celsius"), ("celsius",))
    return float(_number(entry["celsius"], f"{w}.celsius", -55, 125))


def _radio(entry: Mapping[str, Any], w: str) -> str:
    _keys(entry, w, ("at", "radio"), ("radio",))
    r = entry["radio"]
    return "" if r == "" else _ident(r, f"{w}.radio")


def _spans(items: object, where: str) -> tuple[tuple[float, float], ...]:
    if not isinstance(items, list):
        raise _fail(where, "must be an array of {from, to} tables")
    spans = []
    for i, s in enumerate(items):
        w = f"{where}[{i}]"
        if not isinstance(s, Mapping):
            raise _fail(w, "must be a table {from = S, to = S}")
        _keys(s, w, ("from", "to"), ("from", "to"))
        a = float(_number(s["from"], f"{w}.from", 0, 1e9))
        b = float(_number(s["to"], f"{w}.to", 0, 1e9))
        if b <= a:
            raise _fail(f"{w}.to", "must be after 'from'")
        spans.append((a, b))
    return tuple(spans)


def _unique(key: str, seen: dict[str, int], where: str, i: int) -> None:
    if key in seen:
        raise _fail(where, f"{key!r} is already {where.split('[')[0]}[{seen[key]}]")
    seen[key] = i


def _by_id(raw: Mapping[str, Any], section: str, id_key: str, value_key: str,
           value: Callable[[Any, str], Any], normalise: Callable[[str], str] = str
           ) -> dict[str, Any]:
    """``[[section]]`` tables of exactly ``id_key`` and ``value_key``, by id."""
    out: dict[str, Any] = {}
    seen: dict[str, int] = {}
    for i, e in enumerate(_table_list(raw, section)):
        w = f"{section}[{i}]"
        _keys(e, w, (id_key, value_key), (id_key, value_key))
        key = normalise(_ident(e[id_key], f"{w}.{id_key}"))
        _unique(key, seen, w, i)
        out[key] = value(e[value_key], f"{w}.{value_key}")
    return out


def parse_world(raw: Mapping[str, Any]) -> World:
    """A scenario file's TOML tables as a `World`; WorldError names the first
    bad field."""
    for k in raw:
        if k not in _TOP:
            raise _fail(k, f"unknown section (known: {', '.join(_TOP)})")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise _fail("description", "must be a string")
    oxi = _by_id(raw, "oximeter", "address", "readings",
                 lambda v, w: _steps(v, w, _vitals), str.upper)
    therm = _by_id(raw, "thermometer", "id", "readings", lambda v, w: _steps(v, w, _celsius))
    pirs = _by_id(raw, "pir", "id", "motion", _spans)
    tags: list[Tag] = []
    seen: dict[str, int] = {}
    for i, e in enumerate(_table_list(raw, "tag")):
        w = f"tag[{i}]"
        _keys(e, w, ("uuid", "name", "near"), ("uuid", "near"))
        uuid = _ident(e["uuid"], f"{w}.uuid").lower()
        _unique(uuid, seen, w, i)
        name = e.get("name", uuid)
        if not isinstance(name, str):
            raise _fail(f"{w}.name", "must be a string")
        tags.append(Tag(uuid, name, _steps(e["near"], f"{w}.near", _radio)))
    return World(oxi, therm, pirs, tuple(tags), description)
