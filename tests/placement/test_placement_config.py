"""Placement config and plan documents: defaults, validation, malformed input."""

from __future__ import annotations

from typing import Any

import pytest

from nanomesh.errors import ConfigError
from nanomesh.placement import PlacementConfig, Plan, PlanStats


def test_defaults() -> None:
    config = PlacementConfig()
    assert (config.strategy, config.mode, config.max_moves) == ("balanced", "spread", 3)
    assert PlacementConfig.from_dict({}) == config
    assert PlacementConfig.from_dict(config.to_dict()) == config


def test_from_dict_takes_overrides() -> None:
    config = PlacementConfig.from_dict({"mode": "binpack", "max_moves": 0, "weight_load": 1})
    assert (config.mode, config.max_moves, config.weight_load) == ("binpack", 0, 1.0)


@pytest.mark.parametrize(("data", "message"), [
    ({"strategy": "round-robin"}, "placement.strategy must be one of balanced, first-fit"),
    ({"mode": "pack"}, "placement.mode must be one of spread, binpack"),
    ({"max_moves": -1}, "placement.max_moves must be a finite number >= 0"),
    ({"max_moves": 1.5}, "placement.max_moves must be a whole number"),
    ({"max_moves": True}, "placement.max_moves must be a whole number"),
    ({"weight_fill": "1"}, "placement.weight_fill must be a number"),
    ({"rebalance_threshold": float("nan")}, "placement.rebalance_threshold must be a finite"),
    ({"budget": 3}, "placement.budget: unknown key"),
])
def test_invalid_configs_name_the_field(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PlacementConfig.from_dict(data)


def test_plan_round_trip_and_malformed_plans() -> None:
    plan = Plan({"a/0": "p1"}, {"b": {"p1": "needs device pir"}}, ("b/0",), ("p1",),
                "balanced/spread", PlanStats(placed=1, unplaced=1, new=1))
    assert Plan.from_dict(plan.to_dict()) == plan
    assert plan.on_peer("p1") == ["a/0"] and plan.stats.moves == 0
    for broken in ({}, {**plan.to_dict(), "assignments": {"a/0": 1}},
                   {**plan.to_dict(), "unplaced": "b/0"},
                   {**plan.to_dict(), "stats": {"placed": 1}}):
        with pytest.raises(ValueError, match="malformed plan"):
            Plan.from_dict(broken)
