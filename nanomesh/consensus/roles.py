"""The trio shell that owns this peer's Raft node and its role.

Every peer runs one `RaftRoleManager`. It runs at most one `ConsensusNode` at a
time, in one of these roles (advertised in the gossiped profile under
``profile["raft"]``, see `raft_profile_section`):

- ``none``: no node yet (waiting to learn the voters from gossip) or gone;
- ``learner``: a read-only replica (``address=None``, peers = the voters): it
  receives the committed state and forwards writes, never votes;
- ``joining``: a voter node started with ``join=True`` and a fresh data
  directory, waiting for the leader to add it;
- ``voter``: a member of the configuration.

Transitions (`TRANSITIONS`; anything else raises and changes nothing)::

    none     -> learner (voters known) | voter (bootstrap, or resume) | joining (resume, asked)
    learner  -> joining (asked by the leader) | learner (new voter list) | none
    joining  -> voter (heard the leader: it was added) | learner (not added in time)
                | joining (asked again, other voters) | none
    voter    -> learner (removed: orphaned) | joining (orphan asked back) | none (hand over)

**Promotion protocol** (no replicated operation; two RPCs the daemon carries
over the peer API, authenticated with the mesh token):

1. The leader — only while pysyncobj says it leads *with a quorum* — runs
   `nanomesh.consensus.voters.decide` every `RoleConfig.period` and gets
   ``Promote(name, addr)``.
2. It calls ``ask_promote(name, voters)`` with its current configuration.
   The daemon POSTs to that peer, whose manager runs `become_joining_voter`:
   it stops its learner and starts a voter node with ``join=True``, ``peers``
   = those voters and a fresh data directory (a new generation), records
   "joining" durably, and answers True once its Raft port listens (1 -> 2
   voters needs the new node running before it is added).
3. The leader calls ``add_voter(addr)``; it returns once committed.
4. The new voter hears the leader (the leader only talks to members), which is
   how it knows it was added: it records "voter" and says so in gossip.

Crash safety. The leader dying at any step leaves a node in ``joining``: if
the next leader picks it again, `become_joining_voter` is idempotent (or
restarts with the new voter list); if nobody adds it within
`RoleConfig.join_timeout` it returns to ``learner`` — unless the voters
reported in gossip include it (an add that did commit, e.g. 1 -> 2 voters
waiting for it), then it keeps waiting. A failed ask or add puts the peer on a
back-off (`RoleConfig.promote_backoff`) so the policy tries the next one.
Roles survive restarts (``role.json`` in the data directory): a voter resumes
from its journal (never a second bootstrap), a joining node resumes joining.

**Removal.** The leader removes failed voters itself (`decide`). A removed
node is never told (pysyncobj drops it first); it hears no leader any more,
and once gossip's voter list (`voters_from_profiles`) has excluded it for
`RoleConfig.orphan_timeout` it restarts as a learner with a fresh data
directory. A learner that finds its own address in the configuration (a
"ghost": an add committed after it gave up joining, or its data was wiped)
asks to be removed the same way a leaving voter does.

**Graceful leave** (`hand_over`): a sole voter first promotes a successor if
it can; a leader transfers leadership; then the voter asks another peer to
remove it (``ask_remove``: pysyncobj would forward the change to the leader,
but the removed node would never hear the commit, so `ConsensusNode` refuses
to remove itself); then it stops. If the ask fails, the leader removes it
anyway once gossip says it LEFT.

**Durability of a stop** (what etcd and Consul servers keep too): a leaving
voter must never persist a state in which the cluster it belonged to cannot
re-form. It records itself as a learner only once its removal is known to be
committed, i.e. once the remaining voters form a configuration that does not
need it. The last voter (no successor could be promoted), a voter whose
removal cannot commit (no quorum left), and one whose hand-over was cut short
keep their stored role and journal, so once a majority of the last
configuration is back it elects a leader again, whatever the order of stops
(SIGTERM or SIGKILL) and restarts. A voter whose removal did commit unseen
finds itself orphaned after a restart and becomes a learner (removal above).
"""

from __future__ import annotations

import contextlib
import enum
import functools
import json
import logging
import math
import operator
import os
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from nanomesh.consensus.config import (
    DEFAULT_RAFT_PORT,
    ConsensusConfig,
    RaftTiming,
    format_address,
)
from nanomesh.consensus.errors import ConsensusError
from nanomesh.consensus.node import ConsensusNode
from nanomesh.consensus.recovery import (
    JournalReader,
    RecoveryError,
    RecoveryRequest,
    acquire_lock,
)
from nanomesh.consensus.state import DesiredState
from nanomesh.consensus.status import LeaderWatch
from nanomesh.consensus.voters import (
    PeerInfo,
    Promote,
    Remove,
    VoterPolicy,
    candidate_key,
    decide,
    with_absent_voters,
)
from nanomesh.disk import describe_disk_error
from nanomesh.errors import ConfigError
from nanomesh.wire import Keyring

