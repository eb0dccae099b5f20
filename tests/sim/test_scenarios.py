"""Whole-mesh behaviour in the deterministic simulator: loss, partitions,
restarts. Every test runs a fixed seed (printed on failure through the test id)
so a failure reproduces exactly."""

from __future__ import annotations

import pytest

from nanomesh.gossip.config import lan, local, memberlist_lan
from nanomesh.gossip.effects import MemberFailed
from nanomesh.sim import NetworkModel, Simulator
from nanomesh.wire import MemberState

ALIVE, DEAD, LEFT = MemberState.ALIVE, MemberState.DEAD, MemberState.LEFT


def names(n: int) -> list[str]:
    return [f"p{i:02d}" for i in range(n)]


def profile(name: str) -> dict[str, object]:
    return {"name": name, "cpu": {"cores": 4}}


def everyone_sees(sim: Simulator, subject: str, state: MemberState) -> bool:
    return all(sim.view(o, subject) is state for o in sim.live_names() if o != subject)


def joined_mesh(seed: int, n: int, network: NetworkModel | None = None, wire: bool = False
                ) -> Simulator:
    sim = Simulator(seed, lan(), network, wire=wire)
    sim.add_node("p00", profile=profile("p00"))
    for name in names(n)[1:]:
        sim.add_node(name, profile=profile(name), join=["p00"])
    return sim


@pytest.mark.parametrize("seed", [1, 2])
def test_peers_joining_through_one_seed_converge_with_profiles(seed: int) -> None:
    sim = joined_mesh(seed, 10, wire=True)
    sim.run_for(10)
    for o in sim.live_names():
        members = sim.core(o).members()
        assert [m.name for m in members] == names(10)
        assert all(m.state is ALIVE and m.profile == profile(m.name) for m in members)


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_killed_peer_is_declared_dead_by_everyone(seed: int) -> None:
    sim = joined_mesh(seed, 10)
    sim.run_for(10)
    sim.kill("p04")
    start = sim.now
    done = sim.run_until_true(lambda: everyone_sees(sim, "p04", DEAD), limit=10)
    assert done is not None, "p04 never declared dead everywhere"
    assert done - start < 5.0


@pytest.mark.parametrize("seed", [11, 12])
def test_no_false_positive_in_five_minutes_at_ten_percent_loss(seed: int) -> None:
    """The Lifeguard claim our `lan` preset must keep: packet loss alone never
    makes a live peer dead (20 peers, 10 % loss on every datagram, 300 s)."""
    sim = Simulator(seed, lan(), NetworkModel(drop=0.10))
    sim.add_converged(names(20), profile=profile)
    sim.run_for(300)
    failures = [e for e in sim.trace if isinstance(e.event, MemberFailed)]
    assert failures == []
    assert all(everyone_sees(sim, n, ALIVE) for n in names(20))


def test_tolerates_duplication_and_reordering() -> None:
    sim = joined_mesh(21, 8, NetworkModel(duplicate=0.2, jitter=0.05))
    sim.run_for(30)
    assert all(everyone_sees(sim, n, ALIVE) for n in names(8))
    assert not [e for e in sim.trace if isinstance(e.event, MemberFailed)]


def test_partition_then_heal_merges_without_an_operator() -> None:
    sim = joined_mesh(31, 10)
    sim.run_for(10)
    left, right = names(10)[:4], names(10)[4:]
    sim.partition([left, right])
    sim.run_for(15)
    for a in left:
        assert all(sim.view(a, b) is DEAD for b in right)
    for b in right:
        assert all(sim.view(b, a) is DEAD for a in left)
    sim.heal()
    healed = sim.run_until_true(lambda: all(everyone_sees(sim, n, ALIVE) for n in names(10)),
                                limit=60, step=0.5)
    assert healed is not None, "the partition never healed"


def test_restarted_peer_rejoins_with_a_higher_incarnation() -> None:
    sim = joined_mesh(41, 6)
    sim.run_for(10)
    sim.kill("p03")
    assert sim.run_until_true(lambda: everyone_sees(sim, "p03", DEAD), limit=10)
    before = sim.core("p00").member("p03").incarnation  # type: ignore[union-attr]
    sim.restart("p03", join=["p00"], profile=profile("p03"))
    assert sim.run_until_true(lambda: everyone_sees(sim, "p03", ALIVE), limit=10)
    for o in sim.live_names():
        m = sim.core(o).member("p03")
        assert m is not None and m.incarnation > before
    assert sim.core("p03").num_live() == 6


def test_graceful_leave_is_left_not_dead() -> None:
    sim = joined_mesh(51, 6)
    sim.run_for(10)
    sim.leave("p02")
    sim.run_for(0.5)
    sim.kill("p02")  # the process exits after its leave
    sim.run_for(10)
    assert everyone_sees(sim, "p02", LEFT)


def test_profile_change_reaches_every_peer() -> None:
    """A changed profile is a new incarnation; peers pull the new version."""
    sim = Simulator(61, lan())
    sim.add_converged(names(100), profile=profile)
    sim.run_for(1)
    new = {"name": "p07", "cpu": {"cores": 8}}
    sim.update_profile("p07", new)
    done = sim.run_until_true(
        lambda: all(sim.core(o).member("p07").profile == new  # type: ignore[union-attr]
                    for o in names(100)), limit=5)
    assert done is not None


def test_same_seed_same_trace() -> None:
    def trace(seed: int) -> list[object]:
        sim = joined_mesh(seed, 6, NetworkModel(drop=0.05, jitter=0.01))
        sim.run_for(5)
        sim.kill("p01")
        sim.run_for(5)
        return [(round(e.time, 9), e.node, e.event) for e in sim.trace]

    assert trace(71) == trace(71)


def test_local_preset_converges_too() -> None:
    sim = Simulator(81, local())
    sim.add_node("a")
    sim.add_node("b", join=["a"])
    sim.add_node("c", join=["b"])
    sim.run_for(5)
    assert everyone_sees(sim, "a", ALIVE) and everyone_sees(sim, "c", ALIVE)


def test_an_idle_peer_waits_for_its_next_probe_and_news_leaves_at_once() -> None:
    """Once the start-up news has been gossiped, an idle peer's core has no
    work before its next probe (every 1 s at memberlist's LAN timings): the
    0.2 s gossip timer and the 1 s reap timer count only while there is
    something to gossip or reap, so the daemon does not wake 6 more times a
    second for nothing. A profile change then leaves at once, not up to a
    gossip interval later."""
    cfg = memberlist_lan()
    sim = Simulator(21, cfg)
    sim.add_node("p00", profile=profile("p00"))
    for name in names(5)[1:]:
        sim.add_node(name, profile=profile(name), join=["p00"])
    sim.run_for(60)  # converged, every start-up broadcast retransmitted
    core = sim.core("p03")
    waits = []
    for _ in range(100):
        sim.run_for(0.05)
        waits.append(core.next_deadline() - sim.now)
    assert max(waits) > 3 * cfg.gossip_interval, f"woken every gossip interval: {max(waits)}"
    ticks: list[float] = []
    tick = core.tick

    def counting(now: float) -> list[object]:
        ticks.append(now)
        return tick(now)  # type: ignore[return-value]

    core.tick = counting  # type: ignore[method-assign]
    sim.update_profile("p03", {**profile("p03"), "cpu": {"cores": 8}})
    published = sim.now
    assert core.next_deadline() <= published, "the news is due at once"
    sim.run_until_true(lambda: bool(ticks), limit=1)
    assert ticks[0] == published
