"""Placement configuration: every knob with its unit, meaning and trade-off.

The score a peer gets is one formula in :func:`nanomesh.placement.rank.score`;
the weights below only scale its terms.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

from nanomesh.errors import ConfigError

Strategy = Literal["balanced", "first-fit"]
Mode = Literal["spread", "binpack"]

STRATEGIES: tuple[Strategy, ...] = ("balanced", "first-fit")
MODES: tuple[Mode, ...] = ("spread", "binpack")


@dataclass(frozen=True, slots=True)
class PlacementConfig:
    strategy: Strategy = "balanced"
    """``"balanced"``: feasibility filters, ranking by load and power, stable
    across plans (:mod:`nanomesh.placement.balanced`). ``"first-fit"``: the
    research's Algorithm 1, unchanged, for reproducing its experiments; it
    ignores the previous plan, ``mode``, ``max_moves`` and the weights."""

    mode: Mode = "spread"
    """``"spread"`` prefers the emptiest peers: load is shared and a peer
    failure takes out few instances, at the cost of keeping every peer busy.
    ``"binpack"`` prefers the fullest peers that still fit: whole peers stay
    free (battery peers can sleep, big services still find room), at the cost
    of more instances lost per peer failure. Only spread rebalances onto
    returning peers: binpack wants them empty."""

    max_moves: int = 3
    """Voluntary moves per plan when peers join or return (spread mode). A move
    stops an instance and starts it elsewhere: 2-4 s for a small image already
    on the peer, a minute or more when the image must be pulled (research
    figures), and the service is degraded meanwhile. 3 lets a returning peer
    take work at the very next plan while one membership event disturbs at
    most 3 running instances; ``Plan.stats.rebalance_pending`` tells the
    caller that planning again will move more. 0 never moves a healthy
    instance (Docker Swarm's behaviour, which leaves returning nodes empty).
    Forced moves (a peer died or stopped satisfying a requirement) are not
    counted: they always happen."""

    rebalance_threshold: float = 0.1
    """Minimum score gain for a voluntary move (score units, see
    :func:`nanomesh.placement.rank.score`; 0.1 is 10 percentage points of
    utilisation at weight 1). Higher moves less and leaves more imbalance; 0
    moves for any gain, including noise in the live load."""

    weight_fill: float = 1.0
    """Weight of the planned-utilisation term: free share of the peer's CPU or
    memory, whichever is scarcer (spread), or used share (binpack). The unit
    of the other weights: at 1, a weight of 0.25 lets its term shift a peer
    by up to 25 percentage points of utilisation."""

    weight_load: float = 0.25
    """Weight of the live CPU load term (``load.cpu_percent``): an idle peer
    is filled up to 25 points further than a saturated one. Higher follows
    live load more closely, but live load includes what our own instances
    use and moves with time; it ranks placements and never on its own causes
    a move (moves also need a joining peer). With load and power at 0.5, the
    1000-service fleet of ``experiments/placement_bench.py`` had 8 small idle
    compute-only peers above 95 % memory; at 0.25, 4."""

    weight_power: float = 0.25
    """Weight of the power term: mains 1, battery half its charge. At 0.25 a
    peer on mains is filled up to 12.5 points further than one on a full
    battery and 25 points further than one on an empty battery, so battery
    peers are spared without being left idle while mains peers overflow."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PlacementConfig:
        """A config from a ``[placement]`` table: missing keys keep their
        defaults; unknown keys, wrong types and impossible values raise
        :class:`~nanomesh.errors.ConfigError`."""
        known = {f.name: f for f in fields(cls)}
        for key, value in data.items():
            if key not in known:
                raise ConfigError(f"placement.{key}: unknown key; expected one of "
                                  f"{', '.join(known)}")
            default = getattr(cls(), key)
            if not _same_kind(default, value):
                kind = {str: "string", int: "whole number"}.get(type(default), "number")
                raise ConfigError(f"placement.{key} must be a {kind}, got {value!r}")
        return cls(**data).validate()

    def validate(self) -> PlacementConfig:
        """Reject impossible values in one place, with a plain message."""
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"placement.strategy must be one of {', '.join(STRATEGIES)}, "
                              f"got {self.strategy!r}")
        if self.mode not in MODES:
            raise ConfigError(f"placement.mode must be one of {', '.join(MODES)}, "
                              f"got {self.mode!r}")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int | float) and not 0 <= value < math.inf:
                raise ConfigError(f"placement.{f.name} must be a finite number >= 0, "
                                  f"got {value}")
        return self


def _same_kind(default: object, value: object) -> bool:
    """str for str fields, int for int fields, any number for float fields."""
    if isinstance(value, bool):
        return False
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, int):
        return isinstance(value, int)
    return isinstance(value, int | float)
