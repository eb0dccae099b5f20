"""Real Raft clusters: every node is its own process on its own loopback
address (127.0.30.x, port 7948), driven through `nanomesh.consensus.harness`.

These check behaviour, never speed: waits are bounded but generous.
Section numbers refer to the Raft paper (Ongaro & Ousterhout, 2014).
"""

from __future__ import annotations

import signal
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

from nanomesh.consensus.config import RaftTiming
from nanomesh.consensus.harness import (
    HarnessError,
    NodeProcess,
    RaftCluster,
    open_cluster,
    wait_until,
)
from nanomesh.wire import generate_key

pytestmark = pytest.mark.integration

IpFactory = Callable[[int], list[str]]
SETTLE = 10.0
"""Generous bound, in seconds, on elections, catch-up and restarts here."""


async def _write_until_accepted(node: NodeProcess, name: str, spec: dict[str, Any],
                                timeout: float = SETTLE) -> dict[str, Any]:
    """Retry a write while the cluster has no leader (what a caller does)."""
    async def attempt() -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = await node.call("put_service", name=name, spec=spec)
            return result
        except HarnessError as exc:
            if exc.error in ("NoLeaderError", "NotLeaderError", "CommitTimeout"):
                return None
            raise
    return await wait_until(attempt, timeout, what=f"write {name} accepted")


async def _states(nodes: Sequence[NodeProcess], revision: int) -> list[dict[str, Any]]:
    """Every node's state once it has applied `revision`."""
    out: list[dict[str, Any]] = []
    for n in nodes:
        out.append(await n.call("wait_revision", revision=revision, timeout=SETTLE))
    return out


async def _assert_one_leader_per_term(cluster: RaftCluster) -> None:
    """Election Safety (§5.2, Figure 3): at most one leader per term. Each node
    records every term it became leader in (from pysyncobj's state-change
    callback, on its Raft thread); no term may appear twice across nodes."""
    leaders_of: defaultdict[int, list[str]] = defaultdict(list)
    for address, status in (await cluster.statuses()).items():
        for term in status["leadership_history"]:
            leaders_of[term].append(address)
    assert all(len(v) == 1 for v in leaders_of.values()), dict(leaders_of)


async def test_three_voters_elect_one_leader_and_replicate(cluster: RaftCluster,
                                                           ips: IpFactory) -> None:
    """§5.2 leader election, §5.3 log replication: one leader, agreed by all;
    a write submitted on a follower commits and is applied by every node."""
    nodes = await cluster.start_voters(ips(3))
    leader = await cluster.wait_leader(timeout=SETTLE)
    statuses = await cluster.statuses()
    assert [s["role"] for s in statuses.values()].count("leader") == 1
    assert {s["term"] for s in statuses.values()} == {statuses[leader]["term"]}
    assert all(len(s["voters"]) == 3 for s in statuses.values())

    follower = next(n for n in nodes if n.address != leader)
    out = await follower.call("put_service", name="cam", spec={"image": "cam:1"})
    assert out["applied"] and out["revision"] == 1
    out = await follower.call("set_plan", plan={"cam": "pi-1"}, expected_epoch=0)
    assert out["plan_epoch"] == 1
    with pytest.raises(HarnessError, match="StalePlanError"):
        await nodes[0].call("set_plan", plan={"cam": "pi-2"}, expected_epoch=0)
    states = await _states(nodes, 2)
    assert all(s == states[0] for s in states)
    assert states[0]["services"] == {"cam": {"image": "cam:1"}}

    # Sample everyone's status for a while: never two leaders in one term.
    with trio.move_on_after(1.0):
        while True:
            by_term: defaultdict[int, set[str]] = defaultdict(set)
            for address, s in (await cluster.statuses()).items():
                if s["role"] == "leader":
                    by_term[s["term"]].add(address)
            assert all(len(v) <= 1 for v in by_term.values()), dict(by_term)
            await trio.sleep(0.02)
    await _assert_one_leader_per_term(cluster)


async def test_leader_sigkill_then_new_leader_keeps_writes(cluster: RaftCluster,
                                                           ips: IpFactory) -> None:
    """§5.4 safety: a committed write survives the loss of its leader; the
    survivors elect a new leader that accepts writes; the killed node comes
    back from its journal and catches up."""
    nodes = await cluster.start_voters(ips(3))
    old = await cluster.wait_leader(timeout=SETTLE)
    await nodes[0].call("put_service", name="before", spec={"n": 1})
    await _states(nodes, 1)

    cluster.nodes[old].kill()
    survivors = [n for n in nodes if n.address != old]
    new = await cluster.wait_leader(survivors, timeout=SETTLE)
    assert new != old
    await _write_until_accepted(survivors[0], "after", {"n": 2})
    for state in await _states(survivors, 2):
        assert set(state["services"]) == {"before", "after"}

    back = await cluster.restart(old)
    state = (await _states([back], 2))[0]
    assert set(state["services"]) == {"before", "after"}
    assert await cluster.wait_leader(timeout=SETTLE)
    await _assert_one_leader_per_term(cluster)


