"""The cluster keyring (rotation without downtime, as memberlist/Serf do it),
key files, key generation, and the stream framing helpers."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wire_strategies import wire_settings

from nanomesh.errors import ConfigError, RemoteProtocolError
from nanomesh.wire import (
    FRAME_PREFIX_LEN,
    MAX_FRAME,
    Ack,
    Alive,
    Keyring,
    Message,
    Ping,
    frame,
    frame_length,
    generate_key,
    open_envelope,
    seal,
)

KEY1 = b"1" * 32
KEY2 = b"2" * 16
KEY3 = b"3" * 24
MSGS_A: list[Message] = [Ping(1, "b", "a", ("10.0.0.1", 7946))]
MSGS_B: list[Message] = [Ack(1), Alive("b", ("10.0.0.2", 7946), 4, 1)]


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def talk(sender: Keyring, receiver: Keyring, msgs: list[Message]) -> None:
    """`receiver` opens what `sender` seals, to the same messages."""
    assert open_envelope(seal(msgs, sender), receiver) == msgs


def refused(sender: Keyring, receiver: Keyring) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        open_envelope(seal(MSGS_A, sender), receiver)
    return info.value


# ----------------------------------------------------------------- rotation

def test_key_rotation_without_downtime() -> None:
    """install key2 everywhere -> use(key2) on A, then on B -> remove(key1):
    A and B can talk in both directions at every single step, and every packet
    is sealed with the sender's primary key at that step."""
    a, b = Keyring([KEY1]), Keyring([KEY1])
    only_key1 = Keyring([KEY1])
    only_key2 = Keyring([KEY2])

    def both_ways() -> None:
        talk(a, b, MSGS_A)
        talk(b, a, MSGS_B)

    both_ways()

    # 1. install key2 on both; both still seal with key1 and open either key.
    a.add(KEY2)
    both_ways()
    b.add(KEY2)
    both_ways()
    assert tuple(a.keys) == tuple(b.keys) == (KEY1, KEY2)
    talk(a, only_key1, MSGS_A)  # still sealing with key1
    talk(only_key2, a, MSGS_A)  # already opening key2

    # 2. A switches its primary first: B (holding both) still opens A's packets.
    a.use(KEY2)
    assert a.keys[0] == KEY2
    both_ways()
    talk(a, only_key2, MSGS_A)  # A now seals with key2 ...
    assert refused(a, only_key1).reason == "decrypt"  # ... not key1
    talk(only_key1, a, MSGS_A)  # but still opens key1 traffic from laggards

    # 3. then B.
    b.use(KEY2)
    both_ways()
    talk(b, only_key2, MSGS_B)

    # 4. retire key1 everywhere; the mesh keeps talking.
    a.remove(KEY1)
    both_ways()
    b.remove(KEY1)
    both_ways()
    assert tuple(a.keys) == tuple(b.keys) == (KEY2,)

    # A peer that only ever had key1 is now locked out, both ways.
    assert refused(a, only_key1).reason == "decrypt"
    assert refused(only_key1, a).reason == "decrypt"
    assert refused(only_key1, b).reason == "decrypt"


def test_any_installed_key_opens_and_primary_seals() -> None:
    """A keyring opens packets sealed with any of its keys, whatever their
    order, and seals only with the first (primary) one."""
    ring = Keyring([KEY1, KEY2, KEY3])
    for key in (KEY1, KEY2, KEY3):
        talk(Keyring([key]), ring, MSGS_A)
    talk(ring, Keyring([KEY1]), MSGS_A)
    assert refused(ring, Keyring([KEY2, KEY3])).reason == "decrypt"


def test_keyring_enabled_and_keys() -> None:
    """An empty keyring is a plaintext mesh; add is idempotent and keeps the
    first key primary; use() reorders without duplicating."""
    ring = Keyring()
    assert not ring.enabled and ring.keys == ()
    ring.add(KEY1)
    ring.add(KEY2)
    ring.add(KEY1)
    assert ring.enabled and ring.keys == (KEY1, KEY2)
    ring.use(KEY2)
    ring.use(KEY2)
    assert ring.keys == (KEY2, KEY1)


