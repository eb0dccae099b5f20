"""Errors of the consensus adapter, and the mapping from pysyncobj's failure
codes onto them (one table, tested).

Each error says whether the write's outcome is known. When it is not
(``outcome_unknown``), the command may still commit later: retry only
writes that are safe to repeat — every write here is (a put of the same spec
changes nothing, a delete of an absent service is refused, `set_plan` is a
compare-and-set).
"""

from __future__ import annotations

import enum

from nanomesh.errors import NanomeshError


class Failure(enum.IntEnum):
    """pysyncobj's ``FAIL_REASON`` codes (pysyncobj/config.py, 0.3.17)."""

    SUCCESS = 0
    QUEUE_FULL = 1
    MISSING_LEADER = 2
    DISCARDED = 3
    NOT_LEADER = 4
    LEADER_CHANGED = 5
    REQUEST_DENIED = 6
    UNKNOWN_OUTCOME = 7


class ConsensusError(NanomeshError):
    """Base class. `outcome_unknown`: the command may still commit."""

    outcome_unknown = False


class NoLeaderError(ConsensusError):
    """No leader is known (an election is running, or this node is cut off
    from the majority). The command was not appended; retry later."""


class NotLeaderError(ConsensusError):
    """The leader the command went to lost its leadership (or the command
    reached a node that was no longer leader) before the command committed.
    It may still commit under the new leader."""

    outcome_unknown = True


class CommitTimeout(ConsensusError):
    """The command did not commit within the timeout. It may still commit."""

    outcome_unknown = True


class WriteRejected(ConsensusError):
    """The cluster refused the command: e.g. a membership change while the
    previous one is uncommitted, or before the new leader's first entry has
    committed; or a full command queue. Nothing was appended."""


class DiscardedError(ConsensusError):
    """The command was appended by a leader that lost its leadership and a
    different entry committed at its index: it will never commit."""


class StalePlanError(WriteRejected):
    """`set_plan`'s expected epoch is not the committed one: a newer plan was
    committed meanwhile. `current_epoch` is the committed epoch."""

    def __init__(self, expected_epoch: int, current_epoch: int) -> None:
        super().__init__(f"stale plan: expected epoch {expected_epoch}, "
                         f"committed epoch is {current_epoch}")
        self.expected_epoch = expected_epoch
        self.current_epoch = current_epoch


class VersionGateError(WriteRejected):
    """A command kind some member of the mesh cannot apply yet (it runs an
    older nanomesh: `nanomesh.versions.may_commit`). Nothing was appended;
    it can commit once every peer is upgraded."""


class StorageError(ConsensusError):
    """This node cannot write its Raft journal (a full or failing data disk):
    it acknowledges nothing until the write succeeds, so it refuses commands
    at once instead of letting them time out. Nothing was appended."""


class NotRunningError(ConsensusError):
    """The consensus node is not running (not started yet, or stopped)."""


def failure_error(code: int, what: str) -> ConsensusError:
    """The exception for a pysyncobj failure code (never SUCCESS)."""
    try:
        failure = Failure(code)
    except ValueError:
        return ConsensusError(f"{what}: unknown pysyncobj failure code {code!r}")
    match failure:
        case Failure.MISSING_LEADER:
            return NoLeaderError(f"{what}: no leader known (election in progress or "
                                 "no majority reachable); retry later")
        case Failure.NOT_LEADER | Failure.LEADER_CHANGED | Failure.UNKNOWN_OUTCOME:
            return NotLeaderError(f"{what}: leadership changed before the commit "
                                  f"({failure.name}); the outcome is unknown")
        case Failure.DISCARDED:
            return DiscardedError(f"{what}: discarded by a new leader; not committed")
        case Failure.REQUEST_DENIED:
            return WriteRejected(f"{what}: denied by the leader (another membership change "
                                 "is not committed yet, the new leader has not committed "
                                 "its first entry, or the node is already in that state)")
        case Failure.QUEUE_FULL:
            return WriteRejected(f"{what}: the command queue is full")
        case _:
            return ConsensusError(f"{what}: unexpected failure {failure.name}")
