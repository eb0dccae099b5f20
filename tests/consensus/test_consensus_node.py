"""The trio adapter in this process, on a one-voter cluster (bootstrap):
async writes return on commit, the state and watch() show committed states,
errors are the documented ones, the journal survives a restart."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from nanomesh.consensus import (
    CommitTimeout,
    ConsensusConfig,
    ConsensusError,
    ConsensusNode,
    DesiredState,
    NoLeaderError,
    NotRunningError,
    Role,
    StalePlanError,
    open_consensus,
)
from nanomesh.consensus import node as node_module
from nanomesh.consensus._pysyncobj import RaftNode
from nanomesh.wire import Keyring

KEYRING = Keyring([bytes(range(32))])
"""Every node of these tests shares it: a Raft node never runs without a key."""

IpFactory = Callable[[int], list[str]]


def _config(ip: str, data_dir: Path | None = None) -> ConsensusConfig:
    return ConsensusConfig(address=(ip, 7948), data_dir=data_dir, keyring=KEYRING)


async def test_bootstrap_one_voter_then_writes_commit(ips: IpFactory) -> None:
    async with open_consensus(_config(ips(1)[0])) as node:
        assert await node.wait_leader(timeout=5) == node.address
        await node.wait_status(lambda s: s.is_leader, timeout=5)
        assert node.voters == {node.address} and node.term >= 1
        out = await node.put_service("cam", {"image": "cam:1", "needs": ["camera"]})
        assert out.applied and out.revision == 1
        assert node.state.services == {"cam": {"image": "cam:1", "needs": ["camera"]}}, \
            "the committed state is visible when the write returns"
        out = await node.set_plan({"cam": "pi-1"}, expected_epoch=0)
        assert out.plan_epoch == 1 and node.state.plan_epoch == 1
        with pytest.raises(StalePlanError) as err:
            await node.set_plan({"cam": "pi-2"}, expected_epoch=0)
        assert err.value.current_epoch == 1 and node.state.plan == {"cam": "pi-1"}
        assert not (await node.delete_service("nope")).applied
        assert (await node.delete_service("cam")).applied


async def test_an_idle_leader_ticks_per_heartbeat_not_per_poll(ips: IpFactory) -> None:
    """The Raft thread sleeps until its next timer (here: the heartbeat, every
    append_entries_period) instead of waking every few milliseconds; a write
    still commits at once."""
    async with open_consensus(_config(ips(1)[0])) as node:
        await node.wait_status(lambda s: s.is_leader, timeout=5)
        raft = node._raft
        assert raft is not None
        ticks: list[None] = []
        raft._obj.addOnTickCallback(lambda: ticks.append(None))  # on the Raft thread
        window = 1.0
        await trio.sleep(window)
        heartbeats = window / node.config.timing.append_entries_period
        assert 0 < len(ticks) <= 1.5 * heartbeats, \
            f"{len(ticks)} ticks in {window} s, heartbeats every " \
            f"{node.config.timing.append_entries_period} s"
        with trio.fail_after(1.0):
            assert (await node.put_service("cam", {"image": "cam:1"})).applied


async def test_bad_input_raises_before_reaching_the_log(ips: IpFactory) -> None:
    async with open_consensus(_config(ips(1)[0])) as node:
        await node.wait_status(lambda s: s.is_leader, timeout=5)
        with pytest.raises(ValueError):
            await node.put_service("cam", {"x": float("nan")})
        with pytest.raises(ValueError):
            await node.put_service("", {})
        with pytest.raises(ValueError):
            await node.set_plan({}, expected_epoch=-1)
        assert node.state == DesiredState()


async def test_watch_yields_every_committed_state_in_order(ips: IpFactory) -> None:
    async with open_consensus(_config(ips(1)[0])) as node:
        await node.wait_status(lambda s: s.is_leader, timeout=5)
        seen: list[int] = []

        async def watcher(task_status: trio.TaskStatus[None]) -> None:
            async for state in node.watch():
                seen.append(state.revision)
                if len(seen) == 1:
                    task_status.started()
                if state.revision >= 3:
                    return
        async with trio.open_nursery() as n:
            await n.start(watcher)
            for i in range(3):
                await node.put_service(f"s{i}", {"i": i})
        assert seen[0] == 0 and seen[-1] == 3 and seen == sorted(set(seen))


async def test_no_leader_yet_fails_fast_and_tiny_timeout_is_commit_timeout(
        ips: IpFactory) -> None:
    a, b = ips(2)
    # A voter whose only peer never starts: no majority, no leader, ever.
    config = ConsensusConfig(address=(a, 7948), peers=(f"{b}:7948",), keyring=KEYRING)
    async with open_consensus(config) as node:
        with trio.fail_after(1):
            with pytest.raises(NoLeaderError):
                await node.put_service("cam", {})
        assert node.status.role in (Role.FOLLOWER, Role.CANDIDATE)
    async with open_consensus(_config(ips(1)[0])) as node:
        await node.wait_status(lambda s: s.is_leader, timeout=5)
        # Keep the Raft thread busy for longer than the write may take (a
        # one-voter commit otherwise takes well under a millisecond).
        assert node._raft is not None
        node._raft.call_in_raft_thread(lambda: time.sleep(0.5))
        with pytest.raises(CommitTimeout) as err:
            await node.put_service("cam", {}, timeout=0.1)
        assert err.value.outcome_unknown
        await node.wait_state(lambda s: "cam" in s.services, timeout=2)  # it did commit


async def test_restart_replays_the_journal(ips: IpFactory, tmp_path: Path) -> None:
    config = _config(ips(1)[0], tmp_path / "raft")
    async with open_consensus(config) as node:
        await node.wait_status(lambda s: s.is_leader, timeout=5)
        await node.put_service("cam", {"v": 1})
        await node.set_plan({"cam": "pi"}, 0)
        before = node.state
    assert not node.running
    with pytest.raises(NotRunningError):
        await node.put_service("x", {})
    async with open_consensus(config) as again:
        state = await again.wait_state(lambda s: s.revision == before.revision, timeout=5)
        assert state == before


async def test_refuses_to_run_off_the_main_thread(ips: IpFactory) -> None:
    """ARCHITECTURE.md section 3: created in a worker thread, pysyncobj's tick
    thread stops silently when that worker exits. We refuse instead."""
    def build() -> None:
        RaftNode(self_address=f"{ips(1)[0]}:7948", peers=[], timing=ConsensusConfig(
            address=None, peers=("x",)).timing, journal_file=None, dump_file=None,
            keyring=KEYRING, on_applied=print, on_status=print, on_leadership=print)
    with pytest.raises(RuntimeError, match="main thread"):
        await trio.to_thread.run_sync(build)


async def test_port_in_use_is_a_clear_error(ips: IpFactory,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node_module, "BIND_TIMEOUT", 0.5)
    ip = ips(1)[0]
    with trio.socket.socket() as sock:
        await sock.bind((ip, 7948))
        sock.listen()
        node = ConsensusNode(_config(ip))
        with trio.fail_after(5), pytest.raises(ConsensusError, match="could not listen"):
            await node.run()
    assert not node.running


async def test_join_only_holds_elections_until_the_node_was_a_member(
        ips: IpFactory, tmp_path: Path) -> None:
    """`join` stops a new node from campaigning before it is added; once it
    has heard a leader it is an ordinary member: after a restart without
    the bootstrap node, two joined voters elect a leader on their own."""
    a, b, c = (f"{ip}:7948" for ip in ips(3))

    def config(addr: str, peers: tuple[str, ...], join: bool) -> ConsensusConfig:
        ip = addr.rpartition(":")[0]
        return ConsensusConfig(address=(ip, 7948), peers=peers, join=join, keyring=KEYRING,
                               data_dir=tmp_path / ip)
    async with open_consensus(config(a, (), False)) as first:
        await first.wait_status(lambda s: s.is_leader, timeout=5)
        async with open_consensus(config(b, (a,), True)) as second:
            await trio.sleep(0.5)
            assert second.term == 0 and second.leader is None, "held: no campaign"
            await first.add_voter(b)
            async with open_consensus(config(c, (a, b), True)) as third:
                await first.add_voter(c)
                await first.put_service("cam", {})
                await third.wait_state(lambda s: "cam" in s.services, timeout=5)
                await second.wait_state(lambda s: "cam" in s.services, timeout=5)
    assert [s async for s in first.watch()] == [], "watch() ends when the node stops"
    async with open_consensus(config(b, (a,), True)) as second, \
            open_consensus(config(c, (a, b), True)) as third:
        leader = await second.wait_leader(timeout=5)
        assert leader in (b, c) and await third.wait_leader(timeout=5) == leader
        assert "cam" in (await third.wait_state(lambda s: s.revision >= 1, timeout=5)).services


async def test_log_compaction_dump_restores_state_and_catches_up_a_new_node(
        ips: IpFactory, tmp_path: Path) -> None:
    """pysyncobj's snapshots (Raft section 7): after a compaction the state
    comes back from the full dump on restart, and a node that joins after
    the cut receives the dump instead of the (gone) entries."""
    a, b, c = ips(3)
    addrs = [f"{ip}:7948" for ip in (a, b, c)]

    def config(ip: str, data: str, join: bool = False) -> ConsensusConfig:
        peers = tuple(x for x in addrs[:2] if not x.startswith(ip + ":"))
        return ConsensusConfig(address=(ip, 7948), peers=peers, join=join, keyring=KEYRING,
                               data_dir=tmp_path / data)
    async with open_consensus(config(a, "a")) as first, \
            open_consensus(config(b, "b")) as second:
        leader = first if await first.wait_leader(timeout=5) == first.address else second
        for i in range(5):
            await leader.put_service(f"s{i}", {"i": i})
        await leader.set_plan({"s0": "pi"}, 0)
        expected = leader.state
        await second.wait_state(lambda s: s == expected, timeout=5)
        for node in (first, second):
            node.compact_log()
        with trio.fail_after(5):
            while not all((tmp_path / d / "dump").exists() for d in "ab"):
                await trio.sleep(0.05)
        # A third voter, fresh: the entries before the cut exist only in the dump.
        async with open_consensus(ConsensusConfig(
                address=(c, 7948), peers=tuple(addrs[:2]), join=True,
                data_dir=tmp_path / "c", keyring=KEYRING)) as third:
            await leader.add_voter(addrs[2])
            assert await third.wait_state(lambda s: s == expected, timeout=5) == expected
    async with open_consensus(config(a, "a")) as first, \
            open_consensus(config(b, "b")) as second:
        assert await first.wait_state(lambda s: s == expected, timeout=5) == expected
        assert await second.wait_state(lambda s: s == expected, timeout=5) == expected
