"""Timing preset, configuration checks and the failure-code table."""

from __future__ import annotations

from dataclasses import replace

import pysyncobj  # type: ignore[import-untyped]
import pytest

from nanomesh.consensus import (
    CommitTimeout,
    ConsensusConfig,
    NoLeaderError,
    NotLeaderError,
    RaftTiming,
    WriteRejected,
    parse_raft_address,
)
from nanomesh.consensus.errors import DiscardedError, Failure, failure_error
from nanomesh.errors import ConfigError
from nanomesh.wire import Keyring


def test_default_preset_is_the_measured_one() -> None:
    """The values measured for issue 9 (experiments/README.md, 2026-12-07)."""
    assert RaftTiming.lan().to_syncobj_kwargs() == {
        "raftMinTimeout": 0.35, "raftMaxTimeout": 0.70, "appendEntriesPeriod": 0.1,
        "connectionTimeout": 0.7, "connectionRetryTime": 0.2, "leaderFallbackTimeout": 0.6,
        "autoTickPeriod": 0.5, "appendEntriesUseBatch": True, "dynamicMembershipChange": True,
    }


@pytest.mark.parametrize("timing", [RaftTiming.lan(), RaftTiming.slow()])
def test_presets_pass_our_checks_and_pysyncobjs(timing: RaftTiming) -> None:
    assert timing.problems() == []
    pysyncobj.SyncObjConf(**timing.to_syncobj_kwargs()).validate()


@pytest.mark.parametrize(("change", "words"), [
    ({"raft_min_timeout": 0.29}, "3 x append_entries_period"),
    ({"raft_max_timeout": 0.35}, "raft_max_timeout must exceed"),
    ({"connection_timeout": 0.6}, "connection_timeout must be >="),
    ({"leader_fallback_timeout": 0.1}, "leader_fallback_timeout must exceed"),
    ({"auto_tick_period": 0.0}, "auto_tick_period must be > 0"),
])
def test_impossible_timing_is_rejected_with_its_reason(change: dict[str, float],
                                                       words: str) -> None:
    timing = replace(RaftTiming(), **change)
    with pytest.raises(ConfigError, match=words):
        timing.check()
    with pytest.raises(AssertionError):  # pysyncobj agrees, with a bare assert
        pysyncobj.SyncObjConf(**timing.to_syncobj_kwargs()).validate()


def test_a_leader_loss_delay_past_the_election_timeout_is_rejected() -> None:
    """Ours alone (pysyncobj has no such delay): a delay reaching the
    election timeout would make the early campaign pointless."""
    timing = replace(RaftTiming(), leader_loss_max_delay=RaftTiming().raft_min_timeout)
    with pytest.raises(ConfigError, match="leader_loss_max_delay must be below"):
        timing.check()


def test_addresses_are_normalized_and_names_refused() -> None:
    assert parse_raft_address("127.0.30.1") == "127.0.30.1:7948"
    assert parse_raft_address(" 127.0.30.1:8000 ") == "127.0.30.1:8000"
    assert parse_raft_address("[::1]:8000") == "::1:8000"
    for bad in ("pi.local:7948", "127.0.30.1:0", "127.0.30.1:x", ""):
        with pytest.raises(ConfigError):
            parse_raft_address(bad)


KEYRING = Keyring([bytes(32)])


def test_a_learner_needs_voters_to_follow() -> None:
    with pytest.raises(ConfigError, match="read-only"):
        ConsensusConfig(address=None, keyring=KEYRING).check()
    ConsensusConfig(address=None, peers=("127.0.30.1:7948",), keyring=KEYRING).check()
    ConsensusConfig(address=("127.0.30.1", 7948), keyring=KEYRING).check()  # one voter


def test_a_node_without_the_cluster_key_is_refused() -> None:
    """Issue 8.1: the control plane never listens unauthenticated."""
    for keyring in (None, Keyring()):
        with pytest.raises(ConfigError, match="cluster key"):
            ConsensusConfig(address=("127.0.30.1", 7948), keyring=keyring).check()


@pytest.mark.parametrize(("code", "error", "unknown"), [
    (Failure.MISSING_LEADER, NoLeaderError, False),
    (Failure.NOT_LEADER, NotLeaderError, True),
    (Failure.LEADER_CHANGED, NotLeaderError, True),
    (Failure.UNKNOWN_OUTCOME, NotLeaderError, True),
    (Failure.DISCARDED, DiscardedError, False),
    (Failure.REQUEST_DENIED, WriteRejected, False),
    (Failure.QUEUE_FULL, WriteRejected, False),
])
def test_failure_codes_map_to_errors(code: Failure, error: type[Exception],
                                     unknown: bool) -> None:
    exc = failure_error(code, "put_service 'cam'")
    assert type(exc) is error and exc.outcome_unknown is unknown
    assert "put_service 'cam'" in str(exc)
    assert CommitTimeout.outcome_unknown


def test_failure_codes_match_pysyncobj() -> None:
    for f in Failure:
        assert getattr(pysyncobj.FAIL_REASON, f.name) == f.value
