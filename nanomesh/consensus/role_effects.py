"""The vocabulary of the Raft role core (`nanomesh.consensus.role_core`): the
roles and the stored role, the actions the core returns and the outcomes its
shell feeds back.

Actions are commands (``StartLearner``, ``Promote``) except `RoleChanged`, a
notification. An action that has an outcome says so; the shell feeds that
outcome to ``RoleCore.feed`` and carries out what it returns before the rest
of the batch.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

# --------------------------------------------------------------------------- state


class RaftRole(enum.Enum):
    NONE = "none"
    LEARNER = "learner"
    JOINING = "joining"
    VOTER = "voter"


@dataclass(frozen=True)
class StoredRole:
    """This peer's role across restarts (the shell keeps it in ``role.json``)."""

    role: RaftRole = RaftRole.NONE
    generation: int = 0
    """Voter data directories are numbered; every (re)join starts a new
    generation, because a node re-added under the same address must come
    back with an empty log and term."""
    peers: tuple[str, ...] = ()
    epoch: int = 0
    """The control plane's incarnation: 0 until an operator's recovery starts
    a new one; see `RoleCore.epoch`."""


# --------------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class Log:
    """Say `text` in the log at `level` (the shell's logger)."""

    level: Literal["info", "warning"]
    text: str


@dataclass(frozen=True, slots=True)
class RoleChanged:
    """The role went from `old` to `new` (never equal): log it."""

    old: RaftRole
    new: RaftRole


@dataclass(frozen=True, slots=True)
class StartLearner:
    """Stop the node (if any) and start a learner following `peers` at
    control-plane `epoch`. Outcome: `Started`."""

    peers: tuple[str, ...]
    epoch: int


@dataclass(frozen=True, slots=True)
class StartVoter:
    """Stop the node (if any) and start a voter node in role `role`
    (``voter`` or ``joining``) on generation `generation`'s directory: it
    bootstraps when `peers` is empty and the directory new, else joins
    `peers`. `record`: store the role once started (a recovery stores only
    once the state is restored). Outcome: `Started`."""

    role: RaftRole
    generation: int
    peers: tuple[str, ...]
    epoch: int
    record: bool = True


@dataclass(frozen=True, slots=True)
class PruneGenerations:
    """Delete the data directories of every generation but `keep` (the last
    journal, kept for an operator)."""

    keep: int


@dataclass(frozen=True, slots=True)
class Store:
    """Write `stored` to disk (``role.json``); a failure is logged, not fatal."""

    stored: StoredRole


@dataclass(frozen=True, slots=True)
class AwaitVoters:
    """Wait until gossip reports voters, at most `timeout` seconds. Outcome:
    `VotersAwaited`."""

    timeout: float


@dataclass(frozen=True, slots=True)
class Promote:
    """Ask peer `name` to restart as a joining voter of `voters`, then add
    its node `raft_addr` to the configuration. Outcome: `Promoted`."""

    name: str
    raft_addr: str
    voters: frozenset[str]


@dataclass(frozen=True, slots=True)
class RemoveVoter:
    """Remove the voter `raft_addr` from the configuration. `reason`:
    ``"left"``, ``"dead"``, ``"surplus"`` (the voter policy) or
    ``"request"`` (a peer asked; confirmed by a later commit). Outcome:
    `VoterRemoved`."""

    raft_addr: str
    reason: str


@dataclass(frozen=True, slots=True)
class TransferLeadership:
    """Hand this node's leadership to another voter (best effort)."""


@dataclass(frozen=True, slots=True)
class AskRemove:
    """Ask another peer to remove this voter `raft_addr`, retried until it is
    committed or `RoleConfig.call_timeout` runs out. Outcome: `RemovalAsked`."""

    raft_addr: str


@dataclass(frozen=True, slots=True)
class StopNode:
    """Stop the running node. Outcome: `Stopped`."""


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to the peer request this batch serves."""

    ok: bool


Action = (Log | RoleChanged | StartLearner | StartVoter | PruneGenerations | Store
          | AwaitVoters | Promote | RemoveVoter | TransferLeadership | AskRemove | StopNode
          | Reply)


# --------------------------------------------------------------------------- outcomes


@dataclass(frozen=True, slots=True)
class Started:
    """`start` (a `StartLearner` or `StartVoter`) ran: `ok` if the node
    runs, else it could not start (and the old node is stopped)."""

    start: StartLearner | StartVoter
    ok: bool


@dataclass(frozen=True, slots=True)
class VotersAwaited:
    """An `AwaitVoters` ended (voters known, or the time ran out)."""


@dataclass(frozen=True, slots=True)
class Promoted:
    """A `Promote` of `name` ended: `ok` once the add committed."""

    name: str
    ok: bool


@dataclass(frozen=True, slots=True)
class VoterRemoved:
    """A `RemoveVoter` ended: `ok` once committed."""

    raft_addr: str
    reason: str
    ok: bool


@dataclass(frozen=True, slots=True)
class RemovalAsked:
    """An `AskRemove` ended: `ok` once the removal committed."""

    ok: bool


@dataclass(frozen=True, slots=True)
class Stopped:
    """A `StopNode` ended: no node runs."""


Outcome = Started | VotersAwaited | Promoted | VoterRemoved | RemovalAsked | Stopped
