"""Manifests: valid ones become service documents; bad ones are refused with
a message naming the file and the field."""

from pathlib import Path

import pytest

from nanomesh.manifest import ManifestError, load_manifest, service_document

GOOD = {
    "name": "spo2", "version": "1.0.0", "description": "SpO2", "replicas": 1,
    "run": {"command": ["python3", "-c", "print(1)"], "env": {"A": "1"}},
    "requires": {"capabilities": ["pulse-oximeter"], "memory_mb": 64},
    "placement": {"spread": True},
}


def test_good_manifest_becomes_a_document_with_the_placement_spec() -> None:
    doc = service_document(GOOD)
    assert doc["name"] == "spo2" and doc["kind"] == "process"
    assert doc["run"] == {"command": ["python3", "-c", "print(1)"], "env": {"A": "1"},
                          "cwd": None}
    assert doc["spec"]["requires"]["capabilities"] == ["pulse-oximeter"]
    assert doc["spec"]["requires"]["memory_mb"] == 64


@pytest.mark.parametrize(("change", "needle"), [
    ({"colour": "red"}, "unknown field(s) colour"),
    ({"kind": "vm"}, "kind must be one of"),
    ({"run": None}, "run: missing"),
    ({"run": {"command": []}}, "run.command: must not be empty"),
    ({"run": {"command": ["x"], "cwd": "relative"}}, "run.cwd"),
    ({"run": {"command": ["x"], "env": {"A": 1}}}, "run.env"),
    ({"run": {"command": ["x"], "user": "root"}}, "run.user: unknown key"),
    ({"requires": {"memroy_mb": 5}}, "memroy_mb"),
    ({"replicas": -1}, "replicas"),
    ({"version": 3}, "version must be a string"),
])
def test_bad_manifest_names_the_field(change: dict, needle: str) -> None:
    raw = {**GOOD, **change}
    if change.get("run", 0) is None:
        del raw["run"]
    with pytest.raises(ManifestError) as err:
        service_document(raw, where="svc.toml")
    assert needle in str(err.value) and "svc.toml" in str(err.value)


def test_load_manifest_from_a_service_folder(tmp_path: Path) -> None:
    folder = tmp_path / "hello"
    folder.mkdir()
    (folder / "nanoservice.toml").write_text(
        'name = "hello"\n[run]\ncommand = ["sleep", "1"]\n')
    assert load_manifest(folder)["name"] == "hello"
    (folder / "nanoservice.toml").write_text("name = ")
    with pytest.raises(ManifestError, match="invalid TOML"):
        load_manifest(folder)
    with pytest.raises(ManifestError, match="cannot read manifest"):
        load_manifest(tmp_path / "missing.toml")
