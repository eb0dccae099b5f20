"""Strategy ``first-fit``: the research's Algorithm 1, kept so its experiments
reproduce.

    for k in 1..K:                       # each nanoservice in turn
        for i in 1..I:                   # first worker that fits
            if T_k ⊆ t_i and c_k <= c_i and m_k <= m_i and b_k == b_i
                    and n_k == n_i and s_k <= s_i:
                allocate S_k to W_i
                c_i -= c_k; m_i -= m_k; s_i -= s_k
                break

Services are taken in the order given, each replica in turn, and peers in the
order given (not sorted: the research's worker order decides). A field left 0
or empty is no requirement, so the conditions reduce to the filters of
:mod:`~nanomesh.placement.feasible`; the research's remaining capacity c_i,
m_i, s_i is the peer's capacity minus what this plan assigned there. The
constraints the research did not have (pins, labels, spread, max_per_peer,
minimum battery) are honoured as further filters; with none set, the result
is exactly Algorithm 1's. The previous plan is ignored (Algorithm 1 always
starts from scratch) except to count moves, and no RNG is used.
"""

from __future__ import annotations

from collections.abc import Sequence

from nanomesh.ids import instance_id
from nanomesh.placement.feasible import first_failure, why_not
from nanomesh.placement.index import Cluster
from nanomesh.placement.peers import PeerView
from nanomesh.placement.plan import Plan
from nanomesh.placement.requirements import ServiceSpec, check_unique
from nanomesh.placement.stats import compare


def plan_first_fit(specs: Sequence[ServiceSpec], peers: Sequence[PeerView],
                   previous: Plan | None = None) -> Plan:
    """Algorithm 1 over ``specs`` and ``peers`` in the order given."""
    check_unique(specs)
    cluster = Cluster(peers)
    assignments: dict[str, str] = {}
    unplaced: list[str] = []
    short: dict[str, ServiceSpec] = {}
    for spec in specs:
        for r in range(spec.replicas):
            iid = instance_id(spec.name, r)
            for i, peer in enumerate(cluster.peers):
                if first_failure(spec, peer, cluster.usage[i]) is None:
                    cluster.usage[i].add(spec)
                    assignments[iid] = peer.name
                    break
            else:
                unplaced.append(iid)
                short[spec.name] = spec
    unplaceable = {
        name: {peer.name: why_not(spec, peer, cluster.usage[i]) or "feasible now (retry)"
               for i, peer in enumerate(cluster.peers)}
        for name, spec in short.items()}
    desired = {instance_id(s.name, r) for s in specs for r in range(s.replicas)}
    alive = tuple(p.name for p in cluster.peers if p.alive)
    return Plan(assignments=assignments, unplaceable=unplaceable, unplaced=tuple(unplaced),
                settled_peers=alive, strategy="first-fit",
                stats=compare(previous, assignments, unplaced, desired, ()))
