"""Registry entries and the holders computed from gossiped profiles (pure)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from bundle_helpers import make_service

from nanomesh.bundles import (
    BundleError,
    holders_index,
    holders_of,
    registry_entry,
    registry_listing,
    validate_registry_entry,
)
from nanomesh.runtime.manifest import load_manifest

SHA_A, SHA_B = "a" * 64, "b" * 64


def doc(tmp_path: Path, **kw: Any) -> dict[str, Any]:
    return load_manifest(make_service(tmp_path / "svc", **kw))


def test_entry_from_a_manifest(tmp_path: Path) -> None:
    d = doc(tmp_path)
    e = registry_entry(d, SHA_A, 1234, "peer-1")
    assert e == {"name": "thermo", "version": "1.0.0", "description": "a test service",
                 "kind": "process", "requires": d["spec"]["requires"], "sha256": SHA_A,
                 "size": 1234, "pushed_by": "peer-1", "service": d}
    assert validate_registry_entry(e) == e


@pytest.mark.parametrize(("field", "value", "message"), [
    ("version", "", "version must not be empty"),
    ("name", 3, "name must be a string"),
    ("sha256", "A" * 64, "sha256"),
    ("size", 0, "size"),
    ("size", True, "size"),
    ("requires", [], "requires"),
    ("service", {"name": "other"}, "service"),
])
def test_bad_entries_name_the_field(tmp_path: Path, field: str, value: Any, message: str
                                    ) -> None:
    e = registry_entry(doc(tmp_path), SHA_A, 10, "p")
    with pytest.raises(BundleError, match=message):
        validate_registry_entry({**e, field: value})


def test_holders_index_reads_alive_profiles_and_ignores_garbage() -> None:
    profiles = [
        ("p1", {"bundles": [SHA_A[:16], SHA_B[:16]]}),
        ("p2", {"bundles": [SHA_A[:16], "short", 7, None, SHA_A]}),
        ("p3", {"bundles": "not a list"}),
        ("p4", None),
        ("p5", {"cpu": {}}),
    ]
    index = holders_index(profiles)
    assert index == {SHA_A[:16]: ["p1", "p2"], SHA_B[:16]: ["p1"]}
    assert holders_of(SHA_A, index) == ["p1", "p2"]
    assert holders_of("c" * 64, index) == []


def test_listing_sorted_with_holders_and_skips_invalid(tmp_path: Path) -> None:
    e1 = registry_entry(doc(tmp_path / "1", name="b-svc"), SHA_A, 10, "p")
    e2 = registry_entry(doc(tmp_path / "2", name="a-svc"), SHA_B, 20, "p")
    entries = {"b-svc@1.0.0": e1, "a-svc@1.0.0": e2, "junk@1": {"name": 1}}
    listing = registry_listing(entries, holders_index([("x", {"bundles": [SHA_A[:16]]})]))
    assert [(e["key"], e["holders"]) for e in listing] == [("a-svc@1.0.0", []),
                                                           ("b-svc@1.0.0", ["x"])]
