"""Consensus: the desired state (services, placement plan, plan epoch)
replicated by Raft among a few voters, through pysyncobj.

Layers, as elsewhere in nanomesh:

- `state`: the state machine — pure, total apply functions (unit-tested
  without Raft);
- `config`: the Raft timing preset (each value with its reason) and the
  node's configuration;
- `errors`: what a failed write means, mapped from pysyncobj's codes;
- `_pysyncobj`: the only module that imports pysyncobj (untyped), a typed
  facade that keeps all access to its internals on its tick thread;
- `node`: the trio shell — `ConsensusNode`, with commit-confirmed async
  writes, committed-state snapshots and `watch()`, status, voter management;
- `voters` (pure: who should vote), `role_core` (pure: this peer's role,
  its transition table and decisions; its actions in `role_effects`) and
  `role_manager` (their trio shell, `RaftRoleManager`);
- `harness`: one node as a subprocess driven over stdin/stdout, for tests
  and experiments.
"""

from nanomesh.consensus.config import (
    DEFAULT_RAFT_PORT,
    ConsensusConfig,
    RaftTiming,
    parse_raft_address,
)
from nanomesh.consensus.errors import (
    CommitTimeout,
    ConsensusError,
    DiscardedError,
    NoLeaderError,
    NotLeaderError,
    NotRunningError,
    StalePlanError,
    StorageError,
    VersionGateError,
    WriteRejected,
)
from nanomesh.consensus.node import ConsensusNode, open_consensus
from nanomesh.consensus.state import DesiredState, Outcome
from nanomesh.consensus.status import RaftStatus, Role

__all__ = [
    "DEFAULT_RAFT_PORT",
    "CommitTimeout",
    "ConsensusConfig",
    "ConsensusError",
    "ConsensusNode",
    "DesiredState",
    "DiscardedError",
    "NoLeaderError",
    "NotLeaderError",
    "NotRunningError",
    "Outcome",
    "RaftStatus",
    "RaftTiming",
    "Role",
    "StalePlanError",
    "StorageError",
    "VersionGateError",
    "WriteRejected",
    "open_consensus",
    "parse_raft_address",
]
