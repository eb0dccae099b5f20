"""The TCP ping fallback of the failure detector (memberlist's probeNode:
when the direct UDP probe times out, the same ping also goes over TCP,
alongside the indirect probes; an ack on that stream before the probe period
ends counts as alive)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from test_machine import CFG, addr, all_messages, first_probe, make, of_type, state

from nanomesh.config import build_config
from nanomesh.errors import ConfigError
from nanomesh.gossip.config import PRESETS, lan
from nanomesh.gossip.effects import Effect, MemberSuspected, StreamCall
from nanomesh.gossip.machine import Membership
from nanomesh.wire import (
    Ack,
    IndirectPing,
    MemberDigest,
    MemberState,
    Nack,
    Ping,
    PushPullReply,
    Suspect,
)


def direct_timeout(m: Membership) -> tuple[float, Ping, list[Effect]]:
    """Start a probe and let its direct ack time out (stretched by the
    awareness score, if any): (start, ping, effects)."""
    now, ping, _ = first_probe(m)
    for _ in range(50):  # gossip rounds may come first
        effects = m.tick(m.next_deadline())
        if of_type(all_messages(effects), IndirectPing):
            return now, ping, effects
    raise AssertionError("the direct probe never timed out")


def tcp_pings(effects: list[Effect]) -> list[StreamCall]:
    return [e for e in effects if isinstance(e, StreamCall) and e.purpose == "ping"]


def test_missing_direct_ack_pings_the_target_over_tcp_alongside_the_relays() -> None:
    m = make(peers="bcdefg")
    now, ping, effects = direct_timeout(m)
    (call,) = tcp_pings(effects)
    assert call.addr == addr(ping.target)
    assert call.request == ping  # the same seq: any ack of this probe counts
    assert call.deadline == pytest.approx(now + CFG.probe_interval)
    assert len(of_type(all_messages(effects), IndirectPing)) == CFG.indirect_checks
    assert m.stats.tcp_pings == 1


def test_no_tcp_ping_while_the_direct_ack_may_still_come() -> None:
    m = make()
    now, ping, _ = first_probe(m)
    assert tcp_pings(m.tick(now + CFG.probe_timeout / 2)) == []
    m.handle_datagram(addr(ping.target), [Ack(ping.seq)], now + 0.01)
    assert tcp_pings(m.tick(now + CFG.probe_timeout)) == []


def test_ack_over_tcp_within_the_period_keeps_the_target_alive() -> None:
    m = make(peers="bcdefg")
    now, ping, effects = direct_timeout(m)
    (call,) = tcp_pings(effects)
    m.handle_stream_reply(call.call_id, Ack(ping.seq), now + 0.15)
    later = m.tick(now + CFG.probe_interval)
    assert not of_type(later, MemberSuspected)
    assert state(m, ping.target) is MemberState.ALIVE
    assert m.stats.tcp_ping_acks == 1
    assert m.stats.probe_failures == 0


def test_suspect_answering_only_over_tcp_gets_a_push_pull() -> None:
    """Its suspicion would reach it by datagram only, which it does not get:
    the push-pull hands it over and brings the refutation back."""
    m = make(peers="bcdefg")
    m.handle_datagram(addr("g"), [Suspect(n, 0, "g") for n in "bcdef"], 0.0)
    now, ping, effects = direct_timeout(m)
    assert state(m, ping.target) is MemberState.SUSPECT
    (call,) = tcp_pings(effects)
    (sync,) = m.handle_stream_reply(call.call_id, Ack(ping.seq), now + 0.15)
    assert isinstance(sync, StreamCall) and sync.purpose == "push-pull"
    assert sync.addr == addr(ping.target)
    refuted = MemberDigest(ping.target, addr(ping.target), 1, MemberState.ALIVE, 1)
    m.handle_stream_reply(sync.call_id, PushPullReply(ping.target, (refuted,)), now + 0.16)
    assert state(m, ping.target) is MemberState.ALIVE


def test_alive_target_answering_over_tcp_needs_no_push_pull() -> None:
    m = make(peers="bcdefg")
    now, ping, effects = direct_timeout(m)
    (call,) = tcp_pings(effects)
    assert m.handle_stream_reply(call.call_id, Ack(ping.seq), now + 0.15) == []


def test_ack_over_tcp_counts_as_health_like_any_ack() -> None:
    """memberlist leaves the awareness delta at -1 when only TCP answered:
    the probe succeeded, so Lifeguard's score improves."""
    m = make(peers="bcdefg")
    m.awareness.apply_delta(2)
    now, ping, effects = direct_timeout(m)
    (call,) = tcp_pings(effects)
    assert call.deadline == pytest.approx(now + 3 * CFG.probe_interval)
    m.handle_stream_reply(call.call_id, Ack(ping.seq), call.deadline - 0.01)
    assert m.awareness.score == 1


