"""Gossiped capability profile -> PeerView: the capacity fields, and tolerance."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from nanomesh.discovery import DiscoveryConfig, discover
from nanomesh.placement import PeerView, peer_view_from_profile


def profile(**overrides: Any) -> dict[str, Any]:
    """A profile of the shape discovery produces: an RPi 4 on battery."""
    base: dict[str, Any] = {
        "cpu": {"cores": 4, "mhz": 1500.0, "bogomips": 108.0, "arch": "aarch64",
                "model": "Raspberry Pi 4 Model B Rev 1.4"},
        "memory": {"total_mb": 3796, "available_mb": 3300},
        "storage": {"path": "/var/lib/nanomesh", "total_mb": 29000, "free_mb": 21000},
        "power": {"source": "battery", "battery_percent": 76.5,
                  "battery_health_percent": 98.0, "detected_by": "sysfs"},
        "network": {"interfaces": [], "ethernet": False, "wifi": True, "bluetooth": True},
        "devices": [{"type": "pulse-oximeter", "source": "config", "driver": "bluez"},
                    {"type": "body-temperature", "source": "config", "driver": "bluez"}],
        "hat": None,
        "labels": {"ward": "3", "bed": "12"},
        "load": {"cpu_percent": 12.5, "memory_percent": 13.0, "load1": 0.4},
    }
    base.update(overrides)
    return base


def test_full_profile() -> None:
    v = peer_view_from_profile("ward3-bed12", profile(), alive=True)
    assert v == PeerView(
        name="ward3-bed12", alive=True,
        capabilities=frozenset({"pulse-oximeter", "body-temperature", "compute"}),
        cpu_cores=4.0, memory_mb=3300, storage_mb=21000,  # available memory, free storage
        power="battery", battery_percent=76.5,
        networks=frozenset({"wifi", "bluetooth"}), labels={"ward": "3", "bed": "12"},
        cpu_load_percent=12.5)


def test_missing_fields_mean_has_nothing() -> None:
    v = peer_view_from_profile("bare", {}, alive=False)
    assert v == PeerView("bare", alive=False)
    assert v.capabilities == frozenset() and v.cpu_cores == 0 and v.memory_mb == 0
    assert v.power is None and v.battery_percent == 0 and v.networks == frozenset()
    assert v.cpu_load_percent == 100.0     # no load reported ranks as busiest


@pytest.mark.parametrize(("overrides", "attr", "expected"), [
    ({"cpu": "four"}, "cpu_cores", 0.0),
    ({"cpu": {"cores": True}}, "cpu_cores", 0.0),
    ({"cpu": {"cores": -2}}, "cpu_cores", 0.0),
    ({"cpu": {"cores": 0}}, "capabilities", frozenset({"pulse-oximeter", "body-temperature"})),
    ({"memory": {"available_mb": None}}, "memory_mb", 0),
    ({"memory": {"available_mb": float("inf")}}, "memory_mb", 0),
    ({"storage": None}, "storage_mb", 0),
    ({"power": {"source": "solar"}}, "power", None),
    ({"power": {"source": "ac", "battery_percent": None}}, "battery_percent", 0.0),
    ({"power": {"source": "battery", "battery_percent": 250}}, "battery_percent", 100.0),
    ({"network": {"wifi": "yes", "ethernet": 1, "bluetooth": True}}, "networks",
     frozenset({"bluetooth"})),
    ({"devices": "pir"}, "capabilities", frozenset({"compute"})),
    ({"devices": [{"type": 3}, "pir", {"type": "pir"}]}, "capabilities",
     frozenset({"compute", "pir"})),
    ({"labels": {"room": "a", "n": 1, 2: "x"}}, "labels", {"room": "a"}),
    ({"labels": ["room"]}, "labels", {}),
    ({"load": {"cpu_percent": "high"}}, "cpu_load_percent", 100.0),
    ({"load": {"cpu_percent": 0}}, "cpu_load_percent", 0.0),
])
def test_malformed_fields_read_as_nothing(overrides: dict[str, Any], attr: str,
                                          expected: object) -> None:
    assert getattr(peer_view_from_profile("p", profile(**overrides), True), attr) == expected


def test_a_real_discovered_profile_converts(tmp_path: Path) -> None:
    config = DiscoveryConfig(data_dir=tmp_path, devices=({"type": "pir", "pin": 4},),
                             labels={"room": "lab"})
    v = peer_view_from_profile("here", discover(config), alive=True)
    assert {"pir", "compute"} <= v.capabilities
    assert v.cpu_cores >= 1 and v.memory_mb > 0 and v.storage_mb > 0
    assert v.labels == {"room": "lab"} and v.power in ("ac", "battery")


def test_round_trip() -> None:
    v = peer_view_from_profile("p", profile(), True)
    assert PeerView.from_dict(json.loads(json.dumps(v.to_dict()))) == v
