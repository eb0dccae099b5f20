"""Whom a restarted peer contacts, and what it remembers for the next
restart (peer.json), like Serf's snapshot rejoin."""

from __future__ import annotations

from nanomesh.daemon.membership import REMEMBERED_PEERS, peers_to_remember, rejoin_targets

ME = ("127.0.0.1", 7946)
SEED = ("127.0.0.2", 7946)
OLD = ("127.0.0.3", 7946)


def test_seeds_come_first_then_the_remembered_peers_without_repeats_or_self() -> None:
    assert rejoin_targets([SEED], [OLD, SEED, ME], ME) == (SEED, OLD)


def test_without_seeds_the_remembered_peers_are_the_targets() -> None:
    assert rejoin_targets([], [OLD, ME], ME) == (OLD,)


def test_nothing_to_contact_is_empty() -> None:
    assert rejoin_targets([ME], [], ME) == ()


def test_the_peers_alive_now_replace_the_remembered_ones() -> None:
    assert peers_to_remember([OLD], [SEED]) == (OLD,)


def test_seeing_nobody_alive_keeps_the_remembered_peers() -> None:
    """A restarted peer that has not found the mesh yet saves its new
    incarnation; it must not forget whom to rejoin while doing so."""
    assert peers_to_remember([], [SEED, OLD]) == (SEED, OLD)


def test_at_most_remembered_peers_are_kept() -> None:
    alive = [(f"127.0.1.{i}", 7946) for i in range(REMEMBERED_PEERS + 5)]
    assert len(peers_to_remember(alive, [])) == REMEMBERED_PEERS
