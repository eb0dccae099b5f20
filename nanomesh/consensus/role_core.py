"""This peer's Raft role as a pure state machine: every decision of the role
manager, none of its I/O.

The protocol (roles, promotion, removal, hand-over, epochs and generations,
recovery) is described in `nanomesh.consensus.role_manager`, the trio shell
that runs this core. The core imports no trio, opens no socket or file and
reads no clock: its shell feeds it

- ``start(stored, gossip)`` once, with the role read from ``role.json``
  (or ``recover(...)`` when an operator asked for a recovery);
- ``step(status, gossip, now)`` every `RoleConfig.period`;
- ``leave(status, gossip, now)`` when the peer leaves gracefully;
- ``join_request(...)`` / ``remove_request(...)`` when a peer asks;
- ``feed(outcome, status, gossip, now)`` with the outcome of every action
  that has one (`Outcome`),

where `status` is the node's latest `RaftStatus` (None: no node runs) and
`gossip` the `GossipView`. Each call returns the actions to carry out
(`nanomesh.consensus.role_effects`), in order; an action with an outcome
is followed by whatever ``feed`` returns for it before the rest of its
batch. Every role change goes through `check_transition` (`TRANSITIONS`);
an illegal one raises `IllegalTransition` and changes nothing.

The core decides what is stored (``Store``) and keeps the stored role as it
will be on disk; the shell only writes it.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nanomesh.consensus.config import DEFAULT_RAFT_PORT
from nanomesh.consensus.role_effects import (
    Action,
    AskRemove,
    AwaitVoters,
    Log,
    Outcome,
    Promote,
    Promoted,
    PruneGenerations,
    RemovalAsked,
    RemoveVoter,
    Reply,
    RoleChanged,
    Started,
    StartLearner,
    StartVoter,
    StopNode,
    Stopped,
    Store,
    TransferLeadership,
    VoterRemoved,
    VotersAwaited,
)
from nanomesh.consensus.role_effects import RaftRole as RaftRole
from nanomesh.consensus.role_effects import StoredRole as StoredRole
from nanomesh.consensus.status import RaftStatus
from nanomesh.consensus.voters import (
    PeerInfo,
    Remove,
    VoterPolicy,
    candidate_key,
    decide,
    with_absent_voters,
)
from nanomesh.consensus.voters import Promote as PolicyPromote
from nanomesh.errors import ConfigError, IllegalTransition
from nanomesh.wire import MemberState

TRANSITIONS: Mapping[RaftRole, frozenset[RaftRole]] = {
    RaftRole.NONE: frozenset({RaftRole.LEARNER, RaftRole.VOTER, RaftRole.JOINING}),
    RaftRole.LEARNER: frozenset({RaftRole.JOINING, RaftRole.LEARNER, RaftRole.NONE}),
    RaftRole.JOINING: frozenset({RaftRole.VOTER, RaftRole.LEARNER, RaftRole.JOINING,
                                 RaftRole.NONE}),
    RaftRole.VOTER: frozenset({RaftRole.LEARNER, RaftRole.JOINING, RaftRole.NONE}),
}
"""The legal role changes (module doc of `nanomesh.consensus.role_manager`).
A learner becomes a voter only through ``joining`` (the leader adds it);
``learner -> learner`` and ``joining -> joining`` restart with other peers."""


def check_transition(old: RaftRole, new: RaftRole) -> None:
    """Raise `IllegalTransition` unless ``old -> new`` is in `TRANSITIONS`."""
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(f"raft role {old.value} -> {new.value}")


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
class GossipView:
    """What gossip says, as of one call. `voters`: the voters as the peers
    report them (`voter_evidence`); `epoch`: the newest control-plane
    epoch (`epoch_from_profiles`); `peers`: the membership view for the voter
    policy, None if this peer has none (then it never changes the
    configuration)."""

    voters: frozenset[str] = frozenset()
    epoch: int = 0
    peers: Sequence[PeerInfo] | None = None
    voters_term: int = 0
    """The Raft term of the evidence behind `voters` (`voter_evidence`): the
    term at which its reporter knew a leader; 0 when no reporter knew one."""


class _Leave(enum.Enum):
    """Where a graceful leave (`RoleCore.leave`) stands."""

    PROMOTING = "promoting a successor"
    PRUNING = "removing voters that are down first"
    ASKING = "asking for removal"
    STOPPING = "stopping"
    DONE = "done"


# --------------------------------------------------------------------------- the core


class RoleCore:
    """The role decisions of one peer (module doc). `raft_addr`: this peer's
    Raft address. `founder`: started without ``--join``, may bootstrap.
    `promotes`: this peer can ask others to become voters (without it, as
    leader it only removes voters)."""

    def __init__(self, raft_addr: str, config: RoleConfig, *, founder: bool,
                 promotes: bool) -> None:
        self.raft_addr = raft_addr
        self.config = config
        self._founder = founder
        self._promotes = promotes
        self._role = RaftRole.NONE
        self._stored = StoredRole()
        self._role_since = 0.0
        self._no_leader_since: float | None = None
        self._leader_term = 0
        """The highest term in which this peer's current node heard a leader.
        Gossip older than that cannot prove this voter was removed
        (`_check_voter`)."""
        self._ghost_since: float | None = None
        self._absent_since: dict[str, float] = {}
        self._avoid: dict[str, float] = {}
        self._promoting: tuple[str, float] | None = None
        """The promotion in flight: whom, and when it was decided (the back-off
        counts from then)."""
        self._leave: _Leave | None = None
        self._successors: list[PeerInfo] = []
        self._pruned: set[str] = set()
        """Voters a leaving leader tried to remove first (`_leave_configuration`)."""
        self._removed = False
        self._reply_on_start = False
        self._recovery: StoredRole | None = None

    # ------------------------------------------------------------ reads

    @property
    def role(self) -> RaftRole:
        return self._role

    @property
    def stored(self) -> StoredRole:
        """The role as stored on disk (or about to be: see `Store`)."""
        return self._stored

    @property
    def epoch(self) -> int:
        """This peer's control-plane epoch: 0, plus one per operator recovery."""
        return self._stored.epoch

    @property
    def leaving(self) -> bool:
        return self._leave is not None

    # ------------------------------------------------------------ role changes

    def set_role(self, role: RaftRole, now: float) -> list[Action]:
        """Move to `role` (`check_transition`); restarts the role's timers."""
        check_transition(self._role, role)
        old, self._role = self._role, role
        self._role_since = now
        self._no_leader_since = None
        self._ghost_since = None
        return [] if old is role else [RoleChanged(old, role)]

    def closed(self) -> None:
        """The shell stopped (its node with it): the role is ``none``."""
        if self._role is not RaftRole.NONE:
            check_transition(self._role, RaftRole.NONE)
            self._role = RaftRole.NONE

    def _store(self, role: RaftRole, generation: int, peers: tuple[str, ...],
               epoch: int | None = None) -> Store:
        self._stored = StoredRole(role, generation, peers,
                                  self._stored.epoch if epoch is None else epoch)
        return Store(self._stored)

    def _start_learner(self, voters: Iterable[str], epoch_hint: int) -> list[Action]:
        """Follow `voters` as a learner (nothing if this peer is the only one:
        it no longer serves its own address)."""
        peers = tuple(sorted(set(voters) - {self.raft_addr}))
        if not peers:
            return []
        check_transition(self._role, RaftRole.LEARNER)
        return [StartLearner(peers, max(self._stored.epoch, epoch_hint))]

    def _start_voter(self, role: RaftRole, generation: int, peers: tuple[str, ...],
                     epoch: int | None = None, *, record: bool = True) -> StartVoter:
        check_transition(self._role, role)
        self._leader_term = 0  # a new node: terms of a new run (a recovery restarts them)
        return StartVoter(role, generation, peers,
                          self._stored.epoch if epoch is None else epoch, record)

    def _fresh_generation(self, keep: int | None = None) -> tuple[PruneGenerations, int]:
        """Prune all generations but the current one (or `keep`); the next number."""
        current = self._stored.generation if keep is None else keep
        return PruneGenerations(current), max(current, self._stored.generation) + 1

    def _started(self, start: StartLearner | StartVoter, ok: bool, now: float
                 ) -> list[Action]:
        role = RaftRole.LEARNER if isinstance(start, StartLearner) else start.role
        out: list[Action] = []
        if not ok:  # the shell logged why; the old node is stopped too
            if self._role is not RaftRole.NONE:
                out = self.set_role(RaftRole.NONE, now)
        else:
            out = self.set_role(role, now)
            match start:
                case StartLearner(epoch=epoch):
                    out.append(self._store(RaftRole.LEARNER, self._stored.generation, (), epoch))
                case StartVoter(record=True):
                    out.append(self._store(role, start.generation, start.peers, start.epoch))
        if self._reply_on_start:
            self._reply_on_start = False
            out.append(Reply(ok))
        return out

    # ------------------------------------------------------------ start

    def start(self, stored: StoredRole, gossip: GossipView) -> list[Action]:
        """Start in the stored role; a founder with none bootstraps unless
        gossip reveals a cluster within `RoleConfig.bootstrap_grace`; others
        wait for the voters (`step`)."""
        self._stored = stored
        if stored.role in (RaftRole.VOTER, RaftRole.JOINING):
            kind = "voter" if stored.role is RaftRole.VOTER else "joining voter"
            return [Log("info", f"resuming as {kind} (generation {stored.generation})"),
                    self._start_voter(stored.role, stored.generation, stored.peers)]
        if self._founder and stored.role is RaftRole.NONE:
            return [AwaitVoters(self.config.bootstrap_grace)]
        return self._start_learner(gossip.voters, gossip.epoch)

    def _founded(self, gossip: GossipView) -> list[Action]:
        if gossip.voters:
            return [Log("info", "founder, but gossip shows a cluster: joining it"),
                    *self._start_learner(gossip.voters, gossip.epoch)]
        return [Log("info", "founder: bootstrapping a one-voter cluster"),
                self._start_voter(RaftRole.VOTER, self._stored.generation + 1, ())]

    def recover(self, stored: StoredRole, generation: int, gossip: GossipView
                ) -> list[Action]:
        """An operator's recovery of generation `generation`: a new one-voter
        cluster in a new generation, at a new epoch. Stored only once the
        shell has restored the state (`recovered`)."""
        self._stored = stored
        prune, fresh = self._fresh_generation(keep=generation)
        epoch = max(stored.epoch, gossip.epoch) + 1
        self._recovery = StoredRole(RaftRole.VOTER, fresh, (), epoch)
        return [prune, self._start_voter(RaftRole.VOTER, fresh, (), epoch, record=False)]

    def recovered(self) -> list[Action]:
        """The recovered state is committed: store the new role."""
        assert self._recovery is not None
        r, self._recovery = self._recovery, None
        return [self._store(r.role, r.generation, r.peers, r.epoch)]

    # ------------------------------------------------------------ the periodic step

    def step(self, status: RaftStatus | None, gossip: GossipView, now: float
             ) -> list[Action]:
        """This peer's role checks, and the leader's voter policy."""
        if self.leaving:
            return []
        if self._role is not RaftRole.NONE and gossip.epoch > self._stored.epoch:
            return [Log("warning", f"an operator recovered the control plane (epoch "
                        f"{gossip.epoch}; this peer's is {self._stored.epoch}): following "
                        "the recovered one as a learner"),
                    *self._start_learner(gossip.voters, gossip.epoch)]
        if self._role is RaftRole.NONE:
            return self._start_learner(gossip.voters, gossip.epoch)
        if status is None:
            raise RuntimeError(f"raft role {self._role.value} without a node")
        match self._role:
            case RaftRole.LEARNER:
                return self._check_learner(status, gossip, now)
            case RaftRole.JOINING:
                return self._check_joining(status, gossip, now)
            case _:
                return self._check_voter(status, gossip, now)

    def _check_learner(self, status: RaftStatus, gossip: GossipView, now: float
                       ) -> list[Action]:
        """Reconnect when no leader is heard and gossip names other voters;
        ask for removal when this learner is a "ghost" voter (module doc)."""
        hint = gossip.voters
        if self._no_leader_for(status, now) >= self.config.orphan_timeout and hint \
                and hint != status.voters:
            return [Log("info", f"learner hears no leader; reconnecting to {sorted(hint)}"),
                    *self._start_learner(hint, gossip.epoch)]
        if self.raft_addr not in status.voters:
            self._ghost_since = None
            return []
        if self._ghost_since is None:
            self._ghost_since = now
        elif now - self._ghost_since >= self.config.orphan_timeout:
            self._ghost_since = now  # ask again at most once per timeout
            return [Log("warning", f"{self.raft_addr} is a voter in the configuration but "
                        "runs as a learner; asking for its removal"),
                    AskRemove(self.raft_addr)]
        return []

    def _check_joining(self, status: RaftStatus, gossip: GossipView, now: float
                       ) -> list[Action]:
        """Hearing the leader means this node was added; not added within
        `RoleConfig.join_timeout` (and not in gossip's voters) means back to
        learner."""
        if status.leader is not None:
            return [Log("info", f"added as a voter (leader {status.leader})"),
                    *self.set_role(RaftRole.VOTER, now),
                    self._store(RaftRole.VOTER, self._stored.generation, self._stored.peers)]
        if now - self._role_since < self.config.join_timeout:
            return []
        if self.raft_addr in gossip.voters:
            return []  # the configuration has us: an add committed; wait for the leader
        return [Log("info", f"not added within {self.config.join_timeout:.0f} s; back to "
                    "learner"),
                *self._start_learner(gossip.voters or frozenset(self._stored.peers),
                                     gossip.epoch)]

    def _check_voter(self, status: RaftStatus, gossip: GossipView, now: float
                     ) -> list[Action]:
        """Lead (the voter policy) with a quorum; restart as a learner when
        orphaned: no leader heard while gossip's voters exclude this one.

        Only gossip at least as new as the last leader this node heard counts
        (`GossipView.voters_term`): in an election storm on a loaded host, the
        newest section naming a leader may be a profile from before this
        voter was added (its reporter's newer ones not yet pulled), and a
        voter leaving on that word took a vote from a configuration that
        still counted it. A voter really removed at term T heard no leader
        after T, and the leader that removed it reports T or later."""
        if status.is_leader and status.has_quorum and status.leader == self.raft_addr:
            self._no_leader_since = None
            self._leader_term = max(self._leader_term, status.term)
            return self._lead(status, gossip, now)
        hint = gossip.voters
        if self._no_leader_for(status, now) >= self.config.orphan_timeout and hint \
                and self.raft_addr not in hint and gossip.voters_term >= self._leader_term:
            return [Log("warning", f"no leader for {self.config.orphan_timeout:.0f} s and the "
                        f"voters ({', '.join(sorted(hint))}) exclude {self.raft_addr}: "
                        "removed; restarting as a learner"),
                    *self._start_learner(hint, gossip.epoch)]
        return []

    def _no_leader_for(self, status: RaftStatus, now: float) -> float:
        if status.leader is not None:
            self._no_leader_since = None
            self._leader_term = max(self._leader_term, status.term)
            return 0.0
        if self._no_leader_since is None:
            self._no_leader_since = now
        return now - self._no_leader_since

    # ------------------------------------------------------------ the leader's duty

    def _lead(self, status: RaftStatus, gossip: GossipView, now: float) -> list[Action]:
        """One run of the voter policy (`nanomesh.consensus.voters.decide`)
        over the view; voters the view lacks count as dead since first
        noticed; peers on a promotion back-off are left out."""
        if gossip.peers is None:
            return []
        voters = status.voters
        self._avoid = {n: until for n, until in self._avoid.items() if until > now}
        view = list(gossip.peers)
        known = {p.raft_addr for p in view}
        self._absent_since = {v: self._absent_since.get(v, now)
                              for v in voters if v not in known}
        view = with_absent_voters(view, voters, self._absent_since)
        view = [p for p in view if p.raft_addr in voters or (
            self._promotes and self._avoid.get(p.name, -math.inf) <= now)]
        match decide(view, voters, self.config.target_voters, now, self.config.policy,
                     leader=self.raft_addr):
            case PolicyPromote(name=name, raft_addr=addr):
                self._promoting = (name, now)
                return [Promote(name, addr, voters)]
            case Remove(raft_addr=addr, reason=reason):
                return [RemoveVoter(addr, reason)]
            case None:
                return []

    def _promoted(self, name: str, ok: bool, now: float) -> float:
        """A failed promotion puts the peer on a back-off, counted from when
        it was decided; returns that time."""
        since = self._promoting[1] if self._promoting is not None else now
        self._promoting = None
        if not ok:
            self._avoid[name] = since + self.config.promote_backoff
        return since

    # ------------------------------------------------------------ requests from peers

    def join_request(self, voters: Iterable[str], status: RaftStatus | None,
                     gossip: GossipView) -> list[Action]:
        """The leader asks this peer to become a joining voter of `voters`
        (module doc of the shell, step 2). Ends in a `Reply`: True once the
        voter node runs (at once if already joining them), False if `voters`
        is empty or names this peer, if leaving, or if this is a voter that
        hears a leader (asked by a deposed leader?)."""
        peers = tuple(sorted(set(voters)))
        if not peers or self.raft_addr in peers or self.leaving:
            return [Reply(False)]
        if self._role is RaftRole.JOINING and self._stored.peers == peers:
            return [Reply(True)]
        if self._role is RaftRole.VOTER and status is not None and status.leader is not None:
            return [Reply(False)]
        prune, generation = self._fresh_generation()
        start = self._start_voter(RaftRole.JOINING, generation, peers,
                                  max(self._stored.epoch, gossip.epoch))
        self._reply_on_start = True
        return [Log("info", f"asked to become a voter; joining {', '.join(peers)}"), prune,
                start]

    def remove_request(self, raft_addr: str, status: RaftStatus | None) -> list[Action]:
        """A peer asks this one to remove the voter `raft_addr` (any voter or
        learner can: pysyncobj forwards the change to the leader). Ends in a
        `Reply`: True once committed; False without a node or for itself
        (a node never hears the commit of its own removal)."""
        if status is None or raft_addr == self.raft_addr:
            return [Reply(False)]
        rest = status.voters - {raft_addr}
        down = _not_alive(rest, GossipView(), status)
        if rest and len(rest) - len(down) < majority(len(rest)):
            # The same rule as the leaver's own check, from where the
            # connections are seen: a removal the rest cannot commit wedges it.
            return [Log("warning", f"not removing {raft_addr} on its request: of the voters "
                        f"that would remain, {', '.join(sorted(down))} cannot be reached, so "
                        "they could not commit it; it stays a voter across its stop"),
                    Reply(False)]
        return [RemoveVoter(raft_addr, "request")]

    # ------------------------------------------------------------ graceful leave

    def leave(self, status: RaftStatus | None, gossip: GossipView, now: float
              ) -> list[Action]:
        """Leave gracefully: promote a successor if this is the only voter
        and leads, transfer leadership if leading, ask to be removed, stop.
        The stored role becomes learner only once the removal committed
        (see the shell's `hand_over`)."""
        self._leave = _Leave.PROMOTING
        if self._role in (RaftRole.VOTER, RaftRole.JOINING) and status is not None \
                and status.leader is not None:
            if status.voters == {self.raft_addr} and status.is_leader:
                self._successors = self._successor_candidates(gossip, now)
                if promote := self._next_successor(status, now):
                    return promote
            return self._leave_configuration(status, gossip)
        return self._stop(removed=False)

    def _successor_candidates(self, gossip: GossipView, now: float) -> list[PeerInfo]:
        if gossip.peers is None or not self._promotes:
            return []
        policy = self.config.policy
        return sorted((p for p in gossip.peers if p.raft_addr != self.raft_addr
                       and policy.eligible(p, now)), key=lambda p: candidate_key(p, now, policy))

    def _next_successor(self, status: RaftStatus, since: float) -> list[Action]:
        if not self._successors:
            return []
        peer = self._successors.pop(0)
        self._promoting = (peer.name, since)
        return [Promote(peer.name, peer.raft_addr, status.voters)]

    def _leave_configuration(self, status: RaftStatus, gossip: GossipView,
                             pruned_ok: bool = True) -> list[Action]:
        """Leave the configuration, unless what would remain could not work.

        Removing this voter leaves ``rest``, and from then on only a majority
        of ``rest`` can elect or commit. If gossip sees too few of them alive
        (a voter was killed a moment ago, before the leader's policy removed
        it), the removal would wedge the mesh for good: the remaining voters
        cannot commit it, they campaign without a majority, and their log
        (holding the uncommitted removal) is ahead of ours, so they never
        vote for us when we return either. So a leader first removes the
        voters that are down, one at a time (it still has a majority with
        itself; each is tried once), and anyone else stops as a voter without
        removal: the configuration still counts on it, and the mesh re-forms
        when it returns."""
        rest = status.voters - {self.raft_addr}
        if not rest:
            return [Log("info", f"{self.raft_addr} is the last voter: it stays a voter across "
                        "this stop, so the mesh re-forms when it returns"),
                    *self._stop(removed=False)]
        down = sorted(_not_alive(rest, gossip, status))
        if len(rest) - len(down) < majority(len(rest)):
            up_with_me = len(status.voters) - len(down)
            untried = [addr for addr in down if addr not in self._pruned]
            if status.is_leader and pruned_ok and untried \
                    and up_with_me >= majority(len(status.voters)):
                self._leave = _Leave.PRUNING
                self._pruned.add(untried[0])
                return [Log("info", f"leaving: first removing {untried[0]}, a voter that is "
                            "down, so the other voters keep a majority"),
                        RemoveVoter(untried[0], PRUNE_BEFORE_LEAVE)]
            return [Log("warning", f"leaving without removal: of the other voters only "
                        f"{len(rest) - len(down)} of {len(rest)} are alive ({', '.join(down)} "
                        "down); this peer stays a voter across the stop, so the mesh re-forms "
                        "when it or they return"),
                    *self._stop(removed=False)]
        self._leave = _Leave.ASKING
        return [*([TransferLeadership()] if status.is_leader else []),
                AskRemove(self.raft_addr)]

    def _stop(self, removed: bool) -> list[Action]:
        self._leave, self._removed = _Leave.STOPPING, removed
        return [StopNode()]

    def _stopped(self, now: float) -> list[Action]:
        out = self.set_role(RaftRole.NONE, now) if self._role is not RaftRole.NONE else []
        if self._leave is not _Leave.STOPPING:
            return out
        self._leave = _Leave.DONE
        if self._removed:
            out.append(self._store(RaftRole.LEARNER, self._stored.generation, ()))
        elif self._stored.role in (RaftRole.VOTER, RaftRole.JOINING):
            out.append(Log("info", "still a member of the configuration; a restart resumes "
                           f"as {self._stored.role.value}"))
        return out

    # ------------------------------------------------------------ outcomes

    def feed(self, outcome: Outcome, status: RaftStatus | None, gossip: GossipView,
             now: float) -> list[Action]:
        """What follows `outcome` (`status` and `gossip` as of now)."""
        match outcome:
            case Started(start=start, ok=ok):
                return self._started(start, ok, now)
            case VotersAwaited():
                return self._founded(gossip)
            case Promoted(name=name, ok=ok):
                since = self._promoted(name, ok, now)
                if self._leave is not _Leave.PROMOTING:
                    return []
                if status is None:  # the node is gone: nothing left to hand over
                    return self._stop(removed=False)
                if not ok and (more := self._next_successor(status, since)):
                    return more  # the next candidate, in rank order
                return self._leave_configuration(status, gossip)
            case VoterRemoved(reason="request", ok=ok):
                return [Reply(ok)]
            case VoterRemoved(reason=reason, ok=ok) if reason == PRUNE_BEFORE_LEAVE:
                if self._leave is not _Leave.PRUNING:
                    return []
                if status is None:
                    return self._stop(removed=False)
                return self._leave_configuration(status, gossip, pruned_ok=ok)
            case VoterRemoved():
                return []
            case RemovalAsked(ok=ok):
                return self._stop(removed=ok) if self._leave is _Leave.ASKING else []
            case Stopped():
                return self._stopped(now)


