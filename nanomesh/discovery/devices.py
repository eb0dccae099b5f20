"""Sensors and actuators: declared in the peer config, or implied by a HAT.

Most devices on an edge peer (a PIR on GPIO 4, a BLE pulse oximeter) cannot be
probed safely, so the operator declares them as ``[[devices]]`` in the peer
config and this module validates them. Validation is strict because a typo
("PIR", "pulse_oximeter") would silently make a peer ineligible for the service
that needs the device; the error names the entry index and the field.

Rules for one entry:

* ``type``: required, a lowercase token ``[a-z0-9][a-z0-9-]*``. Types outside
  :data:`KNOWN_DEVICE_TYPES` pass through: a deployment may add its own.
* ``driver``: optional lowercase token. When absent it defaults to the real
  driver family on a Raspberry Pi (:data:`PI_DRIVERS`) and to ``"simulated"``
  anywhere else, so a laptop can run the research scenarios with simulated
  hardware and the profile says so.
* ``pin``: optional non-negative integer (BCM numbering).
* ``source`` and ``backend`` are reserved: discovery sets ``source`` to
  ``"config"`` or ``"hat"``, and ``backend`` to the backend that
  `nanomesh.devices` will drive a device of a type it knows with
  (``"rpi-gpio"``, ``"gpiozero-mock"``, ``"bleak"``, ``"bleak-sim"``,
  ``"w1-sysfs"``, ``"w1-sim"``; `nanomesh.devices.backend.profile_backend`).
* every other key is copied as-is and must be plain data (str, int, float,
  bool, None, lists and str-keyed dicts of those) so the profile stays
  JSON/msgpack-able.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from nanomesh.devices.backend import profile_backend
from nanomesh.discovery.errors import DiscoveryConfigError
from nanomesh.discovery.hat import KnownHat
from nanomesh.discovery.profile import DeviceProfile

SIMULATED_DRIVER = "simulated"

#: Device types the project's services and hw drivers know about.
KNOWN_DEVICE_TYPES = frozenset({
    "pir", "ble", "led-strip", "pulse-oximeter", "body-temperature", "oxygen-controller",
    "display", "camera", "microphone", "speaker", "temperature", "humidity",
})

#: Default driver per type on a Raspberry Pi: the family of the real driver
#: the hw layer will load (it may refine it, e.g. gpiozero vs lgpio).
PI_DRIVERS: dict[str, str] = {
    "pir": "gpio",
    "led-strip": "gpio",
    "oxygen-controller": "gpio",
    "ble": "bluez",
    "pulse-oximeter": "bluez",
    "body-temperature": "w1",  # a DS18B20 on 1-Wire (nanomesh.devices.w1)
    "temperature": "i2c",
    "humidity": "i2c",
    "display": "framebuffer",
    "camera": "v4l2",
    "microphone": "alsa",
    "speaker": "alsa",
}

#: Driver on a Pi for a type missing from :data:`PI_DRIVERS`: real hardware,
#: the hw layer picks the concrete driver.
NATIVE_DRIVER = "native"

_TOKEN = re.compile(r"[a-z0-9][a-z0-9-]*")
_RESERVED_KEYS = frozenset({"source", "backend"})


def is_token(value: object) -> bool:
    """True for a non-empty lowercase token ``[a-z0-9][a-z0-9-]*``."""
    return isinstance(value, str) and _TOKEN.fullmatch(value) is not None


def is_plain(value: object) -> bool:
    """True when ``value`` is JSON/msgpack-able without custom hooks."""
    if value is None or isinstance(value, str | int | float | bool):
        return True
    if isinstance(value, list | tuple):
        return all(is_plain(item) for item in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and is_plain(v) for k, v in value.items())
    return False


def _plain_copy(value: Any) -> Any:
    """Deep copy of plain data with tuples turned into lists (as JSON would)."""
    if isinstance(value, list | tuple):
        return [_plain_copy(item) for item in value]
    if isinstance(value, Mapping):
        return {k: _plain_copy(v) for k, v in value.items()}
    return value


def _check_extra(index: int, key: object, value: object) -> None:
    """Validate a key other than ``type`` / ``driver``."""
    if not isinstance(key, str) or not key:
        raise DiscoveryConfigError(index, repr(key), "keys must be non-empty strings")
    if key in _RESERVED_KEYS:
        raise DiscoveryConfigError(index, key, "is reserved and set by discovery")
    if key == "pin" and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise DiscoveryConfigError(index, key, f"must be a non-negative integer, got {value!r}")
    if not is_plain(value):
        raise DiscoveryConfigError(index, key, f"must be plain data, got {type(value).__name__}")


def validate_device(index: int, entry: object) -> None:
    """Raise :class:`DiscoveryConfigError` if ``entry`` breaks a rule above."""
    if not isinstance(entry, Mapping):
        raise DiscoveryConfigError(index, "type", f"entry must be a table, got {entry!r}")
    if "type" not in entry:
        raise DiscoveryConfigError(index, "type", "is required")
    if not is_token(entry["type"]):
        raise DiscoveryConfigError(
            index, "type", f"must be a lowercase token [a-z0-9][a-z0-9-]*, got {entry['type']!r}")
    if "driver" in entry and not is_token(entry["driver"]):
        raise DiscoveryConfigError(
            index, "driver",
            f"must be a lowercase token [a-z0-9][a-z0-9-]*, got {entry['driver']!r}")
    for key, value in entry.items():
        if key not in ("type", "driver"):
            _check_extra(index, key, value)


def validate_devices(devices: Sequence[object]) -> None:
    """Validate every entry; the first bad one raises."""
    for index, entry in enumerate(devices):
        validate_device(index, entry)


def default_driver(device_type: str, on_pi: bool) -> str:
    """The driver a device gets when the config names none."""
    if not on_pi:
        return SIMULATED_DRIVER
    return PI_DRIVERS.get(device_type, NATIVE_DRIVER)


def config_devices(devices: Sequence[Mapping[str, Any]], on_pi: bool) -> list[DeviceProfile]:
    """Validated config entries as profile devices (``source = "config"``).

    Key order is ``type``, ``source``, ``driver``, ``backend`` (for types
    `nanomesh.devices` drives), then the extra keys, so profiles print and
    diff predictably.
    """
    validate_devices(devices)
    result: list[DeviceProfile] = []
    for entry in devices:
        device: DeviceProfile = {
            "type": entry["type"], "source": "config",
            "driver": entry.get("driver") or default_driver(entry["type"], on_pi),
        }
        backend = profile_backend(entry["type"], on_pi)
        if backend is not None:
            device["backend"] = backend
        device.update({k: _plain_copy(v) for k, v in entry.items() if k not in device})
        result.append(device)
    return result


def hat_devices(hat: KnownHat | None, product: str, on_pi: bool) -> list[DeviceProfile]:
    """Devices implied by a known HAT (``source = "hat"``); none for unknown HATs."""
    if hat is None:
        return []
    driver = hat.driver if on_pi else SIMULATED_DRIVER
    return [{"type": t, "source": "hat", "driver": driver, "hat": product} for t in hat.types]
