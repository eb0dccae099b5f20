"""Fuzzing the boundary: whatever bytes arrive, open_envelope and
unpack_messages either raise RemoteProtocolError or return messages that
satisfy every field invariant (checked by an oracle independent of the codec).
No other exception type may ever escape."""

from __future__ import annotations

import copy
from typing import Any

import msgpack
from hypothesis import event, given
from hypothesis import strategies as st
from wire_strategies import (
    assert_valid_compound,
    compounds,
    exact,
    keys,
    messages,
    msgpack_values,
    wire_settings,
)

from nanomesh.errors import RemoteProtocolError
from nanomesh.wire import (
    MAX_FRAME,
    Keyring,
    MessageType,
    open_envelope,
    pack_messages,
    seal,
    unpack_messages,
)
from nanomesh.wire.codec import message_to_obj

FUZZ_KEY = bytes(range(7, 39))
REASONS = {"malformed", "version", "decrypt", "oversized", "unknown-type"}


def outcome(fn: Any, *args: Any, **kwargs: Any) -> list[Any] | RemoteProtocolError:
    """Run a decoder. A RemoteProtocolError (with a known reason) is returned;
    a result must be a valid compound that re-encodes to itself; any other
    exception propagates and fails the test. (`--hypothesis-show-statistics`
    shows how often each outcome was reached.)"""
    try:
        out: list[Any] = fn(*args, **kwargs)
    except RemoteProtocolError as exc:
        assert exc.reason in REASONS, exc
        event(f"refused: {exc.reason}")
        return exc
    event("decoded")
    assert_valid_compound(out)
    assert exact(unpack_messages(pack_messages(out)), out)
    return out


