"""The compact frames of an established Raft link (`nanomesh.wire.raft_link`):
the frequent messages round-trip exactly, everything else is left to the
generic form, garbage is a `RemoteProtocolError`, and a frame opens only as
the next frame of its own link and direction under an installed key."""

from __future__ import annotations

import os
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from nanomesh.errors import RemoteProtocolError
from nanomesh.wire import raft_link
from nanomesh.wire.raft_link import LinkSeal

counts = st.integers(min_value=0, max_value=2**64 - 1)
SECRET_A, SECRET_B = bytes(range(32)), bytes(range(1, 33))


def _heartbeat(term: int, commit: int, prev_idx: int, prev_term: int) -> dict[str, Any]:
    return {"type": "append_entries", "term": term, "commit_index": commit, "entries": [],
            "prevLogIdx": prev_idx, "prevLogTerm": prev_term}


def _pair(secrets_a: list[bytes], secrets_b: list[bytes] | None = None
          ) -> tuple[LinkSeal, LinkSeal]:
    """Both ends of one link: each knows its own handshake key and the other's."""
    key_a, key_b = os.urandom(32), os.urandom(32)
    ring_b = secrets_a if secrets_b is None else secrets_b
    return (LinkSeal(lambda: secrets_a, key_a, key_b),
            LinkSeal(lambda: ring_b, key_b, key_a))


# --------------------------------------------------------------------------- messages


@given(counts, counts, counts, counts)
def test_a_heartbeat_round_trips_exactly(term: int, commit: int, idx: int, prev: int) -> None:
    message = _heartbeat(term, commit, idx, prev)
    plain = raft_link.encode(message)
    assert plain is not None and plain[0] == raft_link.HEARTBEAT
    assert raft_link.decode(plain) == message


@given(counts, st.booleans(), st.booleans())
def test_a_next_node_idx_round_trips_exactly(idx: int, reset: bool, success: bool) -> None:
    message = {"type": "next_node_idx", "next_node_idx": idx, "reset": reset,
               "success": success}
    plain = raft_link.encode(message)
    assert plain is not None and raft_link.decode(plain) == message


def test_the_keepalive_is_one_byte() -> None:
    plain = raft_link.encode(raft_link.KEEPALIVE_MESSAGE)
    assert plain == bytes((raft_link.KEEPALIVE,))
    assert raft_link.decode(plain) == raft_link.KEEPALIVE_MESSAGE


@pytest.mark.parametrize("message", [
    pytest.param({**_heartbeat(1, 2, 3, 1), "entries": [(b"cmd", 4, 1)]}, id="with-entries"),
    pytest.param({**_heartbeat(1, 2, 3, 1), "transmission": "start"}, id="extra-field"),
    pytest.param({k: v for k, v in _heartbeat(1, 2, 3, 1).items() if k != "prevLogIdx"},
                 id="snapshot-form-no-prev"),
    pytest.param(_heartbeat(-1, 2, 3, 1), id="negative-term"),
    pytest.param(_heartbeat(True, 2, 3, 1), id="bool-term"),
    pytest.param({"type": "next_node_idx", "next_node_idx": 3, "reset": 0, "success": True},
                 id="int-for-bool"),
    pytest.param({"type": "request_vote", "term": 2, "last_log_index": 3,
                  "last_log_term": 1}, id="other-type"),
    pytest.param("127.0.0.1:7948", id="an-address"),
    pytest.param((b"k" * 32, {"type": "x"}), id="a-tuple"),
])
def test_anything_else_has_no_compact_form(message: Any) -> None:
    """Nothing pysyncobj reads may be dropped or changed by the short form."""
    assert raft_link.encode(message) is None


def test_a_generic_body_comes_back_as_bytes() -> None:
    assert raft_link.decode(raft_link.generic(b"\x78\x9c...")) == b"\x78\x9c..."


