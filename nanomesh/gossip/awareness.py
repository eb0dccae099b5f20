"""Lifeguard §4.1 Local Health Aware Probe.

A peer that is itself slow (overloaded CPU, lossy link) misses acks and then
wrongly suspects healthy peers. It can notice: its probes fail although the
relays it asked report (by Nack) that they could not reach the target either
only rarely, or it hears itself suspected. The health *score* counts such
evidence; every probe interval and timeout is stretched by ``score + 1`` so a
sick peer slows down instead of accusing others.
"""

from __future__ import annotations


class Awareness:
    """The local health score, between 0 (healthy) and `max_multiplier - 1`."""

    __slots__ = ("_max", "score")

    def __init__(self, max_multiplier: int) -> None:
        self._max = max_multiplier
        self.score = 0

    def apply_delta(self, delta: int) -> None:
        self.score = min(max(self.score + delta, 0), self._max - 1)

    def scale(self, timeout: float) -> float:
        return timeout * (self.score + 1)
