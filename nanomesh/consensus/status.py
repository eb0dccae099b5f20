"""What one node knows about the Raft cluster, as an immutable value.

A `RaftStatus` is taken on the Raft thread, between two ticks, so its fields
are consistent with each other; the trio side only ever reads the latest one.
It is a *belief*: a leader cut off from the majority reports ``LEADER`` until
``leader_fallback_timeout`` runs out, and two nodes may both report
``LEADER`` for a moment (for different terms). Act on committed state, not on
this (see `nanomesh.consensus.node`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Role(enum.Enum):
    FOLLOWER = "follower"
    CANDIDATE = "candidate"
    LEADER = "leader"
    LEARNER = "learner"
    """A read-only replica: receives the committed log, never votes."""


@dataclass(frozen=True)
class RaftStatus:
    """`address` is this node's ``ip:port`` (None for a learner); `leader`
    the leader it last heard from (None during elections); `voters` the
    configuration this node currently uses, itself included if a voter.
    `commit_index`/`last_applied` are Raft log indexes; `learners` counts the
    read-only replicas connected to this node; `bound` says the Raft port is
    listening (always True for a learner, which only connects out)."""

    address: str | None
    role: Role
    term: int
    leader: str | None
    voters: frozenset[str]
    commit_index: int
    last_applied: int
    has_quorum: bool
    ready: bool
    learners: int
    bound: bool
    connected: frozenset[str] | None = None
    """The voters this node has a Raft connection to now, itself included;
    None where unknown (a learner, a status from elsewhere). A voter that
    crashed drops its connections at once, long before gossip declares it
    dead: a leave must not count on it (`RoleCore.leave`)."""

    @property
    def is_leader(self) -> bool:
        return self.role is Role.LEADER


STOPPED = RaftStatus(None, Role.FOLLOWER, 0, None, frozenset(), 0, 0, False, False, 0, False)
"""The status of a node that is not running."""


@dataclass
class LeaderWatch:
    """When this peer last had a leader, across node restarts and role
    changes (what ``/v1/status`` reports as ``no_leader_since``).

    `observe(leader, now)` after every status change; `now` is wall-clock
    time (seconds since the epoch: it is shown to operators, and compared
    across peers). `since` is when the leader was lost (None while one is
    known); `last_leader` the last one known."""

    since: float | None = None
    last_leader: str | None = None

    def observe(self, leader: str | None, now: float) -> None:
        if leader is not None:
            self.since, self.last_leader = None, leader
        elif self.since is None:
            self.since = now
