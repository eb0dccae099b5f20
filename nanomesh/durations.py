"""Durations bucketed as they happen, for a histogram read later.

The peer daemon imports prometheus_client only when ``GET /v1/metrics`` is
first asked (an idle peer's memory is a tracked goal, issue 9), so the code
that times things (placement on the leader, the CoAP gateway) cannot hold a
``prometheus_client.Histogram``. It observes into a `Durations` instead:
plain counters, no I/O, no clock (the caller measures), no dependency; the
metrics collector (`nanomesh.daemon.metrics`) turns one into a Prometheus
histogram at scrape time.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                   7.5, 10.0)
"""Upper bounds (seconds) for request latencies: prometheus_client's default
buckets, from 5 ms (a call to an instance on this peer) to 10 s (a
timeout)."""
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Upper bounds (seconds) for computations such as a placement run: 0.5 ms
(a few services on a few peers) to 2.5 s (far beyond what the control loop's
1 s period tolerates)."""


@dataclass
class Durations:
    """Counts of observed durations per bucket (see the module docstring)."""

    bounds: tuple[float, ...] = LATENCY_BUCKETS
    """Upper bounds of the buckets, ascending; a last ``+Inf`` bucket is implied."""
    counts: list[int] = field(default_factory=list)
    """Observations per bucket (not cumulative), ``len(bounds) + 1`` of them."""
    total: float = 0.0
    """Sum of every observation, in seconds."""

    def __post_init__(self) -> None:
        if list(self.bounds) != sorted(set(self.bounds)) or not all(
                math.isfinite(b) for b in self.bounds):
            raise ValueError(f"bucket bounds must be finite and strictly ascending: "
                             f"{self.bounds}")
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, seconds: float) -> None:
        """Count one duration (a negative one, from a clock step, counts as 0)."""
        seconds = max(0.0, seconds)
        # bisect_left: a value equal to a bound belongs to that bound (le = "<=").
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= it)`` per bucket, ending with
        ``(inf, count)``: the shape of a Prometheus histogram."""
        out, running = [], 0
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out
