"""The example peer configs in peers/ stay valid for discovery."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from nanomesh.discovery import KNOWN_DEVICE_TYPES, DiscoveryConfig

PEERS = Path(__file__).resolve().parents[2] / "peers"
EXAMPLES = ["pir-pi.toml", "ble-pi.toml", "laptop.toml", "patient-pom-pi.toml"]


def load(name: str) -> dict[str, Any]:
    with (PEERS / name).open("rb") as f:
        return tomllib.load(f)


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_is_accepted_by_discovery_config(name: str, tmp_path: Path) -> None:
    data = load(name)
    config = DiscoveryConfig(data_dir=tmp_path, devices=tuple(data.get("devices", [])),
                             labels=data["peer"].get("labels", {}))
    assert config.devices, "every example declares at least one device"
    assert {d["type"] for d in config.devices} <= KNOWN_DEVICE_TYPES


def test_pir_example_matches_the_research_poc() -> None:
    data = load("pir-pi.toml")
    assert data["peer"] == {"name": "room-pd1", "labels": {"room": "meeting-1", "floor": "2"}}
    assert data["devices"][0] == {"type": "pir", "pin": 4}