def test_removing_the_primary_key_is_a_config_error() -> None:
    """remove() of the primary raises ConfigError and leaves the keyring intact,
    also when it is the only key."""
    ring = Keyring([KEY1, KEY2])
    with pytest.raises(ConfigError, match="primary"):
        ring.remove(KEY1)
    assert ring.keys == (KEY1, KEY2)
    solo = Keyring([KEY1])
    with pytest.raises(ConfigError):
        solo.remove(KEY1)
    assert solo.keys == (KEY1,)


def test_using_an_uninstalled_key_is_a_config_error() -> None:
    """use() of a key that was never added raises ConfigError, keyring unchanged."""
    ring = Keyring([KEY1])
    with pytest.raises(ConfigError, match="installed"):
        ring.use(KEY2)
    assert ring.keys == (KEY1,)


@pytest.mark.parametrize("length", [0, 1, 8, 15, 17, 20, 23, 25, 31, 33, 48, 64])
def test_invalid_key_length_is_a_config_error(length: int) -> None:
    """Only 16-, 24- and 32-byte AES keys are accepted, by the constructor and
    by add(); the error names the bad length."""
    with pytest.raises(ConfigError, match=f"not {length}"):
        Keyring([b"k" * length])
    ring = Keyring([KEY1])
    with pytest.raises(ConfigError):
        ring.add(b"k" * length)
    assert ring.keys == (KEY1,)


def test_removing_an_unknown_key_is_a_config_error() -> None:
    """An operator removing a key that is not installed gets a ConfigError, like
    every other impossible keyring request."""
    with pytest.raises(ConfigError):
        Keyring([KEY1]).remove(KEY2)


# ----------------------------------------------------------------- key files

def test_key_file_with_comments_and_blank_lines(tmp_path: Path) -> None:
    """from_file reads one base64 key per line, primary first, skipping blank
    lines, full-line and trailing '#' comments and surrounding whitespace."""
    path = tmp_path / "keys"
    path.write_text(
        "# nanomesh cluster keys\n"
        "\n"
        f"  {b64(KEY1)}   # primary\n"
        "   # retired soon\n"
        f"{b64(KEY2)}\n"
        f"\t{b64(KEY3)}\t\n"
    )
    ring = Keyring.from_file(path)
    assert ring.keys == (KEY1, KEY2, KEY3)
    talk(ring, Keyring([KEY1]), MSGS_A)


@pytest.mark.parametrize(("bad", "lineno"), [
    ("not base64!", 3), ("QUJD RA==", 3), ("QUJDRA=", 3), ("ключ", 3),
])
def test_key_file_reports_bad_line_number(tmp_path: Path, bad: str, lineno: int) -> None:
    """A line that is not base64 is reported as ConfigError naming path:line."""
    path = tmp_path / "keys"
    path.write_text(f"# header\n{b64(KEY1)}\n{bad}\n{b64(KEY2)}\n")
    with pytest.raises(ConfigError, match=rf"keys:{lineno}: not a base64 key"):
        Keyring.from_file(path)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n   # another\n"],
                         ids=["empty", "blank-lines", "only-comments"])
def test_key_file_without_keys_is_rejected(tmp_path: Path, text: str) -> None:
    """A key file with no key in it is a ConfigError (never an empty keyring,
    which would silently run the mesh unencrypted)."""
    path = tmp_path / "keys"
    path.write_text(text)
    with pytest.raises(ConfigError, match="holds no key"):
        Keyring.from_file(path)


def test_key_file_missing_or_bad_length(tmp_path: Path) -> None:
    """A missing file and a base64 key of the wrong size are ConfigErrors that
    name the file."""
    with pytest.raises(ConfigError, match="cannot read key file"):
        Keyring.from_file(tmp_path / "absent")
    path = tmp_path / "keys"
    path.write_text(b64(b"x" * 10) + "\n")
    with pytest.raises(ConfigError, match=r"keys.*16, 24 or 32 bytes, not 10"):
        Keyring.from_file(path)


def test_key_file_reports_line_of_wrong_length_key(tmp_path: Path) -> None:
    """In a multi-key file, the operator is told which line holds the bad key."""
    path = tmp_path / "keys"
    path.write_text(f"{b64(KEY1)}\n{b64(b'x' * 10)}\n")
    with pytest.raises(ConfigError, match=r"keys:2:"):
        Keyring.from_file(path)


