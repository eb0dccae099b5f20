"""Alerts on vital signs beyond thresholds for a period (nanomesh.devices.alert_core).

Tables of (time, value) readings and the effects each causes; ``now`` is
passed in, so the research's 30 minutes cost nothing to test.
"""

from __future__ import annotations

import pytest

from nanomesh.devices.alert_core import AlertCleared, AlertCore, AlertRaised, Rule
from nanomesh.errors import ConfigError

SPO2 = Rule("spo2", low=90, period=1800, max_gap=60)
"""The research's rule: below 90 % for 30 minutes."""


def run(rule: Rule, readings: list[tuple[float, float | None]]) -> list[tuple[float, str]]:
    core = AlertCore.of([rule])
    out: list[tuple[float, str]] = []
    for now, value in readings:
        for e in core.observe(now, rule.metric, value):
            out.append((now, f"raised {e.kind} since {e.since:g}" if isinstance(e, AlertRaised)
                        else "cleared"))
    return out


def every(start: float, end: float, value: float | None, step: float = 30
          ) -> list[tuple[float, float | None]]:
    n = int((end - start) // step)
    return [(start + i * step, value) for i in range(n + 1)]


@pytest.mark.parametrize(("readings", "effects"), [
    # normal values never alert
    (every(0, 7200, 97), []),
    # beyond for 30 min: one alert at 1800 s, not repeated
    (every(0, 3600, 86), [(1800, "raised low since 0")]),
    # beyond for 29.5 min then normal: nothing
    ([*every(0, 1770, 86), (1800, 95)], []),
    # a brief recovery restarts the period
    ([*every(0, 1500, 86), (1530, 92), *every(1560, 3600, 86)], [(3360, "raised low since 1560")]),
    # raised, then cleared by a normal reading
    ([*every(0, 1800, 86), (1830, 94)], [(1800, "raised low since 0"), (1830, "cleared")]),
    # a missing value (no finger) is no evidence: the excursion continues ...
    ([*every(0, 900, 86), (930, None), *every(960, 1800, 86)], [(1800, "raised low since 0")]),
    # ... unless values are missing for longer than max_gap
    (every(0, 900, 86) + every(930, 1200, None) + every(1230, 3100, 86),
     [(3030, "raised low since 1230")]),
    # a gap longer than max_gap restarts the count at the next reading
    (every(0, 900, 86) + every(1000, 2800, 86), [(2800, "raised low since 1000")]),
    # exactly at the threshold is inside the range
    (every(0, 3600, 90), []),
])
def test_spo2_rule(readings: list[tuple[float, float | None]],
                   effects: list[tuple[float, str]]) -> None:
    assert run(SPO2, readings) == effects


def test_high_and_low_bounds() -> None:
    fever = Rule("celsius", low=35, high=38, period=10, max_gap=5)
    assert run(fever, every(0, 10, 38.6, step=1)) == [(10, "raised high since 0")]
    assert run(fever, every(0, 10, 34.0, step=1)) == [(10, "raised low since 0")]
    assert run(fever, every(0, 10, 37.0, step=1)) == []


def test_zero_period_alerts_at_the_first_reading_beyond() -> None:
    assert run(Rule("x", high=1, period=0), [(0, 0.5), (1, 2)]) == [(1, "raised high since 1")]


def test_other_metrics_are_ignored() -> None:
    assert AlertCore.of([SPO2]).observe(0, "pulse", 300) == []


def test_snapshot_and_restore_carry_a_raised_alert_to_a_new_instance() -> None:
    """A new instance (the service moved with the devices) takes over the
    raised alert: it does not raise it again, and clears it when SpO2 recovers."""
    old = AlertCore.of([SPO2])
    for now, v in every(0, 1800, 86):
        old.observe(now, "spo2", v)
    assert old.raised() == ["spo2"]
    new = AlertCore.of([SPO2])
    new.restore(old.snapshot(), now=1900)
    assert new.observe(1910, "spo2", 85) == []
    assert new.observe(1920, "spo2", 95) == [AlertCleared("spo2", 95, 1920)]
    assert new.raised() == []


@pytest.mark.parametrize("kwargs", [
    {}, {"low": 5, "high": 1}, {"low": 1, "period": -1}, {"low": 1, "max_gap": 0},
])
def test_impossible_rules_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        Rule("m", **kwargs)


def test_raised_effect_carries_the_values() -> None:
    core = AlertCore.of([Rule("pulse", high=130, period=2, max_gap=5)])
    core.observe(0, "pulse", 140)
    assert core.observe(2, "pulse", 150) == [AlertRaised("pulse", "high", 150, 0, 2)]
