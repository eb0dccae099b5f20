"""Raspberry Pi detection and HAT EEPROM parsing from /proc/device-tree."""

from __future__ import annotations

from pathlib import Path

from discovery_helpers import TreeEntry, TreeWriter

from nanomesh.discovery import DiscoveryConfig, discover
from nanomesh.discovery.hat import is_raspberry_pi, known_hat, read_hat

PI4_MODEL = b"Raspberry Pi 4 Model B Rev 1.1\x00"


def hat_tree(product: bytes) -> dict[str, TreeEntry]:
    """What the firmware exposes for a HAT EEPROM: NUL-terminated strings."""
    return {
        "device-tree/model": PI4_MODEL,
        "device-tree/hat/vendor": b"Raspberry Pi\x00",
        "device-tree/hat/product": product,
        "device-tree/hat/product_id": b"0x0001\x00",
        "device-tree/hat/product_ver": b"0x0001\x00",
        "device-tree/hat/uuid": b"95d4e0bd-2f2e-4b8d-b1b8-6b0a0e2d6a3c\x00",
    }


def test_sense_hat_eeprom(tree: TreeWriter) -> None:
    root = tree(hat_tree(b"Sense HAT\x00"))
    assert read_hat(root) == {
        "vendor": "Raspberry Pi",
        "product": "Sense HAT",
        "product_id": "0x0001",
        "uuid": "95d4e0bd-2f2e-4b8d-b1b8-6b0a0e2d6a3c",
    }
    known = known_hat(read_hat(root))
    assert known is not None
    assert known.types == ("imu", "humidity", "pressure", "temperature", "led-matrix", "joystick")


def test_no_hat_directory_is_none(tree: TreeWriter) -> None:
    assert read_hat(tree({"device-tree/model": PI4_MODEL})) is None


def test_missing_hat_field_reads_empty(tree: TreeWriter) -> None:
    root = tree({"device-tree/hat/product": b"Mystery Board\x00"})
    assert read_hat(root) == {"vendor": "", "product": "Mystery Board", "product_id": "",
                              "uuid": ""}


def test_raspberry_pi_detection(tree: TreeWriter, tmp_path: Path) -> None:
    assert is_raspberry_pi(tmp_path) is False
    assert is_raspberry_pi(tree({"device-tree/model": PI4_MODEL})) is True


def test_other_arm_board_is_not_a_pi(tree: TreeWriter) -> None:
    assert is_raspberry_pi(tree({"device-tree/model": b"Pine64 RockPro64 v2.1\x00"})) is False


def test_discover_adds_sense_hat_devices_on_a_pi(tree: TreeWriter, tmp_path: Path) -> None:
    proc = tree(hat_tree(b"Sense HAT\x00"))
    config = DiscoveryConfig(data_dir=tmp_path, devices=({"type": "pir", "pin": 4},),
                             proc_root=proc, sys_root=tmp_path / "sys")
    profile = discover(config)
    assert profile["hat"]["product"] == "Sense HAT"
    pir = dict(profile["devices"][0])
    # Real GPIO on a Pi with a pin library, gpiozero's mock without one (as here).
    assert pir.pop("backend") in ("rpi-gpio", "gpiozero-mock")
    assert pir == {"type": "pir", "source": "config", "driver": "gpio", "pin": 4}
    assert profile["devices"][1:] == [
        {"type": t, "source": "hat", "driver": "sense-hat", "hat": "Sense HAT"}
        for t in ("imu", "humidity", "pressure", "temperature", "led-matrix", "joystick")
    ]


def test_unknown_hat_is_reported_but_adds_no_devices(tree: TreeWriter, tmp_path: Path) -> None:
    proc = tree(hat_tree(b"Acme Relay Board\x00"))
    profile = discover(DiscoveryConfig(data_dir=tmp_path, proc_root=proc,
                                       sys_root=tmp_path / "sys"))
    assert profile["hat"]["product"] == "Acme Relay Board"
    assert profile["devices"] == []
