"""Membership behaviour of real peer processes on loopback: join, crash,
restart and graceful leave, observed through every peer's HTTP API."""

from __future__ import annotations

import time

import pytest
from mesh_harness import Cluster, Peer

pytestmark = pytest.mark.integration


def test_three_keyed_peers_converge_and_share_profiles(cluster: Cluster) -> None:
    """Three peers sharing a cluster key converge: every peer lists all three
    alive, and holds every other peer's capability profile (pulled over TCP)."""
    key = cluster.new_key()
    peers = cluster.start_mesh(3, key_file=key)
    names = {p.name for p in peers}

    def profiles_everywhere() -> bool:
        for p in peers:
            members = p.members()
            if set(members) != names:
                return False
            for m in members.values():
                profile = m["profile"]
                if m["state"] != "alive" or profile is None:
                    return False
                if profile["cpu"]["cores"] < 1:
                    return False
        return True

    cluster.wait(profiles_everywhere, what="every profile held by every peer")
    for p in peers:
        health = p.health()
        assert health["status"] == "ok"
        assert health["members"] == {"alive": 3}
        me = p.self_info()
        assert me["name"] == p.name
        assert me["address"] == p.gossip
        assert me["api"] == p.api
        # Encrypted mesh and no stranger: nothing had to be dropped for a bad key.
        assert "decrypt" not in health["dropped"], health["dropped"]


def test_sigkilled_peer_is_declared_dead_by_every_other_peer(cluster: Cluster) -> None:
    """A peer that crashes (SIGKILL: no leave message) is detected by the
    failure detector and marked ``dead`` -- not ``left`` -- on all four
    survivors, while the survivors keep seeing each other alive."""
    peers = cluster.start_mesh(5, key_file=cluster.new_key())
    victim = peers[3]
    survivors = [p for p in peers if p is not victim]
    victim.kill()

    cluster.wait(lambda: cluster.all_see(survivors, [victim.name], "dead"),
                 what=f"{victim.name} dead on every survivor")
    cluster.wait(lambda: cluster.all_see(survivors, [p.name for p in survivors], "alive"),
                 what="survivors alive on each other")


def test_restarted_peer_comes_back_alive_with_higher_incarnation(cluster: Cluster) -> None:
    """A crashed peer restarted with the same name and address is accepted
    again: every peer (itself included) lists it ``alive`` with an incarnation
    above the one it had been declared dead with: it restarts one above the
    incarnation persisted in its data directory (or refutes its death)."""
    peers = cluster.start_mesh(4, key_file=cluster.new_key())
    victim = peers[2]
    others = [p for p in peers if p is not victim]
    victim.kill()
    cluster.wait(lambda: cluster.all_see(others, [victim.name], "dead"),
                 what=f"{victim.name} dead on every other peer")
    before = max(p.members()[victim.name]["incarnation"] for p in others)

    victim.start()

    def back_alive() -> bool:
        for p in peers:
            m = p.members().get(victim.name)
            if m is None or m["state"] != "alive" or m["incarnation"] <= before:
                return False
        return True

    cluster.wait(back_alive, what=f"{victim.name} alive with incarnation > {before} everywhere")
    cluster.wait_converged(peers)
    assert victim.self_info()["incarnation"] > before


def test_sigtermed_peer_exits_zero_and_is_left_not_dead(cluster: Cluster) -> None:
    """SIGTERM makes a peer announce a graceful leave and exit 0; every other
    peer then lists it ``left``, and none ever lists it ``dead`` (also not in
    the seconds after, when a crash would have been detected)."""
    peers = cluster.start_mesh(4, key_file=cluster.new_key())
    leaver = peers[1]
    others = [p for p in peers if p is not leaver]
    seen: set[str] = set()

    def observe() -> set[str]:
        states = {p.states().get(leaver.name, "missing") for p in others}
        seen.update(states)
        return states

    assert leaver.terminate() == 0
    cluster.wait(lambda: observe() == {"left"}, what=f"{leaver.name} left on every peer")
    # Keep watching for longer than a failure would take to be declared
    # under the local preset: a left peer must not turn dead.
    end = time.monotonic() + 3.0
    while time.monotonic() < end:
        observe()
        time.sleep(0.05)
    assert seen <= {"alive", "suspect", "left"}, seen
    assert observe() == {"left"}
    log = leaver.log_path.read_text()
    assert "received SIGTERM" in log and "left the mesh" in log
    _assert_no_traceback(leaver)


def _assert_no_traceback(peer: Peer) -> None:
    log = peer.log_path.read_text(errors="replace")
    assert "Traceback" not in log, f"{peer.name} logged a traceback:\n{log[-3000:]}"
