"""The integration tests' view of the mesh harness (`nanomesh.testing.cluster`).

Every peer is a real ``python -m nanomesh peer run`` subprocess with its
stderr in a per-peer log file. Peers run either on loopback addresses of the
root namespace (`Cluster`, addresses 127.0.10.1-249 from an `AddressPool`
shared with concurrent test runs) or inside the hosts of a
`nanomesh.testing.netns.NetnsLab` (`NetnsCluster`), whose HTTP API is queried
through a small long-lived agent process inside each host namespace.

What is specific to a test session lives here: one cluster key for the whole
session (`session_key_file`; clients started by tests find it through
``$NANOMESH_KEY_FILE``, see conftest.py), an address no peer listens on, and
a wait for the processes a demo leaves behind. Everything else is the shared
harness, re-exported under the names the tests use.

Waits are bounded (`wait_until` polls every 0.05 s); timeouts are generous,
because these tests check behaviour, never speed. Every process a cluster
started is killed when the cluster closes, whatever happened.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from nanomesh.testing import cluster as harness
from nanomesh.testing import netns_cluster
from nanomesh.testing.cluster import (
    ADDRESS_LOCK_DIR,
    API_PORT,
    GOSSIP_PORT,
    NO_KEY,
    POLL_INTERVAL,
    PY,
    RAFT_PORT,
    TIMEOUT,
    AddressPool,
    Starter,
    tail,
    wait_until,
    write_key,
)
from nanomesh.testing.netns_cluster import NsAgent

__all__ = [  # what the test files import from here
    "ADDRESS_LOCK_DIR", "API_PORT", "GOSSIP_PORT", "MEMBER_KEYS", "NO_KEY", "POLL_INTERVAL",
    "PY", "RAFT_PORT", "TIMEOUT", "UNREACHABLE_IP", "AddressPool", "BaseCluster", "Cluster",
    "NetnsCluster", "NsAgent", "Peer", "Starter", "processes_mentioning", "session_key_file",
    "tail", "wait_until", "write_key",
]

Peer = harness.PeerProcess
BaseCluster = harness.Cluster

UNREACHABLE_IP = "127.0.10.250"
"""A loopback address the harness never hands out: nothing listens there."""
MEMBER_KEYS = {"name", "address", "state", "incarnation", "profile_version", "profile"}
"""The keys of one member object in ``GET /v1/members``."""


_SESSION_KEY: Path | None = None


def session_key_file() -> Path:
    """The test session's default cluster key (created on first use)."""
    global _SESSION_KEY
    if _SESSION_KEY is None:
        _SESSION_KEY = write_key(Path(tempfile.mkdtemp(prefix="nanomesh-key-")) / "cluster.key")
    return _SESSION_KEY


class Cluster(harness.LoopbackCluster):
    """Peers on the pool's loopback addresses, holding the session's key
    unless a test names another (or `NO_KEY`): a peer never runs without one."""

    def __init__(self, root: Path, pool: AddressPool) -> None:
        super().__init__(root, pool, key_file=session_key_file())
        self.pool = pool


class NetnsCluster(netns_cluster.NetnsCluster):
    """One peer per lab host, holding the session's key unless a test names another."""

    def __init__(self, root: Path, lab: Any) -> None:
        super().__init__(root, lab, key_file=session_key_file())


def processes_mentioning(path: Path, timeout: float = 10.0) -> list[str]:
    """Pids whose command line names ``path``, after waiting up to ``timeout``
    seconds for them to go (a demo's peers after it exits)."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p.name for p in Path("/proc").iterdir() if p.name.isdigit()
                and str(path).encode() in _cmdline(p)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""
