"""The membership core against the SWIM and Lifeguard papers.

SWIM: Das, Gupta, Motivala, "SWIM: Scalable Weakly-consistent Infection-style
Process Group Membership Protocol", DSN 2002. Lifeguard: Dadgar, Phillips,
Currey, "Lifeguard: Local Health Awareness for More Accurate Failure
Detection", 2018. Each test names the section it checks.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from nanomesh.gossip.config import lan
from nanomesh.gossip.effects import (
    Effect,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberReaped,
    MemberRecovered,
    MemberSuspected,
    ProfileUpdated,
    Refuted,
    SendDatagram,
    StreamCall,
)
from nanomesh.gossip.machine import Membership
from nanomesh.wire import (
    Ack,
    Address,
    Alive,
    Dead,
    IndirectPing,
    MemberDigest,
    MemberState,
    Nack,
    Ping,
    ProfileRecord,
    ProfileReply,
    ProfileRequest,
    PushPull,
    PushPullReply,
    Suspect,
)

CFG = lan()


def addr(name: str) -> Address:
    return (f"10.0.0.{ord(name[0]) - ord('a') + 1}", 7946)


def make(name: str = "a", peers: str = "bcd", cfg=CFG, seed: int = 1) -> Membership:
    m = Membership(name, addr(name), cfg, random.Random(seed), 0.0, profile={"n": name})
    m.bootstrap([MemberDigest(p, addr(p), 0, MemberState.ALIVE, 1) for p in peers], 0.0)
    return m


def datagrams(effects: list[Effect]) -> list[SendDatagram]:
    return [e for e in effects if isinstance(e, SendDatagram)]


def all_messages(effects: list[Effect]) -> list[object]:
    return [msg for d in datagrams(effects) for msg in d.messages]


def of_type(effects: list[Effect], cls: type) -> list:
    return [e for e in effects if isinstance(e, cls)]


def first_probe(m: Membership) -> tuple[float, Ping, Address]:
    """Tick until the first probe goes out; return (time, ping, its address)."""
    now = m.next_deadline()
    for _ in range(20):
        for d in datagrams(m.tick(now)):
            for msg in d.messages:
                if isinstance(msg, Ping):
                    return now, msg, d.addr
        now = m.next_deadline()
    raise AssertionError("no probe sent")


def state(m: Membership, name: str) -> MemberState:
    member = m.member(name)
    assert member is not None
    return member.state


# ------------------------------------------------------------------ SWIM §3.1


def test_probe_pings_a_live_peer_at_its_address() -> None:
    """SWIM §3.1: each protocol period a member pings one other member."""
    m = make()
    _, ping, to = first_probe(m)
    assert ping.target in "bcd"
    assert to == addr(ping.target)
    assert ping.source == "a"


def test_round_robin_probes_every_peer_once_per_pass() -> None:
    """SWIM §4.3: round-robin probe selection bounds the time to first probe."""
    m = make(peers="bcdefg")
    targets = []
    for _ in range(6):
        now, ping, _ = first_probe(m)
        m.handle_datagram(addr(ping.target), [Ack(ping.seq)], now)
        targets.append(ping.target)
    assert sorted(targets) == list("bcdefg")


def test_ack_before_timeout_means_no_indirect_probe_and_no_suspicion() -> None:
    m = make()
    now, ping, _ = first_probe(m)
    m.handle_datagram(addr(ping.target), [Ack(ping.seq)], now + 0.01)
    later = m.tick(now + CFG.probe_interval * 0.99)
    assert not of_type(all_messages(later), IndirectPing)
    assert state(m, ping.target) is MemberState.ALIVE


def test_missing_ack_asks_k_other_peers_to_probe() -> None:
    """SWIM §3.1 ping-req: after the timeout, k random *other* members probe."""
    m = make(peers="bcdefg")
    now, ping, _ = first_probe(m)
    effects = m.tick(now + CFG.probe_timeout)
    reqs = [(d.addr, msg) for d in datagrams(effects) for msg in d.messages
            if isinstance(msg, IndirectPing)]
    assert len(reqs) == CFG.indirect_checks
    assert all(r.target == ping.target and r.seq == ping.seq and r.want_nack for _, r in reqs)
    assert addr(ping.target) not in {a for a, _ in reqs}


def test_indirect_ack_saves_the_target() -> None:
    m = make(peers="bcdefg")
    now, ping, _ = first_probe(m)
    m.tick(now + CFG.probe_timeout)
    m.handle_datagram(addr("g"), [Ack(ping.seq)], now + 0.15)
    m.tick(now + CFG.probe_interval)
    assert state(m, ping.target) is MemberState.ALIVE


def test_no_ack_by_end_of_period_suspects_the_target() -> None:
    """SWIM §4.2: a failed probe makes the target *suspect*, not dead."""
    m = make()
    now, ping, _ = first_probe(m)
    m.tick(now + CFG.probe_timeout)
    effects = m.tick(now + CFG.probe_interval)
    assert MemberSuspected(ping.target, "a") in effects
    assert state(m, ping.target) is MemberState.SUSPECT


def test_relay_pings_target_forwards_ack_and_nacks_on_timeout() -> None:
    """SWIM §3.1 relay role, and Lifeguard §4.1 nack when the target is silent."""
    m = make()
    req = IndirectPing(77, "c", addr("c"), "b", addr("b"), want_nack=True)
    out = datagrams(m.handle_datagram(addr("b"), [req], 1.0))
    (relay_ping,) = [msg for d in out for msg in d.messages if isinstance(msg, Ping)]
    assert relay_ping.target == "c"
    fwd = m.handle_datagram(addr("c"), [Ack(relay_ping.seq)], 1.01)
    assert [(d.addr, d.messages[0]) for d in datagrams(fwd)] == [(addr("b"), Ack(77))]

    out = datagrams(m.handle_datagram(addr("b"), [replace(req, seq=78)], 2.0))
    nacks = [(d.addr, msg) for d in datagrams(m.tick(2.0 + CFG.probe_timeout))
             for msg in d.messages if isinstance(msg, Nack)]
    assert nacks == [(addr("b"), Nack(78))]


def test_ping_meant_for_another_peer_is_not_answered() -> None:
    """A peer that took over an address must not answer for its old owner."""
    m = make()
    assert m.handle_datagram(addr("b"), [Ping(5, "zz", "b", addr("b"))], 1.0) == []
    assert m.stats.misdirected_pings == 1
    (reply,) = datagrams(m.handle_datagram(addr("b"), [Ping(6, "a", "b", addr("b"))], 1.0))
    assert reply.messages[0] == Ack(6)


# ------------------------------------------------------------------ SWIM §4.2


def test_suspicion_about_ourselves_is_refuted_with_a_higher_incarnation() -> None:
    """SWIM §4.2: the suspected member answers with incarnation + 1; we also send
    the refutation straight to the accuser."""
    m = make()
    effects = m.handle_datagram(addr("b"), [Suspect("a", 0, "b")], 1.0)
    assert m.incarnation == 1
    assert Refuted(1, "b") in effects
    direct = [d for d in datagrams(effects) if d.addr == addr("b")]
    assert any(isinstance(msg, Alive) and msg.incarnation == 1 for d in direct
               for msg in d.messages)


def test_suspicion_expires_into_dead_at_its_deadline() -> None:
    m = make()
    m.handle_datagram(addr("b"), [Suspect("c", 0, "b")], 10.0)
    suspicion = m.member("c").suspicion  # type: ignore[union-attr]
    assert suspicion is not None
    assert not of_type(m.tick(suspicion.deadline - 0.001), MemberFailed)
    assert MemberFailed("c", "a") in m.tick(suspicion.deadline)
    assert state(m, "c") is MemberState.DEAD


def test_alive_with_higher_incarnation_clears_suspicion_but_equal_does_not() -> None:
    m = make()
    m.handle_datagram(addr("b"), [Suspect("c", 3, "b")], 1.0)
    assert not of_type(m.handle_datagram(addr("c"), [Alive("c", addr("c"), 3, 1)], 1.1),
                       MemberRecovered)
    assert state(m, "c") is MemberState.SUSPECT
    effects = m.handle_datagram(addr("c"), [Alive("c", addr("c"), 4, 1)], 1.2)
    assert MemberRecovered("c") in effects
    assert state(m, "c") is MemberState.ALIVE


def test_older_suspicion_is_ignored() -> None:
    m = make()
    m.handle_datagram(addr("c"), [Alive("c", addr("c"), 5, 1)], 1.0)
    m.handle_datagram(addr("b"), [Suspect("c", 4, "b")], 1.1)
    assert state(m, "c") is MemberState.ALIVE


def test_stale_accusation_is_answered_with_the_refutation() -> None:
    """Our addition: a peer gossiping an already refuted suspicion gets the
    newer Alive back, so its timer cannot declare a live peer dead."""
    m = make()
    m.handle_datagram(addr("c"), [Alive("c", addr("c"), 5, 1)], 1.0)
    effects = m.handle_datagram(addr("d"), [Suspect("c", 4, "b")], 1.1)
    back = [msg for d in datagrams(effects) if d.addr == addr("d") for msg in d.messages]
    assert Alive("c", addr("c"), 5, 1) in back


def test_dead_announced_by_the_peer_itself_is_a_graceful_leave() -> None:
    m = make()
    effects = m.handle_datagram(addr("c"), [Dead("c", 0, "c")], 1.0)
    assert effects[0] == MemberLeft("c")
    assert state(m, "c") is MemberState.LEFT


def test_declared_dead_by_others_we_refute() -> None:
    m = make()
    effects = m.handle_datagram(addr("b"), [Dead("a", 0, "b")], 1.0)
    assert m.incarnation == 1
    assert Refuted(1, "b") in effects


# ------------------------------------------------------------------ Lifeguard


def test_lha_failed_probe_without_nacks_raises_local_health_score() -> None:
    """Lifeguard §4.1: missing nacks suggest *we* are the slow one."""
    m = make(peers="bcdefg")
    now, _, _ = first_probe(m)
    m.tick(now + CFG.probe_timeout)
    m.tick(now + CFG.probe_interval)
    assert m.awareness.score == CFG.indirect_checks


def test_lha_nacks_from_every_relay_leave_score_unchanged() -> None:
    m = make(peers="bcdefg")
    now, ping, _ = first_probe(m)
    m.tick(now + CFG.probe_timeout)
    m.handle_datagram(addr("b"), [Nack(ping.seq)] * CFG.indirect_checks, now + 0.15)
    m.tick(now + CFG.probe_interval)
    assert m.awareness.score == 0


def test_lha_stretches_the_probe_interval() -> None:
    m = make()
    m.awareness.apply_delta(2)
    now, ping, _ = first_probe(m)  # started with score 2: interval x3
    m.handle_datagram(addr(ping.target), [Ack(ping.seq)], now)
    later, _, _ = first_probe(m)
    assert later == pytest.approx(now + CFG.probe_interval * 3)


def test_lha_being_suspected_raises_local_health_score() -> None:
    m = make()
    m.handle_datagram(addr("b"), [Suspect("a", 0, "b")], 1.0)
    assert m.awareness.score == 1


def test_lsa_independent_confirmations_shorten_the_timeout() -> None:
    """Lifeguard §4.3: each independent suspect message pulls the deadline in."""
    m = make(peers="bcdefghij", cfg=replace(CFG, suspicion_mult=4))
    m.handle_datagram(addr("b"), [Suspect("c", 0, "b")], 1.0)
    s = m.member("c").suspicion  # type: ignore[union-attr]
    assert s is not None and s.expected == 2
    before = s.deadline
    m.handle_datagram(addr("d"), [Suspect("c", 0, "d")], 1.1)
    assert s.deadline < before
    m.handle_datagram(addr("e"), [Suspect("c", 0, "e")], 1.2)
    assert s.deadline == pytest.approx(1.0 + s.min_timeout)


def test_buddy_system_piggybacks_the_suspicion_on_the_probe() -> None:
    """Lifeguard §4.2 (buddy system): probing a suspect tells it at once."""
    m = make(peers="b")
    m.handle_datagram(addr("c"), [Suspect("b", 0, "c")], 0.0)
    ping_datagram = first_probe_datagram(m)
    assert Suspect("b", 0, "a") in ping_datagram.messages


# ------------------------------------------------------------------ dissemination


def first_probe_datagram(m: Membership) -> SendDatagram:
    for _ in range(20):
        for d in datagrams(m.tick(m.next_deadline())):
            if any(isinstance(msg, Ping) for msg in d.messages):
                return d
    raise AssertionError("no probe sent")


def test_updates_are_piggybacked_on_pings() -> None:
    """SWIM §4.1: membership updates ride on the failure detector's packets."""
    m = make()
    m.handle_datagram(addr("b"), [Alive("e", addr("e"), 0, 0)], 0.0)
    assert Alive("e", addr("e"), 0, 0) in first_probe_datagram(m).messages


