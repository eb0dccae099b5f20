"""The only module that touches pysyncobj (0.3.x, untyped): a typed facade.

Threads. pysyncobj runs its own tick thread (``autoTick``): it owns the
sockets, the log and the state machine, and calls every callback given here
*on that thread*. The facade keeps to three thread-safe entry points from the
outside: submitting a command (pysyncobj queues it under a lock), asking for
a function to run on the tick thread (`call_in_raft_thread`), and destroy.
Everything that reads pysyncobj's internals (status, leadership transfer)
runs on the tick thread, so it never races the tick.

Facts from pysyncobj's source (0.3.17) this module relies on:

- ``SyncObj(None, voters)`` is a read-only node: it opens no server,
  connects out to every voter announcing itself as ``readonly``, receives
  the leader's entries and applies committed ones; it never votes and the
  leader does not count it for commits. It can submit commands (forwarded to
  the leader).
- The tick thread exits silently when the thread that created the SyncObj
  exits: create it on the process's main thread (trio's).
- Without ``bindAddress``, an IPv4 node binds 0.0.0.0 (all interfaces, and
  several nodes on one machine collide): we always bind the node's own IP.
- Membership changes are applied on *append*, not commit; the leader denies
  (REQUEST_DENIED) a change while the previous one is uncommitted or before
  its own first (no-op) entry has committed, and refuses to remove itself.
- A node started before it is added (its peers refuse its connections only
  after the TCP connect, so it counts as "connected") campaigns with ever
  higher terms; when it is then added, that term deposes the leader. There is
  no PreVote; `hold_elections` is our substitute for a joining node: it never
  campaigns before it has heard from a leader.
- Its connection closed a link that read nothing for ``connectionTimeout``
  the next time it was *used*. Followers never talk to each other, so
  between elections every follower-follower link went idle, and the first
  vote request after a leader's death closed its link instead of arriving:
  every failover cost two election timeouts. We first sent keepalives on
  idle links; now our connection (`_transport.GuardedConnection`) calls a
  link dead only when something it sent went unanswered for that long, so a
  quiet link stays usable for free.
- A follower notices a dead leader only by its election timeout. When the
  leader's side closes the link and its host then refuses a connection to
  its Raft port (its process died: the kernel closed its connections and
  its listening socket), we campaign after a short random delay instead
  (`leader_loss`), so failover after a crash does not wait for the timeout.
- A candidate draws its election timeout afresh for every candidacy; on a
  host where vote round trips outlast the timeout every voter keeps
  campaigning and nobody is elected. Candidacies that keep electing nobody
  wait longer (`election_backoff`).
- An exception in an apply function makes pysyncobj retry that entry on
  every tick forever; the apply functions of `nanomesh.consensus.state` are
  total for that reason.
- Its file journal writes through an mmap and never fsyncs (lost on power
  loss; a SIGBUS on a full disk): `_journal` replaces it with one that is
  durable before anything is acknowledged, and makes the full dump durable.
- The tick thread polls its sockets for at most ``autoTickPeriod`` and then
  ticks, whether or not anything is due: at 10 ms that was 100 wake-ups a
  second on an idle node. We wrap the poller's ``poll`` so the wait ends at
  the earliest timer pysyncobj or we keep (heartbeat, election deadline,
  reconnect, a forgotten leader), capped by ``autoTickPeriod``
  for the timers not listed (the one-second journal timer, log compaction,
  handshake deadlines); a pipe in the same poller ends the wait at once when
  another thread submits a command or asks for a call (pysyncobj has such a
  pipe only without batching).
- Full dumps fork by default (``useFork``); forking a multi-threaded process
  (trio + the tick thread) can deadlock the child on a lock another thread
  held, and our state is small: we serialize in the tick thread instead.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import random
import threading
from collections.abc import Callable, Sequence
from typing import Any

import pysyncobj  # type: ignore[import-untyped]
from pysyncobj.poller import POLL_EVENT_TYPE  # type: ignore[import-untyped]

from nanomesh.consensus import _journal, election_backoff, leader_loss
from nanomesh.consensus._transport import (
    KeyedSyncObj,
    KeyringCipher,
    PortProbe,
    transport_class,
)
from nanomesh.consensus.config import RaftTiming
from nanomesh.consensus.state import (
    DesiredState,
    Outcome,
    apply_delete_service,
    apply_init_meta,
    apply_patch_service,
    apply_put_registry,
    apply_put_service,
    apply_set_plan,
)
from nanomesh.consensus.status import RaftStatus, Role
from nanomesh.wire import Keyring

log = logging.getLogger("nanomesh.consensus")
_journal.install()  # durable journal and full dump: see `_journal`

PYSYNCOBJ_VERSION: str = pysyncobj.syncobj.VERSION

CommandCallback = Callable[[Any, int], None]
"""pysyncobj's completion callback: ``(result, failure code)``, on the tick
thread. Result is the apply function's return value on SUCCESS."""

