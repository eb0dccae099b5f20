"""The trio shell that owns this peer's Raft node and its role.

Every peer runs one `RaftRoleManager`. It runs at most one `ConsensusNode` at a
time, in one of these roles (advertised in the gossiped profile under
``profile["raft"]``, see `raft_profile_section`):

- ``none``: no node yet (waiting to learn the voters from gossip) or gone;
- ``learner``: no Raft node at all: a `nanomesh.consensus.follower.FollowerNode`
  pulls the committed state from a voter when the leader's gossip announces
  a newer version (and forwards writes), so the voters' heartbeats
  reach voters only and the leader's work does not grow with the mesh
  (issue 9); it never votes;
- ``joining``: a voter node started with ``join=True`` and a fresh data
  directory, waiting for the leader to add it;
- ``voter``: a member of the configuration.

The decisions are made by a pure core, `nanomesh.consensus.role_core`
(`RoleCore`): this shell feeds it the node's status, the gossip view and the
time, carries out the actions it returns and feeds their outcomes back.

Transitions (`role_core.TRANSITIONS`; anything else raises
`nanomesh.errors.IllegalTransition` and changes nothing)::

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
import functools
import json
import logging
import math
import operator
import os
import shutil
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import trio

from nanomesh.consensus import role_core as core
from nanomesh.consensus import role_effects as fx
from nanomesh.consensus.config import ConsensusConfig, RaftTiming, format_address
from nanomesh.consensus.errors import ConsensusError
from nanomesh.consensus.follow_core import FollowConfig
from nanomesh.consensus.follower import FollowerNode, FollowTransport
from nanomesh.consensus.node import ConsensusNode
from nanomesh.consensus.recovery import (
    JournalReader,
    RecoveryError,
    RecoveryRequest,
    acquire_lock,
)
from nanomesh.consensus.role_core import RaftRole as RaftRole
from nanomesh.consensus.role_core import RoleConfig as RoleConfig
from nanomesh.consensus.role_core import StoredRole
from nanomesh.consensus.role_core import epoch_from_profiles as epoch_from_profiles
from nanomesh.consensus.role_core import voter_evidence as voter_evidence
from nanomesh.consensus.role_core import voters_from_profiles as voters_from_profiles
from nanomesh.consensus.state import DesiredState
from nanomesh.consensus.status import LeaderWatch, RaftStatus
from nanomesh.consensus.voters import PeerInfo
from nanomesh.disk import describe_disk_error
from nanomesh.versions import RAFT_VERSION
from nanomesh.wire import Keyring

log = logging.getLogger("nanomesh.consensus.role_manager")

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
VOTERS_POLL = 0.1
"""Seconds between two looks at gossip's voters while a founder waits for
them (`RoleConfig.bootstrap_grace`), at most `RoleConfig.period`."""

AskPromote = Callable[[str, frozenset[str]], Awaitable[bool]]
"""``ask_promote(peer_name, voters)``: make that peer run
`RaftRoleManager.become_joining_voter(voters)`; True once it has."""
AskRemove = Callable[[str], Awaitable[bool]]
"""``ask_remove(raft_addr)``: make another peer (best: the leader) run
`RaftRoleManager.handle_remove(raft_addr)`; True once committed."""

_LEVELS = {"info": logging.INFO, "warning": logging.WARNING}

Replica = ConsensusNode | FollowerNode
"""What holds this peer's copy of the committed state: a voter's Raft node,
or a learner's follower (same reads, same writes)."""


def load_role(data_dir: Path) -> StoredRole:
    """The role stored in ``role.json`` (none if absent or damaged)."""
    try:
        doc = json.loads((data_dir / ROLE_FILE).read_text())
        role, gen, peers = RaftRole(doc["role"]), doc["generation"], doc["peers"]
        epoch = doc.get("epoch", 0)  # absent in files written before recovery existed
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return StoredRole()
    if not (isinstance(gen, int) and isinstance(peers, list) and isinstance(epoch, int)
            and all(isinstance(p, str) for p in peers)):
        return StoredRole()
    return StoredRole(role, gen, tuple(peers), epoch)


