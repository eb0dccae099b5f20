"""The cluster key is the admission control: a peer without it, or with a
different one, never becomes a member, and keyed peers count what they drop."""

from __future__ import annotations

import time

import pytest
from mesh_harness import Cluster

pytestmark = pytest.mark.integration

OBSERVE = 4.0
"""Seconds the intruder keeps trying to join (its first attempts come at 0, 1 and 3 s)."""


def test_peer_without_the_cluster_key_is_never_admitted(cluster: Cluster) -> None:
    """An intruder with a different key tries to join a keyed mesh through
    both keyed peers for several seconds: no keyed peer ever lists it, the
    keyed peers count its packets as dropped["decrypt"], and the intruder
    never lists a keyed peer as alive. (An intruder with no key at all does
    not start: `test_secure_by_default`.)"""
    keyed = cluster.start_mesh(2, key_file=cluster.new_key())
    key = cluster.new_key("other.key")
    intruder = cluster.add("intruder", key_file=key, join=[p.gossip for p in keyed])
    cluster.wait(intruder.health, what="the intruder's API")

    keyed_views: list[set[str]] = []
    intruder_alive: set[str] = set()
    end = time.monotonic() + OBSERVE
    while time.monotonic() < end:
        cluster.check_processes()
        for p in keyed:
            keyed_views.append(set(p.members()))
        intruder_alive |= {n for n, s in intruder.states().items()
                           if s == "alive" and n != intruder.name}
        time.sleep(0.1)

    assert keyed_views and all("intruder" not in v for v in keyed_views)
    assert intruder_alive == set(), f"intruder sees keyed peers alive: {intruder_alive}"
    cluster.wait(lambda: all(p.health()["dropped"].get("decrypt", 0) > 0 for p in keyed),
                 what='dropped["decrypt"] > 0 on every keyed peer')
    for p in keyed:
        health = p.health()
        assert health["members"] == {"alive": 2}, health
    assert "no seed answered" in intruder.log_path.read_text()
    cluster.wait_converged(keyed)