def test_new_member_is_announced_and_joined() -> None:
    m = make()
    effects = m.handle_datagram(addr("b"), [Alive("e", addr("e"), 0, 0)], 1.0)
    assert MemberJoined("e", addr("e"), rejoined=False) in effects
    assert state(m, "e") is MemberState.ALIVE


def test_name_clash_with_a_live_peer_at_another_address_is_refused() -> None:
    m = make()
    m.handle_datagram(addr("b"), [Alive("c", ("10.9.9.9", 7946), 9, 1)], 1.0)
    assert m.member("c").addr == addr("c")  # type: ignore[union-attr]


# ------------------------------------------------------------------ beyond SWIM


def test_join_sends_push_pull_and_merges_the_reply() -> None:
    m = Membership("a", addr("a"), CFG, random.Random(1), 0.0, profile={"n": "a"})
    (call,) = of_type(m.join([addr("b"), addr("a")], 0.0), StreamCall)
    assert call.purpose == "join" and isinstance(call.request, PushPull)
    reply = PushPullReply("b", (MemberDigest("b", addr("b"), 2, MemberState.ALIVE, 1),
                                MemberDigest("c", addr("c"), 0, MemberState.ALIVE, 1)))
    effects = m.handle_stream_reply(call.call_id, reply, 0.1)
    assert {e.name for e in of_type(effects, MemberJoined)} == {"b", "c"}
    pulls = of_type(effects, StreamCall)
    assert [p.request for p in pulls] == [ProfileRequest(("b", "c"))]
    assert pulls[0].addr == addr("b"), "profiles are pulled from the peer that told us"


