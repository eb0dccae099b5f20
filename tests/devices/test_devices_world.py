"""The simulated world (nanomesh.devices.world): a scenario file, time in, readings out."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from nanomesh.devices.world import Vitals, WorldError, parse_world

SCENARIO = """
description = "a patient and a meeting"

[[oximeter]]
address = "00:1c:05:00:00:12"
readings = [{at = 0, spo2 = 97, pulse = 72}, {at = 20, spo2 = 86, pulse = 118},
            {at = 40, finger = false}]

[[thermometer]]
id = "28-0000000a0012"
readings = [{at = 5, celsius = 36.8}, {at = 30, celsius = 38.9}]

[[pir]]
id = "pd1"
motion = [{from = 5, to = 8}, {from = 30, to = 31}]

[[tag]]
uuid = "E2C56DB5-DFFB-48D2-B060-D0F5A71096E0"
name = "alice"
near = [{at = 4, radio = "bs1"}, {at = 20, radio = "bs2"}, {at = 40, radio = ""}]
"""


@pytest.fixture
def world() -> Any:
    return parse_world(tomllib.loads(SCENARIO))


ALICE = "e2c56db5-dffb-48d2-b060-d0f5a71096e0"


@pytest.mark.parametrize(("t", "vitals", "celsius", "motion", "near"), [
    (0.0, Vitals(97, 72), None, set(), {}),
    (4.0, Vitals(97, 72), None, set(), {"bs1": {ALICE}}),
    (5.0, Vitals(97, 72), 36.8, {"pd1"}, {"bs1": {ALICE}}),
    (8.0, Vitals(97, 72), 36.8, set(), {"bs1": {ALICE}}),
    (20.0, Vitals(86, 118), 36.8, set(), {"bs2": {ALICE}}),
    (30.5, Vitals(86, 118), 38.9, {"pd1"}, {"bs2": {ALICE}}),
    (45.0, Vitals(None, None, False), 38.9, set(), {}),
])
def test_readings_are_steps(world: Any, t: float, vitals: Vitals, celsius: float | None,
                            motion: set[str], near: dict[str, set[str]]) -> None:
    """A value holds from its time until the next; before the first there is none;
    a PIR sees motion in [from, to); addresses are upper case, UUIDs lower."""
    snap = world.at(t)
    assert snap.oximeters == {"00:1C:05:00:00:12": vitals}
    assert snap.thermometers.get("28-0000000a0012") == celsius
    assert snap.motion == motion
    assert snap.tags_near == near
    assert world.tag_names() == {ALICE: "alice"}


@pytest.mark.parametrize(("text", "field"), [
    ('[[oximeter]]\naddress = "a"\nreadings = [{at = 0, spo2 = 101, pulse = 60}]',
     "oximeter[0].readings[0].spo2"),
    ('[[oximeter]]\naddress = "a"\nreadings = [{at = 0, spo2 = 90}]', "oximeter[0].readings[0]"),
    ('[[oximeter]]\naddress = "a"\nreadings = [{at = 5, spo2 = 90, pulse = 60}, '
     '{at = 5, spo2 = 91, pulse = 60}]', "oximeter[0].readings[1].at"),
    ('[[thermometer]]\nid = "t"\nreadings = []', "thermometer[0].readings"),
    ('[[thermometer]]\nid = "t"\nreadings = [{at = 0, celsius = "hot"}]',
     "thermometer[0].readings[0].celsius"),
    ('[[pir]]\nid = "p"\nmotion = [{from = 5, to = 5}]', "pir[0].motion[0].to"),
    ('[[pir]]\nid = "p"\nmotion = [{from = 1, to = 2}]\n[[pir]]\nid = "p"\nmotion = []',
     "pir[1]"),
    ('[[tag]]\nuuid = "u"\nnear = [{at = 0, radio = "b s"}]', "tag[0].near[0].radio"),
    ('[[tag]]\nuuid = "u"\nnear = [{at = 0, radio = "b"}]\ncolour = "red"', "tag[0].colour"),
    ('[[camera]]\nid = "c"', "camera"),
    ('oximeter = 3', "oximeter"),
])
def test_bad_scenarios_name_the_field(text: str, field: str) -> None:
    with pytest.raises(WorldError) as info:
        parse_world(tomllib.loads(text))
    assert str(info.value).startswith(field + ":"), str(info.value)


def test_an_empty_world_reads_nothing() -> None:
    snap = parse_world({}).at(10)
    assert not snap.oximeters and not snap.thermometers and not snap.motion
