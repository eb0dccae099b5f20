"""The balanced strategy on hand-made examples: ranking, constraints, stability."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from placement_helpers import changed, check_plan, peer, spec

from nanomesh.errors import ConfigError
from nanomesh.placement import PeerView, PlacementConfig, Plan, ServiceSpec, place, score

SPREAD = PlacementConfig()
BINPACK = PlacementConfig(mode="binpack")


def plan(specs: list[ServiceSpec], peers: list[PeerView], previous: Plan | None = None,
         config: PlacementConfig = SPREAD, seed: int = 0) -> Plan:
    result = place(specs, peers, previous, config=config, rng=random.Random(seed))
    check_plan(result, specs, peers)
    return result


def down(peers: list[PeerView], *names: str) -> list[PeerView]:
    return [replace(p, alive=False) if p.name in names else p for p in peers]


# -- the score ---------------------------------------------------------------------------

@pytest.mark.parametrize(("p", "cpu", "memory", "mode", "expected"), [
    (peer("p", load=0), 0.0, 0, "spread", 1.0 + 0.25 + 0.25),
    (peer("p", load=100), 0.0, 0, "spread", 1.0 + 0.0 + 0.25),
    (peer("p", load=0, cores=4, memory=1000), 1.0, 500, "spread", 0.5 + 0.25 + 0.25),  # memory
    (peer("p", load=0, cores=4, memory=1000), 3.0, 100, "spread", 0.25 + 0.25 + 0.25),  # cpu
    (peer("p", load=0, cores=4, memory=1000), 3.0, 100, "binpack", 0.75 + 0.25 + 0.25),
    (peer("p", load=50, power="battery", battery=100), 0.0, 0, "spread", 1 + 0.125 + 0.125),
    (peer("p", load=50, power="battery", battery=40), 0.0, 0, "spread", 1.0 + 0.125 + 0.05),
    (peer("p", load=50, power=None), 0.0, 0, "spread", 1.0 + 0.125 + 0.0),
    (peer("p", load=0, cores=0, memory=0), 0.0, 0, "spread", 1.0 + 0.25 + 0.25),
])
def test_score_formula(p: PeerView, cpu: float, memory: int, mode: str,
                       expected: float) -> None:
    assert score(p, cpu, memory, mode, SPREAD) == pytest.approx(expected)  # type: ignore[arg-type]


# -- ranking ------------------------------------------------------------------------------

def test_prefers_low_cpu_load() -> None:
    peers = [peer("busy", load=90), peer("idle", load=5), peer("mid", load=50)]
    assert plan([spec("s")], peers).assignments == {"s/0": "idle"}


def test_prefers_mains_then_high_battery() -> None:
    peers = [peer("low", power="battery", battery=30), peer("high", power="battery", battery=95)]
    assert plan([spec("s")], peers).assignments == {"s/0": "high"}
    assert plan([spec("s")], [*peers, peer("mains")]).assignments == {"s/0": "mains"}


def test_spread_uses_the_emptiest_peers_and_binpack_the_fullest() -> None:
    peers = [peer("a"), peer("b"), peer("c")]
    services = [spec(f"s{i}", cpu=1.0, memory_mb=100) for i in range(3)]
    assert set(plan(services, peers).assignments.values()) == {"a", "b", "c"}
    assert len(set(plan(services, peers, config=BINPACK).assignments.values())) == 1


def test_services_that_reserve_nothing_still_spread() -> None:
    services = [spec(f"s{i}") for i in range(6)]
    hosts = list(plan(services, [peer("a"), peer("b"), peer("c")]).assignments.values())
    assert sorted(hosts) == ["a", "a", "b", "b", "c", "c"]


def test_ties_are_broken_by_the_injected_rng() -> None:
    peers = [peer(f"p{i}") for i in range(8)]
    chosen = {plan([spec("s")], peers, seed=seed).assignments["s/0"] for seed in range(20)}
    assert len(chosen) > 1


def test_peer_order_does_not_matter() -> None:
    peers = [peer(f"p{i}", load=i % 3 * 10) for i in range(6)]
    services = [spec(f"s{i}", replicas=2, cpu=0.5) for i in range(5)]
    assert plan(services, peers, seed=7) == plan(services, peers[::-1], seed=7)


def test_most_constrained_service_first() -> None:
    """The general service is listed first, but the one that needs the only
    PIR peer is placed first, so both fit."""
    peers = [peer("with-pir", devices=["pir"], memory=1000), peer("plain", memory=1000)]
    services = [spec("general", memory_mb=800), spec("motion", capabilities=["pir"],
                                                      memory_mb=800)]
    for seed in range(5):
        assert plan(services, peers, seed=seed).assignments == {
            "general/0": "plain", "motion/0": "with-pir"}


# -- constraints --------------------------------------------------------------------------

def test_replicas_spread_over_distinct_peers() -> None:
    peers = [peer("a"), peer("b")]
    result = plan([spec("s", replicas=3)], peers)
    assert sorted(result.assignments.values()) == ["a", "b"]
    assert result.unplaced == ("s/2",)
    assert dict(result.unplaceable["s"]) == {
        "a": "already runs an instance of s (spread)",
        "b": "already runs an instance of s (spread)"}


def test_max_per_peer_without_spread() -> None:
    result = plan([spec("s", replicas=5, spread=False, max_per_peer=2)], [peer("a"), peer("b")])
    assert len(result.assignments) == 4 and result.unplaced == ("s/4",)


def test_pinned_to_a_peer_and_to_labels() -> None:
    peers = [peer("a", labels={"room": "1"}), peer("b", labels={"room": "2"}), peer("c")]
    result = plan([spec("pinned", peer="c"), spec("room2", labels={"room": "2"})], peers)
    assert result.assignments == {"pinned/0": "c", "room2/0": "b"}


# -- unplaceable --------------------------------------------------------------------------

def test_unplaceable_reason_per_peer_then_placed_when_a_peer_appears() -> None:
    peers = [peer("peer-3"), peer("peer-4", memory=120)]
    services = [spec("svc", capabilities=["pulse-oximeter"], memory_mb=512)]
    first = plan(services, peers)
    assert first.assignments == {}
    assert dict(first.unplaceable["svc"]) == {
        "peer-3": "needs device pulse-oximeter",
        "peer-4": "needs device pulse-oximeter; needs 512 MB memory, 120 MB free"}
    second = plan(services, [*peers, peer("peer-5", devices=["pulse-oximeter"])], first)
    assert second.assignments == {"svc/0": "peer-5"} and not second.unplaceable
    assert second.stats.new == 1 and second.stats.moves == 0


def test_no_peers_at_all() -> None:
    result = plan([spec("s")], [])
    assert result.unplaced == ("s/0",) and dict(result.unplaceable["s"]) == {}


# -- stability ----------------------------------------------------------------------------

def cluster(n: int = 5) -> tuple[list[ServiceSpec], list[PeerView]]:
    peers = [peer(f"p{i}", cores=4, memory=2048, load=10) for i in range(n)]
    services = [spec(f"s{i}", replicas=2, cpu=0.5, memory_mb=128) for i in range(10)]
    return services, peers


def test_replanning_without_change_moves_nothing() -> None:
    services, peers = cluster()
    first = plan(services, peers)
    again = plan(services, peers, first, seed=99)
    assert again.assignments == first.assignments
    assert again.stats.kept == 20 and again.stats.moves == 0


def test_a_dead_peer_moves_only_its_instances() -> None:
    services, peers = cluster()
    first = plan(services, peers)
    second = plan(services, down(peers, "p2"), first)
    moved = changed(first, second)
    assert set(moved) == set(first.on_peer("p2"))
    assert all(old == "p2" for old, _ in moved.values())
    assert second.stats.moved == len(moved) and second.stats.rebalanced == 0


def test_a_returning_peer_gets_work_within_the_move_budget() -> None:
    services, peers = cluster()
    first = plan(services, peers)
    without = plan(services, down(peers, "p2"), first)
    back = plan(services, peers, without)
    assert back.stats.rebalanced == 3 and back.stats.moved == 0     # max_moves default
    assert all(new == "p2" for _, new in changed(without, back).values())
    assert back.stats.rebalance_pending and "p2" not in back.settled_peers
    plans = [back]
    while plans[-1].stats.rebalance_pending:                         # later plans continue
        plans.append(plan(services, peers, plans[-1]))
        assert plans[-1].stats.rebalanced <= 3
    final = plans[-1]
    assert "p2" in final.settled_peers and len(final.on_peer("p2")) == 4   # 20 over 5 peers
    assert plan(services, peers, final).assignments == final.assignments   # then quiescent


def test_max_moves_zero_leaves_returning_peers_empty_like_swarm() -> None:
    services, peers = cluster()
    first = plan(services, peers)
    without = plan(services, down(peers, "p2"), first)
    back = plan(services, peers, without, config=PlacementConfig(max_moves=0))
    assert back.on_peer("p2") == [] and not back.stats.rebalance_pending
    assert "p2" in back.settled_peers


def test_binpack_does_not_rebalance_onto_returning_peers() -> None:
    services, peers = cluster()
    first = plan(services, peers, config=BINPACK)
    without = plan(services, down(peers, "p0", "p1"), first, config=BINPACK)
    back = plan(services, peers, without, config=BINPACK)
    assert back.assignments == without.assignments


def test_a_peer_that_stops_satisfying_a_requirement_loses_the_instance() -> None:
    peers = [peer("a", power="battery", battery=80, load=0), peer("b", load=90)]
    services = [spec("s", min_battery_percent=30)]
    first = plan(services, peers)
    assert first.assignments == {"s/0": "a"}
    drained = [replace(peers[0], battery_percent=10), peers[1]]
    second = plan(services, drained, first)
    assert second.assignments == {"s/0": "b"} and second.stats.moved == 1


def test_a_better_peer_alone_does_not_cause_a_move() -> None:
    """Live load changes never move a running instance; only joining peers do."""
    peers = [peer("a", load=10), peer("b", load=50)]
    first = plan([spec("s")], peers)
    assert first.assignments == {"s/0": "a"}
    busier = [replace(peers[0], cpu_load_percent=95), peers[1]]
    assert plan([spec("s")], busier, first).assignments == {"s/0": "a"}


def test_a_shrunk_peer_evicts_the_later_instances() -> None:
    peers = [peer("a", memory=1000, load=0), peer("b", memory=1000, load=90)]
    services = [spec("s", replicas=1, memory_mb=400), spec("t", memory_mb=400)]
    first = plan(services, peers, config=BINPACK)
    assert set(first.assignments.values()) == {"a"}
    second = plan(services, [replace(peers[0], memory_mb=500), peers[1]], first, config=BINPACK)
    assert second.assignments == {"s/0": "a", "t/0": "b"}


def test_scaling_down_and_removing_services() -> None:
    services, peers = cluster()
    first = plan(services, peers)
    fewer = [replace(s, replicas=1) for s in services[:5]]
    second = plan(fewer, peers, first)
    assert second.stats.removed == 15 and second.stats.kept == 5 and second.stats.moves == 0


# -- inputs -------------------------------------------------------------------------------

def test_invalid_config_and_duplicate_peers_are_rejected() -> None:
    with pytest.raises(ConfigError, match=r"placement\.mode"):
        place([], [], config=PlacementConfig(mode="pack"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"placement\.max_moves"):
        place([], [], config=PlacementConfig(max_moves=-1))
    with pytest.raises(ValueError, match="duplicate peer name 'a'"):
        place([], [peer("a"), peer("a")])
