"""When live values are worth gossiping, and the CPU sampler behind them."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from nanomesh.discovery import LoadThresholds, load_changed
from nanomesh.discovery.cpuload import CpuSampler, busy_percent

BASE: dict[str, Any] = {
    "memory": {"total_mb": 4000, "available_mb": 1000},
    "storage": {"path": "/var/lib/nanomesh", "total_mb": 30000, "free_mb": 20000},
    "power": {"source": "battery", "battery_percent": 50.0, "battery_health_percent": 90.0,
              "detected_by": "sysfs"},
    "load": {"cpu_percent": 30.0, "memory_percent": 40.0, "load1": 0.5},
}


def changed(section: str, key: str, value: object) -> dict[str, Any]:
    new = copy.deepcopy(BASE)
    new[section][key] = value
    return new


CASES = [
    ("identical", BASE, False),
    ("cpu +9.9 points", changed("load", "cpu_percent", 39.9), False),
    ("cpu +10 points", changed("load", "cpu_percent", 40.0), True),
    ("cpu -10 points", changed("load", "cpu_percent", 20.0), True),
    ("memory +4.9 points", changed("load", "memory_percent", 44.9), False),
    ("memory +5 points", changed("load", "memory_percent", 45.0), True),
    ("load1 alone never", changed("load", "load1", 3.5), False),
    ("available -9.9 %", changed("memory", "available_mb", 901), False),
    ("available -10 %", changed("memory", "available_mb", 900), True),
    ("available +10 %", changed("memory", "available_mb", 1100), True),
    ("free storage -9.9 %", changed("storage", "free_mb", 18020), False),
    ("free storage -10 %", changed("storage", "free_mb", 18000), True),
    ("battery +4.9 points", changed("power", "battery_percent", 54.9), False),
    ("battery -5 points", changed("power", "battery_percent", 45.0), True),
    ("battery disappears", changed("power", "battery_percent", None), True),
    ("plugged in", changed("power", "source", "ac"), True),
    ("static parts ignored", changed("memory", "total_mb", 8000), False),
    ("health ignored", changed("power", "battery_health_percent", 10.0), False),
]


@pytest.mark.parametrize(("new", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_load_changed_thresholds(new: dict[str, Any], expected: bool) -> None:
    assert load_changed(BASE, new) is expected


def test_zero_available_memory_grows_from_nothing() -> None:
    old = changed("memory", "available_mb", 0)
    assert load_changed(old, changed("memory", "available_mb", 1)) is True
    assert load_changed(old, old) is False


def test_sections_missing_from_both_are_ignored() -> None:
    assert load_changed({"load": BASE["load"]}, {"load": BASE["load"]}) is False
    assert load_changed({}, {}) is False
    assert load_changed({"load": BASE["load"]}, {}) is True


def test_custom_thresholds() -> None:
    tight = LoadThresholds(cpu_percent_points=1.0)
    assert load_changed(BASE, changed("load", "cpu_percent", 31.0), tight) is True
    assert load_changed(BASE, changed("load", "cpu_percent", 31.0)) is False


T0 = {"user": 100.0, "nice": 0.0, "system": 50.0, "idle": 800.0, "iowait": 50.0,
      "irq": 0.0, "softirq": 0.0, "steal": 0.0, "guest": 0.0, "guest_nice": 0.0}


def after(**deltas: float) -> dict[str, float]:
    return {k: v + deltas.get(k, 0.0) for k, v in T0.items()}


@pytest.mark.parametrize(("t1", "percent"), [
    (after(user=25, idle=75), 25.0),
    (after(user=10, system=10, idle=70, iowait=10), 20.0),
    (after(idle=100), 0.0),
    (after(user=100), 100.0),
    (after(user=50, guest=50, idle=50), 50.0),  # guest is inside user already
    (T0, 0.0),
])
def test_busy_percent(t1: dict[str, float], percent: float) -> None:
    assert busy_percent(T0, t1) == percent


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_sampler_first_call_is_zero_and_short_windows_keep_last_value() -> None:
    clock = FakeClock()
    readings = iter([T0, after(user=40, idle=60), after(user=40, idle=160)])
    sampler = CpuSampler(min_window=0.5, clock=clock, read_times=lambda: next(readings))
    assert sampler.sample() == 0.0          # baseline taken
    clock.now = 0.1
    assert sampler.sample() == 0.0          # window too short: nothing read
    clock.now = 0.6
    assert sampler.sample() == 40.0
    clock.now = 0.7
    assert sampler.sample() == 40.0         # still the last completed window
    clock.now = 1.2
    assert sampler.sample() == 0.0          # only idle since t=0.6
