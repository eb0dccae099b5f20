"""A learner without a Raft node: the trio shell of `nanomesh.consensus.follow_core`.

`FollowerNode` stands where a pysyncobj learner stood (role ``learner`` of
`nanomesh.consensus.role_manager`) and offers the same reads as
`nanomesh.consensus.node.ConsensusNode`: ``state``, ``status``, ``leader``,
``watch()``, ``wait_state()``... so placement views, naming and API reads
work unchanged on a learner. It differs in how the state arrives: it pulls
the committed state from a voter when gossip announces a newer version (and
every `FollowConfig.recheck_period`), instead of receiving every log entry
on the leader's heartbeat (issue 9).

Durability. Every state pulled goes to a state file (``follow.json``:
temporary file, fsync, rename, fsync of the directory) before it takes
effect, so a learner killed and restarted starts from the last committed
state it had (its instances keep running as last committed) and catches up
with one pull.

Writes are forwarded, as a pysyncobj learner forwarded them: to a voter's
``/v1/internal/raft/command`` (the leader first), which runs the command on
its node and answers with the outcome or the consensus error; then the
learner pulls until it holds the state that write produced, so a caller
reads its own write (as on a Raft node, where the state is applied before
the write returns). Membership changes are refused: only voters make them.

The other half of the protocol, what a voter answers (`state_reply`,
`run_command`), lives here too, so the format has one home; the daemon
carries both over its signed peer-to-peer HTTP calls
(`nanomesh.daemon.api_raft`), through a `FollowTransport`.
"""

from __future__ import annotations

import collections
import json
import logging
import math
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol, TypeGuard, TypeVar

import trio

from nanomesh.consensus.config import DEFAULT_COMMIT_TIMEOUT
from nanomesh.consensus.errors import (
    CommitTimeout,
    ConsensusError,
    DiscardedError,
    NoLeaderError,
    NotLeaderError,
    NotRunningError,
    StalePlanError,
    StorageError,
    WriteRejected,
)
from nanomesh.consensus.follow_core import FollowConfig, FollowCore, Version
from nanomesh.consensus.state import (
    DesiredState,
    Outcome,
    validate_put_service,
    validate_set_plan,
)
from nanomesh.consensus.status import RaftStatus, Role
from nanomesh.disk import describe_disk_error, write_durably

log = logging.getLogger("nanomesh.consensus.follower")

T = TypeVar("T")

STATE_FILE = "follow.json"
"""The learner's copy of the committed state, in the role manager's directory."""
MAX_COMMAND_TIMEOUT = 30.0
"""Longest a voter waits for a forwarded command's commit (a caller's
timeout is capped to it, so a request cannot hold a voter's handler forever)."""


class FollowTransport(Protocol):
    """How a `FollowerNode` reaches the voters (the daemon: signed peer API calls)."""

    def sources(self) -> list[str]:
        """The voters to pull from and forward writes to, the leader first
        (as gossip reports them); opaque ids for `pull` and `command`."""
        ...

    def announced(self) -> Version | None:
        """The newest committed version gossip announces (`announced_version`)."""
        ...

    def leader(self) -> tuple[str, int, frozenset[str]] | None:
        """``(leader, term, voters)`` as the leader gossips them (`gossiped_leader`)."""
        ...

    async def pull(self, source: str, have: Version | None) -> Any:
        """``POST /v1/internal/raft/state`` on `source` with `have`; the
        decoded reply (`state_reply`). ConsensusError if it failed."""
        ...

    async def command(self, source: str, request: Mapping[str, Any]) -> Any:
        """``POST /v1/internal/raft/command`` on `source`; the decoded reply
        (`run_command`). ConsensusError if `source` could not be reached."""
        ...


# --------------------------------------------------------------------------- the voter's side


def state_reply(state: DesiredState, status: RaftStatus, cluster_epoch: int,
                have: Any) -> dict[str, Any]:
    """What a voter answers a pull: the version of its committed `state`,
    what its node believes (``leader``, ``term``, ``voters``) and, unless
    the asker already holds that version (`have`), the state itself.
    NoLeaderError if the voter hears no leader: its state may be stale
    (cut off from the majority), ask another."""
    if status.leader is None:
        raise NoLeaderError("this voter hears no leader; its state may be stale")
    version = [cluster_epoch, state.revision]
    return {"cluster_epoch": cluster_epoch, "revision": state.revision,
            "leader": status.leader, "term": status.term, "voters": sorted(status.voters),
            "state": None if have == version else state.to_doc()}


