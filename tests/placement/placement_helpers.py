"""Builders, hypothesis strategies and the plan invariant checker.

:func:`check_plan` is the oracle every property test holds a plan to. It
recomputes everything from the plan and the inputs with the reference
filters of :mod:`nanomesh.placement.feasible`, never with the planner's own
indexes, so a disagreement between the two shows up here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st

from nanomesh.placement import (
    Constraints,
    PeerView,
    Plan,
    Requirements,
    ServiceSpec,
    usage_by_peer,
    why_not,
)
from nanomesh.placement.feasible import EPSILON, STATIC_FILTERS, Usage

DEVICE_TYPES = ["pir", "ble", "display", "pulse-oximeter"]
NETWORKS = ["wifi", "ethernet", "bluetooth"]
LABEL_VALUES = {"room": ["a", "b"], "floor": ["1", "2"]}


def spec(name: str, replicas: int = 1, *, peer: str | None = None,
         labels: dict[str, str] | None = None, spread: bool = True, max_per_peer: int = 0,
         **requires: Any) -> ServiceSpec:
    """A ServiceSpec from keyword requirements (``capabilities`` as any iterable)."""
    if "capabilities" in requires:
        requires["capabilities"] = frozenset(requires["capabilities"])
    return ServiceSpec(name, replicas, Requirements(**requires),
                       Constraints(peer=peer, labels=labels or {}, spread=spread,
                                   max_per_peer=max_per_peer))


def peer(name: str, *, cores: float = 4, memory: int = 1024, storage: int = 1024,
         devices: Sequence[str] = (), power: str | None = "ac", battery: float = 0.0,
         networks: Sequence[str] = ("wifi",), labels: dict[str, str] | None = None,
         load: float = 0.0, alive: bool = True) -> PeerView:
    """A PeerView with a compute capability whenever it has cores."""
    caps = frozenset(devices) | ({"compute"} if cores > 0 else frozenset())
    return PeerView(name, alive, caps, cores, memory, storage, power,  # type: ignore[arg-type]
                    battery, frozenset(networks), labels or {}, load)  # type: ignore[arg-type]


# -- strategies ----------------------------------------------------------------------------

@st.composite
def peer_views(draw: st.DrawFn, name: str) -> PeerView:
    return peer(
        name,
        cores=draw(st.sampled_from([0, 1, 2, 4, 4, 4, 8])),
        memory=draw(st.integers(0, 4096)),
        storage=draw(st.integers(0, 1024)),
        devices=draw(st.sets(st.sampled_from(DEVICE_TYPES), max_size=2)),
        power=draw(st.sampled_from(["ac", "ac", "battery", None])),
        battery=draw(st.integers(0, 100)),
        networks=draw(st.sets(st.sampled_from(NETWORKS), min_size=1, max_size=3)),
        labels={k: draw(st.sampled_from(v)) for k, v in LABEL_VALUES.items()
                if draw(st.booleans())},
        load=draw(st.integers(0, 100)),
        alive=draw(st.sampled_from([True, True, True, True, True, False])),
    )


@st.composite
def peer_lists(draw: st.DrawFn, min_size: int = 0, max_size: int = 8) -> list[PeerView]:
    n = draw(st.integers(min_size, max_size))
    return [draw(peer_views(f"p{i}")) for i in range(n)]


def _sometimes(draw: st.DrawFn, strategy: st.SearchStrategy[Any], default: Any,
               one_in: int = 4) -> Any:
    """A drawn requirement about once in ``one_in`` draws, else ``default``
    (no requirement), so that most generated services can be placed."""
    return draw(strategy) if draw(st.integers(1, one_in)) == 1 else default


@st.composite
def service_specs(draw: st.DrawFn, name: str, peer_names: Sequence[str]) -> ServiceSpec:
    return spec(
        name,
        draw(st.integers(0, 4)),
        capabilities=_sometimes(
            draw, st.sets(st.sampled_from([*DEVICE_TYPES, "compute"]), max_size=2), frozenset()),
        cpu=draw(st.sampled_from([0.0, 0.25, 0.5, 0.5, 1.0, 1.5, 2.0])),
        memory_mb=draw(st.sampled_from([0, 16, 64, 64, 128, 256, 512, 1024])),
        power=_sometimes(draw, st.sampled_from(["ac", "battery"]), None, 6),
        min_battery_percent=_sometimes(draw, st.sampled_from([20.0, 50.0]), 0.0, 6),
        network=_sometimes(draw, st.sampled_from(NETWORKS), None, 5),
        storage_mb=draw(st.sampled_from([0, 0, 10, 100, 300])),
        peer=_sometimes(draw, st.sampled_from([*peer_names, "ghost"]), None, 8)
        if peer_names else None,
        labels={k: draw(st.sampled_from(v)) for k, v in LABEL_VALUES.items()
                if draw(st.integers(0, 6)) == 0},
        spread=draw(st.booleans()),
        max_per_peer=draw(st.integers(0, 3)),
    )


@st.composite
def scenarios(draw: st.DrawFn, min_peers: int = 0,
              max_peers: int = 8) -> tuple[list[ServiceSpec], list[PeerView], int]:
    """(specs, peers, seed)."""
    peers = draw(peer_lists(min_peers, max_peers))
    n = draw(st.integers(0, 10))
    specs = [draw(service_specs(f"s{i}", [p.name for p in peers])) for i in range(n)]
    return specs, peers, draw(st.integers(0, 2**32 - 1))


# -- the oracle ----------------------------------------------------------------------------

def check_plan(plan: Plan, specs: Sequence[ServiceSpec], peers: Sequence[PeerView]) -> None:
    """Assert every invariant a plan must satisfy, whatever the strategy."""
    by_name = {p.name: p for p in peers}
    services = {s.name: s for s in specs}
    desired = {iid for s in specs for iid in s.instance_ids()}
    assert set(plan.assignments) <= desired, "assigns an instance nobody asked for"
    for iid, peer_name in plan.assignments.items():
        s, p = services[iid.rpartition("/")[0]], by_name[peer_name]
        for check in STATIC_FILTERS:
            assert check(s, p, Usage()) is None, (iid, peer_name, check(s, p, Usage()))
    for peer_name, used in usage_by_peer(plan, specs).items():
        p = by_name[peer_name]
        assert used.cpu <= p.cpu_cores + EPSILON, f"{peer_name} CPU over-committed"
        assert used.memory_mb <= p.memory_mb, f"{peer_name} memory over-committed"
        assert used.storage_mb <= p.storage_mb, f"{peer_name} storage over-committed"
        for service, count in used.per_service.items():
            limit = services[service].placement.per_peer_limit()
            assert not limit or count <= limit, f"{service} x{count} on {peer_name}"
    for s in specs:
        hosts = Counter(plan.assignments[i] for i in s.instance_ids() if i in plan.assignments)
        if s.placement.spread:
            assert all(n == 1 for n in hosts.values()), f"{s.name} not spread: {hosts}"
    missing = desired - set(plan.assignments)
    assert set(plan.unplaced) == missing
    assert set(plan.unplaceable) == {iid.rpartition("/")[0] for iid in missing}
    usage = usage_by_peer(plan, specs)
    for service, reasons in plan.unplaceable.items():
        assert set(reasons) == set(by_name), f"{service}: a reason for every peer"
        for name, reason in reasons.items():
            expected = why_not(services[service], by_name[name], usage.get(name, Usage()))
            assert reason == expected, (service, name, reason, expected)
    assert plan.stats.placed == len(plan.assignments)
    assert plan.stats.unplaced == len(missing)


def changed(before: Plan, after: Plan) -> dict[str, tuple[str, str]]:
    """Instances on a peer in both plans whose peer differs: iid -> (old, new)."""
    return {iid: (old, after.assignments[iid]) for iid, old in before.assignments.items()
            if iid in after.assignments and after.assignments[iid] != old}
