"""Raspberry Pi board and HAT detection.

A Pi is recognised by ``/proc/device-tree/model`` ("Raspberry Pi 4 Model B Rev
1.1"): the device tree is what the firmware booted, so it is right even inside
a container that hides ``/proc/cpuinfo``'s ``Model`` line.

A HAT ("Hardware Attached on Top") carries an ID EEPROM; the firmware copies its
vendor-info atom into ``/proc/device-tree/hat/`` as NUL-terminated strings
(``vendor``, ``product``, ``product_id``, ``product_ver``, ``uuid``). Boards
without an EEPROM (most pHATs, breadboard sensors) are invisible here and have
to be declared as ``[[devices]]`` in the peer config.

:data:`KNOWN_HATS` maps HAT products to the device types they provide, so a
Sense HAT makes a peer eligible for a service that needs a humidity sensor
without the operator listing it. The table is matched on the EEPROM
``product`` string (case-insensitive), because product IDs are only unique per
vendor. A HAT not in the table still appears in the profile's ``hat`` section
but adds no devices: guessing what an unknown board does would advertise
capabilities the peer may not have.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nanomesh.discovery.profile import HatProfile
from nanomesh.discovery.sysfs import read_text

_HAT_FIELDS = ("vendor", "product", "product_id", "uuid")


@dataclass(frozen=True)
class KnownHat:
    """What a known HAT provides: device ``types`` and the ``driver`` serving them."""

    types: tuple[str, ...]
    driver: str


#: EEPROM ``product`` string (lowercase) -> what the HAT provides.
#: Add a row when a HAT with an ID EEPROM joins the fleet; keep types in the
#: vocabulary of :data:`nanomesh.discovery.devices.KNOWN_DEVICE_TYPES` where one fits.
KNOWN_HATS: dict[str, KnownHat] = {
    # Raspberry Pi Sense HAT (vendor "Raspberry Pi", product_id 0x0001):
    # LSM9DS1 IMU, HTS221 humidity+temperature, LPS25H pressure+temperature on
    # I2C; 8x8 RGB matrix and 5-way joystick behind an ATtiny88 (kernel driver
    # rpisense, also used by the python "sense-hat" package).
    "sense hat": KnownHat(
        types=("imu", "humidity", "pressure", "temperature", "led-matrix", "joystick"),
        driver="sense-hat",
    ),
}


def is_raspberry_pi(proc_root: Path) -> bool:
    """True when the device tree's board model names a Raspberry Pi."""
    model = read_text(proc_root / "device-tree/model")
    return model is not None and "Raspberry Pi" in model


def read_hat(proc_root: Path) -> HatProfile | None:
    """The HAT EEPROM's vendor info, or ``None`` when no HAT was detected.

    A missing individual field reads as ``""`` so the section keeps its shape.
    """
    hat_dir = proc_root / "device-tree/hat"
    if not hat_dir.is_dir():
        return None
    values = {name: read_text(hat_dir / name) or "" for name in _HAT_FIELDS}
    return {"vendor": values["vendor"], "product": values["product"],
            "product_id": values["product_id"], "uuid": values["uuid"]}


def known_hat(hat: HatProfile | None) -> KnownHat | None:
    """The :data:`KNOWN_HATS` entry for ``hat``, if it is a known product."""
    if hat is None:
        return None
    return KNOWN_HATS.get(hat["product"].strip().lower())
