"""Learners without a Raft node (issue 9), on real peer processes.

Seven peers: five voters and two learners. A learner runs no pysyncobj node
(nothing of it listens on or connects to the Raft port); it follows the
committed state by pulling it from a voter when the leader's gossip
announces a newer revision. Checked end to end through the HTTP API:

- the learners see deployments (services and placement) and run their
  share of the instances;
- a learner killed and restarted starts from its state file and catches up;
- a learner promoted after a voter dies becomes a voter.

Waits are bounded (`Cluster.wait`); no assertion is about speed.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from mesh_harness import Cluster, Peer
from test_control_plane import (
    agreed,
    deploy,
    describe_status,
    kill_markers,  # noqa: F401  (fixture)
    manifest,
    new_marker,
    raft_addr,
    read_token_when_ready,
    running_instances,
    wait_agreed,
)

pytestmark = pytest.mark.integration

RAFT_PORT = 7948
STATE_FILE = Path("consensus") / "follow.json"


@pytest.fixture
def cluster(kill_markers: list[str], cluster: Cluster) -> Cluster:  # noqa: F811
    """conftest's `cluster`, closed before `kill_markers` checks for leftovers."""
    return cluster


def raft_sockets(peer: Peer) -> list[str]:
    """TCP sockets of `peer`'s daemon on the Raft port (``ss``), either end."""
    out = subprocess.run(["ss", "-Htanp", f"( sport = :{RAFT_PORT} or dport = :{RAFT_PORT} )"],
                         capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if f"pid={peer.pid}," in line]


def learners(peers: list[Peer], lead: dict[str, Any]) -> list[Peer]:
    return [p for p in peers if raft_addr(p) not in lead["voters"]]


def services_of(peer: Peer) -> set[str]:
    return {d["name"] for d in peer.get("/v1/services")}


def test_learners_follow_without_raft_and_recover_from_their_state_file(
        cluster: Cluster, kill_markers: list[str]) -> None:  # noqa: F811
    peers = cluster.start_mesh(7)
    token = read_token_when_ready(cluster, peers[0])
    lead = wait_agreed(cluster, peers, voters=5, timeout=60)
    spare = learners(peers, lead)
    assert len(spare) == 2
    for p in spare:
        assert p.get("/v1/status")["role"] == "learner"
        assert not raft_sockets(p), f"{p.name} is a learner: no Raft connection"

    marker = new_marker()
    kill_markers.append(marker)
    deploy(cluster, peers[0], manifest("follow", marker, replicas=7), token)
    # Every peer, learners included, sees the service and the whole placement,
    # and runs its instance (the learners act on the state they pulled).
    cluster.wait(lambda: all("follow" in services_of(p) for p in peers),
                 what="every peer to see the deployment")
    cluster.wait(lambda: all(len(running_instances(p, "follow")) == 7 for p in peers), 60,
                 what="7 running instances of follow in every peer's placement")
    for p in spare:
        hosts = set(running_instances(p, "follow").values())
        assert p.name in hosts, f"{p.name} runs its share"

    # A write through a learner is forwarded, and the learner reads it back.
    deploy(cluster, spare[0], manifest("via-learner", new_marker(), replicas=0), token)
    assert "via-learner" in services_of(spare[0])

    # A learner killed and restarted starts from its state file.
    victim = spare[1]
    cluster.wait(lambda: "via-learner" in services_of(victim),
                 what=f"{victim.name} to see the write made through {spare[0].name}")
    saved = json.loads((victim.data_dir / STATE_FILE).read_text())
    assert {"follow", "via-learner"} <= set(saved["state"]["services"])
    victim.kill()
    deploy(cluster, peers[0], manifest("while-down", new_marker(), replicas=0), token)
    victim.start()
    cluster.wait(lambda: "(no Raft node), state revision" in victim.log_path.read_text(),
                 what=f"{victim.name} to start from its state file")
    cluster.wait(lambda: {"follow", "via-learner", "while-down"} <= services_of(victim),
                 what=f"{victim.name} to catch up after its restart")
    cluster.wait(lambda: victim.get("/v1/status")["role"] == "learner",
                 what=f"{victim.name} a learner again")
    assert not raft_sockets(victim)


def test_learner_promoted_after_a_voter_dies_becomes_a_voter(cluster: Cluster) -> None:
    peers = cluster.start_mesh(7)
    lead = wait_agreed(cluster, peers, voters=5, timeout=60)
    spare = learners(peers, lead)
    victim = next(p for p in peers if raft_addr(p) in lead["voters"]
                  and raft_addr(p) != lead["leader"])
    victim.kill()
    alive = [p for p in peers if p is not victim]

    def replaced() -> dict[str, Any] | None:
        st = agreed(alive, voters=5)
        ok = (st is not None and raft_addr(victim) not in st["voters"]
              and len({raft_addr(p) for p in spare} & set(st["voters"])) == 1)
        return st if ok else None
    after = cluster.wait(replaced, 60, what=f"{victim.name} replaced by a learner",
                         describe=lambda: describe_status(alive))
    promoted = next(p for p in spare if raft_addr(p) in after["voters"])
    assert promoted.get("/v1/status")["role"] in ("follower", "leader")
    assert raft_sockets(promoted), "a voter runs its Raft node"
    still = next(p for p in spare if p is not promoted)
    assert still.get("/v1/status")["role"] == "learner"