async def test_full_cluster_restart_keeps_the_state(cluster: RaftCluster,
                                                    ips: IpFactory) -> None:
    """Persistence (§5, Figure 2 "persistent state"): SIGKILL every node, start
    them again on their data directories: the journal brings the state back."""
    nodes = await cluster.start_voters(ips(3))
    await cluster.wait_leader(timeout=SETTLE)
    await nodes[1].call("put_service", name="cam", spec={"image": "cam:1"})
    await nodes[2].call("set_plan", plan={"cam": "pi-2"}, expected_epoch=0)
    before = (await _states(nodes, 2))[0]
    for n in nodes:
        n.kill()
    for n in nodes:
        await n.stop()
    async with trio.open_nursery() as nursery:
        for n in nodes:
            nursery.start_soon(n.start, cluster.nursery)
    await cluster.wait_leader(timeout=SETTLE)
    assert await _states(nodes, 2) == [before] * 3
    out = await nodes[0].call("set_plan", plan={"cam": "pi-3"}, expected_epoch=1)
    assert out["plan_epoch"] == 2, "the epoch continues where it was"


async def test_voters_are_added_and_removed_at_run_time(cluster: RaftCluster,
                                                        ips: IpFactory) -> None:
    """§6 membership changes, one server at a time: bootstrap one voter; each
    new node starts in join mode with the current voters as peers, then is
    added; adding never disturbs the leader (no new term), even when the new
    node ran a while before being added. A follower, then the leader
    (after a leadership transfer), are removed; the removed nodes keep
    running without disturbing the cluster."""
    addrs = ips(5)
    first = await cluster.start_voter(addrs[0], [])
    leader = await cluster.wait_leader(timeout=SETTLE)
    await first.call("put_service", name="cam", spec={})
    term = (await first.status() or {})["term"]
    for i, ip in enumerate(addrs[1:]):
        voters = (await first.status() or {})["voters"]
        new = await cluster.start_voter(ip, voters, join=True)
        if i == 1:
            # Started but not yet added: without `join` it would campaign here
            # with ever higher terms and depose the leader once added.
            await trio.sleep(1.0)
            assert (await new.status() or {})["term"] == 0
        await first.call("add_voter", address=new.address)
        await _states([new], 1)
    statuses = await cluster.statuses()
    assert all(len(s["voters"]) == 5 for s in statuses.values())
    assert {s["term"] for s in statuses.values()} == {term}, "adds caused no election"

    # Remove a follower, asked on the leader.
    nodes = list(cluster.nodes.values())
    gone = next(n for n in nodes if n.address != leader)
    await cluster.nodes[leader].call("remove_voter", address=gone.address)
    # Remove the leader: it hands over first, then another voter removes it.
    other = next(n for n in nodes if n.address not in (leader, gone.address))
    with pytest.raises(HarnessError, match="transfer_leadership"):
        await other.call("remove_voter", address=leader)
    with pytest.raises(HarnessError, match="cannot remove itself"):
        await cluster.nodes[leader].call("remove_voter", address=leader)
    new_leader = await cluster.nodes[leader].call("transfer_leadership")
    assert new_leader != leader
    await cluster.nodes[new_leader].call("remove_voter", address=leader)

    remaining = [n for n in nodes if n.address not in (leader, gone.address)]
    assert await cluster.wait_leader(remaining, timeout=SETTLE) == new_leader
    await remaining[0].call("put_service", name="after", spec={})
    term = (await cluster.nodes[new_leader].status() or {})["term"]
    await trio.sleep(1.0)  # the removed nodes keep running meanwhile
    for n in remaining:
        s = await n.status() or {}
        assert len(s["voters"]) == 3 and s["term"] == term and s["leader"] == new_leader
    await _assert_one_leader_per_term(cluster)