PRUNE_BEFORE_LEAVE = "down, before a leave"
"""`RemoveVoter.reason` of a leaving leader removing voters that are down."""


def majority(n: int) -> int:
    return n // 2 + 1


def _not_alive(voters: Iterable[str], gossip: GossipView, status: RaftStatus) -> set[str]:
    """The `voters` this node's Raft connections (`RaftStatus.connected`)
    or gossip say are down. Raft sees a crash first (the connection drops at
    once; gossip needs a second or more); gossip sees a peer this node never
    connected to. Where neither knows, nothing is down."""
    down = set()
    if status.connected is not None:
        down |= {v for v in voters if v not in status.connected}
    if gossip.peers is not None:
        alive = {p.raft_addr for p in gossip.peers if p.state is MemberState.ALIVE}
        down |= {v for v in voters if v not in alive}
    return down


# --------------------------------------------------------------------------- gossip


GOSSIPED_BY_ALL = ("role", "addr", "cluster_epoch")
"""What every peer gossips under ``profile["raft"]``: its role, its Raft
address (the policy names it by that) and the control-plane epoch it follows
(`epoch_from_profiles`). None of these changes in an election."""

FULL_SECTION_ROLES = frozenset({RaftRole.VOTER, RaftRole.JOINING})
"""The roles that also gossip their node's belief (``leader``, ``term``,
``voters``, and the leader's ``revision``): the sections that
`voters_from_profiles`, `nanomesh.consensus.follow_core.pull_sources` and
`~nanomesh.consensus.follow_core.gossiped_leader` read. A learner's belief
only repeats what the voters gossip, so a learner leaves it out: an election
then changes the 5 voters' profiles, not every peer's (issue 9)."""


