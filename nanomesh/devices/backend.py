"""Which backend drives a device: the real hardware, or the simulated world.

Every driver family has a real and a simulated backend that run the same
driver code (gpiozero with its default pin factory or its ``MockFactory``;
bleak with BlueZ or with a fake backend class; the w1 reader on
``/sys/bus/w1`` or on the simulator's tree). `choose` decides, purely, from:

- ``NANOMESH_DEVICES`` (`ENV_MODE`): ``sim`` forces the simulated backends;
  ``real`` forces the real ones (a missing library is then an error, not a
  silent simulation); ``auto`` or unset: real on a Raspberry Pi that has the
  family's library, simulated anywhere else;
- whether this is a Raspberry Pi (``/proc/device-tree/model``), and whether
  the family's library (or the kernel's w1 bus) is present.

`select` is the shell that gathers those facts, logs which backend is active
and why, and returns it; a service reports ``Backend.name`` (the peer's
profile shows the same names, `nanomesh.discovery.devices`).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from nanomesh.errors import ConfigError

log = logging.getLogger("nanomesh.devices")

ENV_MODE = "NANOMESH_DEVICES"
MODES = ("auto", "sim", "real")

GPIO, BLE, W1 = "gpio", "ble", "w1"
FAMILIES = (GPIO, BLE, W1)

REAL_NAMES = {GPIO: "rpi-gpio", BLE: "bleak", W1: "w1-sysfs"}
"""The real backend of each family. For GPIO the name is refined to the pin
factory gpiozero actually loads (``lgpio`` on a Pi 5), see `nanomesh.devices.gpio`."""
SIM_NAMES = {GPIO: "gpiozero-mock", BLE: "bleak-sim", W1: "w1-sim"}

FAMILY_OF_TYPE = {
    "pir": GPIO, "led": GPIO, "led-strip": GPIO, "oxygen-controller": GPIO, "relay": GPIO,
    "ble": BLE, "pulse-oximeter": BLE,
    "body-temperature": W1, "temperature": W1,
}
"""Device types (``[[devices]] type``) this package drives, by family."""

_LIBRARIES = {GPIO: ("gpiozero",), BLE: ("bleak",), W1: ()}
_GPIO_PIN_LIBS = ("lgpio", "RPi.GPIO", "pigpio")


class DeviceBackendError(ConfigError):
    """A real backend was asked for (``NANOMESH_DEVICES=real``) where it cannot run."""


@dataclass(frozen=True)
class Backend:
    family: str
    name: str
    simulated: bool
    reason: str
    """Why this one, for the log."""


@dataclass(frozen=True)
class Facts:
    """What `choose` decides from (gathered by `facts`)."""

    on_pi: bool
    present: Mapping[str, bool]
    """Per family: its library (and, for w1, the kernel bus) is there."""


def mode_from(env: Mapping[str, str]) -> str:
    mode = env.get(ENV_MODE, "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ConfigError(f"{ENV_MODE}={mode!r}: must be one of {', '.join(MODES)}")
    return mode


def choose(family: str, mode: str, facts: Facts) -> Backend:
    """The backend of ``family`` (module docstring); DeviceBackendError when
    ``mode`` is "real" and the real one cannot run here."""
    if family not in FAMILIES:
        raise ValueError(f"unknown device family {family!r}")
    real, sim = REAL_NAMES[family], SIM_NAMES[family]
    present = facts.present.get(family, False)
    if mode == "sim":
        return Backend(family, sim, True, f"{ENV_MODE}=sim")
    if mode == "real":
        if not present:
            raise DeviceBackendError(
                f"{ENV_MODE}=real but the {family} backend is missing here "
                f"({_missing_hint(family)})")
        return Backend(family, real, False, f"{ENV_MODE}=real")
    if not facts.on_pi:
        return Backend(family, sim, True, "not a Raspberry Pi")
    if not present:
        return Backend(family, sim, True, f"Raspberry Pi without {_missing_hint(family)}")
    return Backend(family, real, False, "Raspberry Pi with the driver present")


def _missing_hint(family: str) -> str:
    if family == W1:
        return "/sys/bus/w1 (dtoverlay=w1-gpio)"
    if family == GPIO:
        return "gpiozero and a pin library (lgpio or RPi.GPIO)"
    return "bleak"


def family_of(device_type: str) -> str | None:
    return FAMILY_OF_TYPE.get(device_type)


# ------------------------------------------------------------------ shell


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def facts(proc_root: Path = Path("/proc"), sys_root: Path = Path("/sys")) -> Facts:
    """This machine's facts (cheap: no library is imported)."""
    try:
        model = (proc_root / "device-tree/model").read_text(errors="replace")
    except OSError:
        model = ""
    present = {
        GPIO: all(_importable(m) for m in _LIBRARIES[GPIO])
        and any(_importable(m) for m in _GPIO_PIN_LIBS),
        BLE: all(_importable(m) for m in _LIBRARIES[BLE]),
        W1: (sys_root / "bus/w1/devices").is_dir(),
    }
    return Facts("Raspberry Pi" in model, present)


def select(family: str, env: Mapping[str, str] | None = None,
           machine: Facts | None = None) -> Backend:
    """Choose ``family``'s backend for this process and log it."""
    backend = choose(family, mode_from(os.environ if env is None else env),
                     machine or facts())
    log.info("%s devices: backend %s (%s)", family, backend.name, backend.reason)
    return backend


def profile_backend(device_type: str, on_pi: bool,
                    env: Mapping[str, str] | None = None) -> str | None:
    """The backend name the peer's profile shows for a device of this type
    (None for a type this package does not drive). Never raises: a peer with
    a bad ``NANOMESH_DEVICES`` still starts, its services report the error."""
    family = family_of(device_type)
    if family is None:
        return None
    try:
        mode = mode_from(os.environ if env is None else env)
        machine = facts()
        return choose(family, mode, Facts(on_pi, machine.present)).name
    except ConfigError:
        return "unavailable"
