"""Backend choice (nanomesh.devices.backend) and the simulated backends
running the real driver code: gpiozero's devices on its MockFactory, bleak's
client and scanner on fake backends fed by the world, the w1 reader on the
simulator's tree."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import trio

from nanomesh.devices.backend import (
    BLE,
    GPIO,
    W1,
    Backend,
    DeviceBackendError,
    Facts,
    choose,
    mode_from,
    profile_backend,
    select,
)
from nanomesh.devices.berrymed import OximeterReading
from nanomesh.devices.ble import PulseOximeter, ibeacon_data, ibeacon_uuid, scan_tags
from nanomesh.devices.gpio import Gpio
from nanomesh.devices.simworld import SimWorld, W1SimTree, drive_pirs, from_env, load_world
from nanomesh.devices.w1 import W1Thermometer
from nanomesh.devices.world import WorldError
from nanomesh.errors import ConfigError

PI_WITH_ALL = Facts(True, {GPIO: True, BLE: True, W1: True})
PI_WITHOUT = Facts(True, {GPIO: False, BLE: False, W1: False})
LAPTOP = Facts(False, {GPIO: True, BLE: True, W1: False})


@pytest.mark.parametrize(("family", "mode", "facts", "name", "simulated"), [
    (GPIO, "auto", PI_WITH_ALL, "rpi-gpio", False),
    (BLE, "auto", PI_WITH_ALL, "bleak", False),
    (W1, "auto", PI_WITH_ALL, "w1-sysfs", False),
    (GPIO, "auto", LAPTOP, "gpiozero-mock", True),
    (BLE, "auto", LAPTOP, "bleak-sim", True),
    (W1, "auto", PI_WITHOUT, "w1-sim", True),
    (BLE, "sim", PI_WITH_ALL, "bleak-sim", True),
    (W1, "real", PI_WITH_ALL, "w1-sysfs", False),
    (BLE, "real", LAPTOP, "bleak", False),  # forced: bleak is there (BlueZ may not be)
])
def test_choose(family: str, mode: str, facts: Facts, name: str, simulated: bool) -> None:
    backend = choose(family, mode, facts)
    assert (backend.name, backend.simulated) == (name, simulated)
    assert backend.reason


def test_real_where_it_cannot_run_is_an_error_not_a_simulation() -> None:
    with pytest.raises(DeviceBackendError, match="w1"):
        choose(W1, "real", LAPTOP)


def test_mode_from_env() -> None:
    assert mode_from({}) == "auto"
    assert mode_from({"NANOMESH_DEVICES": " SIM "}) == "sim"
    with pytest.raises(ConfigError, match="NANOMESH_DEVICES"):
        mode_from({"NANOMESH_DEVICES": "fake"})


def test_profile_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    assert profile_backend("pulse-oximeter", on_pi=False, env={}) == "bleak-sim"
    assert profile_backend("camera", on_pi=False, env={}) is None
    assert profile_backend("pir", on_pi=False, env={"NANOMESH_DEVICES": "bad"}) == "unavailable"


def test_select_logs_the_backend(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="nanomesh.devices"):
        backend = select(GPIO, env={"NANOMESH_DEVICES": "sim"})
    assert backend.name == "gpiozero-mock"
    assert "gpio devices: backend gpiozero-mock (NANOMESH_DEVICES=sim)" in caplog.text


SIM_GPIO = Backend(GPIO, "gpiozero-mock", True, "test")
SIM_BLE = Backend(BLE, "bleak-sim", True, "test")
WORLD = """
[[oximeter]]
address = "00:1C:05:00:00:12"
readings = [{at = 0, spo2 = 97, pulse = 72}, {at = 1000, spo2 = 80, pulse = 140}]

[[thermometer]]
id = "28-0000000a0012"
readings = [{at = 0, celsius = 37.25}]

[[pir]]
id = "pd1"
motion = [{from = 0, to = 1000}]

