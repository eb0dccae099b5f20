"""The control plane survives stops and can be recovered (issue 8, items 8
and 9), on real peer processes.

- Item 8: whatever the order of graceful stops (SIGTERM), crashes (SIGKILL)
  and restarts, once a majority of the last voter set is back the mesh has
  a leader again and its services run. Fast deterministic cases first (the
  ones the issue reproduced), then a property over random sequences.
- Item 9: when a majority of the voters is lost for good, every peer says so
  truthfully (``leader`` null, ``no_leader_since``), and ``nanomesh peer
  recover`` on a stopped survivor rebuilds the control plane with the
  committed state.

Waits are bounded and generous (`mesh_harness.wait_until`); no assertion is
about speed.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
from mesh_harness import Cluster, Peer
from service_helpers import cli
from test_control_plane import (
    deploy,
    describe_status,
    kill_markers,
    manifest,
    marker_procs,
    new_marker,
    raft_addr,
    read_token_when_ready,
    running_instances,
    status,
    wait_agreed,
    wait_service,
)

pytestmark = pytest.mark.integration

__all__ = ["kill_markers"]  # a fixture, used through `cluster` below

LEADER_TIMEOUT = 60.0
"""Bound for a leader after restarts: a resumed node's first elections, the
orphan timeout (10 s) of a voter removed behind its back, on 2 busy cores."""


@pytest.fixture
def cluster(kill_markers: list[str], cluster: Cluster) -> Cluster:
    """conftest's `cluster`, closed before `kill_markers` checks for leftovers."""
    return cluster


def leader_among(peers: Sequence[Peer]) -> dict[str, Any] | None:
    """The status of the peer among `peers` that leads, if every one of them
    names it as the leader; else None."""
    statuses = {p.name: status(p) for p in peers}
    leaders = {s["leader"] for s in statuses.values()}
    if len(leaders) != 1 or None in leaders:
        return None
    leader = next((p for p in peers if raft_addr(p) in leaders), None)
    if leader is None or statuses[leader.name]["role"] != "leader":
        return None
    return statuses[leader.name]


def wait_leader(cluster: Cluster, peers: Sequence[Peer]) -> dict[str, Any]:
    result: dict[str, Any] = cluster.wait(
        lambda: leader_among(peers), LEADER_TIMEOUT,
        what=f"{[p.name for p in peers]} to agree on a leader among them",
        describe=lambda: describe_status(peers))
    return result


def wait_running(cluster: Cluster, peers: Sequence[Peer], service: str, marker: str
                 ) -> dict[str, tuple[str, int]]:
    """One running instance of `service`, a real process on one of `peers`."""
    return wait_service(cluster, peers[0], service, 1, marker, peers, timeout=LEADER_TIMEOUT,
                        also=lambda run: set(run.values()) <= {p.name for p in peers})


def start_all(peers: Iterable[Peer]) -> None:
    for p in peers:
        if not p.running:
            p.start()


def terminate_all(peers: Sequence[Peer]) -> None:
    """SIGTERM every peer at once (as `nanomesh lab down` does), then wait."""
    for p in peers:
        assert p.proc is not None
        p.expect_running = False
        p.proc.send_signal(15)
    for p in peers:
        assert p.proc is not None
        p.proc.wait(timeout=30)


# --------------------------------------------------------------------------- item 8: cases


def test_single_peer_stopped_gracefully_comes_back(cluster: Cluster,
                                                   kill_markers: list[str]) -> None:
    """`lab up -n 1; lab down; lab up` ended "no Raft leader": the only
    voter recorded itself as a learner on leave. Also stopped 1 s after it
    leads (`lab down` right after `lab up`)."""
    key = cluster.new_key()
    solo = cluster.add("solo", key_file=key)
    token = read_token_when_ready(cluster, solo)
    marker = new_marker()
    kill_markers.append(marker)
    deploy(cluster, solo, manifest("keep", marker), token)
    wait_running(cluster, [solo], "keep", marker)
    for _ in range(2):
        assert solo.terminate() == 0
        solo.start()
        wait_leader(cluster, [solo])
        wait_running(cluster, [solo], "keep", marker)
        time.sleep(1.0)  # then stop 1 s after it leads again
    assert {d["name"] for d in solo.get("/v1/services")} == {"keep"}


