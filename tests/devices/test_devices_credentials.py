"""The AE's SQLite store (nanomesh.devices.credentials): the research's four
resources, their checks, and persistence in the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from nanomesh.devices.credentials import BadDocument, NotFound, Store


def test_collections_and_items_round_trip_and_persist(tmp_path: Path) -> None:
    s = Store(tmp_path / "ae.sqlite")
    s.create("rooms", {"id": "room-101", "name": "Aurora"})
    alice = s.create("persons", {"id": "alice", "name": "Alice", "room": "room-101"})
    assert alice == {"id": "alice", "name": "Alice", "room": "room-101"}
    s.create("tags", {"id": "E2C56DB5", "person": "alice"})
    assert s.get("tags", "e2c56db5") == {"id": "e2c56db5", "person": "alice"}
    ev = s.create("events", {"visit": 1, "phase": "DETECTED", "detail": "pd1", "at": 1.5})
    assert len(ev["id"]) == 12
    s.put("persons", "alice", {"name": "Alice A.", "room": None})
    s.close()
    s2 = Store(tmp_path / "ae.sqlite")
    assert s2.get("persons", "alice")["name"] == "Alice A."
    assert [p["id"] for p in s2.list("persons")] == ["alice"]
    assert s2.list("events")[0]["phase"] == "DETECTED"


@pytest.mark.parametrize(("resource", "body", "match"), [
    ("persons", {"name": 3, "room": None}, r"persons.name: must be str"),
    ("persons", {"name": "x"}, r"persons.room: is required"),
    ("rooms", {"name": "x", "floor": 2}, r"unknown fields floor"),
    ("rooms", [], r"must be a JSON object"),
    ("events", {"visit": True, "phase": "x", "detail": "", "at": 0}, r"events.visit"),
    ("rooms", {"id": "../x", "name": "x"}, r"rooms id"),
])
def test_bad_bodies_are_refused_naming_the_field(resource: str, body: object,
                                                 match: str) -> None:
    s = Store(":memory:")
    with pytest.raises(BadDocument, match=match):
        s.create(resource, body)
    assert s.list(resource) == []


def test_duplicates_unknown_items_and_orphan_tags() -> None:
    s = Store(":memory:")
    s.create("rooms", {"id": "r", "name": "x"})
    with pytest.raises(BadDocument, match="exists"):
        s.create("rooms", {"id": "r", "name": "y"})
    with pytest.raises(NotFound):
        s.get("rooms", "nope")
    with pytest.raises(NotFound):
        s.list("secrets")
    with pytest.raises(NotFound, match="persons"):
        s.create("tags", {"id": "t1", "person": "ghost"})