def save_role(stored: StoredRole, data_dir: Path) -> None:
    """Write ``role.json`` atomically (a temporary file, then a rename)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = data_dir / (ROLE_FILE + ".tmp")
    tmp.write_text(json.dumps({"role": stored.role.value, "generation": stored.generation,
                               "peers": list(stored.peers), "epoch": stored.epoch}) + "\n")
    tmp.replace(data_dir / ROLE_FILE)


@dataclass
class _Running:
    node: Replica
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)


class RaftRoleManager:
    """Owns this peer's `ConsensusNode` and moves it between roles (module doc).

    `address_ip`: this peer's gossip IP (the Raft node listens there on
    `RoleConfig.raft_port`). `data_dir`: this manager's own directory.
    `keyring`: the cluster keys (read live: a rotation applies at once).
    `founder`: this peer was started without ``--join`` and may bootstrap the
    cluster. `voters_hint()`: the voters as
    gossip reports them, `voters_term_hint()` the term of that report (the
    daemon computes both with `role_core.voter_evidence`).
    `view()`: the membership view for the voter policy (leader only; without
    it this peer never changes the configuration). `ask_promote`/`ask_remove`:
    the two peer-API calls (module doc). `follow`: how a learner reaches the
    voters (`nanomesh.consensus.follower.FollowTransport`; without it this
    peer cannot be a learner). `clock`: the clock of the view's timestamps.

    Run it with ``await nursery.start(manager.run)`` on trio's main thread.
    `node` changes with the role: re-read it (or `wait_ready`) after a change.
    """

    def __init__(self, address_ip: str, data_dir: Path, keyring: Keyring,
                 timing: RaftTiming, founder: bool, voters_hint: Callable[[], frozenset[str]],
                 *, config: RoleConfig | None = None,
                 view: Callable[[], Sequence[PeerInfo]] | None = None,
                 ask_promote: AskPromote | None = None, ask_remove: AskRemove | None = None,
                 epoch_hint: Callable[[], int] = lambda: 0,
                 voters_term_hint: Callable[[], int] = lambda: 0,
                 follow: FollowTransport | None = None,
                 follow_config: FollowConfig | None = None,
                 mesh_raft_version: Callable[[], int] = lambda: RAFT_VERSION,
                 clock: Callable[[], float] = trio.current_time) -> None:
        self.config = config or RoleConfig()
        self.config.check()
        timing.check()
        self.address_ip = address_ip
        self.raft_addr = format_address(address_ip, self.config.raft_port)
        self.data_dir = data_dir
        self._keyring = keyring
        self._timing = timing
        self._voters_hint = voters_hint
        self._epoch_hint = epoch_hint
        self._voters_term_hint = voters_term_hint
        self._view = view
        self._ask_promote = ask_promote
        self._ask_remove = ask_remove
        self._follow = follow
        self._follow_config = follow_config or FollowConfig()
        self._follow_config.check()
        self._clock = clock
        self._mesh_raft_version = mesh_raft_version
        """`ConsensusConfig.mesh_raft_version` of the voters this starts."""
        self._core = core.RoleCore(self.raft_addr, self.config, founder=founder,
                                   promotes=ask_promote is not None)
        self._running: _Running | None = None
        self._nursery: trio.Nursery | None = None
        self._lock = trio.Lock()
        self._changed = trio.Event()
        self._restoring = False
        self.leader_watch = LeaderWatch()
        """When this peer last had a leader (wall clock), across node restarts."""
        self.leader_watch.observe(None, time.time())

    # ------------------------------------------------------------ reads

    @property
    def role(self) -> RaftRole:
        return self._core.role

    @property
    def epoch(self) -> int:
        """This peer's control-plane epoch ("cluster_epoch" in gossip and
        ``/v1/status``): 0, plus one per operator recovery. Peers of an older
        epoch follow the newest one as learners."""
        return self._core.epoch

    @property
    def restoring(self) -> bool:
        """An operator's recovery is writing the old state back: the state is
        incomplete, so nobody may act on it (placement, reconciliation)."""
        return self._restoring

    @property
    def node(self) -> Replica | None:
        """The running node (None in role ``none``, and while a recovery
        writes the old state back: nobody may read a partial state)."""
        return None if self._running is None or self._restoring else self._running.node

    def belief_section(self) -> dict[str, Any]:
        """This peer's Raft role and its node's belief: ``role``, ``addr``
        (its Raft address, even as a learner, so the policy can name it),
        ``leader``, ``term``, ``voters`` (sorted), ``cluster_epoch``. The
        leader adds ``revision``, the committed state's: the announcement
        learners pull on (`nanomesh.consensus.follow_core`); only the leader,
        so a commit changes one profile, not every voter's. The event log
        records changes of this (`nanomesh.daemon.events.watch_raft`); gossip
        carries `profile_section`, a part of it."""
        status = self._status()
        section = {
            "role": self._core.role.value,
            "addr": self.raft_addr,
            "leader": None if status is None else status.leader,
            "term": 0 if status is None else status.term,
            "voters": [] if status is None else sorted(status.voters),
            "cluster_epoch": self._core.epoch,
        }
        node = self.node
        if isinstance(node, ConsensusNode) and status is not None and status.is_leader:
            section["revision"] = node.state.revision
        return section

    def profile_section(self) -> dict[str, Any]:
        """What this peer gossips under ``profile["raft"]``: a voter its whole
        `belief_section`, a learner only its role, address and epoch
        (`role_core.gossiped_section`), so an election republishes the
        voters' profiles and no learner's (issue 9)."""
        return core.gossiped_section(self.belief_section())

    def gossip_changed(self) -> None:
        """Gossip saw a change (a profile, a member): a learner looks for a
        newer announced state at once."""
        node = self.node
        if isinstance(node, FollowerNode):
            node.notify()

    async def wait_profile_change(self, last: Mapping[str, Any]) -> dict[str, Any]:
        """Wait until `profile_section()` differs from `last` and return it:
        the daemon re-gossips its profile then (a role change; for a voter
        also a leader, term or voter change; rare)."""
        while (section := self.profile_section()) == last:
            await self._changed.wait()
        return section

    async def wait_belief_change(self, last: Mapping[str, Any]) -> dict[str, Any]:
        """Wait until `belief_section()` differs from `last` and return it
        (a learner's leader and term change too: the event log shows them)."""
        while (section := self.belief_section()) == last:
            await self._changed.wait()
        return section

    async def wait_leading(self) -> ConsensusNode:
        """Wait until this peer's node leads with a quorum (and no recovery is
        writing the state back) and return it. The loops that act only on
        the leader (placement, the deployment watch) wait here, woken by the
        node's status changes, instead of waking every peer once a period to
        find that it does not lead (issue 9)."""
        while True:
            node = self.node
            if leads_with_quorum(node):
                return node
            await self._changed.wait()

    async def wait_ready(self, *, timeout: float = math.inf) -> Replica:
        """Wait until this peer is a learner or a voter that has heard a
        leader (it holds the committed state) and return its node."""
        with trio.fail_after(timeout):
            while True:
                node = self.node
                if (node is not None and self.role in (RaftRole.LEARNER, RaftRole.VOTER)
                        and node.leader is not None and not self._restoring):
                    return node
                await self._changed.wait()

    # ------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Start in the stored role (or bootstrap, or wait for the voters),
        report started, then let the core check the role every
        `RoleConfig.period` until cancelled; the node stops with it."""
        async with trio.open_nursery() as nursery, self._data_dir_lock():
            self._nursery = nursery
            try:
                stored = await trio.to_thread.run_sync(load_role, self.data_dir)
                async with self._lock:
                    request = await trio.to_thread.run_sync(RecoveryRequest.load,
                                                            self.data_dir)
                    if request is not None:
                        await self._recover(stored, request)
                    else:
                        await self._drive(self._core.start(stored, self._gossip()))
                task_status.started()
                while True:
                    await trio.sleep(self.config.period)
                    async with self._lock:
                        await self._drive(self._core.step(self._status(), self._gossip(),
                                                          self._clock()))
            finally:
                nursery.cancel_scope.cancel()
                self._running = None
                self._core.closed()
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

    async def _recover(self, stored: StoredRole, request: RecoveryRequest) -> None:
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
            await self._drive(self._core.recover(stored, request.generation, self._gossip()))
            if self._core.role is not RaftRole.VOTER:
                raise RecoveryError("the recovered voter could not start (see above)")
            node = self._node_or_fail()
            assert isinstance(node, ConsensusNode), "a recovered peer is a voter"
            await node.wait_status(lambda s: s.is_leader, timeout=self.config.call_timeout)
            await _restore(node, state, self.config.call_timeout)
            await self._drive(self._core.recovered())
            await trio.to_thread.run_sync(RecoveryRequest.done, self.data_dir)
        finally:
            self._restoring = False
            self._wake()
        log.warning("raft role: recovered: %d services, plan epoch %d, %d registry entries "
                    "restored; this peer is the only voter (generation %d); the others "
                    "rejoin and are promoted as usual", len(state.services),
                    node.state.plan_epoch, len(state.registry), self._core.stored.generation)

    # ------------------------------------------------------------ requests from peers

    async def become_joining_voter(self, voters: Iterable[str]) -> bool:
        """Called when the leader asks (``ask_promote``): restart as a joining
        voter with `voters` as peers and a fresh data directory; True once the
        Raft port listens. Idempotent for the same voters. False if this peer
        is a voter that hears a leader (asked by a deposed leader?), if
        `voters` names this peer (it would be a voter already), or if it is
        leaving or not running (`RoleCore.join_request`)."""
        voters = frozenset(voters)
        async with self._lock:
            if self._nursery is None:
                return False
            return await self._drive(self._core.join_request(voters, self._status(),
                                                             self._gossip()))

    async def handle_remove(self, raft_addr: str) -> bool:
        """Called when a peer asks (``ask_remove``): remove the voter
        `raft_addr` (any other peer can: pysyncobj forwards the change to the
        leader). True once committed, or if it is not a voter."""
        return await self._drive(self._core.remove_request(raft_addr, self._status()))

    async def hand_over(self) -> None:
        """Leave gracefully (module doc; the steps are `RoleCore.leave`):
        promote a successor if this is the only voter, transfer leadership
        if leading, ask to be removed, stop.

        What is stored decides whether the cluster can re-form: the stored
        role becomes learner ONLY once the removal of this voter is known to
        be committed. Otherwise (the last voter, no quorum left to commit the
        removal, the hand-over cut short) it stays what it was, so a restart
        resumes the membership the configuration still counts on; if the
        removal did commit unseen, the restarted node finds itself orphaned
        and becomes a learner (the core's voter check)."""
        async with self._lock:
            await self._drive(self._core.leave(self._status(), self._gossip(), self._clock()))

    # ------------------------------------------------------------ carrying out actions

    def _status(self) -> RaftStatus | None:
        node = self.node
        return None if node is None else node.status

    def _gossip(self) -> core.GossipView:
        return core.GossipView(self._voters_hint(), self._epoch_hint(),
                               None if self._view is None else list(self._view()),
                               self._voters_term_hint())

    async def _drive(self, actions: Iterable[fx.Action]) -> bool:
        """Carry out `actions` in order. The outcome of each action that has
        one goes back to the core, and what the core returns for it runs
        next. Returns the batch's `Reply` (False without one)."""
        reply = False
        queue = deque(actions)
        while queue:
            action = queue.popleft()
            if isinstance(action, fx.Reply):
                reply = action.ok
                continue
            outcome = await self._execute(action)
            if outcome is not None:
                queue.extendleft(reversed(self._core.feed(outcome, self._status(),
                                                          self._gossip(), self._clock())))
            if not isinstance(action, fx.Log):
                self._wake()
        return reply

    async def _execute(self, action: fx.Action) -> fx.Outcome | None:
        """Carry out one action; its outcome, if it has one."""
        match action:
            case fx.Log(level=level, text=text):
                log.log(_LEVELS[level], "raft role: %s", text)
            case fx.RoleChanged(old=old, new=new):
                log.info("raft role: %s -> %s", old.value, new.value)
            case fx.StartLearner() | fx.StartVoter():
                return fx.Started(action, await self._start(action))
            case fx.PruneGenerations(keep=keep):
                await trio.to_thread.run_sync(self._prune, keep)
            case fx.Store(stored=stored):
                await self._save(stored)
            case fx.AwaitVoters(timeout=timeout):
                with trio.move_on_after(timeout):
                    while not self._voters_hint():
                        await trio.sleep(min(VOTERS_POLL, self.config.period))
                return fx.VotersAwaited()
            case fx.Promote():
                return fx.Promoted(action.name, await self._promote(action))
            case fx.RemoveVoter(raft_addr=addr, reason=reason):
                return fx.VoterRemoved(addr, reason, await self._remove_voter(addr, reason))
            case fx.TransferLeadership():
                await self._transfer_leadership()
            case fx.AskRemove():
                return fx.RemovalAsked(await self._call_ask_remove())
            case fx.StopNode():
                await self._stop_node()
                return fx.Stopped()
            case fx.Reply():
                pass
        return None

    async def _promote(self, action: fx.Promote) -> bool:
        """Ask the peer to restart as a joining voter, then add it."""
        assert self._ask_promote is not None
        log.info("raft voters: promoting %s (%s)", action.name, action.raft_addr)
        ok = False
        with trio.move_on_after(self.config.call_timeout):
            ok = await self._ask_promote(action.name, action.voters)
        if not ok:
            log.warning("raft voters: %s did not accept the promotion", action.name)
            return False
        try:
            await self._node_or_fail().add_voter(action.raft_addr,
                                                 timeout=self.config.call_timeout)
        except ConsensusError as exc:
            log.warning("raft voters: adding %s failed: %s", action.raft_addr, exc)
            return False
        log.info("raft voters: %s added", action.raft_addr)
        return True

    async def _remove_voter(self, addr: str, reason: str) -> bool:
        if reason == "request":
            return await self._remove_on_request(addr)
        log.info("raft voters: removing %s (%s)", addr, reason)
        try:
            await self._node_or_fail().remove_voter(addr, timeout=self.config.call_timeout)
        except ConsensusError as exc:
            log.warning("raft voters: removing %s failed: %s", addr, exc)
            return False
        return True

    async def _remove_on_request(self, addr: str) -> bool:
        node = self._node_or_fail()
        try:
            await node.remove_voter(addr, timeout=self.config.call_timeout)
            # remove_voter is a no-op when the change is already in this node's
            # configuration (applied on append), possibly still uncommitted (an
            # earlier ask that timed out): the asker must not believe it is out
            # before it is, so wait for a later entry to commit.
            await node.barrier(timeout=self.config.call_timeout)
        except ConsensusError as exc:
            log.warning("raft voters: removing %s on request failed: %s", addr, exc)
            return False
        log.info("raft voters: removed %s on its request", addr)
        return True

    async def _transfer_leadership(self) -> None:
        try:
            new = await self._node_or_fail().transfer_leadership(
                timeout=self.config.call_timeout)
            log.info("raft role: leadership handed to %s", new)
        except ConsensusError as exc:
            log.warning("raft role: leadership transfer failed: %s", exc)

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

    def _node_config(self, start: fx.StartVoter) -> ConsensusConfig:
        """A voter listens on `RoleConfig.raft_port` with its generation's
        journal (``join`` only holds elections until the node first hears a
        leader, so resuming with it is harmless)."""
        return ConsensusConfig(
            address=(self.address_ip, self.config.raft_port), peers=start.peers,
            data_dir=self.data_dir / f"{GENERATION_PREFIX}{start.generation}",
            keyring=self._keyring, epoch=start.epoch, join=bool(start.peers),
            timing=self._timing, mesh_raft_version=self._mesh_raft_version)

    def _replica(self, start: fx.StartLearner | fx.StartVoter) -> Replica:
        """A learner's follower, or a voter's Raft node."""
        if isinstance(start, fx.StartLearner):
            if self._follow is None:
                raise ConsensusError("this peer has no way to reach the voters as a learner")
            return FollowerNode(self._follow, self.data_dir, start.epoch,
                                config=self._follow_config,
                                spread=zlib.crc32(self.raft_addr.encode()))
        return ConsensusNode(self._node_config(start))

    async def _start(self, start: fx.StartLearner | fx.StartVoter) -> bool:
        """Stop the current node (if any) and start the one `start` asks
        for. False if it could not start (its port is taken: logged; the
        core decides what follows)."""
        assert self._nursery is not None
        await self._stop_node()
        try:
            running = _Running(self._replica(start))
        except ConsensusError as exc:
            log.warning("raft role: could not start as learner: %s", exc)
            return False
        try:
            await self._nursery.start(self._host, running)
        except ConsensusError as exc:
            role = RaftRole.LEARNER if isinstance(start, fx.StartLearner) else start.role
            log.warning("raft role: could not start as %s: %s", role.value, exc)
            return False
        self._running = running
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

    async def _relay_status(self, node: Replica) -> None:
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
        """Move to `role` outside any protocol step (the core checks the
        transition table: an illegal change raises and changes nothing)."""
        await self._drive(self._core.set_role(role, self._clock()))

    async def _save(self, stored: StoredRole) -> None:
        try:
            await trio.to_thread.run_sync(save_role, stored, self.data_dir)
        except OSError as exc:  # a full disk: the peer runs on (degraded), stored next change
            log.error("raft role: cannot save %s (%s): %s", ROLE_FILE, stored.role.value,
                      describe_disk_error(exc))

    def _prune(self, keep: int) -> None:
        """Delete every generation directory but `keep`'s (blocking)."""
        for d in self.data_dir.glob(GENERATION_PREFIX + "*"):
            if d.name != f"{GENERATION_PREFIX}{keep}" and d.is_dir():
                shutil.rmtree(d, ignore_errors=True)

    def _node_or_fail(self) -> Replica:
        node = None if self._running is None else self._running.node
        if node is None:
            raise RuntimeError(f"raft role {self.role.value} without a node")
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


def leads_with_quorum(node: object) -> TypeGuard[ConsensusNode]:
    """Is `node` a voter's Raft node that leads with a quorum (the only one
    that may plan or judge deployments)? A learner never leads."""
    return isinstance(node, ConsensusNode) and node.is_leader and node.status.has_quorum


def raft_profile_section(manager: RaftRoleManager) -> dict[str, Any]:
    """The ``profile["raft"]`` section the daemon merges into this peer's
    gossiped profile (see `RaftRoleManager.profile_section`)."""
    return manager.profile_section()
