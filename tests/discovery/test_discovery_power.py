"""Power source, charge and battery health from /sys/class/power_supply."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import pytest
from discovery_helpers import TreeEntry, TreeWriter

from nanomesh.discovery.power import power_from_psutil, probe_power, read_power_supplies

PS = "class/power_supply"


def mains(name: str, online: int, kind: str = "Mains") -> dict[str, TreeEntry]:
    return {f"{PS}/{name}/type": f"{kind}\n", f"{PS}/{name}/online": f"{online}\n"}


def battery(name: str, **attrs: object) -> dict[str, TreeEntry]:
    files: dict[str, TreeEntry] = {f"{PS}/{name}/type": "Battery\n"}
    files.update({f"{PS}/{name}/{k}": f"{v}\n" for k, v in attrs.items()})
    return files


def laptop(ac_online: int, status: str) -> dict[str, TreeEntry]:
    """A ThinkPad-like tree: AC adapter + one battery reporting energy in µWh."""
    return {
        **mains("AC", ac_online),
        **battery("BAT0", present=1, capacity=76, status=status,
                  energy_full=42_000_000, energy_full_design=50_000_000),
    }


class Reading(NamedTuple):
    percent: float
    secsleft: int
    power_plugged: bool | None


def no_psutil() -> None:
    return None


def probe(root: Path) -> Mapping[str, object]:
    return probe_power(root, no_psutil)


def test_laptop_unplugged_runs_on_battery(tree: TreeWriter) -> None:
    assert probe(tree(laptop(ac_online=0, status="Discharging"))) == {
        "source": "battery",
        "battery_percent": 76.0,
        "battery_health_percent": 84.0,
        "detected_by": "sysfs",
    }


def test_laptop_plugged_in_is_ac(tree: TreeWriter) -> None:
    power = probe(tree(laptop(ac_online=1, status="Charging")))
    assert (power["source"], power["battery_percent"]) == ("ac", 76.0)


def test_usb_c_charger_counts_as_mains(tree: TreeWriter) -> None:
    files = {**laptop(ac_online=0, status="Charging"), **mains("ucsi-source-psy-1", 1, "USB")}
    assert probe(tree(files))["source"] == "ac"


def test_health_from_charge_when_no_energy(tree: TreeWriter) -> None:
    files = battery("BAT1", capacity=50, status="Discharging",
                    charge_full=2_800_000, charge_full_design=3_500_000)
    power = probe(tree(files))
    assert power["battery_health_percent"] == 80.0


def test_percent_from_energy_now_without_capacity(tree: TreeWriter) -> None:
    files = battery("BAT0", status="Discharging", energy_now=10_000_000, energy_full=40_000_000)
    assert probe(tree(files))["battery_percent"] == 25.0


@pytest.mark.parametrize(("status", "source"), [("Discharging", "battery"),
                                                ("Charging", "ac"), ("Full", "ac")])
def test_battery_without_mains_entry_uses_status(
        tree: TreeWriter, status: str, source: str) -> None:
    assert probe(tree(battery("BAT0", capacity=60, status=status)))["source"] == source


def test_two_batteries_average_charge_and_pool_health(tree: TreeWriter) -> None:
    files = {
        **mains("AC", 0),
        **battery("BAT0", capacity=80, energy_full=20_000_000, energy_full_design=25_000_000),
        **battery("BAT1", capacity=40, energy_full=15_000_000, energy_full_design=25_000_000),
    }
    power = probe(tree(files))
    assert (power["battery_percent"], power["battery_health_percent"]) == (60.0, 70.0)


def test_peripheral_and_absent_batteries_are_ignored(tree: TreeWriter) -> None:
    files = {
        **battery("hidpp_battery_0", scope="Device", capacity=10, status="Discharging"),
        **battery("BAT0", present=0, capacity=0, status="Unknown"),
    }
    assert probe(tree(files)) == {"source": "ac", "battery_percent": None,
                                  "battery_health_percent": None, "detected_by": "default"}


def test_mains_only_desktop_is_ac_by_sysfs(tree: TreeWriter) -> None:
    assert probe(tree(mains("AC", 1))) == {"source": "ac", "battery_percent": None,
                                           "battery_health_percent": None, "detected_by": "sysfs"}


def test_empty_power_supply_dir_means_ac_by_default(tree: TreeWriter) -> None:
    """A Pi or a VM: the class exists but lists nothing -> no battery -> mains."""
    root = tree({PS: {}})
    assert read_power_supplies(root / PS) is not None
    assert probe(root)["detected_by"] == "default"
    assert probe(root)["source"] == "ac"


def test_missing_sysfs_falls_back_to_psutil(tmp_path: Path) -> None:
    power = probe_power(tmp_path, lambda: Reading(55, 3600, False))
    assert power == {"source": "battery", "battery_percent": 55.0,
                     "battery_health_percent": None, "detected_by": "psutil"}


@pytest.mark.parametrize(("reading", "source", "detected_by"), [
    (None, "ac", "default"),
    (Reading(90, -2, True), "ac", "psutil"),
    (Reading(90, -2, None), "ac", "psutil"),
    (Reading(20, 600, False), "battery", "psutil"),
])
def test_power_from_psutil(reading: Reading | None, source: str, detected_by: str) -> None:
    power = power_from_psutil(reading)
    assert (power["source"], power["detected_by"]) == (source, detected_by)


def test_sysfs_is_authoritative_even_when_psutil_knows_more(tree: TreeWriter) -> None:
    root = tree({PS: {}})
    assert probe_power(root, lambda: Reading(20, 600, False))["detected_by"] == "default"
