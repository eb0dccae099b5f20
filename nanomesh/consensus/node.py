"""The trio shell around one Raft node: async, commit-confirmed writes;
committed-state snapshots and a watch; status; voter management.

Threads and order of events. pysyncobj's tick thread applies every committed
command to the state machine (`nanomesh.consensus.state`), then completes the
command's callback. Each callback is handed to trio with
``TrioToken.run_sync_soon`` (FIFO), so on this node the new state is visible
before the write that produced it returns. Nothing here blocks the trio
thread on Raft, and Raft never waits on trio.

Only committed state takes effect. `state` and `watch()` only ever show
states produced by committed commands; `is_leader`/`leader` are beliefs that
can be stale (a leader cut off from the majority believes it leads until
``leader_fallback_timeout``). So callers act on committed state — placement
publishes a plan with `set_plan`, whose compare-and-set on the plan epoch makes
a deposed leader's late plan fail with `StalePlanError` instead of
overwriting a newer one — and never on "I think I am leader".

Writes may be submitted on any node, voter or learner: pysyncobj forwards
them to the leader. They fail fast with `NoLeaderError` when no leader is
known (elections take ~0.3 s), and otherwise wait for the commit up to the
timeout. See `nanomesh.consensus.errors` for what each failure means.

Voter changes (Raft §6, one server at a time, as pysyncobj implements it):

- bootstrap: the first voter starts with no peers and elects itself;
- add: start the new node with ``join=True``, ``peers`` = *all* current
  voters (`voters` of any member) and a fresh data directory; then call
  `add_voter(new)` on any member. ``join`` keeps it from campaigning until
  it hears the leader (else its growing term deposes the leader when it is
  added). All voters, not a seed: pysyncobj's log holds only the changes
  since bootstrap, so a node given one seed of a statically configured
  cluster ends up with a wrong configuration, and wrong quorums are unsafe.
  Adding to a one-voter cluster needs the new node running (2 of 2 must
  ack); with three or more voters it may also be added before it starts;
- remove: `remove_voter(addr)` on any *other* voter. The leader cannot remove
  itself: `transfer_leadership()` on it first. The removed node is never told
  (the leader drops it before sending it the entry); it keeps campaigning,
  harmlessly, as the voters refuse its connections: stop it, or restart it
  as a learner with a fresh data directory (its term has grown);
- one change at a time: the leader denies a change while the previous one is
  uncommitted; `add_voter`/`remove_voter` retry that denial until their
  timeout.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import math
import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import trio

from nanomesh.consensus._pysyncobj import CommandCallback, RaftNode
from nanomesh.consensus.config import ConsensusConfig, parse_raft_address
from nanomesh.consensus.errors import (
    CommitTimeout,
    ConsensusError,
    Failure,
    NoLeaderError,
    NotLeaderError,
    NotRunningError,
    StalePlanError,
    StorageError,
    VersionGateError,
    WriteRejected,
    failure_error,
)
from nanomesh.consensus.state import (
    PATCHABLE_KEYS,
    DesiredState,
    Outcome,
    is_json,
    validate_put_service,
    validate_set_plan,
)
from nanomesh.consensus.status import STOPPED, RaftStatus
from nanomesh.disk import describe_disk_error, write_durably
from nanomesh.versions import may_commit

log = logging.getLogger("nanomesh.consensus")

T = TypeVar("T")

BIND_TIMEOUT = 5.0
"""Seconds to wait for the Raft port to bind before giving up (pysyncobj
retries once a second, silently, forever)."""
DENIED_RETRY = 0.05
"""Pause, in seconds, before retrying a membership change the leader denied
because the previous change (or its own first entry) is not committed yet;
that takes about one heartbeat."""
STOP_POLL = 0.01
"""Seconds between checks that the Raft thread has ended after `destroy`
(it is woken at once and usually ends within one tick)."""
LEADERSHIP_HISTORY = 1000
"""How many terms this node led are kept in `leadership_history`."""
JOURNAL_FILE, DUMP_FILE, VOTERS_FILE = "journal", "dump", "voters.json"
BARRIER_SERVICE = ""
"""`barrier` patches this service, which cannot exist (an empty name is
invalid): the command is refused as not-found by every replica, a no-op."""


class ConsensusNode:
    """One Raft node holding the replicated desired state.

    Run it in a nursery: ``await nursery.start(node.run)`` from trio's main
    thread, or use `open_consensus`. Reads are plain attributes; writes are
    ``async`` and return when committed.
    """

    def __init__(self, config: ConsensusConfig) -> None:
        config.check()
        self.config = config
        self.address = config.self_address
        self._raft: RaftNode | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._state = DesiredState()
        self._status = STOPPED
        self._changed = trio.Event()
        self._stopped = False
        self._membership = trio.Lock()
        self._journal_problem: str | None = None
        self._voters_file_problem: str | None = None
        self.leadership_history: collections.deque[int] = collections.deque(
            maxlen=LEADERSHIP_HISTORY)
        """Every term in which this node became leader, in order."""
        self.dropped: collections.Counter[str] = collections.Counter()
        """Raft connections closed by the transport, by reason (bad key,
        oversized or late handshake, too many from one source). Counted on
        the Raft thread; a Counter update is atomic under the GIL."""

    # ------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Start the node, report started once its port listens, run until
        cancelled, then stop the Raft thread (closing sockets and journal).
        Must run on the main thread (pysyncobj, see `_pysyncobj`)."""
        cfg = self.config
        peers = list(cfg.peers)
        files: dict[str, str | None] = {"journal_file": None, "dump_file": None}
        memory = _Memory()
        if cfg.data_dir is not None:
            _prepare_dir(cfg.data_dir)
            memory = _Memory.load(cfg.data_dir)
            if memory.voters:
                peers = list(memory.voters)
            files = {"journal_file": str(cfg.data_dir / JOURNAL_FILE),
                     "dump_file": str(cfg.data_dir / DUMP_FILE)}
        peers = [parse_raft_address(p) for p in peers if p != self.address]
        # `join` protects a node until it first hears a leader; after that it
        # is a member like any other (else a full restart of a cluster whose
        # voters all joined would wait for a leader forever).
        hold_elections = cfg.join and not memory.heard_leader
        keyring = cfg.keyring
        assert keyring is not None, "ConsensusConfig.check() refuses a node without a key"
        self._token = trio.lowlevel.current_trio_token()
        self._stopped = False
        try:
            self._raft = RaftNode(
                self_address=self.address, peers=peers, timing=cfg.timing, keyring=keyring,
                epoch=cfg.epoch, source_ip=cfg.source_ip, on_dropped=self._count_drop,
                on_applied=lambda s: self._post(self._set_state, s),
                on_status=lambda s: self._post(self._set_status, s),
                on_leadership=lambda t: self._post(self._led, t),
                on_storage_problem=lambda p: self._post(self._set_journal_problem, p),
                hold_elections=hold_elections, **files)
        except OSError as exc:  # a new journal on a full disk: the caller retries later
            raise StorageError(f"raft: cannot create the journal in {cfg.data_dir}: "
                               f"{describe_disk_error(exc)}") from None
        self._set_state(self._raft.initial_state)
        try:
            await self._wait_bound()
            log.info("raft %s started (%s), peers %s, data %s", self.address or "learner",
                     "voter" if self.address else "read-only", ", ".join(peers) or "none",
                     cfg.data_dir or "in memory")
            task_status.started()
            await self._remember_membership_forever(memory)
        finally:
            raft, self._raft = self._raft, None
            raft.destroy()
            with trio.CancelScope(shield=True):
                while raft.alive():
                    await trio.sleep(STOP_POLL)
            raft.release()
            self._status = STOPPED
            self._stopped = True
            self._wake()
            log.info("raft %s stopped", self.address or "learner")

    def _count_drop(self, reason: str) -> None:
        self.dropped[reason] += 1

    async def _wait_bound(self) -> None:
        with trio.move_on_after(BIND_TIMEOUT):
            await self.wait_status(lambda s: s.bound)
            return
        if self._journal_problem is not None:  # the tick thread waits for the disk
            raise StorageError(f"raft: cannot start: {self._journal_problem}")
        raise ConsensusError(f"raft: could not listen on {self.address} "
                             f"within {BIND_TIMEOUT:.0f} s (address in use?)")

    async def _remember_membership_forever(self, memory: _Memory) -> None:
        """Keep the voters this node last knew, and whether it ever heard a
        leader, in the data directory: a restart then contacts the current
        cluster even if its configured peers are stale."""
        while True:
            status = self._status
            now = _Memory(tuple(sorted(status.voters)),
                          memory.heard_leader or status.leader is not None)
            if status.voters and now != memory and self.config.data_dir is not None:
                try:
                    await trio.to_thread.run_sync(now.store, self.config.data_dir)
                except OSError as exc:  # retried at the next status change
                    self._failed_voters_file(exc)
                else:
                    memory = now
                    self._failed_voters_file(None)
            await self._wait_status_change(status)

    def _failed_voters_file(self, exc: OSError | None) -> None:
        problem = None if exc is None else (
            f"{describe_disk_error(exc)}: cannot save the Raft voters ({VOTERS_FILE})")
        if problem != self._voters_file_problem:
            if problem is None:
                log.warning("raft: %s saved again", VOTERS_FILE)
            else:
                log.error("raft: %s; retried at the next change", problem)
            self._voters_file_problem = problem

    async def _wait_status_change(self, status: RaftStatus) -> None:
        await self.wait_status(lambda s: s is not status)

    # ------------------------------------------------------------ callbacks (trio thread)

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        """From the Raft thread: run ``fn(*args)`` in trio, in order."""
        assert self._token is not None
        # RunFinishedError: trio is gone and the Raft thread is about to be destroyed.
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(fn, *args)

    def _set_state(self, state: DesiredState) -> None:
        self._state = state
        self._wake()

    def _set_status(self, status: RaftStatus) -> None:
        if self._raft is None:
            return  # posted just before the Raft thread stopped: it is STOPPED now
        old, self._status = self._status, status
        if status.leader != old.leader:
            log.info("raft leader is now %s (term %d)", status.leader, status.term)
        if status.voters != old.voters and old.voters:
            log.info("raft voters now %s", ", ".join(sorted(status.voters)))
        self._wake()

    def _set_journal_problem(self, problem: str | None) -> None:
        self._journal_problem = problem
        self._wake()

    def _led(self, term: int) -> None:
        self.leadership_history.append(term)
        log.info("raft: this node became leader for term %d", term)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # ------------------------------------------------------------ reads

    @property
    def running(self) -> bool:
        return self._raft is not None

    @property
    def storage_problems(self) -> list[str]:
        """What this node cannot write to its data directory right now (a
        full disk, an I/O error); empty when all is well. While the journal
        cannot be written the node sends nothing and writes fail fast with
        `StorageError`; it recovers by itself when the write succeeds."""
        return [p for p in (self._journal_problem, self._voters_file_problem) if p]

    @property
    def state(self) -> DesiredState:
        """The latest committed state this node applied (shared: never mutate)."""
        return self._state

    @property
    def status(self) -> RaftStatus:
        """This node's latest view of the cluster (a belief, see module doc)."""
        return self._status

    @property
    def is_leader(self) -> bool:
        return self._status.is_leader

    @property
    def leader(self) -> str | None:
        """``ip:port`` of the leader this node last heard from, or None."""
        return self._status.leader

    @property
    def term(self) -> int:
        return self._status.term

    @property
    def voters(self) -> frozenset[str]:
        """The voters of the configuration this node currently uses."""
        return self._status.voters

    async def watch(self) -> AsyncIterator[DesiredState]:
        """Yield the current committed state, then every newer one; ends when
        the node stops. A slow consumer skips intermediate states (each state
        is complete), so it never falls behind; ``revision`` tells how many
        it skipped."""
        last = -1
        while not self._stopped:
            state = self._state
            if state.revision != last:
                last = state.revision
                yield state
            else:
                await self._changed.wait()

    async def wait_state(self, predicate: Callable[[DesiredState], object], *,
                         timeout: float = math.inf) -> DesiredState:
        """Wait until the committed state satisfies `predicate`; TooSlowError
        after `timeout` s; NotRunningError if the node stops meanwhile."""
        return await self._wait(lambda: self._state, predicate, timeout)

    async def wait_status(self, predicate: Callable[[RaftStatus], object], *,
                          timeout: float = math.inf) -> RaftStatus:
        """Wait until the status satisfies `predicate`; TooSlowError after
        `timeout` s; NotRunningError if the node stops meanwhile."""
        return await self._wait(lambda: self._status, predicate, timeout)

    async def wait_leader(self, *, timeout: float = math.inf) -> str:
        """Wait until a leader is known and return its address."""
        status = await self.wait_status(lambda s: s.leader is not None, timeout=timeout)
        assert status.leader is not None
        return status.leader

    async def _wait(self, get: Callable[[], T], predicate: Callable[[T], object],
                    timeout: float) -> T:
        with trio.fail_after(timeout):
            while not predicate(value := get()):
                if self._stopped:
                    raise NotRunningError("the consensus node stopped")
                await self._changed.wait()
            return value

    def compact_log(self) -> None:
        """Ask for a log compaction now: the state goes to the full dump in
        the data directory and the journal is cut (pysyncobj also compacts
        by itself every 5000 entries or 300 s). A node that lags behind the
        cut is then sent the dump instead of the entries."""
        if self._raft is None:
            raise NotRunningError("compact_log: the consensus node is not running")
        self._raft.compact_log()

    # ------------------------------------------------------------ writes

    async def put_service(self, name: str, spec: Mapping[str, Any], *,
                          timeout: float | None = None) -> Outcome:
        """Create or replace a desired service; returns once committed.
        ValueError for a bad name or a spec that is not JSON-shaped."""
        spec = _json_copy(spec)
        validate_put_service(name, spec)
        outcome: Outcome = await self._command("put_service", f"put_service {name!r}", timeout,
                                               lambda r, cb: r.put_service(name, spec, cb))
        return outcome

    async def delete_service(self, name: str, *, timeout: float | None = None) -> Outcome:
        """Delete a desired service; returns once committed. ``applied`` is
        False (reason ``"not-found"``) if it did not exist."""
        outcome: Outcome = await self._command(
            "delete_service", f"delete_service {name!r}", timeout,
            lambda r, cb: r.delete_service(name, cb))
        return outcome

    async def set_plan(self, plan: Mapping[str, Any], expected_epoch: int, *,
                       timeout: float | None = None) -> Outcome:
        """Replace the plan if the committed epoch is `expected_epoch`; the
        epoch then becomes ``expected_epoch + 1`` (in the returned Outcome).
        StalePlanError if a newer plan was committed first."""
        plan = _json_copy(plan)
        validate_set_plan(plan, expected_epoch)
        outcome: Outcome = await self._command(
            "set_plan", f"set_plan at epoch {expected_epoch}", timeout,
            lambda r, cb: r.set_plan(plan, expected_epoch, cb))
        if outcome.reason == "stale-epoch":
            raise StalePlanError(expected_epoch, outcome.plan_epoch)
        return outcome

    async def init_meta(self, key: str, value: Any, *, timeout: float | None = None
                        ) -> Outcome:
        """Set a mesh-wide setting once; returns once committed. ``applied`` is
        False (reason ``"exists"``) if it was already set."""
        value = _json_copy(value)
        outcome: Outcome = await self._command("init_meta", f"init_meta {key!r}", timeout,
                                               lambda r, cb: r.init_meta(key, value, cb))
        return outcome

    async def patch_service(self, name: str, key: str, value: Any, *,
                            timeout: float | None = None) -> Outcome:
        """Set (None: remove) one patchable key (`PATCHABLE_KEYS`: ``mode``,
        ``state``) of an existing service; returns once committed. ``applied``
        is False with reason ``"not-found"`` if the service does not exist.
        ValueError for a key that cannot be patched or a non-JSON value."""
        value = _json_copy({"v": value})["v"]
        if key not in PATCHABLE_KEYS:
            raise ValueError(f"cannot patch {key!r}; patchable: {sorted(PATCHABLE_KEYS)}")
        if not is_json(value):
            raise ValueError("a patched value must be JSON-shaped")
        outcome: Outcome = await self._command(
            "patch_service", f"patch_service {name!r} {key}", timeout,
            lambda r, cb: r.patch_service(name, key, value, cb))
        return outcome

    async def put_registry(self, key: str, entry: Mapping[str, Any] | None, *,
                           timeout: float | None = None) -> Outcome:
        """Add or replace (``entry`` None: remove) registry entry ``key``
        (``"name@version"``); returns once committed."""
        value = None if entry is None else _json_copy(entry)
        if value is not None and not is_json(value):
            raise ValueError("a registry entry must be a JSON-shaped dict")
        outcome: Outcome = await self._command(
            "put_registry", f"put_registry {key!r}", timeout,
            lambda r, cb: r.put_registry(key, value, cb))
        return outcome

    async def barrier(self, *, timeout: float | None = None) -> None:
        """Commit a command that changes nothing; once it returns, every entry
        that was in the leader's log before it is committed too (Raft commits
        a log prefix), membership changes included."""
        await self._command("patch_service", "barrier", timeout,
                            lambda r, cb: r.patch_service(BARRIER_SERVICE, "mode", None, cb))

    async def add_voter(self, address: str, *, timeout: float | None = None) -> None:
        """Make `address` (``ip[:port]``) a voter; returns once the change is
        committed. Start that node first (see module doc). No-op if it is one."""
        addr = parse_raft_address(address)
        async with self._membership:
            if addr not in self._status.voters:
                await self._membership_change(f"add voter {addr}", timeout,
                                              lambda r, cb: r.add_voter(addr, cb))

    async def remove_voter(self, address: str, *, timeout: float | None = None) -> None:
        """Remove the voter `address`; returns once committed. No-op if it is
        not a voter. Call it on another voter than `address`: the leader drops
        the removed node before telling it anything, so that node would never
        learn that its own request committed. WriteRejected if `address` is
        this node, or the leader (which cannot remove itself: call
        `transfer_leadership` on it first)."""
        addr = parse_raft_address(address)
        async with self._membership:
            if addr not in self._status.voters:
                return
            if addr == self.address:
                raise WriteRejected(f"remove voter {addr}: a node cannot remove itself "
                                    "(it would never hear the commit); ask another voter")
            if addr == self._status.leader:
                raise WriteRejected(f"remove voter {addr}: it is the leader, which cannot "
                                    "remove itself; call transfer_leadership() on it first")
            await self._membership_change(f"remove voter {addr}", timeout,
                                          lambda r, cb: r.remove_voter(addr, cb))

    async def transfer_leadership(self, to: str | None = None, *,
                                  timeout: float | None = None) -> str:
        """On the leader: hand leadership to `to` (None: the most caught-up
        follower) and wait until another node leads; returns the new leader.
        NotLeaderError if this node is not the leader; CommitTimeout if no
        other node took over in time."""
        target = None if to is None else parse_raft_address(to)
        with self._deadline("transfer leadership", timeout):
            while True:
                if not self.is_leader:
                    raise NotLeaderError(f"transfer leadership: {self.address} is not the "
                                         f"leader (leader: {self.leader})")
                term = self.term
                try:
                    await self._command(None, "transfer leadership", math.inf,
                                        lambda r, cb: r.transfer_leadership(target, cb))
                except WriteRejected:  # the target is not caught up yet: one heartbeat
                    await trio.sleep(DENIED_RETRY)
                    continue
                leader = await self._wait_leader_after(term)
                if leader != self.address:
                    return leader
                # this node won the forced election itself: ask again

    async def _wait_leader_after(self, term: int) -> str:
        status = await self.wait_status(lambda s: s.term > term and s.leader is not None)
        assert status.leader is not None
        return status.leader

    # ------------------------------------------------------------ plumbing

    async def _membership_change(self, what: str, timeout: float | None,
                                 submit: Callable[[RaftNode, CommandCallback], None]) -> None:
        deadline = trio.current_time() + (self.config.commit_timeout if timeout is None
                                          else timeout)
        with self._deadline(what, deadline - trio.current_time()):
            while True:
                try:
                    await self._command(None, what, math.inf, submit)
                    return
                except WriteRejected:
                    if trio.current_time() + DENIED_RETRY >= deadline:
                        raise
                    await trio.sleep(DENIED_RETRY)
                except NoLeaderError:
                    await self.wait_leader()

    @contextlib.contextmanager
    def _deadline(self, what: str, timeout: float | None) -> Iterator[None]:
        """Bound the block by `timeout` (default: commit_timeout); CommitTimeout
        when it runs out."""
        seconds = self.config.commit_timeout if timeout is None else timeout
        try:
            with trio.fail_after(max(seconds, 0.0)):
                yield
        except trio.TooSlowError:
            raise CommitTimeout(f"{what}: not done within {seconds:.2f} s; "
                                "the outcome is unknown") from None

    async def _command(self, kind: str | None, what: str, timeout: float | None,
                       submit: Callable[[RaftNode, CommandCallback], None]) -> Any:
        """Submit one command of `kind` (`nanomesh.versions.COMMAND_KINDS`;
        None: pysyncobj's own, a membership change or a leadership transfer)
        and wait for its outcome (see errors). A kind that some member cannot
        apply yet is refused before it reaches the log (VersionGateError)."""
        if kind is not None and (
                why := may_commit(kind, self.config.mesh_raft_version())) is not None:
            raise VersionGateError(f"{what}: refused: {why}")
        raft = self._raft
        if raft is None:
            raise NotRunningError(f"{what}: the consensus node is not running")
        if self._journal_problem is not None:
            raise StorageError(f"{what}: refused, this peer cannot persist it: "
                               f"{self._journal_problem}")
        if self._status.leader is None:
            raise failure_error(Failure.MISSING_LEADER, what)
        done = trio.Event()
        result: list[tuple[Any, int]] = []

        def finish(res: Any, code: int) -> None:
            result.append((res, code))
            done.set()

        submit(raft, lambda res, code: self._post(finish, res, code))
        seconds = self.config.commit_timeout if timeout is None else timeout
        with trio.move_on_after(seconds):
            await done.wait()
        if not result:
            raise CommitTimeout(f"{what}: not committed within {seconds:.2f} s; "
                                "the outcome is unknown")
        res, code = result[0]
        if code != Failure.SUCCESS:
            raise failure_error(code, what)
        return res