log = logging.getLogger("nanomesh.consensus.roles")

ROLE_FILE = "role.json"
GENERATION_PREFIX = "raft-"
"""Voter data directories are ``<data_dir>/raft-<generation>``; every
(re)join starts a new generation, because a node re-added under the same
address must come back with an empty log and term."""

LOCK_WAIT = 10.0
"""Seconds a starting manager waits for the data directory's lock (held by a
previous manager of this process that is still stopping)."""
ASK_REMOVE_RETRY = 0.2
"""Seconds between two asks for this voter's removal (a few heartbeats: the
time for a new leader to be known by everyone)."""

AskPromote = Callable[[str, frozenset[str]], Awaitable[bool]]
"""``ask_promote(peer_name, voters)``: make that peer run
`RaftRoleManager.become_joining_voter(voters)`; True once it has."""
AskRemove = Callable[[str], Awaitable[bool]]
"""``ask_remove(raft_addr)``: make another peer (best: the leader) run
`RaftRoleManager.handle_remove(raft_addr)`; True once committed."""


class RaftRole(enum.Enum):
    NONE = "none"
    LEARNER = "learner"
    JOINING = "joining"
    VOTER = "voter"


TRANSITIONS: Mapping[RaftRole, frozenset[RaftRole]] = {
    RaftRole.NONE: frozenset({RaftRole.LEARNER, RaftRole.VOTER, RaftRole.JOINING}),
    RaftRole.LEARNER: frozenset({RaftRole.JOINING, RaftRole.LEARNER, RaftRole.NONE}),
    RaftRole.JOINING: frozenset({RaftRole.VOTER, RaftRole.LEARNER, RaftRole.JOINING,
                                 RaftRole.NONE}),
    RaftRole.VOTER: frozenset({RaftRole.LEARNER, RaftRole.JOINING, RaftRole.NONE}),
}


class IllegalTransition(RuntimeError):
    """A role change that `TRANSITIONS` does not allow (a bug)."""


@dataclass(frozen=True)
class RoleConfig:
    """How the role manager paces itself. Seconds unless said otherwise."""

    target_voters: int = 5
    """Voters wanted (rounded down to odd by `nanomesh.consensus.voters.voter_goal`):
    5 tolerates 2 failures; more voters make every commit wait for more acks."""
    policy: VoterPolicy = field(default_factory=VoterPolicy)
    """Whom to promote and when a dead voter counts as gone (its
    ``stabilization`` defaults to 10 s)."""
    period: float = 1.0
    """Between two runs of the voter policy on the leader and of this peer's
    own role checks. One membership change takes a few heartbeats; 1 s keeps
    the idle cost nil and the reaction well below the stabilization time."""
    join_timeout: float = 15.0
    """A joining node that was not added within this returns to learner (the
    leader that asked died, or chose another). Far above one add (< 1 s)."""
    orphan_timeout: float = 10.0
    """A voter that has heard no leader while gossip's voter list excluded it
    for this long was removed and restarts as a learner; a learner that has
    seen its own address among the voters this long asks to be removed.
    Long enough to outlast elections and gossip lag."""
    bootstrap_grace: float = 3.0
    """A founder with no stored role waits this long for gossip to reveal an
    existing cluster before it bootstraps a new one (a restarted founder
    whose disk was wiped must join, not split the mesh)."""
    promote_backoff: float = 30.0
    """A peer whose promotion failed is not tried again for this long."""
    call_timeout: float = 10.0
    """Bound on one ask_promote / ask_remove / membership change / transfer."""
    raft_port: int = DEFAULT_RAFT_PORT
    """TCP port of the Raft node, on the peer's gossip IP."""

    def problems(self) -> list[str]:
        out = self.policy.problems()
        if self.target_voters < 1:
            out.append("target_voters must be >= 1")
        for name in ("period", "join_timeout", "orphan_timeout", "promote_backoff",
                     "call_timeout"):
            if not getattr(self, name) > 0:
                out.append(f"{name} must be > 0")
        if not self.bootstrap_grace >= 0:
            out.append("bootstrap_grace must be >= 0")
        return out

    def check(self) -> None:
        if problems := self.problems():
            raise ConfigError("raft roles: " + "; ".join(problems))


