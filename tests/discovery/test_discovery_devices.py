"""Device entries from the peer config: validation, defaults, pass-through."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nanomesh.discovery import DiscoveryConfig, DiscoveryConfigError
from nanomesh.discovery.devices import config_devices, default_driver, hat_devices
from nanomesh.discovery.hat import KNOWN_HATS


def test_off_a_pi_every_default_driver_is_simulated(monkeypatch: pytest.MonkeyPatch) -> None:
    """Off a Pi the drivers say "simulated" and the backends are the simulated
    ones of nanomesh.devices; a type it does not drive has no backend."""
    monkeypatch.delenv("NANOMESH_DEVICES", raising=False)
    devices = config_devices([{"type": "pir", "pin": 4}, {"type": "ble"},
                              {"type": "body-temperature", "id": "28-0000000a0012"},
                              {"type": "camera"}], on_pi=False)
    assert devices == [
        {"type": "pir", "source": "config", "driver": "simulated", "backend": "gpiozero-mock",
         "pin": 4},
        {"type": "ble", "source": "config", "driver": "simulated", "backend": "bleak-sim"},
        {"type": "body-temperature", "source": "config", "driver": "simulated",
         "backend": "w1-sim", "id": "28-0000000a0012"},
        {"type": "camera", "source": "config", "driver": "simulated"},
    ]


def test_backend_is_reserved() -> None:
    with pytest.raises(DiscoveryConfigError, match="backend"):
        config_devices([{"type": "pir", "backend": "rpi-gpio"}], on_pi=False)


@pytest.mark.parametrize(("device_type", "driver"), [
    ("pir", "gpio"), ("led-strip", "gpio"), ("oxygen-controller", "gpio"),
    ("ble", "bluez"), ("pulse-oximeter", "bluez"), ("camera", "v4l2"),
    ("speaker", "alsa"), ("humidity", "i2c"), ("co2-sensor", "native"),
])
def test_pi_default_drivers(device_type: str, driver: str) -> None:
    assert default_driver(device_type, on_pi=True) == driver


def test_explicit_driver_and_extra_keys_pass_through(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NANOMESH_DEVICES", raising=False)
    entry = {"type": "pulse-oximeter", "driver": "nonin", "address": "00:1C:05:FF:00:01",
             "channels": ("spo2", "pulse"), "options": {"interval_s": 2}}
    assert config_devices([entry], on_pi=False) == [{
        "type": "pulse-oximeter", "source": "config", "driver": "nonin", "backend": "bleak-sim",
        "address": "00:1C:05:FF:00:01", "channels": ["spo2", "pulse"],
        "options": {"interval_s": 2},
    }]


def test_unknown_type_is_allowed() -> None:
    assert config_devices([{"type": "co2"}], on_pi=False)[0]["type"] == "co2"


def test_hat_devices_off_a_pi_are_simulated() -> None:
    devices = hat_devices(KNOWN_HATS["sense hat"], "Sense HAT", on_pi=False)
    assert {d["driver"] for d in devices} == {"simulated"}
    assert hat_devices(None, "Whatever", on_pi=True) == []


class Unplain:
    pass


BAD_ENTRIES: list[tuple[str, list[Any], int, str]] = [
    ("missing type", [{"pin": 4}], 0, "type"),
    ("uppercase type", [{"type": "PIR"}], 0, "type"),
    ("empty type", [{"type": ""}], 0, "type"),
    ("leading dash", [{"type": "-pir"}], 0, "type"),
    ("underscore", [{"type": "pulse_oximeter"}], 0, "type"),
    ("non-string type", [{"type": 4}], 0, "type"),
    ("entry not a table", ["pir"], 0, "type"),
    ("second entry", [{"type": "pir"}, {"type": "Camera"}], 1, "type"),
    ("uppercase driver", [{"type": "pir", "driver": "GPIO"}], 0, "driver"),
    ("negative pin", [{"type": "pir", "pin": -1}], 0, "pin"),
    ("bool pin", [{"type": "pir", "pin": True}], 0, "pin"),
    ("string pin", [{"type": "pir", "pin": "4"}], 0, "pin"),
    ("reserved source", [{"type": "pir", "source": "hat"}], 0, "source"),
    ("unplain value", [{"type": "pir"}, {"type": "ble"}, {"type": "x", "obj": Unplain()}],
     2, "obj"),
]


@pytest.mark.parametrize(("entries", "index", "field"),
                         [case[1:] for case in BAD_ENTRIES], ids=[c[0] for c in BAD_ENTRIES])
def test_invalid_entries_name_index_and_field(entries: list[Any], index: int, field: str) -> None:
    with pytest.raises(DiscoveryConfigError) as caught:
        config_devices(entries, on_pi=False)
    assert (caught.value.index, caught.value.field) == (index, field)
    assert str(caught.value).startswith(f"devices[{index}].{field}: ")
    assert isinstance(caught.value, ValueError)


def test_config_rejects_bad_devices_at_construction(tmp_path: Path) -> None:
    with pytest.raises(DiscoveryConfigError, match=r"devices\[0\]\.type"):
        DiscoveryConfig(data_dir=tmp_path, devices=({"type": "PIR"},))


def test_config_rejects_non_string_label(tmp_path: Path) -> None:
    with pytest.raises(DiscoveryConfigError) as caught:
        DiscoveryConfig(data_dir=tmp_path, labels={"room": "a", "floor": 2})  # type: ignore[dict-item]
    assert (caught.value.index, caught.value.field) == (None, "labels.floor")


def test_config_normalises_and_freezes(tmp_path: Path) -> None:
    labels = {"room": "meeting-1"}
    config = DiscoveryConfig(data_dir=tmp_path, devices=[{"type": "pir"}],  # type: ignore[arg-type]
                             labels=labels)
    labels["room"] = "changed"
    assert config.devices == ({"type": "pir"},)
    assert config.labels == {"room": "meeting-1"}
    with pytest.raises(TypeError):
        config.labels["room"] = "x"  # type: ignore[index]