def test_key_file_that_is_not_text_is_a_config_error(tmp_path: Path) -> None:
    """A binary file given as key file (e.g. a raw key) is a ConfigError."""
    path = tmp_path / "keys"
    path.write_bytes(b"\xff\xfe\x00\x81" + KEY1)
    with pytest.raises(ConfigError):
        Keyring.from_file(path)


def test_generate_key_gives_a_usable_32_byte_key(tmp_path: Path) -> None:
    """generate_key() returns base64 of 32 random bytes, different on each call,
    which a key file and a Keyring accept."""
    first, second = generate_key(), generate_key()
    raw = base64.b64decode(first, validate=True)
    assert len(raw) == 32
    assert first != second
    path = tmp_path / "keys"
    path.write_text(f"{first}\n{second}\n")
    ring = Keyring.from_file(path)
    assert ring.keys == (raw, base64.b64decode(second))
    talk(ring, Keyring([raw]), MSGS_A)


# ----------------------------------------------------------------- framing

def test_frame_roundtrip_over_a_byte_stream() -> None:
    """frame() prefixes an envelope with its u32 big-endian length;
    frame_length() recovers it and the envelope opens with limit=MAX_FRAME."""
    ring = Keyring([KEY1])
    envelopes = [seal(MSGS_A, ring), seal(MSGS_B, ring)]
    stream = b"".join(frame(e) for e in envelopes)
    received = []
    while stream:
        n = frame_length(stream[:FRAME_PREFIX_LEN])
        received.append(open_envelope(stream[FRAME_PREFIX_LEN:FRAME_PREFIX_LEN + n], ring,
                                      limit=MAX_FRAME))
        stream = stream[FRAME_PREFIX_LEN + n:]
    assert received == [MSGS_A, MSGS_B]
    assert FRAME_PREFIX_LEN == 4
    assert frame(b"abc") == b"\x00\x00\x00\x03abc"


@pytest.mark.parametrize("claimed", [MAX_FRAME + 1, 2 * MAX_FRAME, 2**32 - 1])
def test_frame_length_refuses_oversized_prefix(claimed: int) -> None:
    """A prefix claiming more than MAX_FRAME is refused as 'oversized' before
    a single body byte is read."""
    with pytest.raises(RemoteProtocolError) as info:
        frame_length(claimed.to_bytes(4, "big"))
    assert info.value.reason == "oversized"


@given(st.binary(min_size=4, max_size=4))
@wire_settings(max_examples=100)
def test_frame_length_accepts_up_to_max_frame(prefix: bytes) -> None:
    """Any 4-byte prefix decodes to its big-endian value if <= MAX_FRAME and is
    otherwise refused as 'oversized' (never another exception)."""
    value = int.from_bytes(prefix, "big")
    if value <= MAX_FRAME:
        assert frame_length(prefix) == value
    else:
        with pytest.raises(RemoteProtocolError) as info:
            frame_length(prefix)
        assert info.value.reason == "oversized"


def test_frame_refuses_to_send_an_oversized_envelope() -> None:
    """frame() is the sending side: an envelope above MAX_FRAME is a local
    programming error (ValueError), while exactly MAX_FRAME is allowed."""
    assert frame_length(frame(b"\x00" * MAX_FRAME)[:4]) == MAX_FRAME
    with pytest.raises(ValueError, match="MAX_FRAME"):
        frame(b"\x00" * (MAX_FRAME + 1))


def test_derived_secrets_depend_on_the_key_and_the_purpose() -> None:
    """Issue 8.2: internal credentials come from secret material only."""
    a, b = Keyring([bytes(32)]), Keyring([bytes([1]) * 32])
    assert a.derive("internal-api") != b.derive("internal-api")
    assert a.derive("internal-api") != a.derive("raft")
    assert len(a.derive("raft")) == 32


def test_derive_all_lists_every_installed_key_primary_first() -> None:
    ring = Keyring([bytes(32), bytes([1]) * 32])
    assert ring.derive_all("raft") == (ring.derive("raft"),
                                       Keyring([bytes([1]) * 32]).derive("raft"))


def test_derive_without_a_key_is_refused() -> None:
    with pytest.raises(ConfigError):
        Keyring().derive("raft")
