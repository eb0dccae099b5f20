"""DS18B20 temperature over 1-Wire: the kernel's ``w1_slave`` file, parsed.

On a Raspberry Pi with ``dtoverlay=w1-gpio`` the kernel's w1-therm driver
exposes each sensor as ``/sys/bus/w1/devices/28-<serial>/w1_slave``; reading
the file runs a conversion (~750 ms) and returns two lines::

    72 01 4b 46 7f ff 0e 10 57 : crc=57 YES
    72 01 4b 46 7f ff 0e 10 57 t=23125

the 9-byte scratchpad twice, whether its CRC checked out, and the temperature
in millidegrees Celsius. `parse_w1_slave` is pure and refuses anything else
(a CRC failure, a truncated file, a value the sensor cannot measure), so a
flaky wire gives an error, never a wrong body temperature.

The simulated backend ("w1-sim") is a directory laid out like
``/sys/bus/w1/devices`` that the world simulator writes with `render_w1_slave`
(a real scratchpad with a real CRC); `W1Thermometer` reads either with the
same code, given the root.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from nanomesh.errors import RemoteProtocolError

SYSFS_ROOT = Path("/sys/bus/w1/devices")
"""Where the kernel lists 1-Wire slaves."""
FAMILY = "28-"
"""The DS18B20's family code: its directories are ``28-<12 hex digits>``."""
MIN_C, MAX_C = -55.0, 125.0
"""The DS18B20's measuring range (datasheet)."""
POWER_ON_RESET_MC = 85000
"""The scratchpad's power-on value: a reading of exactly 85 °C means the
conversion did not run (a brown-out on the wire), not a temperature."""

_LINE1 = re.compile(r"((?:[0-9a-f]{2} ){9}): crc=([0-9a-f]{2}) (YES|NO)")
_LINE2 = re.compile(r"((?:[0-9a-f]{2} ){9})t=(-?\d+)")
_SENSOR_ID = re.compile(r"28-[0-9a-f]{12}")


def crc8(data: bytes) -> int:
    """Dallas/Maxim 1-Wire CRC-8 (polynomial x^8 + x^5 + x^4 + 1, reflected)."""
    crc = 0
    for byte in data:
        for _ in range(8):
            mix = (crc ^ byte) & 1
            crc >>= 1
            if mix:
                crc ^= 0x8C
            byte >>= 1
    return crc


def is_sensor_id(name: str) -> bool:
    return _SENSOR_ID.fullmatch(name) is not None


def parse_w1_slave(text: str) -> float:
    """Degrees Celsius from a ``w1_slave`` file's text; RemoteProtocolError
    ("malformed" or "crc") when it is not a good DS18B20 reading."""
    lines = text.strip().splitlines()
    if len(lines) != 2:
        raise RemoteProtocolError("malformed", f"{len(lines)} lines, want 2")
    first, second = _LINE1.fullmatch(lines[0].strip()), _LINE2.fullmatch(lines[1].strip())
    if first is None or second is None:
        raise RemoteProtocolError("malformed", "not the w1-therm format")
    if first.group(3) != "YES":
        raise RemoteProtocolError("crc", "the driver reports a CRC error")
    pad = bytes.fromhex(first.group(1))
    if crc8(pad[:8]) != pad[8]:
        raise RemoteProtocolError("crc", "scratchpad CRC does not match")
    millideg = int(second.group(2))
    raw = int.from_bytes(pad[:2], "little", signed=True)
    if raw * 1000 // 16 != millideg and abs(raw * 62.5 - millideg) > 1:
        raise RemoteProtocolError("malformed", "t= disagrees with the scratchpad")
    if millideg == POWER_ON_RESET_MC:
        raise RemoteProtocolError("malformed", "85 °C power-on value: no conversion ran")
    celsius = millideg / 1000
    if not MIN_C <= celsius <= MAX_C:
        raise RemoteProtocolError("malformed", f"{celsius} °C outside the sensor's range")
    return celsius


def render_w1_slave(celsius: float) -> str:
    """The ``w1_slave`` text a DS18B20 at ``celsius`` gives (12-bit resolution,
    1/16 °C), with a correct CRC: the simulated sensor's file."""
    if not MIN_C <= celsius <= MAX_C:
        raise ValueError(f"{celsius} °C is outside the DS18B20's range")
    raw = round(celsius * 16)
    body = raw.to_bytes(2, "little", signed=True) + bytes([0x4B, 0x46, 0x7F, 0xFF, 0x0C, 0x10])
    pad = body + bytes([crc8(body)])
    hexes = " ".join(f"{b:02x}" for b in pad) + " "
    millideg = raw * 1000 // 16
    return f"{hexes}: crc={pad[8]:02x} YES\n{hexes}t={millideg}\n"


@dataclass(frozen=True)
class W1Thermometer:
    """One DS18B20 under ``root`` (the real sysfs, or the simulator's tree)."""

    sensor_id: str
    root: Path = SYSFS_ROOT

    def __post_init__(self) -> None:
        if not is_sensor_id(self.sensor_id):
            raise ValueError(f"{self.sensor_id!r} is not a DS18B20 id (28-<12 hex digits>)")

    @property
    def path(self) -> Path:
        return self.root / self.sensor_id / "w1_slave"

    def read_celsius(self) -> float:
        """Blocking (the kernel converts for ~750 ms): call it in a thread.
        OSError when the sensor is gone, RemoteProtocolError for a bad read."""
        return parse_w1_slave(self.path.read_text())


def list_sensors(root: Path = SYSFS_ROOT) -> list[str]:
    """The DS18B20 ids present under ``root`` (none when it does not exist)."""
    try:
        return sorted(p.name for p in root.iterdir() if is_sensor_id(p.name))
    except OSError:
        return []