@dataclass(frozen=True)
class _Stored:
    """This peer's role across restarts (``role.json``)."""

    role: RaftRole = RaftRole.NONE
    generation: int = 0
    peers: tuple[str, ...] = ()
    epoch: int = 0
    """The control plane's incarnation: 0 until an operator's recovery
    (`_recover`) starts a new one; see `RaftRoleManager.epoch`."""

    @classmethod
    def load(cls, data_dir: Path) -> _Stored:
        try:
            doc = json.loads((data_dir / ROLE_FILE).read_text())
            role, gen, peers = RaftRole(doc["role"]), doc["generation"], doc["peers"]
            epoch = doc.get("epoch", 0)  # absent in files written before recovery existed
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return cls()
        if not (isinstance(gen, int) and isinstance(peers, list) and isinstance(epoch, int)
                and all(isinstance(p, str) for p in peers)):
            return cls()
        return cls(role, gen, tuple(peers), epoch)

    def store(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = data_dir / (ROLE_FILE + ".tmp")
        tmp.write_text(json.dumps({"role": self.role.value, "generation": self.generation,
                                   "peers": list(self.peers), "epoch": self.epoch}) + "\n")
        tmp.replace(data_dir / ROLE_FILE)


@dataclass
class _Running:
    node: ConsensusNode
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)