@dataclass(frozen=True)
class Snapshot:
    """A parsed pull reply. `state` is None when unchanged (the asker holds it)."""

    version: Version
    leader: str
    term: int
    voters: frozenset[str]
    state: DesiredState | None


def parse_state_reply(reply: Any) -> Snapshot:
    """`state_reply`'s output from the network; ValueError if malformed."""
    if not isinstance(reply, dict):
        raise ValueError("state reply must be an object")
    epoch, revision, leader, term, voters = (reply.get(k) for k in (
        "cluster_epoch", "revision", "leader", "term", "voters"))
    if not (_is_count(epoch) and _is_count(revision) and _is_count(term)
            and isinstance(leader, str)):
        raise ValueError("state reply: bad cluster_epoch, revision, term or leader")
    if not (isinstance(voters, list) and all(isinstance(v, str) for v in voters)):
        raise ValueError("state reply: bad voters")
    doc = reply.get("state")
    state = None if doc is None else DesiredState.from_doc(doc)
    if state is not None and state.revision != revision:
        raise ValueError("state reply: revision differs from the state's")
    return Snapshot((epoch, revision), leader, term, frozenset(voters), state)


_WRITES: dict[str, tuple[str, ...]] = {
    "put_service": ("name", "spec"),
    "delete_service": ("name",),
    "set_plan": ("plan", "expected_epoch"),
    "init_meta": ("key", "value"),
    "patch_service": ("name", "key", "value"),
    "put_registry": ("key", "entry"),
    "barrier": (),
}
"""The writes a learner forwards: the `ConsensusNode` method and its arguments."""
_ERRORS: dict[str, type[ConsensusError]] = {cls.__name__: cls for cls in (
    ConsensusError, NoLeaderError, NotLeaderError, CommitTimeout, WriteRejected,
    DiscardedError, StorageError, NotRunningError)}


async def run_command(node: Any, cluster_epoch: int, request: Any) -> dict[str, Any]:
    """Run a forwarded write (``{"op", "args", "timeout"}``) on `node` (a
    voter's `ConsensusNode`; it forwards to its leader). The reply carries
    the ``outcome`` or the ``error`` (the consensus error's class name and
    message), and the voter's ``cluster_epoch``. ValueError for a malformed
    request (the route answers 400); validation errors of the write itself
    come back as ``{"error": "ValueError"}``."""
    if not isinstance(request, dict):
        raise ValueError("command must be an object")
    op, args, timeout = request.get("op"), request.get("args"), request.get("timeout")
    if op not in _WRITES or not isinstance(args, dict) or set(args) != set(_WRITES[op]):
        raise ValueError(f"unknown command or bad arguments: {op!r}")
    if not (isinstance(timeout, int | float) and not isinstance(timeout, bool)
            and 0 < timeout <= MAX_COMMAND_TIMEOUT):
        raise ValueError(f"timeout must be in (0, {MAX_COMMAND_TIMEOUT:.0f}] seconds")
    reply: dict[str, Any] = {"cluster_epoch": cluster_epoch}
    try:
        outcome = await getattr(node, op)(**args, timeout=float(timeout))
    except StalePlanError as exc:
        reply["error"] = {"type": "StalePlanError", "expected": exc.expected_epoch,
                          "current": exc.current_epoch}
    except ConsensusError as exc:
        reply["error"] = {"type": type(exc).__name__ if type(exc).__name__ in _ERRORS
                          else "ConsensusError", "message": str(exc)}
    except ValueError as exc:
        reply["error"] = {"type": "ValueError", "message": str(exc)}
    else:
        reply["outcome"] = None if outcome is None else {
            f.name: getattr(outcome, f.name) for f in fields(Outcome)}
    return reply


def outcome_of(reply: Any) -> tuple[int, Outcome | None]:
    """``(cluster_epoch, outcome)`` of a `run_command` reply; raises the
    error it carries (a ConsensusError, or ValueError for a refused
    argument); ConsensusError for a malformed reply."""
    if not isinstance(reply, dict) or not _is_count(reply.get("cluster_epoch")):
        raise ConsensusError("malformed command reply")
    error = reply.get("error")
    if isinstance(error, dict):
        kind = error.get("type")
        if kind == "StalePlanError" and _is_count(error.get("expected")) \
                and _is_count(error.get("current")):
            raise StalePlanError(error["expected"], error["current"])
        message = str(error.get("message", ""))
        if kind == "ValueError":
            raise ValueError(message)
        raise _ERRORS.get(str(kind), ConsensusError)(message)
    doc = reply.get("outcome")
    if doc is None:
        return reply["cluster_epoch"], None
    try:
        outcome = Outcome(**doc)
    except TypeError:
        raise ConsensusError("malformed command outcome") from None
    if not (isinstance(outcome.revision, int) and isinstance(outcome.plan_epoch, int)):
        raise ConsensusError("malformed command outcome")
    return reply["cluster_epoch"], outcome