_ROLES = {0: Role.FOLLOWER, 1: Role.CANDIDATE, 2: Role.LEADER}


def _ignore_drop(reason: str) -> None:
    pass


class _Wakeup:
    """A pipe in the tick thread's poller: `notify` (any thread) ends the
    tick thread's wait at once, so work handed to it does not wait for the
    next timer."""

    def __init__(self, poller: Any) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._closed = False
        poller.subscribe(self._read, self._drain, POLL_EVENT_TYPE.READ)

    def notify(self) -> None:
        if self._closed:
            return
        # A full pipe already holds a wake-up; a closed one has nobody to wake.
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._write, b"!")

    def _drain(self, descr: int, event: int) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._read, 4096):
                pass

    def close(self) -> None:
        """After the tick thread has ended (its poller is gone with it)."""
        if not self._closed:
            self._closed = True
            os.close(self._read)
            os.close(self._write)


class _DesiredStateMachine(pysyncobj.SyncObjConsumer):  # type: ignore[misc]
    """The replicated state as a pysyncobj consumer. Only ``doc`` (the plain
    dict form of the state) is written to the full dump: attributes set
    before ``SyncObjConsumer.__init__`` are not serialized."""

    def __init__(self, on_applied: Callable[[DesiredState], None]) -> None:
        self._state = DesiredState()
        self._on_applied = on_applied
        super().__init__()
        self.doc = self._state.to_doc()

    @property
    def state(self) -> DesiredState:
        return self._state

    def _take(self, result: tuple[DesiredState, Outcome]) -> Outcome:
        state, outcome = result
        if state is not self._state:
            self._state = state
            self.doc = state.to_doc()
            self._on_applied(state)
        return outcome

    @pysyncobj.replicated  # type: ignore[untyped-decorator]
    def put_service(self, name: Any, spec: Any) -> Outcome:
        return self._take(apply_put_service(self._state, name, spec))

    @pysyncobj.replicated  # type: ignore[untyped-decorator]
    def delete_service(self, name: Any) -> Outcome:
        return self._take(apply_delete_service(self._state, name))

    @pysyncobj.replicated  # type: ignore[untyped-decorator]
    def set_plan(self, plan: Any, expected_epoch: Any) -> Outcome:
        return self._take(apply_set_plan(self._state, plan, expected_epoch))

    @pysyncobj.replicated  # type: ignore[untyped-decorator]
    def init_meta(self, key: Any, value: Any) -> Outcome:
        return self._take(apply_init_meta(self._state, key, value))

    @pysyncobj.replicated  # type: ignore[untyped-decorator]
    def patch_service(self, name: Any, key: Any, value: Any) -> Outcome:
        return self._take(apply_patch_service(self._state, name, key, value))

    @pysyncobj.replicated  # type: ignore[untyped-decorator]
    def put_registry(self, key: Any, entry: Any) -> Outcome:
        return self._take(apply_put_registry(self._state, key, entry))

    def _deserialize(self, data: Any) -> None:
        """Called by pysyncobj when it loads a full dump (restart after a log
        compaction, or a snapshot sent by the leader to a lagging node)."""
        super()._deserialize(data)
        try:
            self._state = DesiredState.from_doc(self.doc)
            log.info("raft: state loaded from a full dump (revision %d)", self._state.revision)
        except ValueError:
            log.exception("full dump holds no valid state; starting from empty")
            self._state = DesiredState()
        self._on_applied(self._state)


