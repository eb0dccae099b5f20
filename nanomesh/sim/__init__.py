"""A deterministic simulator for the membership core.

One seeded `random.Random` drives everything: the network's drops,
duplicates and delays and every peer's own RNG, so a run is a pure function
of (seed, script). It drives the very same `Membership` objects the daemon
runs; only the clock and the sockets are simulated. With ``wire=True`` every
datagram and stream message is also sealed and reopened by `nanomesh.wire`,
which exercises the codec and counts real bytes.

Tests use it to check protocol behaviour under loss and partitions; the
experiments use it to measure convergence at thousands of peers.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from nanomesh.gossip.config import GossipConfig
from nanomesh.gossip.effects import Effect, Notification, SendDatagram, StreamCall
from nanomesh.gossip.machine import Membership
from nanomesh.wire import (
    Address,
    DatagramMessage,
    Keyring,
    MemberDigest,
    MemberState,
    Message,
    StreamMessage,
    open_envelope,
    seal,
)
from nanomesh.wire.envelope import MAX_FRAME


@dataclass
class NetworkModel:
    """How the simulated network misbehaves. Probabilities are per datagram:
    streams are reliable (TCP retransmits what the network loses), so this
    loss is UDP-only loss; `Simulator.partition` cuts both."""

    drop: float = 0.0
    duplicate: float = 0.0
    latency: float = 0.0005
    """Base one-way delay in seconds (a switched LAN is ~0.1-0.5 ms)."""
    jitter: float = 0.0005
    """Extra uniform random delay in [0, jitter) seconds (reorders packets)."""


@dataclass(frozen=True)
class TraceEvent:
    time: float
    node: str
    event: Notification


@dataclass
class _Node:
    name: str
    addr: Address
    core: Membership
    up: bool = True
    scheduled: float = float("inf")
    bytes_out: int = 0
    datagrams_out: int = 0


@dataclass(order=True)
class _Event:
    time: float
    order: int
    action: Callable[[], None] = field(compare=False)


class Simulator:
    def __init__(self, seed: int, config: GossipConfig, network: NetworkModel | None = None,
                 wire: bool = False) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.config = config
        self.network = network or NetworkModel()
        self.wire = wire
        self.now = 0.0
        self.nodes: dict[str, _Node] = {}
        self.by_addr: dict[Address, _Node] = {}
        self.trace: list[TraceEvent] = []
        self.on_event: Callable[[TraceEvent], None] | None = None
        self._queue: list[_Event] = []
        self._order = itertools.count()
        self._groups: dict[str, int] | None = None
        self._udp_deaf: set[str] = set()
        self._keyring = Keyring()

    # ------------------------------------------------------------ building the mesh

    @staticmethod
    def address_of(index: int) -> Address:
        return (f"10.{(index >> 16) & 255}.{(index >> 8) & 255}.{index & 255}", 7946)

    def add_node(self, name: str, profile: Mapping[str, Any] | None = None,
                 join: Sequence[str] = (), incarnation: int = 0) -> Membership:
        """Start a peer now; with `join`, it joins through those peers."""
        addr = self.nodes[name].addr if name in self.nodes else self.address_of(
            len(self.nodes) + 1)
        core = Membership(name, addr, self.config, random.Random(self.rng.getrandbits(64)),
                          self.now, profile=profile, incarnation=incarnation)
        node = _Node(name, addr, core)
        self.nodes[name] = node
        self.by_addr[addr] = node
        self._apply(node, core.join([self.nodes[j].addr for j in join], self.now))
        return core

    def add_converged(self, names: Iterable[str], profile: Callable[[str], Mapping[str, Any]]
                      | None = None) -> None:
        """Add peers that already know each other (as after a long-settled join),
        so that large experiments need not simulate thousands of joins."""
        new = [n for n in names if n not in self.nodes]
        for n in new:
            self.add_node(n, profile=profile(n) if profile else None)
        digests = [MemberDigest(n, self.nodes[n].addr, 0, MemberState.ALIVE,
                                self.nodes[n].core.me.profile_version) for n in new]
        held = {d.name: self.nodes[d.name].core.me.profile for d in digests}
        for n in new:
            self.nodes[n].core.bootstrap(digests, self.now)
            for d in digests:
                m = self.nodes[n].core.member(d.name)
                if m is not None and d.name != n:
                    m.profile, m.held_version = held[d.name], d.profile_version

    def core(self, name: str) -> Membership:
        return self.nodes[name].core

    # ------------------------------------------------------------ faults

    def kill(self, name: str) -> None:
        """The peer stops answering at once (SIGKILL, power loss)."""
        self.nodes[name].up = False

    def restart(self, name: str, join: Sequence[str], profile: Mapping[str, Any] | None = None
                ) -> Membership:
        """A killed peer comes back at its last incarnation + 1, as the daemon
        does from its data directory."""
        last = self.nodes[name].core.incarnation
        return self.add_node(name, profile=profile, join=join, incarnation=last + 1)

    def leave(self, name: str) -> None:
        node = self.nodes[name]
        self._apply(node, node.core.leave(self.now))

    def update_profile(self, name: str, profile: Mapping[str, Any]) -> None:
        """The peer publishes a changed capability profile now."""
        node = self.nodes[name]
        self._apply(node, node.core.update_profile(profile, self.now))

    def partition(self, groups: Sequence[Iterable[str]]) -> None:
        """Peers in different groups cannot reach each other; peers in no group
        are cut off from everyone."""
        self._groups = {n: i for i, g in enumerate(groups) for n in g}

    def heal(self) -> None:
        self._groups = None

    def block_datagrams(self, names: Iterable[str]) -> None:
        """Every datagram to or from these peers is lost while their streams
        still work: a UDP-filtering firewall, or a link that drops datagrams
        TCP retransmits through. Replaces any earlier set; `()` unblocks."""
        self._udp_deaf = set(names)

    def connected(self, a: str, b: str) -> bool:
        if self._groups is None:
            return True
        ga, gb = self._groups.get(a, -1), self._groups.get(b, -2)
        return ga == gb

    # ------------------------------------------------------------ running

    def run_until(self, t: float) -> None:
        for node in self.nodes.values():
            self._reschedule(node)
        while self._queue and self._queue[0].time <= t:
            ev = heapq.heappop(self._queue)
            self.now = ev.time
            ev.action()
        self.now = t

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def run_until_true(self, predicate: Callable[[], bool], limit: float, step: float = 0.01
                       ) -> float | None:
        """Run until `predicate()` holds, checking every `step`; the time it
        first held, or None if not within `limit` seconds."""
        end = self.now + limit
        while self.now < end:
            if predicate():
                return self.now
            self.run_until(min(end, self.now + step))
        return self.now if predicate() else None

    def view(self, observer: str, subject: str) -> MemberState | None:
        m = self.nodes[observer].core.member(subject)
        return m.state if m is not None else None

    def live_names(self) -> list[str]:
        return [n for n, node in self.nodes.items() if node.up]

    # ------------------------------------------------------------ internals

    def _at(self, t: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._queue, _Event(t, next(self._order), action))

    def _reschedule(self, node: _Node) -> None:
        if not node.up:
            return
        deadline = node.core.next_deadline()
        if deadline < node.scheduled:
            node.scheduled = deadline
            self._at(max(deadline, self.now), lambda: self._tick(node, deadline))

    def _tick(self, node: _Node, scheduled_for: float) -> None:
        if node.scheduled != scheduled_for or not node.up or self.nodes[node.name] is not node:
            return
        node.scheduled = float("inf")
        self._apply(node, node.core.tick(self.now))

    def _apply(self, node: _Node, effects: list[Effect]) -> None:
        for e in effects:
            match e:
                case SendDatagram():
                    self._send_datagram(node, e)
                case StreamCall():
                    self._stream_call(node, e)
                case _:
                    ev = TraceEvent(self.now, node.name, e)
                    self.trace.append(ev)
                    if self.on_event is not None:
                        self.on_event(ev)
        self._reschedule(node)

    def _delay(self) -> float:
        return self.network.latency + self.rng.random() * self.network.jitter

    def _roundtrip(self, messages: Sequence[Message], node: _Node, limit: int) -> list[Message]:
        data = seal(messages, self._keyring)
        node.bytes_out += len(data)
        return open_envelope(data, self._keyring, limit=limit)

    def _send_datagram(self, src: _Node, e: SendDatagram) -> None:
        src.datagrams_out += 1
        msgs: Sequence[Message] = e.messages
        if self.wire:
            msgs = self._roundtrip(e.messages, src, limit=65_507)
        dst = self.by_addr.get(e.addr)
        if dst is None or not self.connected(src.name, dst.name):
            return
        if src.name in self._udp_deaf or dst.name in self._udp_deaf:
            return
        copies = 2 if self.rng.random() < self.network.duplicate else 1
        for _ in range(copies):
            if self.rng.random() < self.network.drop:
                continue
            deliver = functools.partial(self._deliver, dst, src.addr, msgs)
            self._at(self.now + self._delay(), deliver)

    def _deliver(self, dst: _Node, from_addr: Address, msgs: Sequence[Message]) -> None:
        if not dst.up or self.by_addr.get(dst.addr) is not dst:
            return
        # A stream message inside a datagram is ignored by the core, as the
        # daemon's would be.
        datagram = cast(Sequence[DatagramMessage], msgs)
        self._apply(dst, dst.core.handle_datagram(from_addr, datagram, self.now))

    def _stream_call(self, src: _Node, call: StreamCall) -> None:
        """TCP is reliable but can fail to connect: a dead peer refuses within
        a round trip; a partitioned one times out after `stream_timeout`."""
        dst = self.by_addr.get(call.addr)
        rtt = 2 * self._delay()
        if dst is None or not self.connected(src.name, dst.name):
            give_up = self.now + self.config.stream_timeout
            if call.deadline is not None:
                give_up = min(give_up, max(call.deadline, self.now))
            self._at(give_up, lambda: self._stream_done(src, call.call_id, None))
            return
        request: StreamMessage = call.request
        if self.wire:
            (request,) = self._roundtrip([call.request], src, MAX_FRAME)  # type: ignore[assignment]

        def serve() -> None:
            if not dst.up:
                self._at(self.now + rtt / 2, lambda: self._stream_done(src, call.call_id, None))
                return
            reply, effects = dst.core.handle_stream_request(request, self.now)
            self._apply(dst, effects)
            if reply is not None and self.wire:
                (reply,) = self._roundtrip([reply], dst, MAX_FRAME)  # type: ignore[assignment]
            self._at(self.now + rtt / 2, lambda: self._stream_done(src, call.call_id, reply))

        self._at(self.now + rtt, serve)  # connect handshake + request

    def _stream_done(self, src: _Node, call_id: int, reply: StreamMessage | None) -> None:
        if not src.up or self.nodes[src.name] is not src:
            return
        if reply is None:
            self._apply(src, src.core.stream_failed(call_id, self.now))
        else:
            self._apply(src, src.core.handle_stream_reply(call_id, reply, self.now))