def test_three_peers_stopped_one_after_another_then_all_started(
        cluster: Cluster, kill_markers: list[str]) -> None:
    """Three voters stopped gracefully one after another, then all started:
    the first two were removed, the last remembered it is the voter; the mesh
    has its leader and its service again. Then the same with all three
    stopped at once (`nanomesh lab down`); first, all three stopped at once
    1 s after the mesh has a leader."""
    peers = cluster.start_mesh(3, key_file=cluster.new_key())
    token = read_token_when_ready(cluster, peers[0])
    wait_leader(cluster, peers)
    time.sleep(1.0)  # `lab down` 1 s after `lab up`: one voter, two learners
    terminate_all(peers)
    start_all(peers)
    wait_agreed(cluster, peers, voters=3)
    marker = new_marker()
    kill_markers.append(marker)
    deploy(cluster, peers[1], manifest("keep", marker), token)
    wait_running(cluster, peers, "keep", marker)
    for p in peers:
        assert p.terminate() == 0
    start_all(peers)
    wait_leader(cluster, peers)
    wait_running(cluster, peers, "keep", marker)
    terminate_all(peers)
    start_all(peers)
    wait_leader(cluster, peers)
    wait_running(cluster, peers, "keep", marker)


def test_leader_stopped_gracefully_right_after_a_voter_crashed(cluster: Cluster) -> None:
    """Three voters; one is SIGKILLed and, before the leader's policy removes
    it (10 s), the leader is stopped gracefully and started again. Its leave
    used to take it out of the configuration, leaving {the other, the dead
    one}: no leader ever again (found by the dashboard's browser test). Now
    it removes the dead voter first: the two running peers have a leader, and
    so do all three once the crashed one is back."""
    peers = cluster.start_mesh(3, key_file=cluster.new_key())
    wait_agreed(cluster, peers, voters=3)
    lead = wait_leader(cluster, peers)
    leader = next(p for p in peers if raft_addr(p) == lead["leader"])
    crashed = next(p for p in peers if p is not leader)
    crashed.kill()
    assert leader.terminate() == 0
    leader.start()
    wait_leader(cluster, [p for p in peers if p is not crashed])
    crashed.start()
    wait_leader(cluster, peers)


def test_mesh_killed_whole_comes_back_while_its_seed_stays_down(
        cluster: Cluster, kill_markers: list[str]) -> None:
    """Every peer seeds from the first; all three are killed and only the two
    others come back. They must find each other through the peers they
    remembered (peer.json), not wait for the seed forever each alone, while
    Raft (which needs no gossip) elected one of them and its leader removed
    the other as absent from gossip (the random property found this)."""
    peers = cluster.start_mesh(3, key_file=cluster.new_key())
    token = read_token_when_ready(cluster, peers[0])
    wait_agreed(cluster, peers, voters=3)
    marker = new_marker()
    kill_markers.append(marker)
    deploy(cluster, peers[1], manifest("keep", marker), token)
    wait_running(cluster, peers, "keep", marker)
    for p in peers:
        p.kill()
    survivors = peers[1:]
    start_all(survivors)
    names = {p.name for p in survivors}
    cluster.wait(lambda: cluster.all_see(survivors, names, "alive"), LEADER_TIMEOUT,
                 what="the two survivors to see each other alive",
                 describe=lambda: cluster.views(survivors))
    wait_leader(cluster, survivors)
    wait_running(cluster, survivors, "keep", marker)
    # Nobody was removed behind its back: both are still voters.
    assert set(wait_leader(cluster, survivors)["voters"]) >= {raft_addr(p) for p in survivors}


# --------------------------------------------------------------------------- item 8: property


def quorum_of(voters: frozenset[str], running: set[str]) -> bool:
    return len(voters & running) * 2 > len(voters)