[[tag]]
uuid = "e2c56db5-dffb-48d2-b060-d0f5a71096e0"
near = [{at = 0, radio = "bs1"}]
"""


@pytest.fixture
def sim(tmp_path: Path) -> SimWorld:
    path = tmp_path / "world.toml"
    path.write_text(WORLD)
    return from_env({"NANOMESH_WORLD": str(path), "NANOMESH_WORLD_START": str(time.time())})


def test_gpio_on_the_mock_factory(sim: SimWorld) -> None:
    """gpiozero's own MotionSensor and OutputDevice, on mock pins the world drives."""
    gpio = Gpio(SIM_GPIO)
    try:
        pir, relay, led = gpio.motion_sensor(4), gpio.relay(17), gpio.led(18)
        assert not pir.motion_detected and not gpio.level(17)
        drive_pirs(gpio, {"pd1": 4}, sim.now())  # the world: motion in front of pd1
        assert pir.wait_for_motion(timeout=2)
        relay.on()
        led.on()
        assert gpio.level(17) and gpio.level(18)
        relay.off()
        assert not gpio.level(17)
    finally:
        gpio.close()


def test_w1_reader_on_the_simulators_tree(sim: SimWorld, tmp_path: Path) -> None:
    tree = W1SimTree(tmp_path / "w1")
    tree.update(sim.now())
    assert W1Thermometer("28-0000000a0012", tmp_path / "w1").read_celsius() == 37.25
    tree.update(sim.world.at(-1))  # before its first reading: the sensor is absent
    assert not (tmp_path / "w1" / "28-0000000a0012").exists()


async def test_oximeter_through_bleak_with_the_fake_backend(sim: SimWorld) -> None:
    """bleak's BleakClient connects to the fake backend, notifies real
    BM1000 packets, and the decoder reads what the world says."""
    got: list[OximeterReading] = []
    oximeter = PulseOximeter("00:1c:05:00:00:12", SIM_BLE, sim)
    with trio.move_on_after(10):
        async with trio.open_nursery() as nursery:
            def seen(r: OximeterReading) -> None:
                got.append(r)
                if len(got) == 2:
                    nursery.cancel_scope.cancel()
            nursery.start_soon(oximeter.run, seen)
    assert [(r.spo2, r.pulse) for r in got] == [(97, 72), (97, 72)]
    assert oximeter.stream.dropped == 0


async def test_an_absent_oximeter_is_retried_not_fatal(sim: SimWorld,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    oximeter = PulseOximeter("00:1C:05:00:00:99", SIM_BLE, sim)
    with caplog.at_level("INFO", logger="nanomesh.devices"), trio.move_on_after(1.5):
        await oximeter.run(lambda r: None)
    assert "simulated oximeter is off; retrying" in caplog.text and not oximeter.connected


async def test_scan_hears_the_tags_near_this_radio(sim: SimWorld) -> None:
    tag = "e2c56db5-dffb-48d2-b060-d0f5a71096e0"
    assert list(await scan_tags(0.8, backend=SIM_BLE, sim=sim, radio="bs1")) == [tag]
    assert await scan_tags(0.6, backend=SIM_BLE, sim=sim, radio="bs2") == {}


def test_ibeacon_decoding() -> None:
    tag = "e2c56db5-dffb-48d2-b060-d0f5a71096e0"
    assert ibeacon_uuid({0x004C: ibeacon_data(tag, 1, 2)}) == tag
    assert ibeacon_uuid({0x004C: b"\x02\x15short"}) is None
    assert ibeacon_uuid({0x0059: ibeacon_data(tag)}) is None


def test_world_file_errors_and_reload(tmp_path: Path) -> None:
    path = tmp_path / "w.toml"
    path.write_text("[[pir]]\nid = 'p'\nmotion = 'always'\n")
    with pytest.raises(WorldError, match=r"w\.toml: pir\[0\]\.motion"):
        load_world(path)
    with pytest.raises(WorldError, match="cannot read"):
        load_world(tmp_path / "missing.toml")
    path.write_text(WORLD)
    sim = SimWorld(load_world(path), time.time(), path)
    assert sim.now().motion == {"pd1"}
    path.write_text("")  # the demo rewrites the world: the simulator follows
    sim._checked -= 1  # as if RELOAD_PERIOD had passed
    os.utime(path, ns=(1, 1))
    assert sim.now().motion == set()
