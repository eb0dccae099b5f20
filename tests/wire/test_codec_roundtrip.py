"""Well-formed messages round-trip exactly through the codec and the envelope."""

from __future__ import annotations

import msgpack
from hypothesis import given
from hypothesis import strategies as st
from wire_strategies import (
    MESSAGE_CLASSES,
    MESSAGE_STRATEGIES,
    assert_valid_compound,
    compounds,
    exact,
    keyrings,
    keys,
    messages,
    wire_settings,
)

from nanomesh.wire import (
    MAX_FRAME,
    Keyring,
    Message,
    MessageType,
    open_envelope,
    pack_messages,
    seal,
    unpack_messages,
)
from nanomesh.wire.codec import _DECODERS, encoded_size, message_to_obj


def test_strategies_cover_every_message_type() -> None:
    """Every class of the `Message` union has a strategy and every wire tag a
    decoder, so a newly added message type cannot silently escape these tests."""
    assert set(MESSAGE_STRATEGIES) == MESSAGE_CLASSES
    assert len(MESSAGE_CLASSES) == len(MessageType) == 11
    assert set(_DECODERS) == {int(t) for t in MessageType}


@given(st.data())
@wire_settings(max_examples=40)
def test_each_message_type_roundtrips_alone(data: st.DataObject) -> None:
    """Each message type, drawn on its own, survives pack -> unpack exactly."""
    for cls, strategy in MESSAGE_STRATEGIES.items():
        msg = data.draw(strategy, label=cls.__name__)
        out = unpack_messages(pack_messages([msg]))
        assert out == [msg]
        assert exact(out, [msg]), (out, msg)


@given(compounds)
@wire_settings(max_examples=150)
def test_compound_roundtrips_exactly(msgs: list[Message]) -> None:
    """unpack_messages(pack_messages(msgs)) == msgs for compounds of 1..10
    messages, with identical types at every level (no bool->int, tuple->list)."""
    out = unpack_messages(pack_messages(msgs))
    assert out == msgs
    assert exact(out, msgs)
    assert_valid_compound(out)


@given(messages)
@wire_settings(max_examples=80)
def test_message_obj_starts_with_its_wire_tag(msg: Message) -> None:
    """The encoded array begins with the message's numeric tag, and
    encoded_size is the size of exactly that array."""
    obj = message_to_obj(msg)
    assert MessageType(obj[0]).name.replace("_", "") == type(msg).__name__.upper()
    assert encoded_size(msg) == len(msgpack.packb(obj, use_bin_type=True))


@given(compounds)
@wire_settings(max_examples=60)
def test_seal_open_roundtrips_with_empty_keyring(msgs: list[Message]) -> None:
    """A plaintext mesh: open_envelope(seal(msgs)) == msgs and the envelope is
    the plaintext header followed by the msgpack compound."""
    keyring = Keyring()
    sealed = seal(msgs, keyring)
    assert sealed[:4] == b"NM\x01\x00"
    assert sealed[4:] == pack_messages(msgs)
    out = open_envelope(sealed, keyring, limit=MAX_FRAME)
    assert exact(out, msgs)


@given(compounds, st.sampled_from((16, 24, 32)).flatmap(
    lambda n: st.binary(min_size=n, max_size=n)))
@wire_settings(max_examples=60)
def test_seal_open_roundtrips_with_each_key_size(msgs: list[Message], key: bytes) -> None:
    """With a 16-, 24- or 32-byte key the envelope is encrypted (flag set, no
    plaintext body visible) and opens back to exactly the same messages."""
    keyring = Keyring([key])
    sealed = seal(msgs, keyring)
    body = pack_messages(msgs)
    assert sealed[:4] == b"NM\x01\x01"
    assert len(sealed) == 4 + 12 + len(body) + 16
    assert body not in sealed
    out = open_envelope(sealed, keyring, limit=MAX_FRAME)
    assert exact(out, msgs)


@given(compounds, keyrings)
@wire_settings(max_examples=60)
def test_seal_open_roundtrips_with_any_keyring(msgs: list[Message], keyring: Keyring) -> None:
    """Whatever the keyring (empty, or 1..3 keys), a peer with the same keyring
    opens what was sealed to exactly the original messages."""
    out = open_envelope(seal(msgs, keyring), keyring, limit=MAX_FRAME)
    assert exact(out, msgs)


@given(compounds, keys)
@wire_settings(max_examples=30)
def test_sealing_twice_uses_fresh_nonces(msgs: list[Message], key: bytes) -> None:
    """Two seals of the same messages with the same key differ (a repeated
    AES-GCM nonce would leak the key stream) yet both open identically."""
    keyring = Keyring([key])
    a, b = seal(msgs, keyring), seal(msgs, keyring)
    assert a[4:16] != b[4:16]
    assert a != b
    assert open_envelope(a, keyring, limit=MAX_FRAME) == open_envelope(
        b, keyring, limit=MAX_FRAME) == msgs
