"""The DS18B20's w1_slave file (nanomesh.devices.w1): one reader for sysfs and the simulator."""

from __future__ import annotations

from pathlib import Path

import pytest

from nanomesh.devices.w1 import (
    W1Thermometer,
    crc8,
    list_sensors,
    parse_w1_slave,
    render_w1_slave,
)
from nanomesh.errors import RemoteProtocolError

REAL = "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n"
"""A real DS18B20's file (23.125 °C), as the kernel's w1-therm driver writes it."""


def test_a_real_sensors_file_parses() -> None:
    assert parse_w1_slave(REAL) == 23.125
    assert crc8(bytes.fromhex("72014b467fff0e10")) == 0x57


@pytest.mark.parametrize("celsius", [-10.0625, 0.0, 36.8, 38.625, 124.9])
def test_rendered_files_parse_back(celsius: float) -> None:
    assert parse_w1_slave(render_w1_slave(celsius)) == pytest.approx(celsius, abs=1 / 16)


@pytest.mark.parametrize(("text", "reason"), [
    (REAL.replace("YES", "NO"), "crc"),
    (REAL.replace("57 : crc=57", "58 : crc=57"), "crc"),
    (REAL.replace("0e 10 57 : crc", "0e 10 58 : crc").replace("crc=57", "crc=58"), "crc"),
    (REAL.splitlines()[0], "malformed"),
    ("", "malformed"),
    ("hello\nworld\n", "malformed"),
    (REAL.replace("t=23125", "t=99999"), "malformed"),
])
def test_bad_reads_are_refused(text: str, reason: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_w1_slave(text)
    assert info.value.reason == reason


def test_the_power_on_85_degrees_is_not_a_temperature() -> None:
    with pytest.raises(RemoteProtocolError, match="power-on"):
        parse_w1_slave(render_w1_slave(85.0))


def test_the_reader_reads_a_tree(tmp_path: Path) -> None:
    (tmp_path / "28-0000000a0012").mkdir()
    (tmp_path / "28-0000000a0012" / "w1_slave").write_text(render_w1_slave(37.5))
    (tmp_path / "w1_bus_master1").mkdir()
    assert list_sensors(tmp_path) == ["28-0000000a0012"]
    assert W1Thermometer("28-0000000a0012", tmp_path).read_celsius() == 37.5
    with pytest.raises(OSError):
        W1Thermometer("28-0000000a0099", tmp_path).read_celsius()
    with pytest.raises(ValueError):
        W1Thermometer("10-0000000a0012", tmp_path)
