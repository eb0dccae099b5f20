"""The ``run`` section validator: precise errors naming the field."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from nanomesh.placement.requirements import SpecError
from nanomesh.runtime import RunSpec, RunSpecError, run_spec_from
from nanomesh.runtime.logs import append_line, log_path, open_log


def test_a_full_run_section() -> None:
    spec = {"name": "svc", "replicas": 2,
            "run": {"command": ["python3", "-m", "svc"], "env": {"A": "1"}, "cwd": "/srv"}}
    run = run_spec_from(spec)
    assert run == RunSpec(("python3", "-m", "svc"), {"A": "1"}, "/srv")
    assert run.to_dict() == spec["run"]
    assert run_spec_from({"name": "svc", "run": run.to_dict()}) == run


def test_env_and_cwd_are_optional() -> None:
    assert run_spec_from({"run": {"command": ("x",), "env": None, "cwd": None}}) == RunSpec(("x",))


def test_run_spec_is_frozen() -> None:
    run = run_spec_from({"run": {"command": ["x"], "env": {"A": "1"}}})
    with pytest.raises(TypeError):
        run.env["B"] = "2"  # type: ignore[index]


@pytest.mark.parametrize(("run", "field", "problem"), [
    (None, "run", "missing"),
    ("python3 x.py", "run", "must be a mapping, got str"),
    ({}, "run.command", "must be a non-empty list"),
    ({"command": "python3 -m x"}, "run.command", "argv, no shell"),
    ({"command": []}, "run.command", "must not be empty"),
    ({"command": ["python3", 3]}, "run.command[1]", "must be a string, got int"),
    ({"command": ["python3", "a\0b"]}, "run.command[1]", "NUL"),
    ({"command": [""]}, "run.command[0]", "empty string"),
    ({"command": ["x"], "env": ["A=1"]}, "run.env", "mapping of strings, got list"),
    ({"command": ["x"], "env": {"A": 1}}, "run.env.A", "must be a string, got int"),
    ({"command": ["x"], "env": {"A=B": "1"}}, "run.env['A=B']", "without '='"),
    ({"command": ["x"], "env": {"": "1"}}, "run.env['']", "non-empty"),
    ({"command": ["x"], "env": {"NANOMESH_INSTANCE": "x/1"}}, "run.env.NANOMESH_INSTANCE",
     "set by the runtime"),
    ({"command": ["x"], "cwd": "../up"}, "run.cwd", "stay inside the bundle"),
    ({"command": ["x"], "cwd": 5}, "run.cwd", "a path or null"),
    ({"command": ["x"], "cwd": ""}, "run.cwd", "a path or null"),
    ({"command": ["x"], "comand": ["y"]}, "run.comand", "unknown key"),
])
def test_bad_run_sections_name_the_field(run: Any, field: str, problem: str) -> None:
    with pytest.raises(RunSpecError) as info:
        run_spec_from({"name": "svc", "run": run})
    assert info.value.field == field
    assert info.value.service == "svc"
    assert problem in info.value.problem
    assert str(info.value).startswith(f"service 'svc': {field}: ")
    assert isinstance(info.value, SpecError | ValueError)


def test_errors_without_a_service_name() -> None:
    with pytest.raises(RunSpecError, match=r"^run\.command: must not be empty$"):
        run_spec_from({"run": {"command": []}})
    with pytest.raises(RunSpecError, match="spec: must be a mapping"):
        run_spec_from(["run"])  # type: ignore[arg-type]


# -- log files (the unit under the driver's rotation test) -------------------------------


def test_log_path() -> None:
    assert log_path(Path("/var/log/nm"), "spo2", 1) == Path("/var/log/nm/spo2.1.log")


def test_open_log_rotates_only_over_the_cap(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "svc.0.log"
    fd = open_log(path, "first", rotate_bytes=100)  # creates the directory
    os.write(fd, b"x" * 100)
    os.close(fd)
    os.close(open_log(path, "second", rotate_bytes=200))  # under the cap: appended
    assert not path.with_name("svc.0.log.1").exists()
    assert path.read_text().count("=== nanomesh") == 2
    os.close(open_log(path, "third", rotate_bytes=100))  # over: rotated
    old, new = path.with_name("svc.0.log.1").read_text(), path.read_text()
    assert "first" in old and "second" in old and "third" not in old
    assert new.startswith("=== nanomesh") and "third" in new and "first" not in new
    append_line(path, "footer")
    assert path.read_text().rstrip().endswith("footer")


def test_append_line_is_best_effort(tmp_path: Path) -> None:
    append_line(tmp_path / "missing-dir" / "x.log", "nothing happens")


def test_fixed_endpoint_ports_that_are_nanomesh_ports_are_refused() -> None:
    from nanomesh.config import (
        DEFAULT_API_PORT,
        DEFAULT_COAP_PORT,
        DEFAULT_EVENTS_XPUB_PORT,
        DEFAULT_EVENTS_XSUB_PORT,
        DEFAULT_GOSSIP_PORT,
    )
    from nanomesh.consensus.config import DEFAULT_RAFT_PORT
    from nanomesh.runtime.instance_spec import RESERVED_PORTS, SpecFieldError, runtime_sections
    assert set(RESERVED_PORTS) == {DEFAULT_GOSSIP_PORT, DEFAULT_API_PORT, DEFAULT_RAFT_PORT,
                                   DEFAULT_COAP_PORT, DEFAULT_EVENTS_XPUB_PORT,
                                   DEFAULT_EVENTS_XSUB_PORT}
    for port in RESERVED_PORTS:
        doc = {"run": {"command": ["x"]},
               "endpoints": [{"name": "api", "protocol": "coap", "port": port}]}
        with pytest.raises(SpecFieldError, match=rf"endpoints\[0\]\.port: {port} is nanomesh"):
            runtime_sections(doc)
    ok = {"run": {"command": ["x"]},
          "endpoints": [{"name": "api", "protocol": "coap", "port": 5684}]}
    assert runtime_sections(ok)["endpoints"][0]["port"] == 5684


def test_port_allocator_keeps_the_peers_own_ports() -> None:
    from nanomesh.runtime.instance_spec import EndpointSpec
    from nanomesh.runtime.ports import PortAllocator, PortError
    ports = PortAllocator(reserved=[5683, 17000])
    with pytest.raises(PortError, match="port 17000 is one of this peer's own ports"):
        ports.allocate("svc/0", "127.0.0.1", (EndpointSpec("api", "zmq", 17000),))
    assert ports.held() == {}
    got = ports.allocate("svc/0", "127.0.0.1", (EndpointSpec("api", "zmq", 17001),))
    assert got == (("api", "zmq", 17001),)
    with pytest.raises(PortError, match="port 5683"):
        PortAllocator().allocate("svc/1", "127.0.0.1", (EndpointSpec("c", "coap", 5683),))
