"""Service spec parsing: precise errors naming the field, exact round trips."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from placement_helpers import service_specs

from nanomesh.placement import (
    Constraints,
    Requirements,
    ServiceSpec,
    SpecError,
    constraints_from_dict,
    instance_id,
    requirements_from_dict,
    service_spec_from_dict,
    services_from_list,
    split_instance_id,
)

SPO2: dict[str, Any] = {
    "name": "spo2", "replicas": 1,
    "requires": {"capabilities": ["pulse-oximeter"], "cpu": 0.5, "memory_mb": 64,
                 "power": "battery", "min_battery_percent": 20, "network": "bluetooth",
                 "storage_mb": 10},
    "placement": {"peer": None, "labels": {}, "spread": True, "max_per_peer": 0},
}


def test_the_documented_example_parses() -> None:
    s = service_spec_from_dict(SPO2)
    assert s == ServiceSpec("spo2", 1, Requirements(
        frozenset({"pulse-oximeter"}), 0.5, 64, "battery", 20.0, "bluetooth", 10), Constraints())
    assert s.instance_ids() == ["spo2/0"]


def test_missing_sections_mean_no_requirement() -> None:
    s = service_spec_from_dict({"name": "any"})
    assert s == ServiceSpec("any")
    assert service_spec_from_dict({"name": "any", "requires": None, "placement": None}) == s
    assert s.requires == Requirements() and s.placement.spread is True


def test_zero_and_empty_mean_no_requirement() -> None:
    r = requirements_from_dict({"capabilities": [], "cpu": 0, "memory_mb": 0, "power": 0,
                                "network": "", "storage_mb": 0})
    assert r == Requirements()


def test_whole_floats_are_accepted_as_mb() -> None:
    assert requirements_from_dict({"memory_mb": 64.0}).memory_mb == 64


@pytest.mark.parametrize(("data", "field", "problem"), [
    ({"name": ""}, "name", "must be 1-63 letters"),
    ({"name": "a/b"}, "name", "must be 1-63 letters"),
    ({"name": 3}, "name", "must be 1-63 letters"),
    ({"name": "s", "replica": 2}, "replica", "unknown key"),
    ({"name": "s", "replicas": -1}, "replicas", "must be a whole number >= 0, got -1"),
    ({"name": "s", "replicas": True}, "replicas", "must be a whole number"),
    ({"name": "s", "requires": []}, "requires", "must be a mapping, got list"),
    ({"name": "s", "requires": {"memroy_mb": 5}}, "requires.memroy_mb", "unknown key"),
    ({"name": "s", "requires": {"memory_mb": 64.5}}, "requires.memory_mb",
     "must be a whole number of MB >= 0, got 64.5"),
    ({"name": "s", "requires": {"memory_mb": "64"}}, "requires.memory_mb", "whole number"),
    ({"name": "s", "requires": {"storage_mb": -10}}, "requires.storage_mb", "whole number"),
    ({"name": "s", "requires": {"cpu": -0.5}}, "requires.cpu", "must be a number >= 0"),
    ({"name": "s", "requires": {"cpu": float("nan")}}, "requires.cpu", "must be a number"),
    ({"name": "s", "requires": {"cpu": "1"}}, "requires.cpu", "must be a number"),
    ({"name": "s", "requires": {"power": "solar"}}, "requires.power",
     "must be one of ac, battery or null, got 'solar'"),
    ({"name": "s", "requires": {"network": "zigbee"}}, "requires.network",
     "must be one of wifi, ethernet, bluetooth or null"),
    ({"name": "s", "requires": {"min_battery_percent": 120}}, "requires.min_battery_percent",
     "must be a number >= 0 and <= 100"),
    ({"name": "s", "requires": {"capabilities": "pir"}}, "requires.capabilities",
     "must be a list of strings, got str"),
    ({"name": "s", "requires": {"capabilities": ["pir", "PIR"]}}, "requires.capabilities[1]",
     "must be a lowercase token"),
    ({"name": "s", "placement": {"peer": 7}}, "placement.peer", "must be a peer name or null"),
    ({"name": "s", "placement": {"labels": ["a"]}}, "placement.labels", "must be a mapping"),
    ({"name": "s", "placement": {"labels": {"room": 1}}}, "placement.labels.room",
     "must be a string, got int"),
    ({"name": "s", "placement": {"spread": "yes"}}, "placement.spread", "must be true or false"),
    ({"name": "s", "placement": {"max_per_peer": 1.5}}, "placement.max_per_peer",
     "must be a whole number"),
    ({"name": "s", "placement": {"pin": "p1"}}, "placement.pin", "unknown key"),
])
def test_errors_name_the_field(data: dict[str, Any], field: str, problem: str) -> None:
    with pytest.raises(SpecError) as info:
        service_spec_from_dict(data)
    assert info.value.field == field
    assert problem in info.value.problem
    assert isinstance(info.value, ValueError)
    if isinstance(data.get("name"), str) and field != "name":
        assert str(info.value).startswith(f"service {data['name']!r}: {field}: ")


def test_sections_parse_alone_with_their_own_path() -> None:
    with pytest.raises(SpecError, match=r"^requires\.cpu: "):
        requirements_from_dict({"cpu": -1})
    assert constraints_from_dict({"peer": "", "labels": None}) == Constraints()


def test_services_from_list_rejects_duplicates() -> None:
    with pytest.raises(SpecError, match="service 'a': name: duplicate service name"):
        services_from_list([{"name": "a"}, {"name": "b"}, {"name": "a"}])


def test_instance_ids() -> None:
    assert instance_id("sensor-reader", 0) == "sensor-reader/0"
    assert split_instance_id("sensor-reader/12") == ("sensor-reader", 12)
    for bad in ("x", "x/", "/1", "x/-1"):
        with pytest.raises(ValueError, match="malformed"):
            split_instance_id(bad)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_round_trip_through_json_and_msgpack(data: st.DataObject) -> None:
    s = data.draw(service_specs("svc", ["p0", "p1"]))
    as_dict = s.to_dict()
    assert service_spec_from_dict(as_dict) == s
    assert ServiceSpec.from_dict(json.loads(json.dumps(as_dict))) == s
    assert ServiceSpec.from_dict(msgpack.unpackb(msgpack.packb(as_dict))) == s
