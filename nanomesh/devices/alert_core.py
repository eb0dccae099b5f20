"""Alerts on vital signs that stay beyond their thresholds for a period.

The patient-monitoring research raises an alert when a value (SpO2, pulse,
body temperature) stays outside its normal range for a period (30 minutes
there; a demo uses seconds), not at the first bad sample: a finger that slips
off the probe for a moment must not page anyone. This core decides; it takes
``now`` and each reading and returns effects, and reads no clock.

Per rule:

- a reading inside ``[low, high]`` ends any excursion; if an alert was raised
  for it, `AlertCleared` says so;
- a reading outside starts an excursion (remembering when), or continues
  one; once it has lasted ``period`` seconds, `AlertRaised` (once per
  excursion);
- readings further apart than ``max_gap`` restart the excursion: what the
  value did in between is unknown, so the period counts only observed time;
- a missing value (None: no finger, sensor gone) is no evidence either way
  and changes nothing, except through ``max_gap``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from nanomesh.errors import ConfigError


@dataclass(frozen=True)
class Rule:
    metric: str
    low: float | None = None
    """Values below are beyond (None: no lower bound)."""
    high: float | None = None
    """Values above are beyond (None: no upper bound)."""
    period: float = 1800.0
    """Seconds a value must stay beyond before the alert: the research's 30 min."""
    max_gap: float = 60.0
    """Seconds between two readings above which an excursion restarts
    (readings normally come every second or so)."""

    def __post_init__(self) -> None:
        if self.low is None and self.high is None:
            raise ConfigError(f"rule {self.metric}: needs low, high or both")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ConfigError(f"rule {self.metric}: low {self.low} above high {self.high}")
        if self.period < 0 or self.max_gap <= 0:
            raise ConfigError(f"rule {self.metric}: period >= 0 and max_gap > 0 seconds")

    def beyond(self, value: float) -> str | None:
        """"low", "high", or None when inside the range."""
        if self.low is not None and value < self.low:
            return "low"
        if self.high is not None and value > self.high:
            return "high"
        return None


@dataclass(frozen=True)
class AlertRaised:
    metric: str
    kind: str
    """"low" or "high"."""
    value: float
    since: float
    """When the excursion began (the core's time base)."""
    at: float


@dataclass(frozen=True)
class AlertCleared:
    metric: str
    value: float
    at: float


Effect = AlertRaised | AlertCleared


@dataclass
class _Track:
    since: float | None = None
    last: float | None = None
    raised: bool = False


@dataclass
class AlertCore:
    rules: Mapping[str, Rule]
    _tracks: dict[str, _Track] = field(default_factory=dict)

    @classmethod
    def of(cls, rules: Sequence[Rule]) -> AlertCore:
        return cls({r.metric: r for r in rules})

    def observe(self, now: float, metric: str, value: float | None) -> list[Effect]:
        """One reading of ``metric`` at ``now``; the effects it causes."""
        rule = self.rules.get(metric)
        if rule is None:
            return []
        track = self._tracks.setdefault(metric, _Track())
        if track.last is not None and now - track.last > rule.max_gap:
            track.since = None  # unobserved time does not count (module docstring)
        if value is None:
            return []
        track.last = now
        kind = rule.beyond(value)
        if kind is None:
            was_raised = track.raised
            track.since, track.raised = None, False
            return [AlertCleared(metric, value, now)] if was_raised else []
        if track.since is None:
            track.since = now
        if not track.raised and now - track.since >= rule.period:
            track.raised = True
            return [AlertRaised(metric, kind, value, track.since, now)]
        return []

    def snapshot(self) -> dict[str, float]:
        """The raised alerts and when their excursion began: what a new
        instance needs (`restore`) to clear them, or not raise them twice,
        after the service moved to another peer."""
        return {m: t.since for m, t in sorted(self._tracks.items())
                if t.raised and t.since is not None}

    def restore(self, raised: dict[str, float], now: float) -> None:
        """Take over `snapshot`'s alerts as raised, as observed at ``now``
        (so the next reading decides: it clears them, or they stay raised)."""
        for metric, since in raised.items():
            if metric in self.rules:
                self._tracks[metric] = _Track(since=since, last=now, raised=True)

    def raised(self) -> list[str]:
        """Metrics whose alert is raised now."""
        return sorted(m for m, t in self._tracks.items() if t.raised)