def test_ack_over_tcp_after_the_period_does_not_undo_the_suspicion() -> None:
    m = make(peers="bcdefg")
    now, ping, effects = direct_timeout(m)
    (call,) = tcp_pings(effects)
    end = now + CFG.probe_interval
    # The reply lands at the deadline, before the shell's tick for it.
    m.handle_stream_reply(call.call_id, Ack(ping.seq), end)
    assert MemberSuspected(ping.target, "a") in m.tick(end)
    assert m.stats.tcp_ping_acks == 0


def test_ack_over_tcp_for_an_earlier_probe_does_not_end_the_current_one() -> None:
    m = make(peers="bcdefg")
    now, old, effects = direct_timeout(m)
    (call,) = tcp_pings(effects)
    m.tick(now + CFG.probe_interval)  # the old probe failed
    _, _, effects2 = direct_timeout(m)
    (call2,) = tcp_pings(effects2)
    assert isinstance(call2.request, Ping) and call2.deadline is not None
    m.handle_stream_reply(call.call_id, Ack(old.seq), call2.deadline - 0.01)
    assert MemberSuspected(call2.request.target, "a") in m.tick(call2.deadline)


def test_failed_tcp_ping_and_no_udp_ack_suspect_and_penalise_as_before() -> None:
    """Lifeguard's awareness is unchanged when the fallback fails too: one
    point per relay that sent no nack (memberlist's probeNode)."""
    m = make(peers="bcdefg")
    now, ping, effects = direct_timeout(m)
    (call,) = tcp_pings(effects)
    assert m.stream_failed(call.call_id, now + CFG.probe_timeout + 0.01) == []
    assert state(m, ping.target) is MemberState.ALIVE  # not before the period ends
    later = m.tick(now + CFG.probe_interval)
    assert MemberSuspected(ping.target, "a") in later
    assert m.awareness.score == CFG.indirect_checks


def test_failed_tcp_ping_with_nacks_from_every_relay_leaves_the_score() -> None:
    m = make(peers="bcdefg")
    now, ping, effects = direct_timeout(m)
    (call,) = tcp_pings(effects)
    m.stream_failed(call.call_id, now + 0.12)
    m.handle_datagram(addr("b"), [Nack(ping.seq)] * CFG.indirect_checks, now + 0.15)
    m.tick(now + CFG.probe_interval)
    assert m.awareness.score == 0


def test_tcp_ping_off_means_only_udp_decides() -> None:
    m = make(peers="bcdefg", cfg=replace(CFG, tcp_ping=False))
    now, ping, effects = direct_timeout(m)
    assert tcp_pings(effects) == []
    assert of_type(all_messages(effects), IndirectPing)
    assert MemberSuspected(ping.target, "a") in m.tick(now + CFG.probe_interval)


def test_ping_over_tcp_is_acked_on_the_stream() -> None:
    m = make()
    reply, effects = m.handle_stream_request(Ping(9, "a", "b", addr("b")), 1.0)
    assert reply == Ack(9)
    assert effects == []


def test_ping_over_tcp_meant_for_another_peer_gets_no_ack() -> None:
    """As over UDP: a peer that took over an address must not answer for
    its old owner."""
    m = make()
    reply, _ = m.handle_stream_request(Ping(9, "zz", "b", addr("b")), 1.0)
    assert reply is None
    assert m.stats.misdirected_pings == 1


def test_tcp_ping_is_on_in_every_preset() -> None:
    assert all(make_preset().tcp_ping for make_preset in PRESETS.values())
    assert replace(lan(), tcp_ping=False).validate().tcp_ping is False


def test_config_file_turns_tcp_ping_off_and_rejects_a_non_boolean(tmp_path: Path) -> None:
    conf = tmp_path / "peer.toml"
    conf.write_text("[gossip]\ntcp_ping = false\n")
    off = build_config(config_file=conf, name="a", data_dir=tmp_path / "d")
    assert off.gossip.tcp_ping is False
    assert off.gossip.probe_interval == lan().probe_interval
    conf.write_text("[gossip]\ntcp_ping = 0\n")
    with pytest.raises(ConfigError, match="tcp_ping must be true or false"):
        build_config(config_file=conf, name="a", data_dir=tmp_path / "d")
    conf.write_text("[gossip]\nprobe_timeout = true\n")
    with pytest.raises(ConfigError, match="must be a number"):
        build_config(config_file=conf, name="a", data_dir=tmp_path / "d")