def test_random_stops_kills_and_restarts_never_lose_the_mesh(
        cluster: Cluster, kill_markers: list[str]) -> None:
    """Property (issue 8, item 8): over a random sequence of steps — SIGTERM
    a random subset of the running peers (at once), SIGKILL a random subset,
    start a random subset of the stopped ones — after every step in which a
    majority of the last voter set runs, a leader exists among the running
    peers and the deployed service runs on one of them.

    The oracle knows the last voter set exactly after every checked step (it
    reads it from the leader once the configuration has settled). In between,
    it stays conservative: a kill or a start changes no configuration by
    itself; a graceful stop may remove the leavers, so the step is checked
    only if a majority of the set before the stop still runs (removing
    leavers then keeps that majority); otherwise the set is "unknown" (any
    subset of the peers) until a step where every peer runs.
    ``NANOMESH_DURABILITY_SEED`` replays a sequence; the seed is printed."""
    seed = int(os.environ.get("NANOMESH_DURABILITY_SEED", random.randrange(1 << 32)))
    steps = int(os.environ.get("NANOMESH_DURABILITY_STEPS", "10"))
    print(f"durability property: seed {seed}, {steps} steps")
    rng = random.Random(seed)
    peers = cluster.start_mesh(3, key_file=cluster.new_key())
    token = read_token_when_ready(cluster, peers[0])
    marker = new_marker()
    kill_markers.append(marker)
    deploy(cluster, peers[0], manifest("keep", marker), token)
    voters: frozenset[str] | None = settle(cluster, peers, peers)
    wait_running(cluster, peers, "keep", marker)
    everyone = {p.name for p in peers}
    for step in range(steps):
        running = [p for p in peers if p.running]
        stopped = [p for p in peers if not p.running]
        kinds = (["term", "kill"] if running else []) + (["start"] if stopped else [])
        kind = rng.choice(kinds)
        pool = running if kind != "start" else stopped
        chosen = rng.sample(pool, rng.randint(1, len(pool)))
        before = voters
        if kind == "term":
            terminate_all(chosen)
        elif kind == "kill":
            for p in chosen:
                p.kill()
        else:
            start_all(chosen)
        now_running = {p.name for p in peers if p.running}
        if kind == "term" and before is not None and not quorum_of(before, now_running):
            voters = None  # the leavers may or may not have been removed
        check = now_running == everyone or (voters is not None
                                            and quorum_of(voters, now_running))
        print(f"step {step}: {kind} {sorted(p.name for p in chosen)} -> running "
              f"{sorted(now_running)}; voters {sorted(before) if before else 'unknown'}; "
              f"{'check' if check else 'no majority: not checked'}")
        if check:
            up = [p for p in peers if p.running]
            voters = settle(cluster, up, peers)
            wait_running(cluster, up, "keep", marker)
    start_all(peers)
    settle(cluster, peers, peers)
    wait_running(cluster, peers, "keep", marker)


SETTLE_QUIET = 3.0
"""Seconds the configuration must stay unchanged to count as settled: three
runs of the leader's voter policy (`RoleConfig.period` 1 s)."""
MIN_ALIVE = 6.0
"""A peer becomes promotable 5 s after it is alive (`VoterPolicy.min_alive`)."""


def settle(cluster: Cluster, up: Sequence[Peer], peers: Sequence[Peer]) -> frozenset[str]:
    """Wait for a leader among `up` and a settled configuration (every peer
    of `up` started at least MIN_ALIVE ago, all agree on the voters, every
    non-voter among them a learner, unchanged for SETTLE_QUIET); return the
    voter set by peer name."""
    wait_leader(cluster, up)
    by_addr = {raft_addr(p): p.name for p in peers}
    last: tuple[frozenset[str], float] | None = None

    def settled() -> frozenset[str] | None:
        nonlocal last
        st = leader_among(up)
        if st is None:
            last = None
            return None
        voters = frozenset(by_addr.get(v, v) for v in st["voters"])
        statuses = [status(p) for p in up]
        consistent = all(
            frozenset(by_addr.get(v, v) for v in s["voters"]) == voters
            and (s["role"] == "learner") == (p.name not in voters)
            for p, s in zip(up, statuses, strict=True))
        if not consistent:
            last = None
            return None
        now = time.monotonic()
        if last is None or last[0] != voters:
            last = (voters, now)
        return voters if now - last[1] >= SETTLE_QUIET else None

    time.sleep(max(0.0, MIN_ALIVE - min(_age(p) for p in up)))
    result: frozenset[str] = cluster.wait(settled, LEADER_TIMEOUT,
                                          what="a settled voter configuration",
                                          describe=lambda: describe_status(up))
    return result