def test_push_pull_request_is_answered_with_our_table() -> None:
    m = make()
    reply, _ = m.handle_stream_request(PushPull("e", False, (
        MemberDigest("e", addr("e"), 0, MemberState.ALIVE, 0),)), 1.0)
    assert isinstance(reply, PushPullReply)
    assert {d.name for d in reply.members} == set("abcde")  # ours, after merging theirs
    assert state(m, "e") is MemberState.ALIVE


def test_push_pull_reply_carries_our_refutation_of_their_suspicion() -> None:
    m = make()
    reply, _ = m.handle_stream_request(PushPull("b", False, (
        MemberDigest("a", addr("a"), 0, MemberState.SUSPECT, 1),)), 1.0)
    assert isinstance(reply, PushPullReply)
    (me,) = [d for d in reply.members if d.name == "a"]
    assert me.state is MemberState.ALIVE and me.incarnation == 1


def test_remote_dead_only_makes_us_suspect() -> None:
    """memberlist mergeState: one confused peer cannot kill another."""
    m = make()
    m.handle_stream_request(PushPull("b", False, (
        MemberDigest("c", addr("c"), 0, MemberState.DEAD, 1),)), 1.0)
    assert state(m, "c") is MemberState.SUSPECT


def test_restarted_peer_refutes_its_death_from_a_previous_life() -> None:
    """Rejoin after restart: the mesh remembers us dead at incarnation 5; we
    come back at 0 and must outbid it."""
    m = Membership("a", addr("a"), CFG, random.Random(1), 0.0, profile={"n": "a"})
    (call,) = of_type(m.join([addr("b")], 0.0), StreamCall)
    m.handle_stream_reply(call.call_id, PushPullReply("b", (
        MemberDigest("a", addr("a"), 5, MemberState.DEAD, 6),)), 0.1)
    assert m.incarnation == 6
    assert m.me.profile_version == 1, "a refutation alone does not make peers re-pull"


