"""discover() on the machine running the tests: shape, sane values, speed."""

from __future__ import annotations

import copy
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from nanomesh.discovery import (
    PROFILE_KEYS,
    DiscoveryConfig,
    discover,
    refresh_live,
    sample_load,
)

SECTION_KEYS = {
    "cpu": {"cores", "mhz", "bogomips", "arch", "model"},
    "memory": {"total_mb", "available_mb"},
    "storage": {"path", "total_mb", "free_mb"},
    "power": {"source", "battery_percent", "battery_health_percent", "detected_by"},
    "network": {"interfaces", "ethernet", "wifi", "bluetooth"},
    "load": {"cpu_percent", "memory_percent", "load1"},
}


@pytest.fixture
def config(tmp_path: Path) -> DiscoveryConfig:
    return DiscoveryConfig(data_dir=tmp_path / "not-created-yet",
                           devices=({"type": "pir", "pin": 4}, {"type": "display"}),
                           labels={"room": "meeting-1", "floor": "2"})


@pytest.fixture
def profile(config: DiscoveryConfig) -> dict[str, Any]:
    return discover(config)


def test_shape_is_exact(profile: dict[str, Any]) -> None:
    assert tuple(profile) == PROFILE_KEYS
    for section, keys in SECTION_KEYS.items():
        assert set(profile[section]) == keys, section
    for interface in profile["network"]["interfaces"]:
        assert set(interface) == {"name", "kind", "up", "addresses"}


def test_profile_is_plain_data(profile: dict[str, Any]) -> None:
    """A JSON round trip changes nothing: no tuples, paths, enums or namedtuples."""
    assert json.loads(json.dumps(profile)) == profile


def test_cpu_is_sane(profile: dict[str, Any]) -> None:
    cpu = profile["cpu"]
    assert cpu["cores"] >= 1
    assert cpu["cores"] == os.cpu_count()
    assert cpu["arch"] == platform.machine()
    if cpu["mhz"] is not None:
        assert 100 <= cpu["mhz"] <= 10_000


def test_memory_and_storage_are_sane(profile: dict[str, Any], config: DiscoveryConfig) -> None:
    assert 0 < profile["memory"]["available_mb"] <= profile["memory"]["total_mb"]
    assert profile["memory"]["total_mb"] == psutil.virtual_memory().total // 2**20
    storage = profile["storage"]
    assert storage["path"] == str(config.data_dir)
    assert 0 <= storage["free_mb"] <= storage["total_mb"]
    assert storage["total_mb"] > 0


def test_power_is_sane(profile: dict[str, Any]) -> None:
    power = profile["power"]
    assert power["source"] in ("ac", "battery")
    assert power["detected_by"] in ("sysfs", "psutil", "default")
    if power["battery_percent"] is None:
        assert power["source"] == "ac"


def test_loopback_is_found_and_up(profile: dict[str, Any]) -> None:
    loopback = [i for i in profile["network"]["interfaces"] if i["kind"] == "loopback"]
    assert len(loopback) == 1
    assert loopback[0]["up"] is True
    assert "127.0.0.1" in loopback[0]["addresses"]
    assert all("%" not in a for i in profile["network"]["interfaces"] for a in i["addresses"])


def test_config_devices_and_labels(profile: dict[str, Any]) -> None:
    on_pi = "Raspberry Pi" in (Path("/proc/device-tree/model").read_text(errors="replace")
                               if Path("/proc/device-tree/model").exists() else "")
    expected = ("gpio", "framebuffer") if on_pi else ("simulated", "simulated")
    config_devices = [d for d in profile["devices"] if d["source"] == "config"]
    assert [(d["type"], d["driver"]) for d in config_devices] == list(
        zip(("pir", "display"), expected, strict=True))
    assert profile["labels"] == {"room": "meeting-1", "floor": "2"}


def test_load_is_sane(profile: dict[str, Any], config: DiscoveryConfig) -> None:
    for load in (profile["load"], sample_load(config)):
        assert set(load) == SECTION_KEYS["load"]
        assert 0.0 <= load["cpu_percent"] <= 100.0
        assert 0.0 < load["memory_percent"] < 100.0
        assert load["load1"] >= 0.0


def test_refresh_live_rereads_live_parts_only(profile: dict[str, Any],
                                              config: DiscoveryConfig) -> None:
    before = copy.deepcopy(profile)
    stale = copy.deepcopy(profile)
    stale["memory"]["available_mb"] = -1
    stale["storage"]["free_mb"] = -1
    stale["power"] = {"source": "battery", "battery_percent": 1.0,
                      "battery_health_percent": None, "detected_by": "sysfs"}
    stale["cpu"]["model"] = "kept as is"
    fresh = refresh_live(stale, config)
    assert fresh["memory"]["available_mb"] > 0
    assert fresh["storage"]["free_mb"] >= 0
    assert fresh["power"] == before["power"]
    assert fresh["cpu"]["model"] == "kept as is"
    assert fresh["memory"]["total_mb"] == before["memory"]["total_mb"]
    assert stale["memory"]["available_mb"] == -1, "input must not be modified"


def test_discover_takes_well_under_100_ms(config: DiscoveryConfig) -> None:
    timings = []
    for _ in range(21):
        start = time.perf_counter()
        discover(config)
        timings.append((time.perf_counter() - start) * 1000)
    assert statistics.median(timings) < 100.0