def gossiped_section(belief: Mapping[str, Any]) -> dict[str, Any]:
    """The part of this peer's Raft `belief` (`RaftRoleManager.belief_section
    <nanomesh.consensus.role_manager.RaftRoleManager.belief_section>`) that it
    gossips: all of it for a voter or a joining voter, only
    `GOSSIPED_BY_ALL` otherwise (a learner, a peer with no role yet).

    An older peer reads a learner's short section as "no voter list, no
    leader": every reader skips such a section already (they count voters'
    sections only, or need a non-empty ``voters`` list)."""
    role = belief.get("role")
    if role in {r.value for r in FULL_SECTION_ROLES}:
        return dict(belief)
    return {k: belief[k] for k in GOSSIPED_BY_ALL if k in belief}


def voters_from_profiles(sections: Iterable[Any]) -> frozenset[str]:
    """The voters as gossip reports them (`voter_evidence`, without its term)."""
    return voter_evidence(sections)[0]


def voter_evidence(sections: Iterable[Any]) -> tuple[frozenset[str], int]:
    """The voters as gossip reports them, from the ``profile["raft"]``
    sections of the ALIVE peers (this one included), and the Raft term of
    that report (0 for the union below); the daemon's ``voters_hint`` and
    ``voters_term_hint``. Sections come from the network: malformed ones are
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
    if best is None:
        return frozenset(union), 0
    return frozenset(best[2]), best[0]


def epoch_from_profiles(sections: Iterable[Any]) -> int:
    """The newest control-plane epoch the ``profile["raft"]`` sections report
    (0 if none does); the daemon's ``epoch_hint``. Malformed ones count as 0."""
    return max((_epoch_of(s) for s in sections if isinstance(s, Mapping)), default=0)


def _epoch_of(section: Mapping[str, Any]) -> int:
    epoch = section.get("cluster_epoch", 0)
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0 else 0