def pk(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


# ----------------------------------------------------------------- raw bytes

@given(st.binary(max_size=600))
@wire_settings(max_examples=300)
def test_random_bytes_to_unpack_messages(data: bytes) -> None:
    """unpack_messages on arbitrary bytes: RemoteProtocolError or valid messages."""
    outcome(unpack_messages, data)


@given(st.binary(max_size=600))
@wire_settings(max_examples=200)
def test_random_bytes_to_unkeyed_open_envelope(data: bytes) -> None:
    """open_envelope without a keyring on arbitrary bytes: only
    RemoteProtocolError or valid messages."""
    outcome(open_envelope, data, Keyring())


@given(st.binary(max_size=600))
@wire_settings(max_examples=200)
def test_random_bytes_to_keyed_open_envelope(data: bytes) -> None:
    """open_envelope with a keyring on arbitrary bytes is always refused:
    without the key nothing can be forged."""
    assert isinstance(outcome(open_envelope, data, Keyring([FUZZ_KEY])), RemoteProtocolError)


@given(st.binary(max_size=600))
@wire_settings(max_examples=300)
def test_random_body_behind_valid_plaintext_header(data: bytes) -> None:
    """Random bytes behind a valid plaintext header reach the msgpack decoder:
    RemoteProtocolError or valid messages, nothing else."""
    outcome(open_envelope, b"NM\x01\x00" + data, Keyring())


@given(st.binary(max_size=600), keys)
@wire_settings(max_examples=150)
def test_random_body_behind_valid_encrypted_header(data: bytes, key: bytes) -> None:
    """Random bytes behind a valid encrypted header never authenticate."""
    err = outcome(open_envelope, b"NM\x01\x01" + data, Keyring([key]))
    assert isinstance(err, RemoteProtocolError) and err.reason == "decrypt"


# ----------------------------------------------------------------- mutation of valid envelopes

_mutations = st.lists(
    st.tuples(
        st.sampled_from(("flip", "insert", "delete", "set")),
        # Negative positions count from the end, so the GCM tag and the tail of
        # the body are hit as often as the header.
        st.integers(min_value=0, max_value=2**16) | st.integers(min_value=-(2**16), max_value=-1),
        st.integers(min_value=0, max_value=255),
    ),
    min_size=1,
    max_size=4,
)


def mutate(data: bytes, ops: list[tuple[str, int, int]]) -> bytes:
    """Apply byte-level mutations (positions wrap modulo the current length)."""
    buf = bytearray(data)
    for op, pos, value in ops:
        if op == "insert":
            buf.insert(pos % (len(buf) + 1), value)
        elif not buf:
            continue
        elif op == "flip":
            buf[pos % len(buf)] ^= 1 << (value % 8)
        elif op == "delete":
            del buf[pos % len(buf)]
        else:
            buf[pos % len(buf)] = value
    return bytes(buf)


@given(compounds, keys, _mutations)
@wire_settings(max_examples=200)
def test_mutated_encrypted_envelope_is_always_refused(
    msgs: list[Any], key: bytes, ops: list[tuple[str, int, int]]
) -> None:
    """Flipping, inserting, overwriting or deleting bytes of an encrypted
    envelope is always detected (RemoteProtocolError); only an unchanged
    envelope opens, to the original messages."""
    keyring = Keyring([key])
    sealed = seal(msgs, keyring)
    mutated = mutate(sealed, ops)
    result = outcome(open_envelope, mutated, keyring, limit=MAX_FRAME)
    if mutated == sealed:
        assert exact(result, msgs)
    else:
        assert isinstance(result, RemoteProtocolError)
        assert result.reason in {"malformed", "version", "decrypt"}


@given(compounds, _mutations)
@wire_settings(max_examples=250)
def test_mutated_plaintext_envelope_is_refused_or_valid(
    msgs: list[Any], ops: list[tuple[str, int, int]]
) -> None:
    """A mutated plaintext envelope either raises RemoteProtocolError or, when
    the mutation lands harmlessly, decodes to valid messages."""
    keyring = Keyring()
    mutated = mutate(seal(msgs, keyring), ops)
    outcome(open_envelope, mutated, keyring, limit=MAX_FRAME)


# ----------------------------------------------------------------- structured garbage

@given(msgpack_values)
@wire_settings(max_examples=300)
def test_random_msgpack_object_in_plaintext_envelope(obj: Any) -> None:
    """Any msgpack-encoded Python object (lists, maps, ints, strs, bytes, bools,
    nil, floats incl. NaN) inside a valid plaintext header: RemoteProtocolError
    or a valid message list."""
    outcome(open_envelope, b"NM\x01\x00" + pk(obj), Keyring())


_tags = st.sampled_from([*(int(t) for t in MessageType), 0, 12, -1])


@given(st.lists(st.tuples(_tags, st.lists(msgpack_values, max_size=7)), min_size=1,
                max_size=4))
@wire_settings(max_examples=150)
def test_plausible_tag_with_random_fields(parts: list[tuple[int, list[Any]]]) -> None:
    """Compounds of [known-or-near tag, random fields...] reach every field
    validator: RemoteProtocolError or valid messages."""
    outcome(unpack_messages, pk([[tag, *fields] for tag, fields in parts]))


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every replaceable position inside a nested list/dict message object."""
    out: list[tuple[Any, ...]] = []
    items = enumerate(obj) if isinstance(obj, list) else obj.items()
    for k, v in items:
        out.append((*prefix, k))
        if isinstance(v, (list, dict)):
            out.extend(_paths(v, (*prefix, k)))
    return out


@given(messages, st.data())
@wire_settings(max_examples=300)
def test_valid_message_with_one_node_replaced(msg: Any, data: st.DataObject) -> None:
    """Take a valid message, replace one node anywhere in its tree (a field, an
    address part, a digest field, a profile value) by a random msgpack value:
    RemoteProtocolError or valid messages."""
    obj = copy.deepcopy(message_to_obj(msg))
    path = data.draw(st.sampled_from(_paths(obj)), label="path")
    target = obj
    for k in path[:-1]:
        target = target[k]
    target[path[-1]] = data.draw(msgpack_values, label="value")
    outcome(unpack_messages, pk([obj]))


@given(st.dictionaries(st.text(max_size=6) | st.binary(max_size=4), msgpack_values,
                       max_size=6))
@wire_settings(max_examples=200)
def test_random_profile_map(profile: dict[Any, Any]) -> None:
    """A profile reply carrying an arbitrary map: refused, or accepted with a
    JSON-shaped profile (str keys, finite numbers, no bytes)."""
    outcome(unpack_messages, pk([[11, [["peer", 1, profile]]]]))
