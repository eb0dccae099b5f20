"""Strategy first-fit reproduces the research's Algorithm 1 on its testbed.

The remote patient monitoring testbed (RESEARCH.md, "Scenario 2"): five
Raspberry Pi workers W1..W5, RPi 3 (4 cores, 1 GB) and RPi 4 (4 cores, 4 GB),
AC- and battery-powered, Wi-Fi and Bluetooth. W1 has the body-temperature
sensor ``bot``, W3 the oxygen controller ``oc``, W4 the pulse oximeter
``pom``, W5 the data display ``dd``; W2 has no device. The profiles are built
as gossip carries them and converted with ``peer_view_from_profile``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from placement_helpers import check_plan

from nanomesh.placement import (
    PlacementConfig,
    Usage,
    first_failure,
    peer_view_from_profile,
    place,
    service_spec_from_dict,
    usage_by_peer,
)

FIRST_FIT = PlacementConfig(strategy="first-fit")


def rpi(model: int, devices: list[str], power: str, battery: float | None,
        ethernet: bool = False) -> dict[str, Any]:
    total, available = (926, 700) if model == 3 else (3796, 3300)
    return {
        "cpu": {"cores": 4, "mhz": 1400.0 if model == 3 else 1500.0, "bogomips": 38.4,
                "arch": "armv7l", "model": f"Raspberry Pi {model} Model B"},
        "memory": {"total_mb": total, "available_mb": available},
        "storage": {"path": "/var/lib/nanomesh", "total_mb": 14000, "free_mb": 8000},
        "power": {"source": power, "battery_percent": battery, "battery_health_percent": None,
                  "detected_by": "sysfs"},
        "network": {"interfaces": [], "ethernet": ethernet, "wifi": True, "bluetooth": True},
        "devices": [{"type": t, "source": "config", "driver": "bluez"} for t in devices],
        "hat": None, "labels": {},
        "load": {"cpu_percent": 5.0, "memory_percent": 20.0, "load1": 0.1},
    }


TESTBED = [
    peer_view_from_profile("W1", rpi(3, ["bot"], "battery", 64.0), alive=True),
    peer_view_from_profile("W2", rpi(4, [], "ac", None, ethernet=True), alive=True),
    peer_view_from_profile("W3", rpi(3, ["oc"], "ac", None), alive=True),
    peer_view_from_profile("W4", rpi(4, ["pom"], "battery", 88.0), alive=True),
    peer_view_from_profile("W5", rpi(4, ["dd"], "ac", None), alive=True),
]


def svc(name: str, **requires: Any) -> dict[str, Any]:
    return {"name": name, "requires": requires}


# Sub-tasks of the scenario: (A) data acquisition of BoT, SpO2 and HRV, (B) alerts,
# (C) remote monitoring by staff (with a local history), the display and oxygen control.
SERVICES = [service_spec_from_dict(d) for d in [
    svc("bot-acquisition", capabilities=["bot"], cpu=1, memory_mb=128, network="bluetooth"),
    svc("spo2-acquisition", capabilities=["pom"], cpu=1, memory_mb=256, network="bluetooth"),
    svc("hrv-acquisition", capabilities=["pom"], cpu=2, memory_mb=512),
    svc("alert", capabilities=["compute"], cpu=1, memory_mb=256, network="wifi"),
    svc("oxygen-control", capabilities=["oc"], cpu=0.5, memory_mb=64, power="ac"),
    svc("display", capabilities=["dd"], cpu=0.5, memory_mb=128),
    svc("history", capabilities=["compute"], cpu=1, memory_mb=512, storage_mb=2048),
    svc("remote-monitoring", capabilities=["compute"], cpu=1, memory_mb=256, power="ac",
        network="ethernet"),
    svc("pulse-rate", capabilities=["pom"], cpu=2, memory_mb=256),
]]


def test_algorithm_1_assignment_on_the_testbed() -> None:
    plan = place(SERVICES, TESTBED, config=FIRST_FIT)
    assert dict(plan.assignments) == {
        "bot-acquisition/0": "W1",     # the only bot
        "spo2-acquisition/0": "W4",    # the only pom
        "hrv-acquisition/0": "W4",     # several nanoservices share a worker with capacity
        "alert/0": "W1",               # first worker with compute: W1 (3 cores, 572 MB left)
        "oxygen-control/0": "W3",
        "display/0": "W5",
        "history/0": "W2",             # W1 now has 316 MB: capacity decrement -> next worker
        "remote-monitoring/0": "W2",   # b exact: W1 is on battery; n: only W2 has ethernet
    }
    assert plan.unplaced == ("pulse-rate/0",)
    check_plan(plan, SERVICES, TESTBED)


def test_capacity_is_decremented_after_each_assignment() -> None:
    plan = place(SERVICES, TESTBED, config=FIRST_FIT)
    usage = usage_by_peer(plan, SERVICES)
    w1, w4 = usage["W1"], usage["W4"]
    assert (w1.cpu, w1.memory_mb) == (2.0, 384)       # bot-acquisition + alert
    assert (w4.cpu, w4.memory_mb) == (3.0, 768)       # spo2 + hrv
    history = next(s for s in SERVICES if s.name == "history")
    assert first_failure(history, TESTBED[0], Usage()) is None     # fits W1 when empty...
    assert first_failure(history, TESTBED[0], w1) == "needs 512 MB memory, 316 MB free"


def test_the_third_pom_service_is_reported_for_every_worker() -> None:
    plan = place(SERVICES, TESTBED, config=FIRST_FIT)
    assert dict(plan.unplaceable["pulse-rate"]) == {
        "W1": "needs device pom",
        "W2": "needs device pom",
        "W3": "needs device pom",
        "W4": "needs 2 CPU cores, 1 free",
        "W5": "needs device pom",
    }


def test_worker_order_decides() -> None:
    plan = place(SERVICES, list(reversed(TESTBED)), config=FIRST_FIT)
    assert plan.assignments["alert/0"] == "W5"
    assert plan.assignments["history/0"] == "W5"


def test_placed_as_soon_as_a_suitable_peer_appears() -> None:
    first = place(SERVICES, TESTBED, config=FIRST_FIT)
    w6 = peer_view_from_profile("W6", rpi(4, ["pom"], "ac", None), alive=True)
    second = place(SERVICES, [*TESTBED, w6], first, config=FIRST_FIT)
    assert second.assignments["pulse-rate/0"] == "W6"
    assert second.unplaced == () and second.stats.new == 1 and second.stats.kept == 8


def test_first_fit_ignores_the_previous_plan_and_moves_freely() -> None:
    """Algorithm 1 starts from scratch: when W1 dies its services go to the
    next worker, and when it returns they move back (the churn the balanced
    strategy avoids)."""
    first = place(SERVICES, TESTBED, config=FIRST_FIT)
    w1_down = [replace(TESTBED[0], alive=False), *TESTBED[1:]]
    second = place(SERVICES, w1_down, first, config=FIRST_FIT)
    assert second.assignments["alert/0"] == "W2"
    assert "bot-acquisition/0" in second.unplaced
    third = place(SERVICES, TESTBED, second, config=FIRST_FIT)
    assert third.assignments == first.assignments
    assert third.stats.moved == 1 and third.stats.new == 1    # alert back to W1; bot again


def test_balanced_on_the_testbed_agrees_on_devices_and_spares_the_battery_worker() -> None:
    """Device-bound services have one candidate each, so every strategy puts
    them on the same worker; the balanced strategy moves the compute services
    off the battery-powered W1 that first-fit fills."""
    plan = place(SERVICES, TESTBED)
    check_plan(plan, SERVICES, TESTBED)
    first_fit = place(SERVICES, TESTBED, config=FIRST_FIT)
    for device_bound in ("bot-acquisition/0", "spo2-acquisition/0", "hrv-acquisition/0",
                         "oxygen-control/0", "display/0"):
        assert plan.assignments[device_bound] == first_fit.assignments[device_bound]
    assert plan.assignments["alert/0"] != "W1" and plan.assignments["history/0"] != "W1"
    assert plan.unplaced == ("pulse-rate/0",)