@asynccontextmanager
async def open_consensus(config: ConsensusConfig) -> AsyncIterator[ConsensusNode]:
    """Run a `ConsensusNode` for the duration of the block (main thread)."""
    node = ConsensusNode(config)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        try:
            yield node
        finally:
            nursery.cancel_scope.cancel()


def _json_copy(value: Mapping[str, Any]) -> Any:
    """A detached, JSON-normalized copy (tuples become lists); ValueError for
    what JSON cannot hold (NaN, non-str keys, other types)."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except TypeError as exc:
        raise ValueError(f"not JSON-shaped: {exc}") from None


def _prepare_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)  # the journal holds the cluster's desired state


@dataclass(frozen=True)
class _Memory:
    """What a node remembers about its cluster across restarts (voters.json)."""

    voters: tuple[str, ...] = ()
    heard_leader: bool = False

    @classmethod
    def load(cls, data_dir: Path) -> _Memory:
        try:
            doc = json.loads((data_dir / VOTERS_FILE).read_text())
            voters, heard = doc["voters"], doc.get("heard_leader", False)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return cls()
        if not (isinstance(voters, list) and all(isinstance(v, str) for v in voters)):
            return cls()
        return cls(tuple(voters), heard is True)

    def store(self, data_dir: Path) -> None:
        write_durably(str(data_dir / VOTERS_FILE), (json.dumps(
            {"voters": list(self.voters), "heard_leader": self.heard_leader}) + "\n").encode())