async def test_learner_replicates_and_forwards_but_never_votes(cluster: RaftCluster,
                                                               ips: IpFactory) -> None:
    """pysyncobj's read-only nodes (``SyncObj(None, voters)``) as learners:
    they receive committed state, forward writes to the leader, and are not
    voters (the configuration stays 3 voters, so the quorum stays 2). With a
    cluster key, a node holding another key learns nothing."""
    nodes = await cluster.start_voters(ips(3))
    leader = await cluster.wait_leader(timeout=SETTLE)
    await nodes[0].call("put_service", name="cam", spec={})
    voters = [n.address for n in nodes if n.address]
    cluster_key, cluster.key = cluster.key, generate_key()
    intruder = await cluster.start_learner(voters)
    cluster.key = cluster_key
    learner = await cluster.start_learner(voters)
    assert (await _states([learner], 1))[0]["services"] == {"cam": {}}
    out = await learner.call("put_service", name="from-learner", spec={})
    assert out["applied"]
    await _states(nodes, 2)
    status = await learner.status() or {}
    assert status["role"] == "learner" and status["leader"] == leader
    assert len(status["voters"]) == 3
    leader_status = await cluster.nodes[leader].status() or {}
    assert len(leader_status["voters"]) == 3 and leader_status["learners"] == 1
    intruder_status = await intruder.status() or {}
    assert intruder_status["leader"] is None and intruder_status["revision"] == 0, \
        "without the cluster key a node hears nothing (the guarded transport)"
    # The leader dies: the learner follows the new one.
    cluster.nodes[leader].kill()
    survivors = [n for n in nodes if n.address != leader]
    await _write_until_accepted(survivors[0], "later", {})
    assert "later" in (await _states([learner], 3))[0]["services"]


SLOW_ELECTIONS = {"raft_min_timeout": 2.0, "raft_max_timeout": 3.0, "connection_timeout": 3.0,
                  "leader_fallback_timeout": 3.0}
"""Election timeouts far above what an early campaign takes (~0.1 s), so a
new leader within a second can only come from the early campaign."""


async def _new_leader_after(cluster: RaftCluster, survivors: list[NodeProcess], old: str,
                            timeout: float) -> str | None:
    """The survivors' agreed new leader within `timeout` s, else None."""
    async def agreed() -> str | None:
        leaders = {s["leader"] for s in (await cluster.statuses(survivors)).values()}
        return leaders.pop() if len(leaders) == 1 and None not in leaders - {old} \
            and old not in leaders else None
    with trio.move_on_after(timeout):
        return await wait_until(agreed, timeout + 1, what="a new leader")
    return None


async def test_followers_campaign_at_once_when_the_leaders_process_dies(
        tmp_path: Path, ips: IpFactory) -> None:
    """Issue 9 (`nanomesh.consensus.leader_loss`): a killed leader's kernel
    closes its links, so its followers campaign within a short random delay
    instead of waiting out their election timeout (here >= 2 s)."""
    async with open_cluster(tmp_path, timing=SLOW_ELECTIONS) as cluster:
        nodes = await cluster.start_voters(ips(3))
        leader = await cluster.wait_leader(timeout=SETTLE)
        survivors = [n for n in nodes if n.address != leader]
        cluster.nodes[leader].kill()
        assert await _new_leader_after(cluster, survivors, leader, 1.0) is not None, \
            "no new leader within 1 s of the kill: the followers waited for their timeout"
        await _write_until_accepted(survivors[0], "after-the-crash", {})


async def test_a_silent_leader_is_found_by_the_election_timeout(
        tmp_path: Path, ips: IpFactory) -> None:
    """A leader that stops without closing its links (power loss; SIGSTOP
    here) gives no early signal: the followers keep it for their election
    timeout (>= 2 s), then elect another."""
    async with open_cluster(tmp_path, timing=SLOW_ELECTIONS) as cluster:
        nodes = await cluster.start_voters(ips(3))
        leader = await cluster.wait_leader(timeout=SETTLE)
        survivors = [n for n in nodes if n.address != leader]
        process = cluster.nodes[leader].process
        assert process is not None
        process.send_signal(signal.SIGSTOP)
        try:
            assert await _new_leader_after(cluster, survivors, leader, 1.0) is None
            assert await _new_leader_after(cluster, survivors, leader, SETTLE) is not None
        finally:
            process.send_signal(signal.SIGCONT)


async def test_first_election_after_a_quiet_spell_succeeds(cluster: RaftCluster,
                                                           ips: IpFactory) -> None:
    """Followers never talk to each other, and pysyncobj closed a link that
    read nothing for connection_timeout when it was next used, dropping the
    message: the first vote requests after a quiet spell were lost, and
    every election took two rounds (we sent keepalives on idle links; now a
    link is dead only after a timeout of sends without a byte back). Here: 5
    voters idle for 2 x connection_timeout, then a leadership transfer makes one chosen
    follower campaign; it needs the votes of other followers (the old leader's
    alone is not a majority of 5), so it wins in the very next term only if
    its idle links to them still work."""
    nodes = await cluster.start_voters(ips(5))
    leader = await cluster.wait_leader(timeout=SETTLE)
    await trio.sleep(2 * RaftTiming().connection_timeout)
    term = (await cluster.nodes[leader].status() or {})["term"]
    target = next(n.address for n in nodes if n.address != leader)
    assert await cluster.nodes[leader].call("transfer_leadership", to=target) == target
    status = await cluster.nodes[leader].status() or {}
    assert (status["leader"], status["term"]) == (target, term + 1)
