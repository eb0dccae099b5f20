"""Manifests: valid ones become service documents; bad ones are refused with
a message naming the file and the field."""

from pathlib import Path

import pytest

from nanomesh.runtime.manifest import (
    ManifestError,
    load_manifest,
    manifest_from_document,
    service_document,
    visibility_of,
)

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
    assert doc["endpoints"] == [] and doc["health"]["check"] == "none"
    assert doc["restart"] == {"policy": "always"} and "mode" not in doc
    assert doc["spec"]["requires"]["capabilities"] == ["pulse-oximeter"]
    assert doc["spec"]["requires"]["memory_mb"] == 64


@pytest.mark.parametrize(("change", "needle"), [
    ({"colour": "red"}, "unknown field(s) colour"),
    ({"kind": "vm"}, "kind must be one of"),
    ({"run": None}, "run: missing"),
    ({"run": {"command": []}}, "run.command: must not be empty"),
    ({"run": {"command": ["x"], "cwd": "../outside"}}, "run.cwd: a relative cwd must stay"),
    ({"run": {"command": ["x"], "env": {"NANOMESH_PORT_API": "1"}}}, "NANOMESH_PORT_API"),
    ({"mode": "sleepy"}, "mode must be one of"),
    ({"kind": "container"}, "container: give exactly one of image"),
    ({"kind": "container", "container": {"rootfs": "/abs"}}, "container.rootfs"),
    ({"container": {"image": "x"}}, 'container: only for kind = "container"'),
    ({"endpoints": {"name": "a"}}, "endpoints: must be a list"),
    ({"endpoints": [{"name": "a b", "protocol": "coap"}]}, "endpoints[0].name"),
    ({"endpoints": [{"name": "a", "protocol": "mqtt"}]}, "endpoints[0].protocol"),
    ({"endpoints": [{"name": "a", "protocol": "zmq", "port": 70000}]}, "endpoints[0].port"),
    ({"endpoints": [{"name": "a", "protocol": "coap", "port": 5683}]},
     "endpoints[0].port: 5683 is nanomesh's CoAP gateway port"),
    ({"endpoints": [{"name": "a", "protocol": "zmq", "port": 7950}]},
     "endpoints[0].port: 7950 is nanomesh's event relay XPUB port"),
    ({"endpoints": [{"name": "a", "protocol": "zmq"}, {"name": "a", "protocol": "coap"}]},
     "endpoints[1].name: duplicate"),
    ({"health": {"check": "tcp"}}, "health.check: a tcp check needs an endpoint"),
    ({"health": {"check": "exec"}}, "run.command"),
    ({"health": {"check": "none", "interval": -1}}, "health.interval"),
    ({"health": {"check": "none", "retries": 0}}, "health.retries"),
    ({"health": {"chek": "none"}}, "health.chek: unknown key"),
    ({"endpoints": [{"name": "a", "protocol": "zmq"}], "health": {"endpoint": "b"}},
     "health.endpoint: no endpoint named 'b'"),
    ({"restart": {"policy": "sometimes"}}, "restart.policy"),
    ({"restart": "always"}, "restart: must be a table"),
    ({"limits": {"memory_mb": 1}}, "limits.memory_mb"),
    ({"limits": {"cpu": 0}}, "limits.cpu"),
    ({"limits": {"pids": True}}, "limits.pids"),
    ({"bundle": {"sha256": "xyz", "size": 1}}, "bundle.sha256"),
    ({"state": 5}, "state must be a base64 string"),
    ({"run": {"command": ["x"], "env": {"X": "\ud800"}}}, "run.env.X: not valid Unicode"),
    ({"description": "ok", "run": {"command": ["x\udcff"]}}, "run.command[0]: not valid"),
    ({"run": {"command": ["x"], "env": {"A": 1}}}, "run.env"),
    ({"run": {"command": ["x"], "user": "root"}}, "run.user: unknown key"),
    ({"requires": {"memroy_mb": 5}}, "memroy_mb"),
    ({"replicas": -1}, "replicas"),
    ({"version": 3}, "version must be a string"),
    ({"visibility": "secret"}, "visibility must be one of private, public"),
    ({"visibility": True}, "visibility must be one of"),
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


def test_full_manifest_normalises_defaults_and_round_trips() -> None:
    """Every section of the issue's manifest; the document a peer receives
    validates again to itself (a peer re-reads it on the far side)."""
    raw = {**GOOD, "kind": "container", "mode": "idle", "container": {"rootfs": "rootfs"},
           "run": {"command": ["/bin/sh", "-c", "sleep 9"]},
           "endpoints": [{"name": "api", "protocol": "coap"},
                         {"name": "bus", "protocol": "zmq", "port": 5555}],
           "health": {"path": "health", "retries": 2},
           "restart": {"policy": "on-failure"}, "limits": {"memory_mb": 32, "cpu": 0.5}}
    doc = service_document(raw)
    assert doc["endpoints"] == [{"name": "api", "protocol": "coap", "port": "auto"},
                                {"name": "bus", "protocol": "zmq", "port": 5555}]
    assert doc["health"]["check"] == "coap" and doc["health"]["endpoint"] == "api"
    assert doc["health"]["retries"] == 2 and doc["health"]["interval"] == 5.0
    assert doc["limits"] == {"memory_mb": 32, "cpu": 0.5, "pids": None}
    assert doc["mode"] == "idle" and doc["container"] == {"image": None, "rootfs": "rootfs"}
    assert service_document(manifest_from_document(doc)) == doc


def test_update_section_is_normalised_and_validated() -> None:
    """``[update]`` (issue 8 item 13): defaults filled in, bad values named."""
    doc = service_document({**GOOD, "update": {"auto_revert": False}})
    assert doc["update"] == {"auto_revert": False, "min_healthy_time": 5.0,
                             "healthy_deadline": 120.0}
    assert "update" not in service_document(GOOD)
    assert manifest_from_document(doc)["update"] == doc["update"]
    with pytest.raises(ManifestError, match=r"update\.healthy_deadline must be longer"):
        service_document({**GOOD, "update": {"healthy_deadline": 1, "min_healthy_time": 2}})
    with pytest.raises(ManifestError, match=r"update\.auto_revert must be true or false"):
        service_document({**GOOD, "update": {"auto_revert": 1}})


def test_visibility_is_private_unless_said_otherwise() -> None:
    """The secure default: a manifest without `visibility` makes a private
    service; a document from before the field existed reads as private."""
    assert service_document(GOOD)["visibility"] == "private"
    public = service_document({**GOOD, "visibility": "public"})
    assert public["visibility"] == "public" and visibility_of(public) == "public"
    assert visibility_of({"name": "old"}) == "private" and visibility_of(None) == "private"
    assert service_document(manifest_from_document(public))["visibility"] == "public"


@pytest.mark.parametrize(("folder", "visibility"), [
    ("echo", "public"), ("counter", "private"), ("hello", "private"),
    ("counter-container", "public")])
def test_shipped_services_declare_their_visibility(folder: str, visibility: str) -> None:
    services = Path(__file__).resolve().parents[2] / "services"
    text = (services / folder / "nanoservice.toml").read_text()
    assert f'visibility = "{visibility}"' in text
    if folder != "counter-container":  # its rootfs is built separately
        assert load_manifest(services / folder)["visibility"] == visibility