class RaftRoleManager:
    """Owns this peer's `ConsensusNode` and moves it between roles (module doc).

    `address_ip`: this peer's gossip IP (the Raft node listens there on
    `RoleConfig.raft_port`). `data_dir`: this manager's own directory.
    `keyring`: the cluster keys (read live: a rotation applies at once).
    `founder`: this peer was started without ``--join`` and may bootstrap the
    cluster. `voters_hint()`: the voters as
    gossip reports them (the daemon computes it with `voters_from_profiles`).
    `view()`: the membership view for the voter policy (leader only; without
    it this peer never changes the configuration). `ask_promote`/`ask_remove`:
    the two peer-API calls (module doc). `clock`: the clock of the view's
    timestamps.

    Run it with ``await nursery.start(manager.run)`` on trio's main thread.
    `node` changes with the role: re-read it (or `wait_ready`) after a change.
    """

    def __init__(self, address_ip: str, data_dir: Path, keyring: Keyring,
                 timing: RaftTiming, founder: bool, voters_hint: Callable[[], frozenset[str]],
                 *, config: RoleConfig | None = None,
                 view: Callable[[], Sequence[PeerInfo]] | None = None,
                 ask_promote: AskPromote | None = None, ask_remove: AskRemove | None = None,
                 epoch_hint: Callable[[], int] = lambda: 0,
                 clock: Callable[[], float] = trio.current_time) -> None:
        self.config = config or RoleConfig()
        self.config.check()
        timing.check()
        self.address_ip = address_ip
        self.raft_addr = format_address(address_ip, self.config.raft_port)
        self.data_dir = data_dir
        self._keyring = keyring
        self._timing = timing
        self._founder = founder
        self._voters_hint = voters_hint
        self._epoch_hint = epoch_hint
        self._view = view
        self._ask_promote = ask_promote
        self._ask_remove = ask_remove
        self._clock = clock
        self._role = RaftRole.NONE
        self._stored = _Stored()
        self._running: _Running | None = None
        self._nursery: trio.Nursery | None = None
        self._lock = trio.Lock()
        self._changed = trio.Event()
        self._leaving = False
        self._role_since = 0.0
        self._no_leader_since: float | None = None
        self._ghost_since: float | None = None
        self._absent_since: dict[str, float] = {}
        self._avoid: dict[str, float] = {}
        self._restoring = False
        self.leader_watch = LeaderWatch()
        """When this peer last had a leader (wall clock), across node restarts."""
        self.leader_watch.observe(None, time.time())

    # ------------------------------------------------------------ reads

    @property
    def role(self) -> RaftRole:
        return self._role

    @property
    def epoch(self) -> int:
        """This peer's control-plane epoch ("cluster_epoch" in gossip and
        ``/v1/status``): 0, plus one per operator recovery. Peers of an older
        epoch follow the newest one as learners."""
        return self._stored.epoch

    @property
    def restoring(self) -> bool:
        """An operator's recovery is writing the old state back: the state is
        incomplete, so nobody may act on it (placement, reconciliation)."""
        return self._restoring

    @property
    def node(self) -> ConsensusNode | None:
        """The running node (None in role ``none``, and while a recovery
        writes the old state back: nobody may read a partial state)."""
        return None if self._running is None or self._restoring else self._running.node

    def profile_section(self) -> dict[str, Any]:
        """What this peer gossips under ``profile["raft"]``: ``role``, ``addr``
        (its Raft address, even as a learner, so the policy can name it),
        and its node's belief: ``leader``, ``term``, ``voters`` (sorted)."""
        node = self.node
        status = None if node is None else node.status
        return {
            "role": self._role.value,
            "addr": self.raft_addr,
            "leader": None if status is None else status.leader,
            "term": 0 if status is None else status.term,
            "voters": [] if status is None else sorted(status.voters),
            "cluster_epoch": self._stored.epoch,
        }

    async def wait_profile_change(self, last: Mapping[str, Any]) -> dict[str, Any]:
        """Wait until `profile_section()` differs from `last` and return it:
        the daemon re-gossips its profile then (a role, leader, term or
        voter change; rare)."""
        while (section := self.profile_section()) == last:
            await self._changed.wait()
        return section

    async def wait_ready(self, *, timeout: float = math.inf) -> ConsensusNode:
        """Wait until this peer is a learner or a voter that has heard a
        leader (it holds the committed state) and return its node."""
        with trio.fail_after(timeout):
            while True:
                node = self.node
                if (node is not None and self._role in (RaftRole.LEARNER, RaftRole.VOTER)
                        and node.leader is not None and not self._restoring):
                    return node
                await self._changed.wait()

    # ------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Start in the stored role (or bootstrap, or wait for the voters),
        report started, then check the role every `RoleConfig.period` until
        cancelled; the node stops with it."""
        async with trio.open_nursery() as nursery, self._data_dir_lock():
            self._nursery = nursery
            try:
                self._stored = await trio.to_thread.run_sync(_Stored.load, self.data_dir)
                async with self._lock:
                    request = await trio.to_thread.run_sync(RecoveryRequest.load,
                                                            self.data_dir)
                    if request is not None:
                        await self._recover(request)
                    else:
                        await self._start_in_stored_role()
                task_status.started()
                while True:
                    await trio.sleep(self.config.period)
                    async with self._lock:
                        if not self._leaving:
                            await self._step()
            finally:
                nursery.cancel_scope.cancel()
                self._running = None
                self._role = RaftRole.NONE
                self._nursery = None
                self._wake()

    @contextlib.asynccontextmanager
    async def _data_dir_lock(self) -> AsyncIterator[None]:
        """Hold the data directory's lock (`nanomesh.consensus.recovery`
        refuses to touch a running peer's journal). Retried briefly: a
        manager restarted in the same process waits for the old one's exit."""
        deadline = trio.current_time() + LOCK_WAIT
        while True:
            try:
                fd = acquire_lock(self.data_dir)
                break
            except RecoveryError:
                if trio.current_time() >= deadline:
                    raise
                await trio.sleep(0.1)
        try:
            yield
        finally:
            os.close(fd)

    async def _recover(self, request: RecoveryRequest) -> None:
        """Apply an operator's recovery request (`nanomesh.consensus.recovery`):
        a new one-voter cluster in a new generation, holding the committed
        state of generation ``request.generation``. role.json and the request
        change only once it is all committed, so a crash midway redoes it."""
        source = self.data_dir / f"{GENERATION_PREFIX}{request.generation}"
        log.warning("raft role: RECOVERY requested by the operator: rebuilding the control "
                    "plane from %s as its only voter", source)
        self._restoring = True
        try:
            state = await _read_state(source)
            generation = await self._next_generation(keep=request.generation)
            epoch = max(self._stored.epoch, self._epoch_hint()) + 1
            config = ConsensusConfig(
                address=(self.address_ip, self.config.raft_port), peers=(),
                data_dir=self.data_dir / f"{GENERATION_PREFIX}{generation}",
                keyring=self._keyring, epoch=epoch, join=False, timing=self._timing)
            if not await self._start(config, RaftRole.VOTER):
                raise RecoveryError("the recovered voter could not start (see above)")
            node = self._node_or_fail()
            await node.wait_status(lambda s: s.is_leader, timeout=self.config.call_timeout)
            await _restore(node, state, self.config.call_timeout)
            await self._store(RaftRole.VOTER, generation, (), epoch)
            await trio.to_thread.run_sync(RecoveryRequest.done, self.data_dir)
        finally:
            self._restoring = False
            self._wake()
        log.warning("raft role: recovered: %d services, plan epoch %d, %d registry entries "
                    "restored; this peer is the only voter (generation %d); the others "
                    "rejoin and are promoted as usual", len(state.services),
                    node.state.plan_epoch, len(state.registry), generation)

    async def _start_in_stored_role(self) -> None:
        stored = self._stored
        if stored.role is RaftRole.VOTER:
            log.info("raft role: resuming as voter (generation %d)", stored.generation)
            await self._start_voter(stored.generation, stored.peers, RaftRole.VOTER)
        elif stored.role is RaftRole.JOINING:
            log.info("raft role: resuming as joining voter (generation %d)", stored.generation)
            await self._start_voter(stored.generation, stored.peers, RaftRole.JOINING)
        elif self._founder and stored.role is RaftRole.NONE:
            with trio.move_on_after(self.config.bootstrap_grace):
                while not self._voters_hint():
                    await trio.sleep(min(0.1, self.config.period))
            if self._voters_hint():
                log.info("raft role: founder, but gossip shows a cluster: joining it")
                await self._start_learner(self._voters_hint())
            else:
                log.info("raft role: founder: bootstrapping a one-voter cluster")
                await self._start_voter(stored.generation + 1, (), RaftRole.VOTER)
        elif hint := self._voters_hint():
            await self._start_learner(hint)

    # ------------------------------------------------------------ the periodic step

    async def _step(self) -> None:
        now = self._clock()
        if self._role is not RaftRole.NONE and self._epoch_hint() > self._stored.epoch:
            log.warning("raft role: an operator recovered the control plane (epoch %d; this "
                        "peer's is %d): following the recovered one as a learner",
                        self._epoch_hint(), self._stored.epoch)
            await self._start_learner(self._voters_hint())
            return
        match self._role:
            case RaftRole.NONE:
                if hint := self._voters_hint():
                    await self._start_learner(hint)
            case RaftRole.LEARNER:
                await self._check_learner(now)
            case RaftRole.JOINING:
                await self._check_joining(now)
            case RaftRole.VOTER:
                await self._check_voter(now)

    async def _check_learner(self, now: float) -> None:
        node = self._node_or_fail()
        hint = self._voters_hint()
        if self._no_leader_for(node, now) >= self.config.orphan_timeout and hint \
                and hint != node.voters:
            log.info("raft role: learner hears no leader; reconnecting to %s", sorted(hint))
            await self._start_learner(hint)
            return
        if self.raft_addr not in node.voters:
            self._ghost_since = None
            return
        if self._ghost_since is None:
            self._ghost_since = now
        elif now - self._ghost_since >= self.config.orphan_timeout:
            self._ghost_since = now  # ask again at most once per timeout
            log.warning("raft role: %s is a voter in the configuration but runs as a "
                        "learner; asking for its removal", self.raft_addr)
            await self._call_ask_remove()

    async def _check_joining(self, now: float) -> None:
        node = self._node_or_fail()
        if node.leader is not None:
            log.info("raft role: added as a voter (leader %s)", node.leader)
            await self._set_role(RaftRole.VOTER)
            await self._store(RaftRole.VOTER, self._stored.generation, self._stored.peers)
        elif now - self._role_since >= self.config.join_timeout:
            hint = self._voters_hint()
            if self.raft_addr in hint:
                return  # the configuration has us: an add committed; wait for the leader
            log.info("raft role: not added within %.0f s; back to learner",
                     self.config.join_timeout)
            await self._start_learner(hint or frozenset(self._stored.peers))

    async def _check_voter(self, now: float) -> None:
        node = self._node_or_fail()
        status = node.status
        if status.is_leader and status.has_quorum and status.leader == self.raft_addr:
            self._no_leader_since = None
            await self._lead(node, now)
            return
        hint = self._voters_hint()
        if self._no_leader_for(node, now) >= self.config.orphan_timeout and hint \
                and self.raft_addr not in hint:
            log.warning("raft role: no leader for %.0f s and the voters (%s) exclude "
                        "%s: removed; restarting as a learner", self.config.orphan_timeout,
                        ", ".join(sorted(hint)), self.raft_addr)
            await self._start_learner(hint)

    def _no_leader_for(self, node: ConsensusNode, now: float) -> float:
        if node.leader is not None:
            self._no_leader_since = None
            return 0.0
        if self._no_leader_since is None:
            self._no_leader_since = now
        return now - self._no_leader_since

    # ------------------------------------------------------------ the leader's duty

    async def _lead(self, node: ConsensusNode, now: float) -> None:
        if self._view is None:
            return
        voters = node.voters
        self._avoid = {n: until for n, until in self._avoid.items() if until > now}
        view = list(self._view())
        known = {p.raft_addr for p in view}
        self._absent_since = {v: self._absent_since.get(v, now)
                              for v in voters if v not in known}
        view = with_absent_voters(view, voters, self._absent_since)
        view = [p for p in view if p.raft_addr in voters or (
            self._ask_promote is not None and self._avoid.get(p.name, -math.inf) <= now)]
        action = decide(view, voters, self.config.target_voters, now, self.config.policy,
                        leader=self.raft_addr)
        match action:
            case Promote(name=name, raft_addr=addr):
                await self._promote(node, name, addr, voters, now)
            case Remove(raft_addr=addr, reason=reason):
                log.info("raft voters: removing %s (%s)", addr, reason)
                try:
                    await node.remove_voter(addr, timeout=self.config.call_timeout)
                except ConsensusError as exc:
                    log.warning("raft voters: removing %s failed: %s", addr, exc)
            case None:
                pass

    async def _promote(self, node: ConsensusNode, name: str, addr: str,
                       voters: frozenset[str], now: float) -> bool:
        """Ask `name` to restart as a joining voter, then add it. False (and a
        back-off for that peer) if either step fails."""
        assert self._ask_promote is not None
        log.info("raft voters: promoting %s (%s)", name, addr)
        ok = False
        with trio.move_on_after(self.config.call_timeout):
            ok = await self._ask_promote(name, voters)
        if ok:
            try:
                await node.add_voter(addr, timeout=self.config.call_timeout)
                log.info("raft voters: %s added", addr)
                return True
            except ConsensusError as exc:
                log.warning("raft voters: adding %s failed: %s", addr, exc)
        else:
            log.warning("raft voters: %s did not accept the promotion", name)
        self._avoid[name] = now + self.config.promote_backoff
        return False

    # ------------------------------------------------------------ requests from peers

    async def become_joining_voter(self, voters: Iterable[str]) -> bool:
        """Called when the leader asks (``ask_promote``): restart as a joining
        voter with `voters` as peers and a fresh data directory; True once the
        Raft port listens. Idempotent for the same voters. False if this peer
        is a voter that hears a leader (asked by a deposed leader?), if
        `voters` names this peer (it would be a voter already), or if it is
        leaving or not running."""
        peers = tuple(sorted(set(voters)))
        if not peers or self.raft_addr in peers:
            return False
        async with self._lock:
            if self._leaving or self._nursery is None:
                return False
            node = self.node
            if self._role is RaftRole.JOINING and self._stored.peers == peers:
                return True
            if self._role is RaftRole.VOTER and node is not None and node.leader is not None:
                return False
            log.info("raft role: asked to become a voter; joining %s", ", ".join(peers))
            return await self._start_voter(await self._next_generation(), peers,
                                           RaftRole.JOINING,
                                           max(self._stored.epoch, self._epoch_hint()))

    async def handle_remove(self, raft_addr: str) -> bool:
        """Called when a peer asks (``ask_remove``): remove the voter
        `raft_addr` (any other peer can: pysyncobj forwards the change to the
        leader). True once committed, or if it is not a voter."""
        node = self.node
        if node is None or raft_addr == self.raft_addr:
            return False
        try:
            await node.remove_voter(raft_addr, timeout=self.config.call_timeout)
            # remove_voter is a no-op when the change is already in this node's
            # configuration (applied on append), possibly still uncommitted (an
            # earlier ask that timed out): the asker must not believe it is out
            # before it is, so wait for a later entry to commit.
            await node.barrier(timeout=self.config.call_timeout)
        except ConsensusError as exc:
            log.warning("raft voters: removing %s on request failed: %s", raft_addr, exc)
            return False
        log.info("raft voters: removed %s on its request", raft_addr)
        return True

    async def hand_over(self) -> None:
        """Leave gracefully (module doc): promote a successor if this is the
        only voter, transfer leadership if leading, ask to be removed, stop.

        What is stored decides whether the cluster can re-form: the stored
        role becomes learner ONLY once the removal of this voter is known to
        be committed. Otherwise (the last voter, no quorum left to commit the
        removal, the hand-over cut short) it stays what it was, so a restart
        resumes the membership the configuration still counts on; if the
        removal did commit unseen, the restarted node finds itself orphaned
        and becomes a learner (`_check_voter`)."""
        async with self._lock:
            self._leaving = True
            node = self.node
            removed = False
            if self._role in (RaftRole.VOTER, RaftRole.JOINING) and node is not None \
                    and node.leader is not None:
                if node.voters == {self.raft_addr} and node.is_leader:
                    await self._promote_successor(node)
                if node.voters - {self.raft_addr}:
                    if node.is_leader:
                        try:
                            new = await node.transfer_leadership(
                                timeout=self.config.call_timeout)
                            log.info("raft role: leadership handed to %s", new)
                        except ConsensusError as exc:
                            log.warning("raft role: leadership transfer failed: %s", exc)
                    removed = await self._call_ask_remove()
                else:
                    log.info("raft role: %s is the last voter: it stays a voter across "
                             "this stop, so the mesh re-forms when it returns", self.raft_addr)
            await self._stop_node()
            if self._role is not RaftRole.NONE:
                await self._set_role(RaftRole.NONE)
            if removed:
                await self._store(RaftRole.LEARNER, self._stored.generation, ())
            elif self._stored.role in (RaftRole.VOTER, RaftRole.JOINING):
                log.info("raft role: still a member of the configuration; a restart "
                         "resumes as %s", self._stored.role.value)

    async def _promote_successor(self, node: ConsensusNode) -> None:
        if self._view is None or self._ask_promote is None:
            return
        now = self._clock()
        policy = self.config.policy
        ready = sorted((p for p in self._view() if p.raft_addr != self.raft_addr
                        and policy.eligible(p, now)), key=lambda p: candidate_key(p, now, policy))
        for peer in ready:
            if await self._promote(node, peer.name, peer.raft_addr, node.voters, now):
                return

    async def _call_ask_remove(self) -> bool:
        """Ask another peer to remove this voter; retried until it is
        committed or `RoleConfig.call_timeout` runs out. Retries matter right
        after a leadership transfer, while gossip (and the new leader's own
        status) may still name the old leader."""
        if self._ask_remove is None:
            return False
        with trio.move_on_after(self.config.call_timeout):
            while not await self._ask_remove(self.raft_addr):
                await trio.sleep(ASK_REMOVE_RETRY)
            return True
        log.warning("raft role: asking for the removal of %s failed", self.raft_addr)
        return False

    # ------------------------------------------------------------ node lifecycle

    async def _start_learner(self, voters: Iterable[str]) -> bool:
        peers = tuple(sorted(set(voters) - {self.raft_addr}))  # we no longer serve ours
        if not peers:
            return False
        epoch = max(self._stored.epoch, self._epoch_hint())
        config = ConsensusConfig(address=None, peers=peers, keyring=self._keyring,
                                 epoch=epoch, timing=self._timing, source_ip=self.address_ip)
        if await self._start(config, RaftRole.LEARNER):
            await self._store(RaftRole.LEARNER, self._stored.generation, (), epoch)
            return True
        return False

    async def _start_voter(self, generation: int, peers: tuple[str, ...],
                           role: RaftRole, epoch: int | None = None) -> bool:
        """Start a voter node on generation `generation`'s directory (its
        journal if it has one): bootstrap when `peers` is empty and the
        directory is new, else join (`join` only holds elections until the
        node first hears a leader, so resuming with it is harmless)."""
        config = ConsensusConfig(
            address=(self.address_ip, self.config.raft_port), peers=peers,
            data_dir=self.data_dir / f"{GENERATION_PREFIX}{generation}",
            keyring=self._keyring, epoch=self._stored.epoch if epoch is None else epoch,
            join=bool(peers), timing=self._timing)
        if not await self._start(config, role):
            return False
        await self._store(role, generation, peers, epoch)
        return True

    async def _start(self, config: ConsensusConfig, role: RaftRole) -> bool:
        """Stop the current node (if any) and start one for `role`. False if
        it could not start (its port is taken: logged; the next step retries)."""
        if role not in TRANSITIONS[self._role]:
            raise IllegalTransition(f"raft role {self._role.value} -> {role.value}")
        assert self._nursery is not None
        await self._stop_node()
        running = _Running(ConsensusNode(config))
        try:
            await self._nursery.start(self._host, running)
        except ConsensusError as exc:
            log.warning("raft role: could not start as %s: %s", role.value, exc)
            if self._role is not RaftRole.NONE:
                await self._set_role(RaftRole.NONE)
            return False
        self._running = running
        await self._set_role(role)
        return True

    async def _host(self, running: _Running, *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with running.scope:
                async with trio.open_nursery() as nursery:
                    await nursery.start(running.node.run)
                    task_status.started()
                    nursery.start_soon(self._relay_status, running.node)
        finally:
            running.done.set()
            self._wake()

    async def _relay_status(self, node: ConsensusNode) -> None:
        """Wake `wait_ready` on every status change of `node`."""
        while True:
            await node.wait_status(functools.partial(operator.is_not, node.status))
            self._wake()

    async def _stop_node(self) -> None:
        running, self._running = self._running, None
        if running is not None:
            running.scope.cancel()
            await running.done.wait()

    async def _set_role(self, role: RaftRole) -> None:
        if role not in TRANSITIONS[self._role]:
            raise IllegalTransition(f"raft role {self._role.value} -> {role.value}")
        if role is not self._role:
            log.info("raft role: %s -> %s", self._role.value, role.value)
        self._role = role
        self._role_since = self._clock()
        self._no_leader_since = None
        self._ghost_since = None
        self._wake()

    async def _store(self, role: RaftRole, generation: int, peers: tuple[str, ...],
                     epoch: int | None = None) -> None:
        self._stored = _Stored(role, generation, peers,
                               self._stored.epoch if epoch is None else epoch)
        try:
            await trio.to_thread.run_sync(self._stored.store, self.data_dir)
        except OSError as exc:  # a full disk: the peer runs on (degraded), stored next change
            log.error("raft role: cannot save %s (%s): %s", ROLE_FILE, role.value,
                      describe_disk_error(exc))

    async def _next_generation(self, keep: int | None = None) -> int:
        """A new generation number; deletes the directories of all but the
        current one (kept: it is the last journal, for an operator) or `keep`."""
        current = self._stored.generation if keep is None else keep

        def prune() -> None:
            for d in self.data_dir.glob(GENERATION_PREFIX + "*"):
                if d.name != f"{GENERATION_PREFIX}{current}" and d.is_dir():
                    shutil.rmtree(d, ignore_errors=True)
        await trio.to_thread.run_sync(prune)
        return max(current, self._stored.generation) + 1

    def _node_or_fail(self) -> ConsensusNode:
        node = None if self._running is None else self._running.node
        if node is None:
            raise RuntimeError(f"raft role {self._role.value} without a node")
        return node

    def _wake(self) -> None:
        node = self.node
        self.leader_watch.observe(None if node is None else node.leader, time.time())
        self._changed.set()
        self._changed = trio.Event()


async def _read_state(generation_dir: Path) -> DesiredState:
    """`nanomesh.consensus.recovery.JournalReader` without blocking trio
    (the reader's node is created here, on trio's main thread)."""
    reader = JournalReader(generation_dir)
    try:
        while (result := reader.poll()) is None:
            await trio.sleep(0.01)
        return result[0]
    finally:
        await trio.to_thread.run_sync(reader.close)


async def _restore(node: ConsensusNode, state: DesiredState, timeout: float) -> None:
    """Write `state` into the new cluster of `node` (its only voter, leading):
    mesh settings first (the token hash), the registry, the services (their
    saved state and mode are part of the document), then the plan, so the
    instances keep running where they ran."""
    for key, value in state.meta.items():
        await node.init_meta(key, value, timeout=timeout)
    for key, entry in state.registry.items():
        await node.put_registry(key, entry, timeout=timeout)
    for name, doc in state.services.items():
        await node.put_service(name, doc, timeout=timeout)
    if state.plan:
        await node.set_plan(state.plan, node.state.plan_epoch, timeout=timeout)


def raft_profile_section(manager: RaftRoleManager) -> dict[str, Any]:
    """The ``profile["raft"]`` section the daemon merges into this peer's
    gossiped profile (see `RaftRoleManager.profile_section`)."""
    return manager.profile_section()


def voters_from_profiles(sections: Iterable[Any]) -> frozenset[str]:
    """The voters as gossip reports them, from the ``profile["raft"]``
    sections of the ALIVE peers (this one included); the daemon's
    ``voters_hint``. Sections come from the network: malformed ones are
    skipped.

    Trust, in order: the voter list of the peer that knows a leader at the
    highest term (a self-declared leader first at equal terms) — a removed
    voter that keeps campaigning has a high term but no leader, so it never
    counts; failing that (no leader anywhere) the union of all reported
    lists, which only ever errs towards "still a voter". Only the sections
    of the newest control-plane epoch count (`epoch_from_profiles`): after an
    operator's recovery the superseded voters are no voters at all."""
    sections = [s for s in sections if isinstance(s, Mapping)]
    epoch = epoch_from_profiles(sections)
    best: tuple[int, int, tuple[str, ...]] | None = None
    union: set[str] = set()
    for s in sections:
        if _epoch_of(s) != epoch:
            continue
        voters, term, leader, addr = s.get("voters"), s.get("term"), s.get("leader"), \
            s.get("addr")
        if not (isinstance(voters, list) and voters and all(isinstance(v, str) for v in voters)):
            continue
        union.update(voters)
        if not (isinstance(term, int) and isinstance(leader, str)):
            continue
        key = (term, int(leader == addr), tuple(sorted(voters)))
        if best is None or key > best:
            best = key
    return frozenset(best[2]) if best is not None else frozenset(union)


def epoch_from_profiles(sections: Iterable[Any]) -> int:
    """The newest control-plane epoch the ``profile["raft"]`` sections report
    (0 if none does); the daemon's ``epoch_hint``. Malformed ones count as 0."""
    return max((_epoch_of(s) for s in sections if isinstance(s, Mapping)), default=0)


def _epoch_of(section: Mapping[str, Any]) -> int:
    epoch = section.get("cluster_epoch", 0)
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0 else 0
