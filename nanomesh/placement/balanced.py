"""The default strategy: filters, ranking, and stability across plans.

One call runs four steps over a snapshot of the peers:

1. **Keep.** Every instance of the previous plan whose peer is alive and
   still passes every filter stays where it is (checked in instance-id order,
   so when a peer shrank, the later ids are the ones that move). Nothing that
   can stay moves: a running nanoservice is not restarted for a better score.
2. **Place.** Pending instances — new ones, and those whose peer died or no
   longer satisfies them — go to the best-scoring feasible peer
   (:func:`nanomesh.placement.rank.score`), most constrained service first
   (fewest candidate peers), so that a service bound to a rare device is not
   crowded out by one that could run anywhere; among equally constrained
   services the order given is the priority, as in the research's Algorithm 1.
   (Largest demand first was tried: it placed 9-16 % fewer instances on the
   over-subscribed benchmark fleets.) Once a replica of a service finds no
   peer, its later replicas are not tried: the plan only fills up.
3. **Rebalance** (spread mode). Alive peers missing from the previous plan's
   ``settled_peers`` have joined or returned. Up to ``max_moves`` running
   instances move onto them, each from the least desirable peer to the best
   joining peer that takes it, when the instance's score there beats its
   current peer's by ``rebalance_threshold`` (or, for services that reserve
   nothing, when that evens out instance counts). If moves remain when the
   budget is spent, the joining peers stay unsettled and the next plan
   continues (``stats.rebalance_pending``). No peer joined: no voluntary
   move, however uneven the live load, so plans are quiescent.
4. **Report.** Unplaced instances are retried once (rebalancing may have
   freed room) and every service still short gets a reason per peer.

Choosing the best peer must not cost services x peers. The score depends on
the peer and its planned use only (never on the service), and services with
the same static requirements share one candidate set
(:class:`~nanomesh.placement.index.CandidateIndex`), so each distinct
candidate set keeps a max-heap of its peers by score. When a peer's use
changes, a fresh entry goes into every heap holding it and the old entries
are skipped when they surface (versioned lazy deletion). Picking a peer is
then a heap peek plus the capacity check, and the total cost is about
(instances x heaps per peer + peers x candidate sets) x log peers.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Sequence
from dataclasses import dataclass

from nanomesh.ids import instance_id
from nanomesh.placement.config import Mode, PlacementConfig
from nanomesh.placement.feasible import CAPACITY_FILTERS, EPSILON, STATIC_FILTERS, Usage
from nanomesh.placement.index import CandidateIndex, Cluster, Signature, static_signature
from nanomesh.placement.peers import PeerView
from nanomesh.placement.plan import Plan
from nanomesh.placement.rank import score
from nanomesh.placement.requirements import ServiceSpec, check_unique
from nanomesh.placement.stats import compare

Entry = tuple[float, int, int, int, int]
"""Heap entry: (-score, instance-count key, RNG rank, version, peer index)."""


@dataclass(frozen=True, slots=True)
class _Instance:
    iid: str
    spec: ServiceSpec
    position: int
    replica: int


class _Ranker:
    """Max-heaps of candidate peers by score, one per distinct candidate set."""

    def __init__(self, cluster: Cluster, index: CandidateIndex, ranks: Sequence[int],
                 mode: Mode, config: PlacementConfig) -> None:
        self.cluster, self.index, self.ranks = cluster, index, ranks
        self.mode, self.config = mode, config
        self.version = [0] * len(cluster.peers)
        self.heaps: dict[frozenset[int], list[Entry]] = {}
        self.heaps_of: list[list[list[Entry]]] = [[] for _ in cluster.peers]

    def score_now(self, i: int) -> float:
        used = self.cluster.usage[i]
        return score(self.cluster.peers[i], used.cpu, used.memory_mb, self.mode, self.config)

    def score_with(self, i: int, spec: ServiceSpec) -> float:
        used, need = self.cluster.usage[i], spec.requires
        return score(self.cluster.peers[i], used.cpu + need.cpu,
                     used.memory_mb + need.memory_mb, self.mode, self.config)

    def entry(self, i: int) -> Entry:
        count = self.cluster.usage[i].instances
        key = count if self.mode == "spread" else -count
        return (-self.score_now(i), key, self.ranks[i], self.version[i], i)

    def heap(self, spec: ServiceSpec) -> list[Entry]:
        cands = self.index.candidates(spec)
        heap = self.heaps.get(cands)
        if heap is None:
            heap = self.heaps[cands] = [self.entry(i) for i in cands]
            heapq.heapify(heap)
            for i in cands:
                self.heaps_of[i].append(heap)
        return heap

    def touch(self, i: int) -> None:
        """Peer ``i``'s use changed: publish its new score to every heap."""
        self.version[i] += 1
        fresh = self.entry(i)
        for heap in self.heaps_of[i]:
            heapq.heappush(heap, fresh)

    def best(self, spec: ServiceSpec) -> int | None:
        """The best-scoring candidate peer that can take one more ``spec``."""
        heap, aside, found = self.heap(spec), [], None
        while heap:
            top = heap[0]
            i = top[4]
            if top[3] != self.version[i]:
                heapq.heappop(heap)
            elif self.cluster.fits(spec, i):
                found = i
                break
            else:
                aside.append(heapq.heappop(heap))
        for top in aside:
            heapq.heappush(heap, top)
        return found


