"""Hypothesis properties of both strategies, and a stateful churn test.

Properties (``check_plan`` holds most of them for every plan produced):
- a plan never over-commits a peer's CPU, memory or storage;
- every placement satisfies its service's requirements and constraints;
- replicas with ``spread`` are on distinct peers;
- same inputs and seed give the same plan, which round-trips through JSON
  and msgpack;
- removing a peer moves only that peer's instances;
- adding a peer moves at most ``max_moves`` instances, all onto it;
- an unplaceable service has a reason for every peer.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from placement_helpers import changed, check_plan, peer_views, scenarios, service_specs

from nanomesh.placement import PeerView, PlacementConfig, Plan, ServiceSpec, place

CONFIGS = st.builds(PlacementConfig, strategy=st.sampled_from(["balanced", "first-fit"]),
                    mode=st.sampled_from(["spread", "binpack"]), max_moves=st.integers(0, 4))
PROPERTY = settings(max_examples=120, deadline=None)


def run(specs: list[ServiceSpec], peers: list[PeerView], previous: Plan | None,
        config: PlacementConfig, seed: int) -> Plan:
    return place(specs, peers, previous, config=config, rng=random.Random(seed))


@PROPERTY
@given(scenarios(), CONFIGS)
def test_every_plan_satisfies_the_invariants(scenario: tuple[list[ServiceSpec],
                                             list[PeerView], int],
                                             config: PlacementConfig) -> None:
    specs, peers, seed = scenario
    check_plan(run(specs, peers, None, config, seed), specs, peers)


@PROPERTY
@given(scenarios(), CONFIGS)
def test_deterministic_and_round_trips(scenario: tuple[list[ServiceSpec], list[PeerView], int],
                                       config: PlacementConfig) -> None:
    specs, peers, seed = scenario
    first = run(specs, peers, None, config, seed)
    assert run(specs, peers, None, config, seed) == first
    again = run(specs, peers, first, config, seed)
    assert run(specs, peers, first, config, seed) == again
    assert Plan.from_dict(json.loads(json.dumps(first.to_dict()))) == first
    assert Plan.from_dict(msgpack.unpackb(msgpack.packb(again.to_dict()))) == again


@PROPERTY
@given(scenarios(min_peers=1), st.data(), st.booleans())
def test_removing_a_peer_moves_only_its_instances(
        scenario: tuple[list[ServiceSpec], list[PeerView], int], data: st.DataObject,
        forget: bool) -> None:
    specs, peers, seed = scenario
    first = run(specs, peers, None, PlacementConfig(), seed)
    victim = data.draw(st.sampled_from([p.name for p in peers]), label="victim")
    rest = [p for p in peers if p.name != victim] if forget else \
        [replace(p, alive=False) if p.name == victim else p for p in peers]
    second = run(specs, rest, first, PlacementConfig(), seed + 1)
    check_plan(second, specs, rest)
    for iid, old in first.assignments.items():
        if old != victim:
            assert second.assignments.get(iid) == old, iid
    assert second.stats.rebalanced == 0


@PROPERTY
@given(scenarios(), st.data(), st.integers(0, 4), st.sampled_from(["spread", "binpack"]))
def test_adding_a_peer_moves_at_most_max_moves(
        scenario: tuple[list[ServiceSpec], list[PeerView], int], data: st.DataObject,
        max_moves: int, mode: str) -> None:
    specs, peers, seed = scenario
    config = PlacementConfig(mode=mode, max_moves=max_moves)  # type: ignore[arg-type]
    first = run(specs, peers, None, config, seed)
    newcomer = replace(data.draw(peer_views("new"), label="newcomer"), alive=True)
    second = run(specs, [*peers, newcomer], first, config, seed)
    check_plan(second, specs, [*peers, newcomer])
    moves = changed(first, second)
    assert len(moves) <= max_moves
    assert all(new == "new" for _, new in moves.values())
    assert second.stats.moved == 0 and second.stats.rebalanced == len(moves)


class Churn(RuleBasedStateMachine):
    """Peers die, return, join and change load while the balanced strategy
    replans after every event from its previous plan; invariants hold
    throughout and every event moves no more than it must."""

    def __init__(self) -> None:
        super().__init__()
        self.peers: dict[str, PeerView] = {}
        self.specs: list[ServiceSpec] = []
        self.plan: Plan | None = None
        self.config = PlacementConfig(max_moves=2)
        self.seed = 0

    def replan(self) -> tuple[Plan | None, Plan]:
        before, self.seed = self.plan, self.seed + 1
        self.plan = run(self.specs, list(self.peers.values()), before, self.config, self.seed)
        return before, self.plan

    @rule(data=st.data())
    def set_services(self, data: st.DataObject) -> None:
        n = data.draw(st.integers(0, 8), label="services")
        names = [f"p{i}" for i in range(6)]      # pins may name peers that join later
        self.specs = [data.draw(service_specs(f"s{i}", names)) for i in range(n)]
        self.replan()

    @rule(data=st.data())
    def join(self, data: st.DataObject) -> None:
        name = f"p{len(self.peers)}"
        self.peers[name] = replace(data.draw(peer_views(name)), alive=True)
        before, after = self.replan()
        if before is not None:
            assert len(changed(before, after)) <= self.config.max_moves
            assert after.stats.moved == 0

    @precondition(lambda self: any(p.alive for p in self.peers.values()))
    @rule(data=st.data())
    def kill(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(n for n, p in self.peers.items() if p.alive)))
        self.peers[name] = replace(self.peers[name], alive=False)
        before, after = self.replan()
        assert before is not None
        assert all(old == name for old, _ in changed(before, after).values())
        assert after.stats.rebalanced == 0

    @precondition(lambda self: any(not p.alive for p in self.peers.values()))
    @rule(data=st.data())
    def revive(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(n for n, p in self.peers.items() if not p.alive)))
        self.peers[name] = replace(self.peers[name], alive=True)
        before, after = self.replan()
        assert before is not None
        assert len(changed(before, after)) <= self.config.max_moves

    @precondition(lambda self: bool(self.peers))
    @rule(data=st.data(), load=st.integers(0, 100))
    def load_changes(self, data: st.DataObject, load: int) -> None:
        name = data.draw(st.sampled_from(sorted(self.peers)))
        self.peers[name] = replace(self.peers[name], cpu_load_percent=float(load))
        before, after = self.replan()
        assert before is not None
        moves = changed(before, after)
        assert all(new not in before.settled_peers for _, new in moves.values())

    @invariant()
    def plan_is_valid(self) -> None:
        if self.plan is not None:
            check_plan(self.plan, self.specs, list(self.peers.values()))


TestChurn = Churn.TestCase
TestChurn.settings = settings(max_examples=40, stateful_step_count=15, deadline=None)
