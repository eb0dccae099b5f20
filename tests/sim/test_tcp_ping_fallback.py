"""The TCP ping fallback in a whole simulated mesh: loss that hits only
datagrams (the simulator's streams are reliable, as TCP retransmits) should
raise no suspicion with ``tcp_ping`` on, and a peer whose datagrams are all
lost should stay alive; with it off, the same runs suspect and kill."""

from __future__ import annotations

from dataclasses import replace

import pytest

from nanomesh.gossip.config import lan
from nanomesh.gossip.effects import MemberFailed, MemberSuspected
from nanomesh.sim import NetworkModel, Simulator
from nanomesh.wire import MemberState

N = 20


def mesh(seed: int, tcp_ping: bool, drop: float = 0.0) -> Simulator:
    sim = Simulator(seed, replace(lan(), tcp_ping=tcp_ping), NetworkModel(drop=drop))
    sim.add_converged([f"p{i:02d}" for i in range(N)])
    sim.run_for(2)
    return sim


def count(sim: Simulator, kind: type, since: int = 0) -> int:
    return sum(isinstance(e.event, kind) for e in sim.trace[since:])


@pytest.mark.parametrize("seed", [1, 2])
def test_udp_only_loss_raises_no_suspicion_with_the_fallback(seed: int) -> None:
    """10 % of the datagrams lost for 60 s. Every probe whose UDP ack was lost
    is answered over TCP (reliable here, and a round trip is far shorter than
    the rest of the probe period), so no live peer is suspected; without the
    fallback the same loss raises suspicions (refuted, so no deaths)."""
    with_fallback, without = mesh(seed, True, 0.10), mesh(seed, False, 0.10)
    with_fallback.run_for(60)
    without.run_for(60)
    assert count(with_fallback, MemberSuspected) == 0
    assert count(with_fallback, MemberFailed) == 0
    assert sum(with_fallback.core(n).stats.tcp_ping_acks for n in with_fallback.nodes) > 0
    assert count(without, MemberSuspected) > 0
    assert count(without, MemberFailed) == 0


@pytest.mark.parametrize("tcp_ping", [True, False])
def test_peer_deaf_to_udp_stays_alive_only_with_the_fallback(tcp_ping: bool) -> None:
    sim = mesh(7, tcp_ping)
    sim.block_datagrams(["p03"])
    sim.run_for(30)
    others = [n for n in sim.nodes if n != "p03"]
    seen = {sim.view(o, "p03") for o in others}
    if tcp_ping:
        assert seen == {MemberState.ALIVE}
        assert count(sim, MemberFailed) == 0
        # p03 probes the others over UDP too, and is answered over TCP alone.
        assert all(sim.view("p03", o) is MemberState.ALIVE for o in others)
    else:
        assert seen == {MemberState.DEAD}


def test_udp_deaf_peer_suspected_once_refutes_over_tcp() -> None:
    """A short full cut gets the UDP-deaf peer suspected (its TCP pings fail
    too); after it, only TCP reaches it. The first prober whose TCP ping it
    answers push-pulls with it, which carries the suspicion to it and its
    refutation back, before the suspicion times out."""
    sim = mesh(9, True)
    sim.block_datagrams(["p03"])
    sim.partition([[n for n in sim.nodes if n != "p03"]])
    sim.run_until_true(lambda: any(sim.view(o, "p03") is MemberState.SUSPECT
                                   for o in sim.nodes if o != "p03"), limit=5)
    sim.heal()
    sim.run_for(30)
    assert all(sim.view(o, "p03") is MemberState.ALIVE for o in sim.nodes if o != "p03")
    # (p03's own suspicions of others can still expire: their refutations
    # come by datagram, which p03 does not get.)
    assert not [e for e in sim.trace
                if isinstance(e.event, MemberFailed) and e.event.name == "p03"]


def test_unblocked_datagrams_flow_again() -> None:
    sim = mesh(8, False)
    sim.block_datagrams(["p05"])
    sim.run_for(10)
    sim.block_datagrams(())
    sim.run_for(30)
    assert all(sim.view(o, "p05") is MemberState.ALIVE for o in sim.nodes if o != "p05")