def _age(peer: Peer) -> float:
    """Seconds since `peer`'s process started."""
    assert peer.pid is not None
    try:
        stat = Path(f"/proc/{peer.pid}/stat").read_text()
        ticks = int(stat.rpartition(")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return 0.0
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return uptime - ticks / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- item 9


def test_quorum_lost_for_good_is_reported_and_recovered(cluster: Cluster,
                                                        kill_markers: list[str]) -> None:
    """Item 9: four peers (three voters, one learner); two voters die for
    good. Every survivor reports no leader (the learner used to report the
    dead leader forever) and since when; `nanomesh peer recover` refuses a
    running peer, reports on a stopped one, and with --yes makes it, at its
    next start, the only voter of a control plane that still has the
    service (running again), the token, and accepts writes. A lost voter
    that returns with its old data follows the recovered control plane."""
    peers = cluster.start_mesh(4, key_file=cluster.new_key())
    token = read_token_when_ready(cluster, peers[0])
    st = wait_agreed(cluster, peers, voters=3)
    marker = new_marker()
    kill_markers.append(marker)
    deploy(cluster, peers[0], manifest("keep", marker), token)
    wait_running(cluster, peers, "keep", marker)
    voters = [p for p in peers if raft_addr(p) in st["voters"]]
    learner = next(p for p in peers if p not in voters)
    leader = next(p for p in voters if raft_addr(p) == st["leader"])
    survivor = next(p for p in voters if p is not leader)
    lost = [p for p in voters if p is not survivor]
    before = time.time()
    for p in lost:
        p.kill()
    alive = [survivor, learner]

    def no_leader_anywhere() -> bool:
        sts = [status(p) for p in alive]
        return all(s["leader"] is None and isinstance(s["no_leader_since"], float)
                   and s["last_leader"] is not None for s in sts)
    cluster.wait(no_leader_anywhere, 30, what="every survivor to report no leader",
                 describe=lambda: json.dumps([status(p) for p in alive]))
    since = status(learner)["no_leader_since"]
    assert before - 5 <= since <= time.time()
    out = cli("status", peer=learner)
    assert out.returncode == 0 and "none since" in out.stdout, out

    refused = cli("peer", "recover", "--data-dir", str(survivor.data_dir))
    assert refused.returncode != 0 and "running" in refused.stderr, refused
    assert survivor.terminate() == 0
    report = cli("peer", "recover", "--data-dir", str(survivor.data_dir))
    assert report.returncode == 0 and "WARNING" in report.stdout, report
    assert "keep" in report.stdout and "nothing changed" in report.stdout, report
    assert not (survivor.data_dir / "consensus" / "recover.json").exists()
    done = cli("peer", "recover", "--data-dir", str(survivor.data_dir), "--yes")
    assert done.returncode == 0, done
    survivor.start()

    after = wait_leader(cluster, alive)
    assert after["leader"] == raft_addr(survivor) and after["voters"] == [raft_addr(survivor)]
    assert {d["name"] for d in survivor.get("/v1/services")} == {"keep"}
    wait_running(cluster, alive, "keep", marker)
    second = new_marker()
    kill_markers.append(second)
    deploy(cluster, learner, manifest("after", second), token)  # the token still works
    wait_running(cluster, alive, "after", second)
    assert not (survivor.data_dir / "consensus" / "recover.json").exists()
    assert status(survivor)["cluster_epoch"] == 1

    # A lost voter comes back with its old journal anyway: it cannot talk to
    # the recovered plane (another Raft key per epoch) and follows it.
    returned = lost[0]
    returned.start()
    back = [survivor, learner, returned]
    final = wait_leader(cluster, back)
    assert final["leader"] == raft_addr(survivor)
    cluster.wait(lambda: status(returned)["cluster_epoch"] == 1
                 and {d["name"] for d in returned.get("/v1/services")} == {"keep", "after"},
                 LEADER_TIMEOUT, what=f"{returned.name} to follow the recovered control plane")
    assert running_instances(learner, "keep") and marker_procs(marker)
