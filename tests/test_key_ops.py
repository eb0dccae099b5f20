"""Sealed key operations (`nanomesh.security.keys`): the replay defences (op id,
issue time, action binding) and the checks that keep ``use`` and
``remove`` from cutting a member off. Pure: `now` is passed in."""

from __future__ import annotations

import pytest

from nanomesh.errors import RemoteProtocolError
from nanomesh.security.keys import (
    KEY_OP_WINDOW,
    KeyOp,
    KeyOpRefused,
    SeenKeyOps,
    fingerprint,
    remove_blockers,
    use_blockers,
)
from nanomesh.wire import Keyring, seal_box

K1, K2 = b"1" * 32, b"2" * 32
F1, F2 = fingerprint(K1), fingerprint(K2)
NOW = 1_800_000_000.0


def op(action: str = "install", at: float = NOW, force: bool = False) -> KeyOp:
    return KeyOp.new(action, K2, F2, now=at, force=force)


def refusal(seen: SeenKeyOps, o: KeyOp, now: float, url: str | None = None) -> str:
    with pytest.raises(KeyOpRefused) as info:
        seen.admit(o, now, url)
    return info.value.reason


def test_the_op_id_issue_time_and_force_travel_sealed() -> None:
    ring = Keyring([K1])
    sent = op("remove", force=True)
    got = KeyOp.open(ring, sent.seal(ring))
    assert got == sent and len(got.op_id) == 32 and got.force
    assert KeyOp.new("use", K2, F2, now=NOW).op_id != got.op_id, "random per operation"


def test_an_operation_without_an_op_id_or_issue_time_is_malformed() -> None:
    """What an older ``nanomesh keys`` sealed: refused, not applied."""
    ring = Keyring([K1])
    for body in (b'{"action": "install", "key": null, "fingerprint": null}',
                 b'{"action": "use", "op_id": "a", "issued_at": 1}',
                 b'{"action": "use", "op_id": "' + b"a" * 32 + b'", "issued_at": "x"}',
                 b'{"action": "use", "op_id": "' + b"a" * 32 + b'", "issued_at": 1e999}',
                 b'{"action": "use", "op_id": "' + b"a" * 32 + b'", "issued_at": 1, '
                 b'"force": 1}'):
        with pytest.raises(RemoteProtocolError):
            KeyOp.open(ring, seal_box(ring, "keyring-op", body))


def test_the_same_operation_is_accepted_once_per_peer() -> None:
    """Each peer has its own table: the fan-out applies once on each, and a
    replay to any of them inside the window is refused."""
    a, b, o = SeenKeyOps(), SeenKeyOps(), op()
    a.admit(o, NOW + 1, "install")
    b.admit(o, NOW + 2)
    assert refusal(a, o, NOW + 3, "install") == "replay"
    assert refusal(b, o, NOW + KEY_OP_WINDOW) == "replay"
    a.admit(op(at=NOW + 5), NOW + 6)  # a new operation is fine


def test_an_operation_outside_the_window_is_refused_naming_the_skew() -> None:
    seen = SeenKeyOps()
    seen.admit(op(at=NOW - KEY_OP_WINDOW), NOW)
    seen.admit(op(at=NOW + KEY_OP_WINDOW), NOW)
    assert refusal(seen, op(at=NOW - KEY_OP_WINDOW - 1), NOW) == "stale"
    assert refusal(seen, op(at=NOW + 400), NOW) == "future"
    with pytest.raises(KeyOpRefused, match=r"issued 400 s in the future.*differ by 400 s"):
        seen.admit(op(at=NOW + 400), NOW)
    with pytest.raises(KeyOpRefused, match=r"issued 3600 s ago.*NTP"):
        seen.admit(op(at=NOW - 3600), NOW)


def test_an_id_is_remembered_until_its_operation_is_stale_and_then_forgotten() -> None:
    seen, o = SeenKeyOps(window=10), op(at=NOW)
    seen.admit(o, NOW)
    assert refusal(seen, o, NOW + 10) == "replay"
    assert refusal(seen, o, NOW + 11) == "stale", "the window refuses it from here on"
    seen.admit(op(at=NOW + 20), NOW + 20)
    assert len(seen._expiry) == 1, "expired ids are pruned"


def test_a_sender_clock_behind_ours_keeps_the_id_for_the_whole_window() -> None:
    seen, o = SeenKeyOps(window=10), op(at=NOW + 8)  # 8 s ahead of us
    seen.admit(o, NOW)
    assert refusal(seen, o, NOW + 18) == "replay"


def test_the_sealed_action_must_match_the_url() -> None:
    seen = SeenKeyOps()
    with pytest.raises(KeyOpRefused, match=r"'install' but was sent to /v1/keyring/use"):
        seen.admit(op("install"), NOW, "use")
    seen.admit(op("use"), NOW, "use")


def test_a_full_table_refuses_rather_than_forgets() -> None:
    seen = SeenKeyOps(limit=2)
    seen.admit(op(), NOW)
    seen.admit(op(), NOW)
    assert refusal(seen, op(), NOW) == "busy"


def test_remove_is_blocked_by_a_member_still_on_the_key_or_silent() -> None:
    replies = {"a": {"ok": True, "keys": [F2, F1]},
               "b": {"ok": True, "keys": [F1, F2]},
               "c": {"ok": False, "error": "cannot reach"}}
    assert remove_blockers(F1, replies) == [
        f"b (its primary is still {F1})", "c (did not answer: cannot reach)"]
    assert remove_blockers(F1, {"a": replies["a"]}) == []


def test_use_is_blocked_by_an_alive_member_without_the_key() -> None:
    replies = {"a": {"ok": True, "keys": [F1, F2]}, "b": {"ok": True, "keys": [F1]},
               "c": {"ok": False, "error": "timeout"}}
    assert use_blockers(F2, replies) == [
        f"b (does not have key {F2})", "c (did not answer: timeout)"]
    assert use_blockers(F2, {"a": replies["a"]}) == []