def test_a_restart_at_a_higher_incarnation_publishes_a_newer_profile_version() -> None:
    """The daemon restarts a peer at its persisted incarnation + 1: its profile
    version then exceeds any version of its previous life, so peers pull it."""
    old = Membership("a", addr("a"), CFG, random.Random(1), 0.0, profile={"v": 1},
                     incarnation=4)
    old.update_profile({"v": 2}, 1.0)
    new = Membership("a", addr("a"), CFG, random.Random(1), 9.0, profile={"v": 3},
                     incarnation=old.incarnation + 1)
    assert new.me.profile_version > old.me.profile_version


def test_profile_change_is_a_new_incarnation_and_peers_pull_it() -> None:
    owner = make("b", peers="a")
    owner.update_profile({"n": "b", "cpu": 4}, 1.0)
    assert owner.incarnation == 1 and owner.me.profile_version == 2

    m = make()
    effects = m.handle_datagram(addr("d"), [Alive("b", addr("b"), 1, 2)], 2.0)
    (pull,) = of_type(effects, StreamCall)
    assert pull.addr == addr("d") and pull.request == ProfileRequest(("b",))
    # d has not pulled it yet: fall back to the owner
    (fallback,) = of_type(m.handle_stream_reply(pull.call_id, ProfileReply(()), 2.1), StreamCall)
    assert fallback.addr == addr("b")
    reply, _ = owner.handle_stream_request(fallback.request, 2.2)  # type: ignore[arg-type]
    assert isinstance(reply, ProfileReply)
    assert ProfileUpdated("b", 2) in m.handle_stream_reply(fallback.call_id, reply, 2.3)
    assert m.member("b").profile == {"n": "b", "cpu": 4}  # type: ignore[union-attr]


