"""Hypothesis stateful test: invariants of the membership core under any
sequence of inputs, valid or hostile-but-well-formed.

- an incarnation never decreases, ours or any member's (SWIM §4.2 relies on it);
- the live set is exactly the alive and suspect members, never ourselves;
- every datagram the core asks for fits MAX_DATAGRAM once sealed with a key;
- the core never raises.
"""

from __future__ import annotations

import random

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from nanomesh.gossip.config import lan
from nanomesh.gossip.effects import Effect, SendDatagram, StreamCall
from nanomesh.gossip.machine import Membership
from nanomesh.wire import (
    MAX_DATAGRAM,
    Ack,
    Alive,
    Dead,
    IndirectPing,
    Keyring,
    MemberDigest,
    MemberState,
    Nack,
    Ping,
    ProfileRecord,
    ProfileReply,
    PushPull,
    PushPullReply,
    Suspect,
    seal,
)

NAMES = ["me", "b", "c", "d", "e"]
names = st.sampled_from(NAMES)
incs = st.integers(0, 6)
addrs = st.sampled_from([("10.0.0.2", 7946), ("10.0.0.3", 7946), ("10.0.0.4", 7000)])
KEYRING = Keyring([b"k" * 32])

datagram_messages = st.one_of(
    st.builds(Alive, names, addrs, incs, st.integers(0, 6)),
    st.builds(Suspect, names, incs, names),
    st.builds(Dead, names, incs, names),
    st.builds(Ping, st.integers(0, 50), names, names, addrs),
    st.builds(IndirectPing, st.integers(0, 50), names, addrs, names, addrs, st.booleans()),
    st.builds(Ack, st.integers(0, 50)),
    st.builds(Nack, st.integers(0, 50)),
)
digests = st.builds(MemberDigest, names, addrs, incs, st.sampled_from(list(MemberState)),
                    st.integers(0, 6))


class MembershipMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.core = Membership("me", ("10.0.0.1", 7946), lan(), random.Random(0), 0.0,
                               profile={"x": 1})
        self.seen: dict[str, int] = {}
        self.my_inc = 0
        self.calls: list[int] = []

    def _check(self, effects: list[Effect]) -> None:
        for e in effects:
            if isinstance(e, SendDatagram):
                assert len(seal(e.messages, KEYRING)) <= MAX_DATAGRAM
            elif isinstance(e, StreamCall):
                self.calls.append(e.call_id)

    @rule(msgs=st.lists(datagram_messages, min_size=1, max_size=5), sender=addrs)
    def receive(self, msgs: list, sender: tuple[str, int]) -> None:
        self._check(self.core.handle_datagram(sender, msgs, self.now))

    @rule(dt=st.floats(0.0, 3.0))
    def advance(self, dt: float) -> None:
        self.now += dt
        self._check(self.core.tick(self.now))
        assert self.core.next_deadline() > self.now, "tick left work due: a busy loop"

    @rule()
    def leave(self) -> None:
        self._check(self.core.leave(self.now))

    @rule(ds=st.lists(digests, max_size=6), join=st.booleans())
    def push_pull(self, ds: list[MemberDigest], join: bool) -> None:
        _, effects = self.core.handle_stream_request(PushPull("b", join, tuple(ds)), self.now)
        self._check(effects)

    @rule(ds=st.lists(digests, max_size=6), data=st.data())
    def stream_outcome(self, ds: list[MemberDigest], data: st.DataObject) -> None:
        if not self.calls:
            return
        call = self.calls.pop(data.draw(st.integers(0, len(self.calls) - 1)))
        reply = data.draw(st.sampled_from([
            PushPullReply("c", tuple(ds)),
            ProfileReply(tuple(ProfileRecord(d.name, d.profile_version, {"v": 1}) for d in ds)),
            None,
        ]))
        if reply is None:
            self._check(self.core.stream_failed(call, self.now))
        else:
            self._check(self.core.handle_stream_reply(call, reply, self.now))

    @rule()
    def change_profile(self) -> None:
        self._check(self.core.update_profile({"x": self.now}, self.now))

    @invariant()
    def incarnations_never_decrease(self) -> None:
        assert self.core.incarnation >= self.my_inc
        self.my_inc = self.core.incarnation
        for m in self.core.members():
            assert m.incarnation >= self.seen.get(m.name, 0) or m.name not in self.seen
            self.seen[m.name] = m.incarnation

    @invariant()
    def live_set_matches_states(self) -> None:
        live = {m.name for m in self.core.members()
                if m.state in (MemberState.ALIVE, MemberState.SUSPECT) and m.name != "me"}
        assert live == set(self.core._live)
        assert "me" not in self.core._live


MembershipMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40,
                                               deadline=None)
TestMembershipInvariants = MembershipMachine.TestCase
