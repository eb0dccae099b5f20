"""SWIM + Lifeguard membership as a sans-I/O state machine.

The core never reads a clock, a socket or the global random module. Its
shell feeds it:

- ``handle_datagram(from_addr, messages, now)`` for every decoded UDP packet,
- ``handle_stream_request(request, now)`` for every TCP request (it returns
  the reply to send back),
- ``handle_stream_reply(call_id, reply, now)`` / ``stream_failed(call_id, now)``
  for the outcome of every `StreamCall` it was asked to make,
- ``tick(now)`` whenever ``now >= next_deadline()``,

and carries out the effects each call returns, in order (see `effects`).

The protocol, with the section of the paper each part implements:

- Failure detection (SWIM §3.1, §4.3): every ``probe_interval`` probe the next
  peer of a shuffled round-robin list with a ping; without an ack within
  ``probe_timeout``, ask ``indirect_checks`` peers to probe it (ping-req);
  without any ack by the end of the interval, suspect it. With ``tcp_ping``
  the target is also pinged over TCP alongside the indirect probes, and an ack
  on that stream counts too (memberlist's fallback: UDP-only loss or a UDP
  filter then raises no suspicion).
- Suspicion (SWIM §4.2): a suspected peer is not dead yet; if it hears the
  suspicion it refutes with a higher incarnation. If the suspicion outlives
  its timeout the peer is declared dead.
- Dissemination (SWIM §4.1): alive/suspect/dead updates are piggybacked on
  every datagram and sent in gossip rounds, each a bounded number of times.
- Lifeguard (Dadgar et al., 2018): local health awareness stretches our own
  timers when we are the slow one (§4.1, `awareness`); nacks from relays tell
  our own packet loss apart from the target's failure (§4.1); the suspicion
  timeout shrinks with independent confirmations (§4.3, `suspicion`); and the
  "buddy system" piggybacks a suspicion on the ping to the suspect so it can
  refute at once (§4.2). We also send a refutation straight to its accuser.
- Beyond SWIM, as memberlist does: TCP push-pull anti-entropy, graceful leave,
  reaping of dead members, and reconnect attempts to dead members so both
  sides of a healed partition merge again without an operator.

Capability profiles are too large to gossip. A profile change is announced as
a new incarnation carrying the profile *version*; a peer that hears of a
version it does not hold pulls the profile over TCP from the peer that told
it, or from the owner if that one does not have it yet.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nanomesh.gossip.awareness import Awareness
from nanomesh.gossip.broadcast import BroadcastQueue
from nanomesh.gossip.config import GossipConfig
from nanomesh.gossip.effects import (
    Effect,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberReaped,
    MemberRecovered,
    MemberSuspected,
    ProfileUpdated,
    Refuted,
    SendDatagram,
    StreamCall,
    StreamPurpose,
)
from nanomesh.gossip.members import IndexedSet, Member
from nanomesh.gossip.suspicion import Suspicion
from nanomesh.gossip.timing import (
    expected_confirmations,
    push_pull_scale,
    retransmit_limit,
    suspicion_timeout,
)
from nanomesh.wire import (
    MAX_DATAGRAM,
    Ack,
    Address,
    Alive,
    DatagramMessage,
    Dead,
    IndirectPing,
    MemberDigest,
    MemberState,
    Nack,
    Ping,
    ProfileRecord,
    ProfileReply,
    ProfileRequest,
    PushPull,
    PushPullReply,
    StreamMessage,
    Suspect,
)
from nanomesh.wire.codec import encoded_size
from nanomesh.wire.envelope import ENVELOPE_OVERHEAD

ALIVE, SUSPECT, DEAD, LEFT = (MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD,
                              MemberState.LEFT)


@dataclass(slots=True)
class _Probe:
    """The one probe in flight (SWIM probes one peer per protocol period)."""

    target: str
    seq: int
    direct_deadline: float
    deadline: float
    indirect_sent: bool = False
    expected_nacks: int = 0
    nacks: int = 0


@dataclass(slots=True)
class _Relay:
    """An indirect probe we make on behalf of another peer."""

    reply_to: Address
    their_seq: int
    deadline: float
    want_nack: bool


@dataclass(slots=True)
class _Call:
    purpose: StreamPurpose
    addr: Address
    names: tuple[str, ...] = ()


@dataclass(slots=True)
class Stats:
    """Counters for `statistics()`; monotonically increasing."""

    probes: int = 0
    probe_acks: int = 0
    """Probes answered in time (directly, through a relay or over TCP)."""
    probe_failures: int = 0
    indirect_probes: int = 0
    suspicions: int = 0
    refutations: int = 0
    deaths_declared: int = 0
    datagrams_out: int = 0
    stream_calls: int = 0
    stream_failures: int = 0
    profiles_pulled: int = 0
    profiles_published: int = 0
    """Our own profile versions published (`Membership.update_profile`)."""
    stale_acks: int = 0
    misdirected_pings: int = 0
    tcp_pings: int = 0
    tcp_ping_acks: int = 0
    """Probes that only the TCP fallback answered in time (UDP lost both ways)."""


@dataclass(slots=True)
class _Timers:
    next_probe: float
    next_gossip: float
    next_push_pull: float
    next_reconnect: float
    next_reap: float
    extra: list[float] = field(default_factory=list)


class Membership:
    """One peer's view of the mesh."""

    def __init__(
        self,
        name: str,
        addr: Address,
        config: GossipConfig,
        rng: random.Random,
        now: float,
        profile: Mapping[str, Any] | None = None,
        incarnation: int = 0,
    ) -> None:
        self.name = name
        self.addr = addr
        self.config = config.validate()
        self._rng = rng
        self.awareness = Awareness(config.awareness_max_multiplier)
        self.stats = Stats()
        self._broadcasts = BroadcastQueue(encoded_size)
        self._overhead = ENVELOPE_OVERHEAD
        # Our own profile version is incarnation + 1 when published (so it is
        # >= 1, the "none held" marker being 0). It stays monotonic across
        # restarts as long as the shell starts us at a higher incarnation than
        # our last life (the daemon persists it in its data directory).
        version = incarnation + 1 if profile else 0
        me = Member(name, addr, incarnation, ALIVE, now, profile_version=version,
                    profile=dict(profile) if profile else None, held_version=version)
        self._members: dict[str, Member] = {name: me}
        self._live = IndexedSet()  # alive or suspect, never self
        self._down = IndexedSet()  # dead or left, never self
        self._suspected: set[str] = set()
        self._profile_lag: set[str] = set()  # held_version < profile_version
        self._probe_order: list[str] = []
        self._probe_index = 0
        self._probe: _Probe | None = None
        self._relays: dict[int, _Relay] = {}
        self._calls: dict[int, _Call] = {}
        self._wanted_profiles: dict[str, float] = {}  # name -> pull in flight until
        self._seq = 0
        self._leaving = False
        # Announce ourselves on the first datagrams we send (memberlist's setAlive).
        self._broadcasts.queue(name, self._alive_of(me))
        c = config
        self._t = _Timers(
            next_probe=now + rng.uniform(0, c.probe_interval),
            next_gossip=now + rng.uniform(0, c.gossip_interval),
            next_push_pull=now + c.push_pull_interval * rng.uniform(0.5, 1.0)
            if c.push_pull_interval else float("inf"),
            next_reconnect=now + c.reconnect_interval,
            next_reap=now + 1.0,
        )

    # ------------------------------------------------------------ queries

    @property
    def me(self) -> Member:
        return self._members[self.name]

    @property
    def incarnation(self) -> int:
        return self.me.incarnation

    def members(self) -> list[Member]:
        """Every known peer including ourselves, sorted by name. Read only."""
        return [self._members[n] for n in sorted(self._members)]

    def member(self, name: str) -> Member | None:
        return self._members.get(name)

    def num_live(self) -> int:
        """Estimated mesh size: alive and suspect peers, ourselves included."""
        return len(self._live) + 1

    def next_deadline(self) -> float:
        """The earliest time at which `tick` has work to do.

        The gossip and reap timers count only while they have something to
        do (a queued broadcast; a member down or a profile to pull): an idle
        peer's shell then wakes for its probes, not 5 + 1 more times a
        second for nothing. A timer that becomes due while idle fires at
        the next tick, so a new broadcast leaves at once instead of at the
        next gossip interval."""
        t = self._t
        deadline = min(t.next_probe, t.next_push_pull, t.next_reconnect)
        if len(self._broadcasts):
            deadline = min(deadline, t.next_gossip)
        if self._down or self._profile_lag or self._wanted_profiles:
            deadline = min(deadline, t.next_reap)
        if self._probe is not None:
            p = self._probe
            deadline = min(deadline, p.deadline if p.indirect_sent else p.direct_deadline)
        for relay in self._relays.values():
            deadline = min(deadline, relay.deadline)
        for name in self._suspected:
            s = self._members[name].suspicion
            if s is not None:
                deadline = min(deadline, s.deadline, s.recheck_at or deadline)
        return deadline

    # ------------------------------------------------------------ commands from the shell

    def join(self, seeds: Sequence[Address], now: float) -> list[Effect]:
        """Contact each seed with a joining push-pull (memberlist's Join)."""
        return [self._call("join", addr, self._push_pull(join=True)) for addr in seeds
                if addr != self.addr]

    def leave(self, now: float) -> list[Effect]:
        """Announce a graceful leave. The shell should keep ticking for a few
        gossip intervals afterwards so the broadcast gets out."""
        me = self.me
        self._leaving = True
        me.state, me.state_since = LEFT, now
        dead = Dead(self.name, me.incarnation, self.name)
        self._broadcasts.queue(self.name, dead)
        fanout = self._live.sample(self._rng, 2 * self.config.gossip_nodes)
        return [self._send(self._members[n].addr, [dead], n) for n in fanout]

    def update_profile(self, profile: Mapping[str, Any], now: float) -> list[Effect]:
        """Publish a changed capability profile as a new incarnation. Not while
        leaving: the new incarnation would outrank our leave, and peers would
        take us for rejoined, then for dead once we are gone (the daemon's
        Raft role changes as it shuts down, which changes the profile)."""
        if self._leaving:
            return []
        me = self.me
        me.profile = dict(profile)
        me.incarnation += 1  # our profile version is always incarnation + 1
        me.profile_version = me.held_version = me.incarnation + 1
        self.stats.profiles_published += 1
        self._broadcasts.queue(self.name, self._alive_of(me))
        return [ProfileUpdated(self.name, me.profile_version)]

    def bootstrap(self, digests: Iterable[MemberDigest], now: float) -> None:
        """Install a known membership table without announcing it: used by the
        simulator to start a large experiment from a converged mesh."""
        for d in digests:
            if d.name != self.name and d.name not in self._members:
                self._members[d.name] = Member(d.name, d.addr, d.incarnation, d.state, now,
                                               d.profile_version)
                if d.state in (ALIVE, SUSPECT):
                    self._add_live(d.name)
                else:
                    self._down.add(d.name)

    # ------------------------------------------------------------ inputs

    def tick(self, now: float) -> list[Effect]:
        effects: list[Effect] = []
        t = self._t
        if self._probe is not None:
            effects += self._advance_probe(now)
        if now >= t.next_probe and self._probe is None:
            interval = self.awareness.scale(self.config.probe_interval)
            t.next_probe = now + interval
            if not self._leaving:
                effects += self._start_probe(now, interval)
        for seq in [s for s, r in self._relays.items() if now >= r.deadline]:
            relay = self._relays.pop(seq)
            if relay.want_nack:
                effects.append(self._send(relay.reply_to, [Nack(relay.their_seq)]))
        effects += self._expire_suspicions(now)
        effects += self._recheck_suspects(now)
        if now >= t.next_gossip and len(self._broadcasts):  # idle: stays due (`next_deadline`)
            t.next_gossip = now + self.config.gossip_interval
            effects += self._gossip(now)
        if now >= t.next_push_pull:
            t.next_push_pull = now + push_pull_scale(self.config.push_pull_interval,
                                                     self.num_live())
            effects += self._periodic_push_pull()
        if now >= t.next_reconnect:
            t.next_reconnect = now + self.config.reconnect_interval
            effects += self._reconnect(now)
        if now >= t.next_reap:
            t.next_reap = now + 1.0
            effects += self._reap(now)
            effects += self._retry_profile_pulls(now)
        return effects

    def handle_datagram(self, from_addr: Address, messages: Sequence[DatagramMessage],
                        now: float) -> list[Effect]:
        effects: list[Effect] = []
        pulls: dict[Address, list[str]] = {}
        for m in messages:
            effects += self._handle_one(from_addr, m, now, pulls)
        effects += self._profile_calls(pulls, now)
        return effects

    def handle_stream_request(self, request: StreamMessage, now: float
                              ) -> tuple[StreamMessage | None, list[Effect]]:
        """Answer a TCP request. Returns (reply or None to close, effects)."""
        match request:
            case PushPull():
                # Merge first: when the caller holds us suspect, the reply
                # carries our refutation back on the same stream (the TCP
                # fallback relies on it for a peer whose datagrams are lost).
                effects = self._merge(request.members, request.source, self._stream_addr(
                    request.source), now)
                return PushPullReply(self.name, self._digests()), effects
            case ProfileRequest():
                return ProfileReply(self._profile_records(request.names)), []
            case Ping():
                return self._on_tcp_ping(request), []
        return None, []

    def handle_stream_reply(self, call_id: int, reply: StreamMessage, now: float
                            ) -> list[Effect]:
        call = self._calls.pop(call_id, None)
        if call is None:
            return []
        match reply:
            case PushPullReply() if call.purpose != "profile":
                return self._merge(reply.members, reply.source, call.addr, now)
            case ProfileReply() if call.purpose == "profile":
                return self._accept_profiles(call, reply.profiles, now)
            case Ack() if call.purpose == "ping":
                return self._on_tcp_ack(reply.seq, now)
        self.stats.stream_failures += 1
        return []

    def stream_failed(self, call_id: int, now: float) -> list[Effect]:
        call = self._calls.pop(call_id, None)
        if call is None:
            return []
        self.stats.stream_failures += 1
        if call.purpose == "profile":
            for name in call.names:
                self._wanted_profiles.pop(name, None)
        return []

    # ------------------------------------------------------------ probing

    def _next_probe_target(self) -> str | None:
        """Round-robin over a shuffled list, reshuffled each pass (SWIM §4.3):
        every live peer is probed within a bounded time."""
        for _ in range(2):
            while self._probe_index < len(self._probe_order):
                name = self._probe_order[self._probe_index]
                self._probe_index += 1
                if name in self._live:
                    return name
            self._probe_order = list(self._live)
            self._rng.shuffle(self._probe_order)
            self._probe_index = 0
        return None

    def _start_probe(self, now: float, interval: float) -> list[Effect]:
        name = self._next_probe_target()
        if name is None:
            return []
        target = self._members[name]
        self._seq += 1
        self.stats.probes += 1
        self._probe = _Probe(name, self._seq,
                             direct_deadline=now + self.awareness.scale(self.config.probe_timeout),
                             deadline=now + interval)
        msgs: list[DatagramMessage] = [Ping(self._seq, name, self.name, self.addr)]
        if target.state is SUSPECT:  # Lifeguard buddy system
            msgs.append(Suspect(name, target.incarnation, self.name))
        return [self._send(target.addr, msgs, name)]

    def _advance_probe(self, now: float) -> list[Effect]:
        p = self._probe
        assert p is not None
        target = self._members.get(p.target)
        if target is None or target.state not in (ALIVE, SUSPECT):
            self._probe = None  # it died or left while we were probing
            return []
        effects: list[Effect] = []
        if not p.indirect_sent and now >= p.direct_deadline:
            effects += self._send_indirect_probes(p, target)
        if p.indirect_sent and now >= p.deadline:
            effects += self._probe_failed(p, target, now)
        return effects

    def _send_indirect_probes(self, p: _Probe, target: Member) -> list[Effect]:
        p.indirect_sent = True
        relays = self._live.sample(self._rng, self.config.indirect_checks,
                                   exclude=frozenset((target.name,)))
        p.expected_nacks = len(relays)
        self.stats.indirect_probes += len(relays)
        req = IndirectPing(p.seq, target.name, target.addr, self.name, self.addr, True)
        effects: list[Effect] = [self._send(self._members[r].addr, [req], r) for r in relays]
        if self.config.tcp_ping:
            effects.append(self._tcp_ping(p, target))
        return effects

    def _tcp_ping(self, p: _Probe, target: Member) -> StreamCall:
        """memberlist's fallback: the same ping over TCP, worth nothing after
        the probe period (its outcome is judged then)."""
        self.stats.tcp_pings += 1
        ping = Ping(p.seq, target.name, self.name, self.addr)
        return self._call("ping", target.addr, ping, deadline=p.deadline)

    def _on_tcp_ping(self, ping: Ping) -> Ack | None:
        """Answer as `_on_ping` does, but on the stream: no piggybacked
        updates, and silence (the stream closes) for a ping meant for another."""
        if ping.target != self.name:
            self.stats.misdirected_pings += 1
            return None
        return Ack(ping.seq)

    def _on_tcp_ack(self, seq: int, now: float) -> list[Effect]:
        """An ack over TCP before the probe period ends: the target is alive.
        Later, the probe has failed already (or a newer one runs): ignored.

        A *suspect* that answers only over TCP may never hear the suspicion
        (the buddy system rides on datagrams) and so never refute it: push-pull
        with it, which hands it the suspicion and brings its refutation back
        on the same stream. (Beyond memberlist, whose UDP-deaf peer dies once
        one TCP ping is late: at 0.1 s that happens on a busy machine.)"""
        p = self._probe
        if p is None or p.seq != seq or now >= p.deadline:
            return []
        self.stats.tcp_ping_acks += 1
        self._probe_succeeded()
        target = self._members.get(p.target)
        if target is None or target.state is not SUSPECT:
            return []
        return [self._call("push-pull", target.addr, self._push_pull(False))]

    def _probe_succeeded(self) -> None:
        """Any ack (direct, relayed or over TCP) ends the probe and counts as
        health (Lifeguard §4.1; memberlist scores a TCP-only success the same)."""
        self._probe = None
        self.stats.probe_acks += 1
        self.awareness.apply_delta(-1)

    def _probe_failed(self, p: _Probe, target: Member, now: float) -> list[Effect]:
        """No ack by UDP, relay or TCP. Lifeguard §4.1: missing nacks mean *we*
        may be the unhealthy one."""
        self._probe = None
        self.stats.probe_failures += 1
        if p.expected_nacks:
            self.awareness.apply_delta(p.expected_nacks - p.nacks)
        else:
            self.awareness.apply_delta(1)
        suspect = Suspect(target.name, target.incarnation, self.name)
        # Tell the suspect at once too: if it is alive and only lost packets,
        # it refutes before anyone's timer runs out.
        return [*self._on_suspect(suspect, now), self._send(target.addr, [suspect], target.name)]

    def _on_ack(self, seq: int) -> list[Effect]:
        p = self._probe
        if p is not None and p.seq == seq:
            self._probe_succeeded()
            return []
        relay = self._relays.pop(seq, None)
        if relay is not None:
            return [self._send(relay.reply_to, [Ack(relay.their_seq)])]
        self.stats.stale_acks += 1
        return []

    def _on_nack(self, seq: int) -> None:
        if self._probe is not None and self._probe.seq == seq:
            self._probe.nacks += 1

    def _on_ping(self, from_addr: Address, ping: Ping) -> list[Effect]:
        if ping.target != self.name:
            # Someone else used to live at this address; answering would hide
            # that peer's failure.
            self.stats.misdirected_pings += 1
            return []
        return [self._send(from_addr, [Ack(ping.seq)], ping.source)]

    def _on_indirect_ping(self, req: IndirectPing, now: float) -> list[Effect]:
        self._seq += 1
        self._relays[self._seq] = _Relay(req.source_addr, req.seq,
                                         now + self.config.probe_timeout, req.want_nack)
        ping = Ping(self._seq, req.target, self.name, self.addr)
        return [self._send(req.target_addr, [ping], req.target)]

    # ------------------------------------------------------------ state changes

    def _handle_one(self, from_addr: Address, m: DatagramMessage, now: float,
                    pulls: dict[Address, list[str]]) -> list[Effect]:
        match m:
            case Ping():
                return self._on_ping(from_addr, m)
            case IndirectPing():
                return self._on_indirect_ping(m, now)
            case Ack():
                return self._on_ack(m.seq)
            case Nack():
                self._on_nack(m.seq)
                return []
            case Alive():
                return self._on_alive(m, now, pulls, from_addr)
            case Suspect():
                return self._on_suspect(m, now) or self._correct_stale(m, from_addr)
            case Dead():
                return self._on_dead(m, now) or self._correct_stale(m, from_addr)
        return []  # pragma: no cover - the union is exhaustive

    def _on_alive(self, a: Alive, now: float, pulls: dict[Address, list[str]],
                  teller: Address | None) -> list[Effect]:
        if a.name == self.name:
            return self._refute_if_newer(a.incarnation, a.name, now)
        m = self._members.get(a.name)
        if m is None:
            m = Member(a.name, a.addr, a.incarnation, ALIVE, now, a.profile_version)
            self._members[a.name] = m
            self._add_live(a.name)
            self._broadcasts.queue(a.name, a)
            self._want_profile(m, teller, pulls)
            return [MemberJoined(a.name, a.addr, rejoined=False)]
        if a.incarnation <= m.incarnation:
            self._want_profile_version(m, a.profile_version, teller, pulls)
            return []
        if a.addr != m.addr and not m.dead_or_left:
            return []  # a live peer already holds this name elsewhere: refuse the clash
        old = m.state
        m.incarnation, m.addr = a.incarnation, a.addr
        self._clear_suspicion(m)
        if old is not ALIVE:
            m.state, m.state_since = ALIVE, now
            self._down.discard(a.name)
            self._add_live(a.name)
        self._broadcasts.queue(a.name, a)
        self._want_profile_version(m, a.profile_version, teller, pulls)
        if old is SUSPECT:
            return [MemberRecovered(a.name)]
        if old in (DEAD, LEFT):
            return [MemberJoined(a.name, a.addr, rejoined=True)]
        return []

    def _correct_stale(self, m: Suspect | Dead, sender: Address) -> list[Effect]:
        """The sender gossiped an accusation that a newer incarnation already
        refuted. Reply with the refutation: the sender evidently missed it,
        and without it its own suspicion timer would declare a live peer dead.
        (Our addition to SWIM: at 10 % loss a refutation occasionally fails
        to reach a peer that heard the accusation late.)"""
        known = self._members.get(m.name)
        if (m.name == self.name or known is None or known.state is not ALIVE
                or m.incarnation >= known.incarnation):
            return []
        return [self._send(sender, [self._alive_of(known)])]

    def _on_suspect(self, s: Suspect, now: float) -> list[Effect]:
        if s.name == self.name:
            return self._refute_if_newer(s.incarnation, s.by, now, accused=True)
        m = self._members.get(s.name)
        if m is None or s.incarnation < m.incarnation or m.dead_or_left:
            return []
        if m.state is SUSPECT and m.suspicion is not None:
            if m.suspicion.confirm(s.by):
                self._broadcasts.queue(s.name, s)
            return []
        if s.incarnation == m.incarnation and m.state is not ALIVE:
            return []
        m.incarnation, m.state, m.state_since = s.incarnation, SUSPECT, now
        n = self.num_live()
        min_t = suspicion_timeout(self.config.suspicion_mult, n, self.config.probe_interval)
        m.suspicion = Suspicion(s.by, now, expected_confirmations(self.config.suspicion_mult, n),
                                min_t, min_t * self.config.suspicion_max_timeout_mult)
        self._suspected.add(s.name)
        self.stats.suspicions += 1
        self._broadcasts.queue(s.name, s)
        return [MemberSuspected(s.name, s.by)]

    def _on_dead(self, d: Dead, now: float) -> list[Effect]:
        if d.name == self.name:
            if self._leaving:
                return []
            return self._refute_if_newer(d.incarnation, d.by, now, accused=True)
        m = self._members.get(d.name)
        if m is None or d.incarnation < m.incarnation:
            return []
        left = d.by == d.name
        if m.state is LEFT or (m.state is DEAD and not left):
            return []
        m.incarnation, m.state_since = d.incarnation, now
        m.state = LEFT if left else DEAD
        self._clear_suspicion(m)
        self._live.discard(d.name)
        self._down.add(d.name)
        self._broadcasts.queue(d.name, d)
        return [MemberLeft(d.name) if left else MemberFailed(d.name, d.by)]

    def _refute_if_newer(self, incarnation: int, accuser: str, now: float,
                         accused: bool = False) -> list[Effect]:
        """SWIM §4.2: answer a claim about us with a higher incarnation. A plain
        alive message about us with an old incarnation needs no answer."""
        me = self.me
        if self._leaving or (not accused and incarnation <= me.incarnation):
            return []
        if accused and incarnation < me.incarnation:
            # A stale accusation: we refuted already but the accuser has not
            # heard. Tell it directly rather than wait for gossip to get there.
            return self._assert_alive_to(accuser)
        me.incarnation = incarnation + 1
        # The profile version stays: a refutation changes nothing peers need
        # to pull again (at 10 % loss there are ~50 refutations a minute in a
        # 20-peer mesh, each of which would otherwise make every peer pull).
        self.stats.refutations += 1
        if accused:
            self.awareness.apply_delta(1)  # Lifeguard §4.1: being suspected is a sign
        alive = self._alive_of(me)
        self._broadcasts.queue(self.name, alive)
        return [Refuted(me.incarnation, accuser), *self._assert_alive_to(accuser)]

    def _assert_alive_to(self, name: str) -> list[Effect]:
        """Send our current Alive straight to `name` (an accuser)."""
        m = self._members.get(name)
        if m is None or name == self.name or m.dead_or_left:
            return []
        return [self._send(m.addr, [self._alive_of(self.me)], name)]

    def _clear_suspicion(self, m: Member) -> None:
        m.suspicion = None
        self._suspected.discard(m.name)

    def _recheck_suspects(self, now: float) -> list[Effect]:
        """Halfway to the minimum suspicion timeout, ping the suspect ourselves
        with the suspicion attached (the buddy system, out of turn).

        A peer that is really dead is confirmed by others and declared at the
        minimum timeout anyway; this costs it one ping per holder. A peer that
        is alive refuted long ago, so only holders that missed the refutation
        (it spreads by gossip, which at 10 % loss misses a peer now and then)
        still hold the suspicion, and the suspect answers them directly."""
        effects: list[Effect] = []
        for name in sorted(self._suspected):
            m = self._members[name]
            s = m.suspicion
            if s is None or s.recheck_at is None or now < s.recheck_at:
                continue
            s.recheck_at = None
            self._seq += 1
            effects.append(self._send(m.addr, [Ping(self._seq, name, self.name, self.addr),
                                               Suspect(name, m.incarnation, self.name)], name))
        return effects

    def _expire_suspicions(self, now: float) -> list[Effect]:
        effects: list[Effect] = []
        expired = [name for name in self._suspected
                   if (s := self._members[name].suspicion) is not None and now >= s.deadline]
        expired.sort()  # set order varies between runs; effects must not
        for name in expired:
            m = self._members[name]
            self.stats.deaths_declared += 1
            effects += self._on_dead(Dead(name, m.incarnation, self.name), now)
        return effects

    # ------------------------------------------------------------ dissemination

    def _gossip(self, now: float) -> list[Effect]:
        if not len(self._broadcasts):
            return []
        targets = self._live.sample(self._rng, self.config.gossip_nodes)
        targets += self._recently_dead(now)
        effects: list[Effect] = []
        for name in targets:
            msgs = self._take_broadcasts(MAX_DATAGRAM - self._overhead, name)
            if not msgs:
                continue
            effects.append(SendDatagram(self._members[name].addr, tuple(msgs)))
            self.stats.datagrams_out += 1
        return effects

    def _recently_dead(self, now: float) -> list[str]:
        """One random peer declared dead within `gossip_to_the_dead_time`, so a
        peer wrongly declared dead hears it and refutes."""
        picked = self._down.sample(self._rng, 1)
        if not picked:
            return []
        m = self._members[picked[0]]
        horizon = now - self.config.gossip_to_the_dead_time
        return [m.name] if m.state is DEAD and m.state_since >= horizon else []

    def _take_broadcasts(self, budget: int, to: str | None = None,
                         carried: Sequence[DatagramMessage] = ()) -> list[DatagramMessage]:
        """Updates to piggyback, skipping what would waste a transmission: news
        that the recipient is alive (it knows) and updates about a peer the
        datagram already carries a message about."""
        skip = {m.name for m in carried if isinstance(m, Alive | Suspect | Dead)}

        def wasted(key: str, message: DatagramMessage) -> bool:
            return key in skip or (key == to and isinstance(message, Alive))

        return self._broadcasts.take(
            budget, retransmit_limit(self.config.retransmit_mult, self.num_live()), wasted)

    def _send(self, addr: Address, messages: list[DatagramMessage], to: str | None = None
              ) -> SendDatagram:
        """A datagram to `addr` (peer `to`, when known) with piggybacked updates
        in whatever room is left."""
        used = self._overhead + sum(encoded_size(m) for m in messages)
        messages += self._take_broadcasts(MAX_DATAGRAM - used, to, messages)
        self.stats.datagrams_out += 1
        return SendDatagram(addr, tuple(messages))

    def _alive_of(self, m: Member) -> Alive:
        return Alive(m.name, m.addr, m.incarnation, m.profile_version)

    def _add_live(self, name: str) -> None:
        if name not in self._live:
            self._live.add(name)
            # A newcomer goes to a random place in the probe order, so it is
            # probed within one pass rather than after the next reshuffle.
            self._probe_order.insert(self._rng.randint(self._probe_index,
                                                       len(self._probe_order)), name)

    # ------------------------------------------------------------ anti-entropy

    def _digests(self) -> tuple[MemberDigest, ...]:
        return tuple(m.digest() for m in self._members.values())

    def _push_pull(self, join: bool) -> PushPull:
        return PushPull(self.name, join, self._digests())

    def _call(self, purpose: StreamPurpose, addr: Address, request: StreamMessage,
              names: tuple[str, ...] = (), deadline: float | None = None) -> StreamCall:
        self._seq += 1
        self._calls[self._seq] = _Call(purpose, addr, names)
        self.stats.stream_calls += 1
        return StreamCall(self._seq, addr, request, purpose, deadline)

    def _periodic_push_pull(self) -> list[Effect]:
        if self._leaving:
            return []
        chosen = self._live.sample(self._rng, 1)
        return [self._call("push-pull", self._members[chosen[0]].addr, self._push_pull(False))
                ] if chosen else []

    def _reconnect(self, now: float) -> list[Effect]:
        """Serf's reconnect: try one random dead peer. After a partition heals,
        this is what lets the two sides find each other."""
        if self._leaving:
            return []
        dead = [self._members[n] for n in self._down if self._members[n].state is DEAD]
        if not dead:
            return []
        target = self._rng.choice(dead)
        return [self._call("reconnect", target.addr, self._push_pull(False))]

    def _merge(self, digests: Sequence[MemberDigest], source: str, source_addr: Address | None,
               now: float) -> list[Effect]:
        """memberlist's mergeState: trust alive and left; a remote 'dead' or
        'suspect' only makes us suspect, so one confused peer cannot kill."""
        effects: list[Effect] = []
        pulls: dict[Address, list[str]] = {}
        teller = source_addr
        for d in digests:
            match d.state:
                case MemberState.ALIVE:
                    effects += self._on_alive(Alive(d.name, d.addr, d.incarnation,
                                                    d.profile_version), now, pulls, teller)
                case MemberState.LEFT:
                    effects += self._on_dead(Dead(d.name, d.incarnation, d.name), now)
                case _:
                    effects += self._on_suspect(Suspect(d.name, d.incarnation, source), now)
        effects += self._profile_calls(pulls, now)
        return effects

    def _stream_addr(self, name: str) -> Address | None:
        m = self._members.get(name)
        return m.addr if m is not None else None

    def _reap(self, now: float) -> list[Effect]:
        horizon = now - self.config.reap_interval
        gone = sorted(n for n in self._down if self._members[n].state_since <= horizon)
        for name in gone:
            del self._members[name]
            self._down.discard(name)
            self._profile_lag.discard(name)
            self._wanted_profiles.pop(name, None)
        return [MemberReaped(name) for name in gone]

    # ------------------------------------------------------------ profiles

    def _want_profile_version(self, m: Member, version: int, teller: Address | None,
                              pulls: dict[Address, list[str]]) -> None:
        if version > m.profile_version:
            m.profile_version = version
        self._want_profile(m, teller, pulls)

    def _want_profile(self, m: Member, teller: Address | None,
                      pulls: dict[Address, list[str]]) -> None:
        """Pull from whoever told us (it most likely holds the profile already,
        which spreads the load), or from the owner when we do not know."""
        if m.held_version >= m.profile_version:
            return
        self._profile_lag.add(m.name)
        if m.name not in self._wanted_profiles:
            pulls.setdefault(teller or m.addr, []).append(m.name)

    def _profile_calls(self, pulls: dict[Address, list[str]], now: float) -> list[Effect]:
        effects: list[Effect] = []
        for addr, names in pulls.items():
            for name in names:
                self._wanted_profiles[name] = now + self.config.stream_timeout
            effects.append(self._call("profile", addr, ProfileRequest(tuple(names)),
                                      tuple(names)))
        return effects

    def _accept_profiles(self, call: _Call, records: Sequence[ProfileRecord], now: float
                         ) -> list[Effect]:
        effects: list[Effect] = []
        received = {r.name: r for r in records}
        fallback: dict[Address, list[str]] = {}
        for name in call.names:
            self._wanted_profiles.pop(name, None)
            m = self._members.get(name)
            if m is None:
                continue
            r = received.get(name)
            if r is not None and r.version > m.held_version:
                m.profile, m.held_version = r.profile, r.version
                m.profile_version = max(m.profile_version, r.version)
                self.stats.profiles_pulled += 1
                effects.append(ProfileUpdated(name, r.version))
                if m.held_version >= m.profile_version:
                    self._profile_lag.discard(name)
            if m.held_version < m.profile_version and call.addr != m.addr:
                fallback.setdefault(m.addr, []).append(name)  # ask the owner itself
        return effects + self._profile_calls(fallback, now)

    def _retry_profile_pulls(self, now: float) -> list[Effect]:
        """Pulls that failed or timed out are retried from the owner."""
        for name, until in list(self._wanted_profiles.items()):
            if now >= until:
                del self._wanted_profiles[name]
        pulls: dict[Address, list[str]] = {}
        for name in sorted(self._profile_lag):
            m = self._members[name]
            if m.dead_or_left or m.held_version >= m.profile_version:
                self._profile_lag.discard(name)
            elif name not in self._wanted_profiles:
                pulls.setdefault(m.addr, []).append(name)
        return self._profile_calls(pulls, now)

    def _profile_records(self, names: Iterable[str]) -> tuple[ProfileRecord, ...]:
        records = []
        for name in names:
            m = self._members.get(name)
            if m is not None and m.profile is not None:
                records.append(ProfileRecord(name, m.held_version, m.profile))
        return tuple(records)
