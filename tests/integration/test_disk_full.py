"""A full data disk (issue 8, item 11) on a real daemon: a peer whose data
directory is a small tmpfs, filled to the last byte while it runs.

Before the fix the first membership change after the disk filled killed
the daemon (an unhandled ENOSPC while saving peer.json). Now it keeps
running, says "degraded" in ``/v1/health`` and in every peer's ``nanomesh
members``, refuses the writes it cannot persist (507 for a bundle upload,
a Raft write never acknowledged and then refused with 507), comes up again
(degraded) when restarted on the full disk, and recovers by itself once the
filler file is deleted: the problems clear, Raft writes work again, the log
says what happened.

Needs root (mount); skipped with the reason otherwise (CI runs as root).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mesh_harness import Cluster, Peer

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a small tmpfs as a "
                       "peer's data directory (CI runs as root)"),
]

TMPFS_SIZE = "8m"
TOKEN_FILE = "management.token"


@contextlib.contextmanager
def small_disk(path: Path, cluster: Cluster) -> Iterator[Path]:
    """`path` as a fresh tmpfs of TMPFS_SIZE; every peer is killed before it
    is unmounted."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0700", "tmpfs",
                    str(path)], check=True)
    try:
        yield path
    finally:
        for p in cluster.peers:
            p.kill()
        if subprocess.run(["umount", str(path)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> Path:
    """Write zeros into `path`/filler until the file system is full."""
    filler = path / "filler"
    chunk = b"\0" * 65536
    with filler.open("wb") as f:
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError:
            pass
    with contextlib.suppress(OSError), filler.open("ab") as f:  # the last partial chunk
        for _ in range(16):
            f.write(b"\0" * 4096)
            f.flush()
    return filler


def call(peer: Peer, method: str, path: str, body: bytes | None = None,
         token: str | None = None, json_body: Any = None, timeout: float = 20.0
         ) -> tuple[int, Any]:
    headers = {}
    if json_body is not None:
        body = json.dumps(json_body).encode()
        headers["content-type"] = "application/json"
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(f"http://{peer.api}{path}", data=body, method=method,
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def manifest(name: str) -> dict[str, Any]:
    return {"name": name, "version": "1.0.0", "kind": "process", "mode": "idle",
            "run": {"command": [sys.executable, "-c", "import time; time.sleep(60)"]},
            "requires": {"cpu": 0.05, "memory_mb": 8}}


def members_table(observer: Peer) -> str:
    out = subprocess.run([sys.executable, "-m", "nanomesh", "members", "--peer", observer.api],
                         capture_output=True, text=True, timeout=30, check=True)
    return out.stdout


def test_a_full_data_disk_degrades_the_peer_and_it_recovers_alone(cluster: Cluster) -> None:
    key = cluster.new_key()
    a = cluster.add("disk-a", key_file=key, start=False)
    with small_disk(a.data_dir, cluster):
        a.start()
        cluster.wait(lambda: (a.data_dir / TOKEN_FILE).is_file()
                     and call(a, "GET", "/v1/health")[1]["status"] == "ok",
                     what="the founder is up with its token")
        token = (a.data_dir / TOKEN_FILE).read_text().strip()
        cluster.wait(lambda: call(a, "POST", "/v1/services", json_body=manifest("before"),
                                  token=token)[0] in (200, 201),
                     what="a first deploy (once the token is committed)")

        filler = fill(a.data_dir)
        # A membership change makes a save peer.json: on main, the daemon died here.
        b = cluster.add("disk-b", key_file=key, join=[a.gossip])
        cluster.wait_converged([a, b])

        def degraded() -> list[str]:
            health = a.health()
            return health["problems"] if health["status"] == "degraded" else []

        problems = cluster.wait(degraded, what="a reports itself degraded")
        assert any("data disk full" in p for p in problems), problems
        cluster.wait(lambda: "degraded: data disk full" in members_table(b),
                     what="b's `nanomesh members` shows a degraded")
        assert a.running

        # Writes that need a's disk are refused with a plain error.
        blob = os.urandom(2 << 20)
        status, reply = call(a, "PUT", f"/v1/bundles/{hashlib.sha256(blob).hexdigest()}",
                             body=blob, token=token)
        assert status == 507 and "data disk full" in reply["error"], (status, reply)
        status, reply = call(a, "POST", "/v1/services", json_body=manifest("held"), token=token)
        assert status in (504, 507), (status, reply)  # never acknowledged
        status, reply = cluster.wait(
            lambda: (lambda r: r if r[0] == 507 else None)(
                call(a, "POST", "/v1/services", json_body=manifest("refused"), token=token)),
            what="a Raft write refused at once with 507")
        assert "data disk full" in reply["error"], reply
        assert a.running

        filler.unlink()
        cluster.wait(lambda: a.health()["status"] == "ok", timeout=30,
                     what="a recovers once space is freed")
        assert a.health()["problems"] == []
        cluster.wait(lambda: "degraded" not in members_table(b), what="b sees a healthy")
        cluster.wait(lambda: call(a, "POST", "/v1/services", json_body=manifest("after"),
                                  token=token)[0] in (200, 201),
                     what="a Raft write accepted again (after a new election)")
        services = call(a, "GET", "/v1/services")[1]
        names = {s["name"] for s in services} if isinstance(services, list) else set(services)
        assert {"before", "after"} <= names, names
        assert "refused" not in names
        log = a.log_path.read_text()
        assert "peer degraded: data disk full" in log and "no longer degraded" in log

        # A restart on a full disk: the daemon comes up, degraded, and answers
        # (its Raft node may not even store a new term); freeing space heals it.
        filler = fill(a.data_dir)
        a.kill()
        a.start()
        cluster.wait(lambda: a.health()["status"] == "degraded", timeout=30,
                     what="a restarted on the full disk, degraded")
        filler.unlink()
        cluster.wait(lambda: a.health()["status"] == "ok", timeout=30,
                     what="the restarted a recovers once space is freed")
        cluster.wait(lambda: call(a, "POST", "/v1/services", json_body=manifest("restarted"),
                                  token=token)[0] in (200, 201),
                     what="a Raft write accepted after the restart")
