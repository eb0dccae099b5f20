"""Peers on separate hosts (network namespaces on one bridge) under real
network faults: a partition and its healing, and steady packet loss.

Needs root, iproute2 and nftables. Without them these tests skip, unless
NANOMESH_REQUIRE_NETNS=1, where being unable to run them is a failure. The
root namespace has no route into the lab, so the peers' APIs are queried
through a small agent process inside each host (see mesh_harness.NsAgent).
They use the ``lan`` preset: these are the conditions it is tuned for.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import pytest
from mesh_harness import NetnsCluster, Peer

from nanomesh.gossip.config import lan

pytestmark = [pytest.mark.integration, pytest.mark.netns]

LOSS = 0.10
LOSS_PERIOD = 20.0
SAMPLE_EVERY = 0.25


def names(peers: list[Peer]) -> list[str]:
    return [p.name for p in peers]


def test_partition_is_detected_and_heals_by_itself(
        netns_cluster: Callable[[int], NetnsCluster]) -> None:
    """Five keyed peers on five hosts converge. Partitioned into {0,1} and
    {2,3,4}, each side declares every peer of the other side dead and keeps its
    own side alive, steadily. The partition lasts past gossip_to_the_dead_time,
    so peers have stopped gossiping to the dead: after `heal()` only Serf-style
    reconnect attempts to dead peers can merge the two sides. With no operator
    action (no restart, no re-join) every peer lists all five alive again."""
    c = netns_cluster(5)
    peers = c.start_mesh(key_file=c.new_key(), preset="lan")
    small, large = peers[:2], peers[2:]

    c.lab.partition([[0, 1], [2, 3, 4]])

    def split_seen() -> bool:
        return (c.all_see(small, names(large), "dead") and c.all_see(large, names(small), "dead")
                and c.all_see(small, names(small), "alive")
                and c.all_see(large, names(large), "alive"))

    c.wait(split_seen, timeout=45, what="each side of the partition sees the other dead")
    hold = time.monotonic() + lan().gossip_to_the_dead_time + 1.0
    while time.monotonic() < hold:
        assert split_seen(), c.views(peers)
        time.sleep(0.25)

    c.lab.heal()
    c.wait_converged(peers, timeout=60)
    for p in peers:
        assert p.running
        assert "joining via" not in _after_start(p), f"{p.name} was made to re-join"


def _after_start(peer: Peer) -> str:
    """Log lines after the initial join (a re-join would be an operator action)."""
    text = peer.log_path.read_text(errors="replace")
    marker = "joined the mesh via"
    return text.split(marker, 1)[1] if marker in text else ""


def test_ten_percent_loss_never_declares_a_peer_dead(
        netns_cluster: Callable[[int], NetnsCluster]) -> None:
    """With 10 % of the packets arriving at every host dropped (UDP and TCP)
    for 20 s, five keyed peers on the lan preset never declare any peer dead:
    every peer's member list, sampled every 0.25 s, never shows 'dead'
    (suspicions may come and go: that is the failure detector at work)."""
    c = netns_cluster(5)
    peers = c.start_mesh(key_file=c.new_key(), preset="lan")
    c.lab.set_loss_all(LOSS)

    seen: Counter[str] = Counter()
    dead_sightings: list[str] = []
    samples = 0
    end = time.monotonic() + LOSS_PERIOD
    while time.monotonic() < end:
        c.check_processes()
        for p in peers:
            for name, state in p.states().items():
                seen[state] += 1
                if state == "dead":
                    dead_sightings.append(f"{p.name} saw {name} dead")
        samples += 1
        time.sleep(SAMPLE_EVERY)

    c.lab.set_loss_all(0.0)
    suspicions = sum(p.health()["counters"]["suspicions"] for p in peers)
    print(f"\n[netns] {samples} samples under {LOSS:.0%} loss: states seen {dict(seen)}, "
          f"suspicions raised {suspicions}")
    assert samples >= LOSS_PERIOD / SAMPLE_EVERY / 4
    assert not dead_sightings, dead_sightings[:10]
    for p in peers:
        assert p.health()["counters"]["deaths_declared"] == 0, p.name
    c.wait_converged(peers)


UDP_DEAF_PERIOD = 15.0


def test_peer_deaf_to_udp_stays_alive_through_tcp_pings(
        netns_cluster: Callable[[int], NetnsCluster]) -> None:
    """Host 3 loses every datagram that arrives at it (nftables, UDP only),
    so no UDP probe of it or by it is ever acked. The TCP ping fallback
    (gossip.tcp_ping, on by default) answers those probes: for 15 s no peer
    sees host 3 dead and no peer declares any death; the others' and host 3's
    own counters show that TCP acks did it."""
    c = netns_cluster(4)
    peers = c.start_mesh(key_file=c.new_key(), preset="lan")
    deaf = peers[3]
    before = {p.name: p.health()["counters"] for p in peers}
    c.lab.set_loss(3, 1.0, protocol="udp")

    states: Counter[str] = Counter()
    dead_sightings: list[str] = []
    end = time.monotonic() + UDP_DEAF_PERIOD
    while time.monotonic() < end:
        c.check_processes()
        for p in peers:
            for name, state in p.states().items():
                if name == deaf.name or p is deaf:
                    states[state] += 1
                if state == "dead":
                    dead_sightings.append(f"{p.name} saw {name} dead")
        time.sleep(SAMPLE_EVERY)
    after = {p.name: p.health()["counters"] for p in peers}
    c.lab.set_loss(3, 0.0)

    def delta(name: str, counter: str) -> int:
        return int(after[name][counter] - before[name][counter])

    print(f"\n[netns] UDP-deaf {deaf.name} for {UDP_DEAF_PERIOD:.0f}s: states involving it "
          f"{dict(states)}; TCP ping acks {[delta(p.name, 'tcp_ping_acks') for p in peers]}, "
          f"suspicions {[delta(p.name, 'suspicions') for p in peers]}")
    assert not dead_sightings, dead_sightings[:10]
    assert all(delta(p.name, "deaths_declared") == 0 for p in peers)
    assert all(delta(p.name, "tcp_ping_acks") > 0 for p in peers)
    c.wait_converged(peers)
