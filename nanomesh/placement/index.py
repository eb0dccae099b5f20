"""Working state of one planning run, and indexes over the peers.

:class:`Cluster` holds the peers and what the plan has put on each so far.
:class:`CandidateIndex` answers "which alive peers pass every static filter
for this service?" with set intersections over per-capability, per-network,
per-label and per-power indexes instead of running the filters on every
(service, peer) pair: with 10,000 services on 1,000 peers that pair loop alone
would exceed the planning budget. It must agree exactly with
:data:`nanomesh.placement.feasible.STATIC_FILTERS`; the property tests check
that every placement passes those filters.
"""

from __future__ import annotations

from collections.abc import Sequence

from nanomesh.placement.feasible import EPSILON, Usage
from nanomesh.placement.peers import PeerView
from nanomesh.placement.requirements import ServiceSpec

Signature = tuple[frozenset[str], str | None, float, str | None, tuple[tuple[str, str], ...],
                  str | None]


def static_signature(spec: ServiceSpec) -> Signature:
    """Everything the static filters read from a spec: two services with the
    same signature have the same candidate peers and the same static reasons."""
    need, rules = spec.requires, spec.placement
    return (need.capabilities, need.power, need.min_battery_percent, need.network,
            tuple(sorted(rules.labels.items())), rules.peer)


class Cluster:
    """The peers of one planning run (in the order given) and their usage."""

    def __init__(self, peers: Sequence[PeerView]) -> None:
        self.peers = list(peers)
        self.index: dict[str, int] = {}
        for i, peer in enumerate(self.peers):
            if peer.name in self.index:
                raise ValueError(f"duplicate peer name {peer.name!r}")
            self.index[peer.name] = i
        self.usage = [Usage() for _ in self.peers]

    def fits(self, spec: ServiceSpec, i: int) -> bool:
        """The capacity filters of :mod:`~nanomesh.placement.feasible`, inlined:
        can peer ``i`` take one more instance of ``spec`` given the plan so far?"""
        peer, used, need = self.peers[i], self.usage[i], spec.requires
        if need.cpu > 0 and need.cpu > peer.cpu_cores - used.cpu + EPSILON:
            return False
        if need.memory_mb > 0 and need.memory_mb > peer.memory_mb - used.memory_mb:
            return False
        if need.storage_mb > 0 and need.storage_mb > peer.storage_mb - used.storage_mb:
            return False
        limit = spec.placement.per_peer_limit()
        return not limit or used.per_service.get(spec.name, 0) < limit


class CandidateIndex:
    """Alive peers passing the static filters, per service, memoised by name."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.alive: set[int] = set()
        self.by_capability: dict[str, set[int]] = {}
        self.by_network: dict[str, set[int]] = {}
        self.by_label: dict[tuple[str, str], set[int]] = {}
        self.ac: set[int] = set()
        self.battery: set[int] = set()
        self._memo: dict[str, frozenset[int]] = {}
        self._by_signature: dict[Signature, frozenset[int]] = {}
        for i, peer in enumerate(cluster.peers):
            if not peer.alive:
                continue
            self.alive.add(i)
            for cap in peer.capabilities:
                self.by_capability.setdefault(cap, set()).add(i)
            for net in peer.networks:
                self.by_network.setdefault(net, set()).add(i)
            for label in peer.labels.items():
                self.by_label.setdefault(label, set()).add(i)
            if peer.power == "ac":
                self.ac.add(i)
            elif peer.power == "battery":
                self.battery.add(i)

    def candidates(self, spec: ServiceSpec) -> frozenset[int]:
        """Indexes of the alive peers that pass every static filter for ``spec``.
        Services with the same static requirements get the same set object."""
        found = self._memo.get(spec.name)
        if found is None:
            key = static_signature(spec)
            found = self._by_signature.get(key)
            if found is None:
                found = self._by_signature[key] = frozenset(self._compute(spec))
            self._memo[spec.name] = found
        return found

    def _compute(self, spec: ServiceSpec) -> set[int]:
        need, rules = spec.requires, spec.placement
        out = set(self.alive)
        if rules.peer is not None:
            pinned = self.cluster.index.get(rules.peer)
            out &= {pinned} if pinned is not None else set()
        for cap in need.capabilities:
            out &= self.by_capability.get(cap, set())
        if need.network is not None:
            out &= self.by_network.get(need.network, set())
        if need.power == "ac":
            out &= self.ac
        elif need.power == "battery":
            out &= self.battery
        if need.power != "ac" and need.min_battery_percent > 0:
            out = {i for i in out if i in self.ac
                   or self.cluster.peers[i].battery_percent >= need.min_battery_percent}
        for label in rules.labels.items():
            out &= self.by_label.get(label, set())
        return out