class _Run:
    """One call of :func:`plan_balanced`: the mutable state of steps 1-4."""

    def __init__(self, specs: Sequence[ServiceSpec], peers: Sequence[PeerView],
                 previous: Plan | None, config: PlacementConfig, rng: random.Random) -> None:
        check_unique(specs)
        self.peers = sorted(peers, key=lambda p: p.name)
        self.cluster = Cluster(self.peers)
        ranks = list(range(len(self.peers)))
        rng.shuffle(ranks)
        self.index = CandidateIndex(self.cluster)
        self.ranker = _Ranker(self.cluster, self.index, ranks, config.mode, config)
        self.previous, self.config = previous, config
        self.desired = {
            instance_id(spec.name, r): _Instance(instance_id(spec.name, r), spec, pos, r)
            for pos, spec in enumerate(specs) for r in range(spec.replicas)}
        self.where: dict[str, int] = {}
        self.movable: list[set[str]] = [set() for _ in self.peers]
        self.rebalanced: set[str] = set()
        self.pending_rebalance = False
        self.static_reasons: dict[Signature, list[str]] = {}

    def assign(self, inst: _Instance, i: int) -> None:
        self.where[inst.iid] = i
        self.cluster.usage[i].add(inst.spec)
        self.ranker.touch(i)

    def unassign(self, inst: _Instance) -> None:
        i = self.where.pop(inst.iid)
        self.cluster.usage[i].remove(inst.spec)
        self.movable[i].discard(inst.iid)
        self.ranker.touch(i)

    def keep(self) -> None:
        """Step 1 (no heaps exist yet, so ``touch`` is cheap)."""
        if self.previous is None:
            return
        for iid, peer in self.previous.assignments.items():
            inst = self.desired.get(iid)
            i = self.cluster.index.get(peer)
            if inst is None or i is None:
                continue
            if i in self.index.candidates(inst.spec) and self.cluster.fits(inst.spec, i):
                self.assign(inst, i)
                self.movable[i].add(iid)

    def priority(self, inst: _Instance) -> tuple[int, int, int]:
        """Fewest candidate peers first, then the order services were given in."""
        return (len(self.index.candidates(inst.spec)), inst.position, inst.replica)

    def place_pending(self) -> None:
        """Steps 2 and 4's retry: best peer for every instance without one."""
        pending = [inst for iid, inst in self.desired.items() if iid not in self.where]
        pending.sort(key=self.priority)
        failed: set[str] = set()
        exhausted: dict[frozenset[int], list[tuple[float, int, int]]] = {}
        for inst in pending:
            spec = inst.spec
            if spec.name in failed:
                continue
            cands, need = self.index.candidates(spec), spec.requires
            demand = (need.cpu, need.memory_mb, need.storage_mb)
            if any(_dominates(demand, d) for d in exhausted.get(cands, ())):
                failed.add(spec.name)
                continue
            i = self.ranker.best(spec)
            if i is not None:
                self.assign(inst, i)
                continue
            failed.add(spec.name)
            if not any(self.cluster.usage[c].per_service.get(spec.name) for c in cands):
                exhausted.setdefault(cands, []).append(demand)

    def rebalance(self) -> None:
        """Step 3: voluntary moves onto joining peers, within the budget."""
        if self.previous is None or self.config.mode != "spread" or not self.config.max_moves:
            return
        settled = set(self.previous.settled_peers)
        targets = [i for i in self.index.alive if self.peers[i].name not in settled]
        if not targets:
            return
        moves = 0
        while (move := self.find_move(targets)) is not None:
            if moves == self.config.max_moves:
                self.pending_rebalance = True
                return
            inst, target = move
            self.unassign(inst)
            self.assign(inst, target)
            self.rebalanced.add(inst.iid)
            moves += 1

    def find_move(self, targets: list[int]) -> tuple[_Instance, int] | None:
        """The best qualifying move from the least desirable source that has one."""
        score_now = self.ranker.score_now
        order = sorted(targets, key=lambda t: (-score_now(t), self.ranker.ranks[t]))
        best_target = score_now(order[0])
        target_set = set(targets)
        sources = sorted((score_now(s), self.ranker.ranks[s], s) for s in self.index.alive
                         if s not in target_set and self.movable[s])
        for source_score, _, s in sources:
            if source_score > best_target + EPSILON:
                return None
            move = self.best_move_from(s, source_score, order)
            if move is not None:
                return move
        return None

    def best_move_from(self, s: int, source_score: float,
                       order: list[int]) -> tuple[_Instance, int] | None:
        usage = self.cluster.usage
        best: tuple[float, _Instance, int] | None = None
        for iid in sorted(self.movable[s]):
            inst = self.desired[iid]
            cands = self.index.candidates(inst.spec)
            t = next((t for t in order if t in cands and self.cluster.fits(inst.spec, t)), None)
            if t is None:
                continue
            gain = self.ranker.score_with(t, inst.spec) - source_score
            evens = gain >= -EPSILON and usage[s].instances - usage[t].instances >= 2
            if (gain >= self.config.rebalance_threshold or evens) and (
                    best is None or gain > best[0] + EPSILON):
                best = (gain, inst, t)
        return None if best is None else (best[1], best[2])

    def plan(self) -> Plan:
        self.keep()
        self.place_pending()
        self.rebalance()
        self.place_pending()
        unplaced = sorted(iid for iid in self.desired if iid not in self.where)
        short = {self.desired[iid].spec.name: self.desired[iid].spec for iid in unplaced}
        unplaceable = {name: self.reasons(spec) for name, spec in short.items()}
        assignments = {iid: self.peers[i].name for iid, i in self.where.items()}
        alive = [self.peers[i].name for i in sorted(self.index.alive)]
        settled = alive
        if self.pending_rebalance and self.previous is not None:
            settled = [n for n in alive if n in set(self.previous.settled_peers)]
        stats = compare(self.previous, assignments, unplaced, set(self.desired),
                        self.rebalanced, self.pending_rebalance)
        return Plan(assignments=assignments, unplaceable=unplaceable, unplaced=tuple(unplaced),
                    settled_peers=tuple(settled), strategy=f"balanced/{self.config.mode}",
                    stats=stats)

    def reasons(self, spec: ServiceSpec) -> dict[str, str]:
        """Why each peer cannot take one more instance: the text of
        :func:`~nanomesh.placement.feasible.why_not`, with the static part
        shared by services of the same static signature."""
        key = static_signature(spec)
        static = self.static_reasons.get(key)
        if static is None:
            static = self.static_reasons[key] = [
                "; ".join(r for check in STATIC_FILTERS if (r := check(spec, p, Usage())))
                for p in self.peers]
        usage, out = self.cluster.usage, {}
        for i, peer in enumerate(self.peers):
            if not peer.alive:
                out[peer.name] = "peer is down"      # as why_not: nothing else matters
                continue
            parts = [static[i]] if static[i] else []
            parts += [r for check in CAPACITY_FILTERS if (r := check(spec, peer, usage[i]))]
            out[peer.name] = "; ".join(parts) or "feasible now (retry)"
        return out


def _dominates(demand: tuple[float, int, int], failed: tuple[float, int, int]) -> bool:
    """A demand at least as large in every resource as one that found no peer
    (for capacity reasons alone) finds none either: the plan only fills up."""
    return demand[0] >= failed[0] and demand[1] >= failed[1] and demand[2] >= failed[2]


def plan_balanced(specs: Sequence[ServiceSpec], peers: Sequence[PeerView],
                  previous: Plan | None, config: PlacementConfig, rng: random.Random) -> Plan:
    """The default strategy (module docstring). Peers are taken in name order,
    so the result does not depend on the order they are given in; ties
    between equal peers are broken by ``rng``."""
    return _Run(specs, peers, previous, config, rng).plan()
