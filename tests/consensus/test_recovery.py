"""Operator recovery and truthful leader status (issue 8, item 9): the parts
below the daemon. The end-to-end run is in
tests/integration/test_raft_durability.py.

- the recovery request file and the data directory lock;
- `read_state`: the committed state of a real pysyncobj journal, read from a
  scratch copy (the journal itself untouched);
- `LeaderWatch`, the control-plane epoch in gossip, and the CLI's leader line.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import trio

from nanomesh.cli.mesh import NO_QUORUM_HINT_AFTER
from nanomesh.cli.mesh import leader_line as _leader_line
from nanomesh.consensus import ConsensusConfig, RaftTiming, open_consensus
from nanomesh.consensus.recovery import (
    RECOVER_FILE,
    RecoveryError,
    RecoveryRequest,
    acquire_lock,
    hold_lock,
    read_state,
)
from nanomesh.consensus.role_core import epoch_from_profiles, voters_from_profiles
from nanomesh.consensus.status import LeaderWatch
from nanomesh.wire import Keyring

ADDR = ("127.0.40.251", 7948)


def test_request_round_trip_and_damage(tmp_path: Path) -> None:
    assert RecoveryRequest.load(tmp_path) is None
    RecoveryRequest(3, 1700000000.5).store(tmp_path)
    assert RecoveryRequest.load(tmp_path) == RecoveryRequest(3, 1700000000.5)
    RecoveryRequest.done(tmp_path)
    assert RecoveryRequest.load(tmp_path) is None
    (tmp_path / RECOVER_FILE).write_text("{not json")
    with pytest.raises(RecoveryError, match="damaged"):
        RecoveryRequest.load(tmp_path)
    (tmp_path / RECOVER_FILE).write_text('{"generation": 0, "requested_at": 1}')
    with pytest.raises(RecoveryError, match="damaged"):
        RecoveryRequest.load(tmp_path)


def test_lock_refuses_a_second_holder(tmp_path: Path) -> None:
    """A running role manager holds the lock: recovery refuses to touch it."""
    fd = acquire_lock(tmp_path)
    try:
        with pytest.raises(RecoveryError, match="running"), hold_lock(tmp_path):
            pass
    finally:
        os.close(fd)
    with hold_lock(tmp_path):
        pass  # free again


async def test_read_state_replays_the_committed_journal(tmp_path: Path) -> None:
    data = tmp_path / "raft-1"
    config = ConsensusConfig(address=ADDR, data_dir=data, keyring=Keyring([bytes(32)]),
                             timing=RaftTiming.lan())
    async with open_consensus(config) as node:
        await node.wait_status(lambda s: s.is_leader, timeout=10)
        await node.init_meta("token_sha256", "ab" * 32)
        await node.put_service("cam", {"image": "cam", "state": "c2F2ZWQ="})
        await node.put_registry("cam@1", {"sha256": "0" * 64})
        await node.set_plan({"assignments": {"cam/0": "peer-1"}}, 0)
        expected = node.state
    journal = (data / "journal").read_bytes()
    state, status = read_state(data)
    assert state == expected
    assert status.commit_index >= 5 and status.last_applied >= status.commit_index
    assert hashlib.sha256((data / "journal").read_bytes()).digest() == \
        hashlib.sha256(journal).digest(), "the journal itself is never touched"


def test_read_state_without_a_journal(tmp_path: Path) -> None:
    with pytest.raises(RecoveryError, match="no Raft journal"):
        read_state(tmp_path)


def test_leader_watch_remembers_when_the_leader_was_lost() -> None:
    w = LeaderWatch()
    w.observe(None, 10.0)
    assert (w.since, w.last_leader) == (10.0, None), "no leader since the start"
    w.observe("a:7948", 11.0)
    assert (w.since, w.last_leader) == (None, "a:7948")
    w.observe(None, 12.0)
    w.observe(None, 20.0)
    assert (w.since, w.last_leader) == (12.0, "a:7948"), "since the FIRST status without"


def test_gossip_trusts_only_the_newest_control_plane_epoch() -> None:
    """After a recovery, the superseded voters (epoch 0, a leader at a high
    term) are no voters at all: the recovered one (epoch 1, term 1) is."""
    old = {"addr": "a:7948", "leader": "a:7948", "term": 40, "voters": ["a:7948", "b:7948"]}
    new = {"addr": "c:7948", "leader": "c:7948", "term": 1, "voters": ["c:7948"],
           "cluster_epoch": 1}
    assert voters_from_profiles([old]) == {"a:7948", "b:7948"}
    assert voters_from_profiles([old, new]) == {"c:7948"}
    assert epoch_from_profiles([old, new, None, {"cluster_epoch": "x"}]) == 1
    assert epoch_from_profiles([]) == 0


def test_status_leader_line() -> None:
    assert _leader_line({"leader": "a:7948"}) == "a:7948"
    st = {"leader": None, "no_leader_since": 1000.0, "last_leader": "a:7948"}
    line = _leader_line(st, now=1012.0)
    assert line == "none since 1970-01-01 00:16:40 UTC (12 s; last a:7948)"
    assert "recover" not in line
    assert "nanomesh peer recover" in _leader_line(st, now=1000.0 + NO_QUORUM_HINT_AFTER)
    assert _leader_line({"leader": None, "no_leader_since": None}) == "none"


async def test_trio_reader_matches(tmp_path: Path) -> None:
    """The role manager reads without blocking trio; same result."""
    from nanomesh.consensus.role_manager import _read_state

    data = tmp_path / "raft-1"
    config = ConsensusConfig(address=("127.0.40.252", 7948), data_dir=data,
                             keyring=Keyring([bytes(32)]), timing=RaftTiming.lan())
    async with open_consensus(config) as node:
        await node.wait_status(lambda s: s.is_leader, timeout=10)
        await node.put_service("cam", {"image": "cam"})
    with trio.fail_after(30):
        state = await _read_state(data)
    assert set(state.services) == {"cam"}
