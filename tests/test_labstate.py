"""Which peer API a client asks by default: the CLI and
`nanomesh.sdk.client.connect` share `nanomesh.labstate.default_peer_api`,
so a script finds the running lab as `nanomesh` commands do."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from nanomesh.cli.common import peer_api
from nanomesh.labstate import DEFAULT_PEER_API, STATE_FILE, LabError, default_peer_api
from nanomesh.sdk import client


@pytest.fixture
def lab_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("NANOMESH_PEER_API", "NANOMESH_PEER"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NANOMESH_LAB_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture
def fake_peer() -> Iterator[int]:
    """A live process whose command line looks like a peer's (`labstate.alive`)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                             "nanomesh", "peer", "run"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def write_lab(lab_dir: Path, *pids: int) -> None:
    peers = [{"name": f"peer-{i + 1}", "pid": pid, "ip": f"127.0.13.{70 + i}",
              "gossip_port": 7946, "api_port": 7947, "log": "x.log"}
             for i, pid in enumerate(pids)]
    (lab_dir / STATE_FILE).write_text(json.dumps({"preset": "local", "peers": peers}))


async def test_connect_asks_the_running_labs_first_alive_peer(lab_dir: Path, fake_peer: int
                                                              ) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    write_lab(lab_dir, int(dead), fake_peer)
    assert default_peer_api() == "127.0.13.71:7947"
    assert peer_api(None) == client.default_peer() == "127.0.13.71:7947"
    async with client.connect() as mesh:  # no I/O until a call
        assert mesh.peer == "127.0.13.71:7947"


def test_the_environment_comes_before_the_lab(lab_dir: Path, fake_peer: int,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    write_lab(lab_dir, fake_peer)
    monkeypatch.setenv("NANOMESH_PEER", "127.0.13.80:7947")
    assert peer_api(None) == client.default_peer() == "127.0.13.80:7947"
    # An instance's own peer (set by the daemon) before anything else.
    monkeypatch.setenv("NANOMESH_PEER_API", "127.0.13.81:7947")
    assert peer_api(None) == client.default_peer() == "127.0.13.81:7947"
    assert peer_api("127.0.13.82") == "127.0.13.82:7947"  # --peer wins


@pytest.mark.parametrize("content", [None, '{"peers": []}'])
def test_without_a_lab_the_default_is_loopback(lab_dir: Path, content: str | None) -> None:
    if content is not None:
        (lab_dir / STATE_FILE).write_text(content)
    assert default_peer_api() == client.default_peer() == DEFAULT_PEER_API == "127.0.0.1:7947"


def test_a_damaged_lab_file_is_an_error_not_another_peer(lab_dir: Path) -> None:
    (lab_dir / STATE_FILE).write_text("{not json")
    with pytest.raises(LabError, match=r"lab\.json is damaged"):
        client.default_peer()