class RaftNode:
    """One pysyncobj node holding the desired state.

    Construct it on the main thread. `on_applied(state)` runs on the tick
    thread after every committed change; `on_status(status)` after every tick
    that changed the status; `on_leadership(term)` when this node becomes
    leader of `term`. None of them may block or raise.
    """

    def __init__(self, *, self_address: str | None, peers: Sequence[str], timing: RaftTiming,
                 journal_file: str | None, dump_file: str | None, keyring: Keyring,
                 on_applied: Callable[[DesiredState], None],
                 on_status: Callable[[RaftStatus], None],
                 on_leadership: Callable[[int], None], hold_elections: bool = False,
                 epoch: int = 0, source_ip: str | None = None,
                 on_dropped: Callable[[str], None] | None = None,
                 on_storage_problem: _journal.ProblemCallback | None = None) -> None:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("create the Raft node on the main thread: pysyncobj's tick "
                               "thread stops silently when its creating thread exits")
        self._on_status = on_status
        self._on_leadership = on_leadership
        self._hold_elections = hold_elections
        self._hold_for = timing.raft_max_timeout
        self._leader_stale_after = timing.leader_fallback_timeout
        self._leader_loss_max_delay = timing.leader_loss_max_delay
        self._rng = random.Random()  # seeded from the OS: the draws must differ per node
        self._probe: PortProbe | None = None
        self._sent_view = (0, 0)  # (last log index, commit index) the followers were sent
        self._send_now = False
        self._probe_until = 0.0
        self._probe_for = timing.raft_min_timeout
        self._election_timeout = (timing.raft_min_timeout, timing.raft_max_timeout)
        self._backoff = election_backoff.ElectionBackoff()
        self._candidacy_term = -1  # the term of the last candidacy seen (`_space_out_elections`)
        self._reconnect_period = timing.connection_retry_time
        self._longest_wait = timing.auto_tick_period
        self._status: RaftStatus | None = None
        self._calls: collections.deque[Callable[[], None]] = collections.deque()
        conf = pysyncobj.SyncObjConf(
            **timing.to_syncobj_kwargs(),
            bindAddress=self_address,
            journalFile=journal_file,
            fullDumpFile=dump_file,
            password=None,  # authentication is KeyedSyncObj's cipher (`_transport`)
            commandsWaitLeader=False,  # fail fast: NoLeaderError, the caller decides
            useFork=False,
            onStateChanged=self._state_changed,
        )
        self._machine = _DesiredStateMachine(on_applied)
        cipher = KeyringCipher(keyring, epoch)  # ValueError without a key
        if source_ip is None and self_address is not None:
            source_ip = self_address.rsplit(":", 1)[0]
        self._source_ip = source_ip
        self._obj = KeyedSyncObj(
            self_address, list(peers), conf, consumers=[self._machine], cipher=cipher,
            transportClass=transport_class(cipher, source_ip, on_dropped or _ignore_drop))
        self._journal = self._obj._SyncObj__raftLog
        if isinstance(self._journal, _journal.DurableJournal):
            self._journal.on_problem = on_storage_problem
            _journal.guard_sends(self._obj._SyncObj__transport, self._journal)
        if journal_file is not None:
            self._store_commit_index_at_once()
        if hold_elections:
            self._postpone_election()
        self._commands = self._obj._SyncObj__commandsQueue._FastQueue__queue
        self._wakeup = _Wakeup(self._obj._poller)
        self._wait_until_due(self._obj._poller)
        self._obj._SyncObj__transport.on_closed_by_peer = self._on_closed_by_peer
        self._obj.addOnTickCallback(self._tick)

    # ------------------------------------------------------------ any thread

    def put_service(self, name: str, spec: Any, callback: CommandCallback) -> None:
        self._machine.put_service(name, spec, callback=callback)
        self._wakeup.notify()

    def delete_service(self, name: str, callback: CommandCallback) -> None:
        self._machine.delete_service(name, callback=callback)
        self._wakeup.notify()

    def set_plan(self, plan: Any, expected_epoch: int, callback: CommandCallback) -> None:
        self._machine.set_plan(plan, expected_epoch, callback=callback)
        self._wakeup.notify()

    def init_meta(self, key: str, value: Any, callback: CommandCallback) -> None:
        self._machine.init_meta(key, value, callback=callback)
        self._wakeup.notify()

    def patch_service(self, name: str, key: str, value: Any, callback: CommandCallback
                      ) -> None:
        self._machine.patch_service(name, key, value, callback=callback)
        self._wakeup.notify()

    def put_registry(self, key: str, entry: Any, callback: CommandCallback) -> None:
        self._machine.put_registry(key, entry, callback=callback)
        self._wakeup.notify()

    def add_voter(self, address: str, callback: CommandCallback) -> None:
        self._obj.addNodeToCluster(address, callback=callback)
        self._wakeup.notify()

    def remove_voter(self, address: str, callback: CommandCallback) -> None:
        self._obj.removeNodeFromCluster(address, callback=callback)
        self._wakeup.notify()

    def transfer_leadership(self, address: str | None, callback: CommandCallback) -> None:
        """Ask the leader (this node) to hand over to `address` (None: the most
        caught-up follower). SUCCESS only means the request was sent."""
        self.call_in_raft_thread(lambda: self._obj.transferLeadership(address, callback))

    def compact_log(self) -> None:
        """Write a full dump now and drop the log entries it covers (pysyncobj
        does it by itself every 5000 entries or 300 s)."""
        self.call_in_raft_thread(self._obj.forceLogCompaction)

    def call_in_raft_thread(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the tick thread at its next tick (at once)."""
        self._calls.append(fn)
        self._wakeup.notify()

    def destroy(self) -> None:
        """Ask the tick thread to close sockets and the journal, then exit."""
        if isinstance(self._journal, _journal.DurableJournal):
            self._journal.abort()  # a journal write retried on a full disk gives up
        self._obj.destroy()
        self._wakeup.notify()

    def alive(self) -> bool:
        return bool(self._obj.tick_thread_alive())

    def release(self) -> None:
        """Close what outlives the tick thread; call once `alive` is False."""
        self._wakeup.close()
        if self._probe is not None:
            self._probe.close()

    @property
    def initial_state(self) -> DesiredState:
        """The state right after construction (before any tick)."""
        return self._machine.state

    # ------------------------------------------------------------ tick thread

    def _tick(self) -> None:
        if isinstance(self._journal, _journal.DurableJournal):
            self._journal.sync()  # this tick's appends, before the next tick counts them
        if self._hold_elections:
            if self._obj._getLeader() is None:
                self._postpone_election()
            else:
                self._hold_elections = False  # part of the cluster now: normal Raft
        self._space_out_elections()
        self._send_news_now()
        if self._probe is not None and pysyncobj.syncobj.monotonicTime() > self._probe_until:
            self._probe.close()  # no answer: the election timeout decides
            self._probe = None
        while self._calls:
            fn = self._calls.popleft()
            try:
                fn()
            except Exception:
                log.exception("call in the raft thread failed")
        status = self._read_status()
        if status != self._status:
            self._status = status
            self._on_status(status)

    def _on_closed_by_peer(self, node: Any) -> None:
        """The other side closed our link to voter `node` (transport callback,
        on the tick thread). If it was our leader, ask its host whether
        anything still listens on its Raft port: a leader also closes links
        on purpose (it removed this node from the cluster, it refused a
        frame), and only a refused connect says its process is gone. The
        probe ends in `_leader_gone`, or says nothing within an election
        timeout (`_tick` drops it; the election timeout runs meanwhile)."""
        if not self._campaigns_early(str(node.address)) or self._probe is not None:
            return
        probe = PortProbe(self._obj._poller, str(node.address), self._source_ip,
                          lambda: self._leader_gone(str(node.address)))
        if probe.refused:
            self._leader_gone(str(node.address))
        elif probe.pending:
            self._probe = probe
            self._probe_until = pysyncobj.syncobj.monotonicTime() + self._probe_for

    def _campaigns_early(self, closed: str) -> bool:
        obj = self._obj
        leader = obj._getLeader()
        return leader_loss.campaigns_early(
            is_follower=obj.selfNode is not None and obj._SyncObj__raftState == 0,
            holding=self._hold_elections,
            leader=None if leader is None else str(leader.address), closed=closed)

    def _leader_gone(self, address: str) -> None:
        """Nothing listens where our leader did: campaign after a short random
        delay rather than the rest of the election timeout (`leader_loss`),
        unless meanwhile another leader was heard or a candidate asked. The
        tick's poll then wakes at the new deadline (`_time_to_next_timer`)."""
        if self._probe is not None:
            self._probe.close()
            self._probe = None
        if not self._campaigns_early(address):
            return
        obj = self._obj
        now = pysyncobj.syncobj.monotonicTime()
        deadline = leader_loss.campaign_deadline(
            now=now, deadline=obj._SyncObj__raftElectionDeadline, draw=self._rng.random(),
            max_delay=self._leader_loss_max_delay)
        obj._SyncObj__raftElectionDeadline = deadline
        log.info("raft: leader %s is gone (its link closed, its port refuses); campaigning "
                 "in %.0f ms unless a candidate asks first", address, 1000 * (deadline - now))

    def _space_out_elections(self) -> None:
        """Stretch the election timeout of a candidacy in a streak that keeps
        electing nobody (`election_backoff`). pysyncobj runs the tick
        callbacks after its election check, so a candidacy started in this
        tick is seen here before its first timeout can run out."""
        obj = self._obj
        if obj._SyncObj__raftState != 1:  # not a candidate
            if obj._getLeader() is not None:
                self._backoff.leader_known()
            return
        term = int(obj.raftCurrentTerm)
        if term == self._candidacy_term:
            return
        self._candidacy_term = term
        factor = self._backoff.candidacy()
        if factor == 1:
            return
        now = pysyncobj.syncobj.monotonicTime()
        deadline = election_backoff.stretched_deadline(
            now=now, draw=self._rng.random(), low=self._election_timeout[0],
            high=self._election_timeout[1], factor=factor)
        obj._SyncObj__raftElectionDeadline = deadline
        if self._backoff.at_cap:
            log.warning("raft: %d candidacies in a row elected nobody (vote round trips slower "
                        "than the election timeout: an overloaded host or network?); waiting "
                        "%.1f s before the next (x%d)", self._backoff.streak - 1,
                        deadline - now, factor)

    def _send_news_now(self) -> None:
        """On a leader whose log or commit index moved this tick, make the
        next append_entries due at once (the next tick, right after this
        one's journal sync) instead of at the next heartbeat period. With
        batching, pysyncobj sends a new entry only when the period is up, so
        a write waited up to one period to leave and its commit as long to
        reach the followers: fine at 30 ms heartbeats, ~100 ms of latency
        each at 100 ms. One send per tick that had news, whatever the number
        of writes in it: still batched. ``raftNextIndex`` advances on send,
        so nothing already sent is sent again."""
        obj = self._obj
        self._send_now = False
        if obj._SyncObj__raftState != 2:
            self._sent_view = (0, 0)
            return
        view = (int(obj._SyncObj__raftLog[-1][1]), int(obj.raftCommitIndex))
        if view != self._sent_view:
            self._sent_view = view
            obj._SyncObj__newAppendEntriesTime = 0.0
            self._send_now = True

    def _wait_until_due(self, poller: Any) -> None:
        """Make the tick thread's poll wait only until the next timer is due
        (see the module doc); its other callers pass 0 or nothing else."""
        poll = poller.poll

        def poll_until_due(timeout: float) -> None:
            poll(min(timeout, self._time_to_next_timer()))
        poller.poll = poll_until_due

    def _time_to_next_timer(self) -> float:
        """Seconds until the earliest timer of this node is due (0: work is
        waiting), at most ``auto_tick_period``. Runs on the tick thread, at
        the end of a tick."""
        if self._calls or self._commands or self._send_now:
            return 0.0
        obj = self._obj
        now = pysyncobj.syncobj.monotonicTime()
        due = [now + self._longest_wait]
        if obj._SyncObj__raftState == 2:  # leader: the next heartbeat
            due.append(obj._SyncObj__newAppendEntriesTime)
        else:
            deadline = obj._SyncObj__raftElectionDeadline
            if obj.selfNode is not None:
                # Held: `_tick` pushes the deadline on, so wake before it passes.
                due.append(now + self._hold_for / 2 if self._hold_elections else deadline)
            if obj._getLeader() is not None:
                due.append(deadline + self._leader_stale_after)  # `_leader_silent`
        # A deadline already past that pysyncobj did not act on (an election
        # with nobody connected, a forgotten leader) needs no busy wake-up: the
        # reconnect timer or a socket event brings the next tick.
        wait = min((t - now for t in due if t > now), default=self._reconnect_period)
        # The transport's reconnect timer, looked at only when no nearer timer
        # is due anyway (the leader's heartbeat always is: it ticks per answer).
        if wait > self._reconnect_period and not all(
                obj.isNodeConnected(n) for n in obj.otherNodes):
            wait = self._reconnect_period
        return wait

    def _read_status(self) -> RaftStatus:
        obj = self._obj
        me = obj.selfNode
        role = Role.LEARNER if me is None else _ROLES[int(obj._SyncObj__raftState)]
        leader = obj._getLeader()
        if leader is not None and role is not Role.LEADER and self._leader_silent(obj):
            leader = None
        others = frozenset(n.address for n in obj.otherNodes)
        connected = None if me is None else frozenset(
            n.address for n in obj.otherNodes if obj.isNodeConnected(n)) | {me.address}
        return RaftStatus(
            address=None if me is None else me.address,
            role=role,
            term=int(obj.raftCurrentTerm),
            leader=None if leader is None else str(leader.address),
            voters=others if me is None else others | {me.address},
            commit_index=int(obj.raftCommitIndex),
            last_applied=int(obj.raftLastApplied),
            has_quorum=bool(obj.hasQuorum),
            ready=bool(obj.isReady()),
            learners=len(obj.readonlyNodes),
            bound=bool(obj._SyncObj__transport.ready),
            connected=connected,
        )

    def _store_commit_index_at_once(self) -> None:
        """pysyncobj's file journal writes the commit index to ``journal.meta``
        only once a second (and not at all on destroy), but a restarted node
        replays membership changes only up to the stored index. A voter whose
        removal committed (and who, told so, became a learner) then came back
        into the configuration of the last voter after its restart, which
        waited forever for that learner's vote. Stored at every change
        instead, before the commit is applied and reported: one small file
        write per commit-index change (about one per heartbeat under writes)."""
        journal = self._obj._SyncObj__raftLog
        set_index, store = journal.setRaftCommitIndex, journal.onOneSecondTimer

        def set_and_store(index: int) -> None:
            set_index(index)
            store()
        journal.setRaftCommitIndex = set_and_store

    def _leader_silent(self, obj: Any) -> bool:
        """Has the leader this node last heard been silent for longer than an
        election timeout plus ``leader_fallback_timeout``? pysyncobj pushes
        the election deadline forward on every message from the leader, but
        only a voter that can campaign ever forgets its leader: a learner (or
        a follower connected to nobody) kept reporting a dead one forever."""
        deadline = obj._SyncObj__raftElectionDeadline
        return bool(pysyncobj.syncobj.monotonicTime() > deadline + self._leader_stale_after)

    def _postpone_election(self) -> None:
        """Push this node's election deadline past the next tick (runs first
        on the constructing thread, before any connection exists, then on the
        tick thread after every tick; the deadline is only read on the tick
        thread, at the start of a tick)."""
        self._obj._SyncObj__raftElectionDeadline = (
            pysyncobj.syncobj.monotonicTime() + self._hold_for)

    def _state_changed(self, old: int, new: int) -> None:
        if new == 2:
            self._on_leadership(int(self._obj.raftCurrentTerm))