# --------------------------------------------------------------------------- the learner


class FollowerNode:
    """A learner that follows the committed state by pulling (module doc).

    `transport`: how it reaches the voters. `data_dir`: where its state file
    lives. `epoch`: the control-plane epoch it follows (states of an older
    one are refused). `spread`: where its rechecks start in the voter list
    (`FollowCore`). Run it with ``await nursery.start(node.run)``.
    """

    address: str | None = None
    """A learner listens on no Raft port."""

    def __init__(self, transport: FollowTransport, data_dir: Path, epoch: int = 0, *,
                 config: FollowConfig | None = None, spread: int = 0,
                 commit_timeout: float = DEFAULT_COMMIT_TIMEOUT) -> None:
        self.config = config or FollowConfig()
        self.config.check()
        self._transport = transport
        self._path = data_dir / STATE_FILE
        self._epoch = epoch
        self._commit_timeout = commit_timeout
        self._spread = spread
        self._core = FollowCore(self.config, spread=spread)
        self._state = DesiredState()
        self._status = _status(None, 0, frozenset(), 0, ready=False)
        self._pulled: tuple[str, int, frozenset[str]] | None = None
        """Leader, term and voters as the last good pull said (None after
        failed pulls); `status` shows these or gossip's, the newer term."""
        self._running = False
        self._stopped = False
        self._changed = trio.Event()
        self._nudged = trio.Event()
        self._storage_problem: str | None = None
        self.dropped: collections.Counter[str] = collections.Counter()
        """Raft connections dropped: none, a learner has no Raft transport."""
        self.leadership_history: collections.deque[int] = collections.deque()
        self.pulls = 0
        """Pulls that brought a new state (for tests and experiments)."""

    # ------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Load the state file, report started, then follow until cancelled."""
        loaded = await trio.to_thread.run_sync(_load, self._path)
        if loaded is not None and loaded[0][0] >= self._epoch:
            version, leader, term, voters, state = loaded
            self._core = FollowCore(self.config, version, spread=self._spread)
            self._state = state
            self._pulled = None if leader is None else (leader, term, voters)
            self._status = _status(leader, term, voters, state.revision, ready=True)
        self._running, self._stopped = True, False
        log.info("raft learner following %s (no Raft node), state %s", self._path.parent,
                 f"revision {self._state.revision}" if loaded else "none yet")
        task_status.started()
        try:
            await self._follow_forever()
        finally:
            self._running, self._stopped = False, True
            self._wake()

    def notify(self) -> None:
        """Gossip changed (an announcement may be newer): look again now."""
        self._nudged.set()

    async def _follow_forever(self) -> None:
        while True:
            self._core.announce(self._transport.announced())
            self._update_status()
            sources = self._transport.sources()
            pull = self._core.poll(trio.current_time(), sources)
            if pull is not None:
                await self._pull(pull.source, pull.have)
                continue
            wake = self._core.next_wakeup() if sources else \
                trio.current_time() + self.config.recheck_period
            with trio.move_on_at(wake):
                await self._nudged.wait()
            self._nudged = trio.Event()

    async def _pull(self, source: str, have: Version | None) -> None:
        try:
            with trio.fail_after(self.config.pull_timeout):
                snapshot = parse_state_reply(await self._transport.pull(source, have))
        except (ConsensusError, ValueError, trio.TooSlowError) as exc:
            log.debug("raft learner: pull from %s failed: %s", source, exc)
            self._core.pulled(trio.current_time(), None)
            if self._core.failures >= 2:  # not one voter's hiccup: no leader heard
                self._pulled = None
                self._update_status()
            return
        held = self._core.held
        if snapshot.version[0] < self._epoch or (snapshot.state is None
                                                  and snapshot.version != held):
            self._core.pulled(trio.current_time(), None)  # nothing usable from this voter
            return
        if snapshot.state is not None and (held is None or snapshot.version > held):
            await self._save(snapshot.version[0], snapshot.state, snapshot)
            self._state = snapshot.state
            self.pulls += 1
        elif self._storage_problem is not None:  # the last save failed: try again
            await self._save(self._core.held[0] if self._core.held else self._epoch,
                             self._state, snapshot)
        self._core.pulled(trio.current_time(), snapshot.version)
        self._pulled = (snapshot.leader, snapshot.term, snapshot.voters)
        self._update_status()

    async def _save(self, epoch: int, state: DesiredState, snapshot: Snapshot) -> None:
        """Persist `state` before it takes effect; a failing disk is reported
        (`storage_problems`) and the state used anyway (it is committed:
        the voters keep it), saved again after the next pull."""
        doc = {"cluster_epoch": epoch, "leader": snapshot.leader, "term": snapshot.term,
               "voters": sorted(snapshot.voters), "state": state.to_doc()}
        data = (json.dumps(doc, separators=(",", ":")) + "\n").encode()
        try:
            await trio.to_thread.run_sync(write_durably, str(self._path), data)
        except OSError as exc:
            problem = f"{describe_disk_error(exc)}: cannot save the learner's state " \
                      f"({STATE_FILE})"
            if problem != self._storage_problem:
                log.error("raft learner: %s; retried at the next pull", problem)
            self._storage_problem = problem
        else:
            self._storage_problem = None

    def _update_status(self) -> None:
        """Leader, term and voters: gossip's or the last pull's, whichever
        has the higher term, gossip's at equal terms (it is the leader's word
        now; the pull's may predate a voter change) (none if neither knows a
        leader, or while no state is held: a learner is ready once it holds a
        committed state)."""
        views = [v for v in (self._transport.leader(), self._pulled) if v is not None
                 and self._core.held is not None]
        leader, term, voters = max(views, key=lambda v: v[1]) if views else (
            None, self._status.term, self._status.voters)
        status = _status(leader, term, voters, self._state.revision,
                         ready=self._core.held is not None)
        if status != self._status:
            if status.leader != self._status.leader:
                log.info("raft learner: leader is now %s (term %d)", leader, term)
            self._status = status
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # ------------------------------------------------------------ reads (as ConsensusNode)

    @property
    def running(self) -> bool:
        return self._running

    @property
    def storage_problems(self) -> list[str]:
        return [self._storage_problem] if self._storage_problem else []

    @property
    def state(self) -> DesiredState:
        """The latest committed state pulled (shared: never mutate)."""
        return self._state

    @property
    def status(self) -> RaftStatus:
        """Role ``learner``; leader, term and voters as the last pull said."""
        return self._status

    @property
    def is_leader(self) -> bool:
        return False

    @property
    def leader(self) -> str | None:
        return self._status.leader

    @property
    def term(self) -> int:
        return self._status.term

    @property
    def voters(self) -> frozenset[str]:
        return self._status.voters

    async def watch(self) -> AsyncIterator[DesiredState]:
        """As `ConsensusNode.watch`."""
        last: DesiredState | None = None
        while not self._stopped:
            state = self._state
            if state is not last:  # replaced only by a newer version (or a new epoch)
                last = state
                yield state
            else:
                await self._changed.wait()

    async def wait_state(self, predicate: Callable[[DesiredState], object], *,
                         timeout: float = math.inf) -> DesiredState:
        return await self._wait(lambda: self._state, predicate, timeout)

    async def wait_status(self, predicate: Callable[[RaftStatus], object], *,
                          timeout: float = math.inf) -> RaftStatus:
        return await self._wait(lambda: self._status, predicate, timeout)

    async def wait_leader(self, *, timeout: float = math.inf) -> str:
        status = await self.wait_status(lambda s: s.leader is not None, timeout=timeout)
        assert status.leader is not None
        return status.leader

    async def _wait(self, get: Callable[[], T], predicate: Callable[[T], object],
                    timeout: float) -> T:
        with trio.fail_after(timeout):
            while not predicate(value := get()):
                if self._stopped:
                    # Stopped because our own scope was cancelled: say Cancelled
                    # (a checkpoint), not that the node stopped.
                    await trio.lowlevel.checkpoint()
                    raise NotRunningError("the learner stopped")
                await self._changed.wait()
            return value

    # ------------------------------------------------------------ writes (forwarded)

    async def put_service(self, name: str, spec: Mapping[str, Any], *,
                          timeout: float | None = None) -> Outcome:
        return await self._write(timeout, "put_service", name=name, spec=dict(spec))

    async def delete_service(self, name: str, *, timeout: float | None = None) -> Outcome:
        return await self._write(timeout, "delete_service", name=name)

    async def set_plan(self, plan: Mapping[str, Any], expected_epoch: int, *,
                       timeout: float | None = None) -> Outcome:
        return await self._write(timeout, "set_plan", plan=dict(plan),
                                 expected_epoch=expected_epoch)

    async def init_meta(self, key: str, value: Any, *, timeout: float | None = None
                        ) -> Outcome:
        return await self._write(timeout, "init_meta", key=key, value=value)

    async def patch_service(self, name: str, key: str, value: Any, *,
                            timeout: float | None = None) -> Outcome:
        return await self._write(timeout, "patch_service", name=name, key=key, value=value)

    async def put_registry(self, key: str, entry: Mapping[str, Any] | None, *,
                           timeout: float | None = None) -> Outcome:
        return await self._write(timeout, "put_registry", key=key,
                                 entry=None if entry is None else dict(entry))

    async def barrier(self, *, timeout: float | None = None) -> None:
        await self._forward(timeout, "barrier", {})

    async def add_voter(self, address: str, *, timeout: float | None = None) -> None:
        raise NotLeaderError(f"add voter {address}: a learner cannot change the voters")

    async def remove_voter(self, address: str, *, timeout: float | None = None) -> None:
        raise NotLeaderError(f"remove voter {address}: a learner cannot change the voters")

    async def transfer_leadership(self, to: str | None = None, *,
                                  timeout: float | None = None) -> str:
        raise NotLeaderError("transfer leadership: a learner does not lead")

    async def _write(self, timeout: float | None, op: str, **args: Any) -> Outcome:
        """Check what can be checked here (as `ConsensusNode` does: bad input
        raises ValueError before it leaves), then forward."""
        try:
            args = json.loads(json.dumps(args, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{op}: not JSON-shaped: {exc}") from None
        if op == "put_service":
            validate_put_service(args["name"], args["spec"])
        elif op == "set_plan":
            validate_set_plan(args["plan"], args["expected_epoch"])
        outcome = await self._forward(timeout, op, args)
        assert outcome is not None
        return outcome

    async def _forward(self, timeout: float | None, op: str, args: dict[str, Any]
                       ) -> Outcome | None:
        """Send the write to a voter (the leader first; the next if one is
        unreachable: every write is safe to repeat, see
        `nanomesh.consensus.errors`), then wait until this learner holds
        the state it produced."""
        if not self._running:
            raise NotRunningError(f"{op}: the learner is not running")
        seconds = self._commit_timeout if timeout is None else timeout
        request = {"op": op, "args": args, "timeout": min(seconds, MAX_COMMAND_TIMEOUT)}
        deadline = trio.current_time() + seconds
        reply: Any = None
        last: ConsensusError = NoLeaderError(f"{op}: no voter known to forward it to")
        for source in self._transport.sources():
            try:
                with trio.fail_at(deadline):
                    reply = await self._transport.command(source, request)
                break
            except ConsensusError as exc:
                last = exc
            except trio.TooSlowError:
                raise CommitTimeout(f"{op}: not confirmed within {seconds:.2f} s; the "
                                    "outcome is unknown") from None
        else:
            raise last
        epoch, outcome = outcome_of(reply)
        if outcome is not None:
            await self._catch_up((epoch, outcome.revision), deadline)
        return outcome

    async def _catch_up(self, version: Version, deadline: float) -> None:
        """Pull until this learner holds `version` (read-your-writes), at
        most until `deadline`: the write is committed either way."""
        self._core.announce(version)
        self.notify()
        with trio.move_on_at(deadline):
            await self.wait_state(lambda s: (self._core.held or (-1, -1)) >= version)


def _status(leader: str | None, term: int, voters: frozenset[str], revision: int, *,
            ready: bool) -> RaftStatus:
    return RaftStatus(None, Role.LEARNER, term, leader, voters, revision, revision,
                      False, ready, 0, True)


def _load(path: Path) -> tuple[Version, str | None, int, frozenset[str], DesiredState] | None:
    """The state file's content; None if absent or damaged (then the first
    pull fills it)."""
    try:
        doc = json.loads(path.read_text())
        state = DesiredState.from_doc(doc["state"])
        epoch, leader, term, voters = (doc[k] for k in ("cluster_epoch", "leader", "term",
                                                         "voters"))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not (_is_count(epoch) and _is_count(term) and isinstance(voters, list)
            and all(isinstance(v, str) for v in voters)
            and (leader is None or isinstance(leader, str))):
        return None
    return (epoch, state.revision), leader, term, frozenset(voters), state


def _is_count(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