@pytest.mark.parametrize("plain", [
    pytest.param(b"", id="empty"),
    pytest.param(b"\x09", id="unknown-kind"),
    pytest.param(b"\x03x", id="keepalive-with-body"),
    pytest.param(b"\x01" + msgpack.packb([1, 2, 3]), id="heartbeat-3-fields"),
    pytest.param(b"\x01" + msgpack.packb([1, 2, 3, -4]), id="heartbeat-negative"),
    pytest.param(b"\x01" + msgpack.packb([1, 2, 3, "4"]), id="heartbeat-string"),
    pytest.param(b"\x01" + msgpack.packb([1, 2, 3, True]), id="heartbeat-bool"),
    pytest.param(b"\x01" + msgpack.packb({"term": 1}), id="heartbeat-map"),
    pytest.param(b"\x01" + msgpack.packb([1, 2, 3, 4]) + b"\x00", id="trailing-bytes"),
    pytest.param(b"\x01\xc1", id="reserved-msgpack-byte"),
    pytest.param(b"\x01\x94\x01", id="truncated"),
    pytest.param(b"\x02" + msgpack.packb([1, 0, 1]), id="next-index-int-bools"),
])
def test_garbage_bodies_are_refused_at_the_boundary(plain: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        raft_link.decode(plain)


@given(st.binary(max_size=64))
def test_any_body_decodes_or_is_refused(plain: bytes) -> None:
    try:
        message = raft_link.decode(plain)
    except RemoteProtocolError:
        return
    assert isinstance(message, bytes | dict)
    if isinstance(message, dict):
        assert raft_link.encode(message) is not None  # a message of a compact kind


# --------------------------------------------------------------------------- sealing


def test_frames_open_in_order_both_ways() -> None:
    a, b = _pair([SECRET_A])
    for i in range(3):
        assert b.open(a.seal(b"to b %d" % i)) == b"to b %d" % i
        assert a.open(b.seal(b"to a %d" % i)) == b"to a %d" % i
    assert a.frames == b.frames == (3, 3)


def test_a_heartbeat_frame_is_small() -> None:
    """Issue 9's measure: 376 bytes of Fernet token before, 27 now."""
    a, _ = _pair([SECRET_A])
    plain = raft_link.encode(_heartbeat(3, 1234, 1234, 3))
    assert plain is not None
    assert len(a.seal(plain)) <= 32


def test_a_replayed_frame_is_refused() -> None:
    a, b = _pair([SECRET_A])
    frame = a.seal(b"once")
    assert b.open(frame) == b"once"
    with pytest.raises(RemoteProtocolError):
        b.open(frame)


def test_a_dropped_or_reordered_frame_is_refused() -> None:
    a, b = _pair([SECRET_A])
    first, second = a.seal(b"1"), a.seal(b"2")
    with pytest.raises(RemoteProtocolError):
        b.open(second)
    assert b.open(first) == b"1"


def test_a_frame_of_another_link_or_direction_is_refused() -> None:
    a, _ = _pair([SECRET_A])
    c, d = _pair([SECRET_A])
    with pytest.raises(RemoteProtocolError):
        d.open(a.seal(b"for b"))  # another link, same cluster key, same counter
    with pytest.raises(RemoteProtocolError):
        a.open(a.seal(b"reflected"))  # our own frame sent back to us
    assert c.frames == (0, 0)


def test_a_frame_under_another_cluster_key_is_refused() -> None:
    a, b = _pair([SECRET_A], [SECRET_B])
    with pytest.raises(RemoteProtocolError):
        b.open(a.seal(b"x"))


def test_a_rotation_opens_with_any_installed_key() -> None:
    ring_a, ring_b = [SECRET_A], [SECRET_A]
    a, b = _pair(ring_a, ring_b)
    assert b.open(a.seal(b"before")) == b"before"
    ring_a[:] = [SECRET_B, SECRET_A]  # a installed B and made it primary; b has only A
    with pytest.raises(RemoteProtocolError):
        b.open(a.seal(b"too early"))
    a, b = _pair(ring_a, ring_b)
    ring_b[:] = [SECRET_A, SECRET_B]  # b installed B, still sealing with A
    assert b.open(a.seal(b"new key")) == b"new key"
    assert a.open(b.seal(b"old key")) == b"old key"
    ring_a[:] = [SECRET_B]  # A removed from a: b's frames under A no longer open
    with pytest.raises(RemoteProtocolError):
        a.open(b.seal(b"removed"))


@given(st.binary(max_size=80))
def test_garbage_frames_are_refused(frame: bytes) -> None:
    _, b = _pair([SECRET_A])
    with pytest.raises(RemoteProtocolError):
        b.open(frame)


@pytest.mark.parametrize("theirs", [b"short", "a string" * 4, None, 32])
def test_a_link_needs_a_32_byte_key_from_the_other_side(theirs: object) -> None:
    with pytest.raises(ValueError):
        LinkSeal(lambda: [SECRET_A], os.urandom(32), theirs)