def test_failed_profile_pull_is_retried_from_the_owner() -> None:
    m = make()
    (pull,) = of_type(m.handle_datagram(addr("d"), [Alive("b", addr("b"), 1, 2)], 2.0),
                      StreamCall)
    m.stream_failed(pull.call_id, 2.5)
    retry = [e for e in of_type(m.tick(4.0), StreamCall) if e.purpose == "profile"]
    assert [(r.addr, r.request) for r in retry] == [(addr("b"), ProfileRequest(("b",)))]


def test_profile_request_returns_what_we_hold() -> None:
    m = make()
    reply, _ = m.handle_stream_request(ProfileRequest(("a", "zz")), 1.0)
    assert reply == ProfileReply((ProfileRecord("a", 1, {"n": "a"}),))


def test_dead_members_are_reaped_after_the_reap_interval() -> None:
    cfg = replace(CFG, reap_interval=30.0)
    m = make(cfg=cfg)
    m.handle_datagram(addr("c"), [Dead("c", 0, "c")], 1.0)
    assert not of_type(m.tick(30.0), MemberReaped)
    assert MemberReaped("c") in m.tick(32.0)
    assert m.member("c") is None


def test_reconnect_pushes_pulls_with_a_dead_peer() -> None:
    """How partitions heal without an operator: dead peers are retried."""
    m = make()
    m.handle_datagram(addr("b"), [Dead("c", 0, "b")], 1.0)
    calls = [e for e in of_type(m.tick(CFG.reconnect_interval + 0.01), StreamCall)
             if e.purpose == "reconnect"]
    assert [c.addr for c in calls] == [addr("c")]


def test_leave_announces_dead_by_ourselves_and_stops_probing() -> None:
    m = make()
    effects = m.leave(1.0)
    assert all(Dead("a", 0, "a") in d.messages for d in datagrams(effects))
    assert datagrams(effects)
    assert m.me.state is MemberState.LEFT
    later = all_messages(m.tick(m.next_deadline()))
    assert not of_type(later, Ping)
    assert m.handle_datagram(addr("b"), [Dead("a", 0, "a")], 2.0) == []


def test_a_profile_published_while_leaving_does_not_overrule_the_leave() -> None:
    """A peer stopped during its start-up publishes its first full profile
    after the leave: an `alive` with a newer incarnation would revive it on
    every peer, and they would then declare it dead (seen in CI)."""
    m = make()
    assert datagrams(m.leave(1.0))
    assert m.update_profile({"n": "a", "cpu": 2}, 1.1) == []
    assert m.incarnation == 0
    later = all_messages(m.tick(m.next_deadline()))
    assert not [msg for msg in later if isinstance(msg, Alive) and msg.name == "a"]


def test_effects_are_deterministic_for_a_seed() -> None:
    def run(seed: int) -> list[Effect]:
        m = make(peers="bcdefgh", seed=seed)
        out: list[Effect] = []
        for _ in range(30):
            out += m.tick(m.next_deadline())
        return out

    assert run(7) == run(7)
    assert run(7) != run(8)
