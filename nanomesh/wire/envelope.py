"""The outer layer of every packet: header, protocol version, size limits and
authenticated encryption with the cluster keyring.

Layout (all integers big-endian)::

    b"NM" | version: u8 | flags: u8 | body
    body  = msgpack compound                       (flags & ENCRYPTED == 0)
          = nonce[12] | AES-GCM(compound, aad=header)  (flags & ENCRYPTED)

A stream (TCP) carries the same envelopes, each prefixed with a u32 length.

Encryption is AES-GCM with a 16-, 24- or 32-byte key, as in memberlist/Serf.
The keyring holds several keys: we always seal with the *primary* key and try
every key to open, so a new key can be installed everywhere, made primary
everywhere, and only then the old one removed — a rotation without downtime.
A peer with a keyring refuses plaintext; a peer without one refuses
ciphertext: a peer without the cluster key is never admitted.
"""

from __future__ import annotations

import base64
import os
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from nanomesh.errors import ConfigError, RemoteProtocolError
from nanomesh.wire.codec import pack_messages, unpack_messages
from nanomesh.wire.messages import Message

MAGIC = b"NM"
PROTOCOL_VERSION = 1
"""The version this build speaks."""
PROTOCOL_MIN = 1
PROTOCOL_MAX = 1
"""Versions this build accepts from peers. Widen MAX when adding optional
fields; raise MIN only when dropping support for an old encoding."""

FLAG_ENCRYPTED = 0x01
HEADER_LEN = 4
NONCE_LEN = 12
TAG_LEN = 16

MAX_DATAGRAM = 1400
"""Largest datagram we send, in bytes (memberlist's UDPBufferSize): fits a
1500-byte Ethernet MTU with IP/UDP headers and leaves room for tunnels."""
MAX_DATAGRAM_IN = 65_507
"""Largest datagram we accept: anything UDP can carry. Peers running a newer
version may send larger packets; we must not drop them for that alone."""
MAX_FRAME = 8 * 1024 * 1024
"""Largest stream frame, in bytes. A push-pull of 5,000 members is ~300 KB and
a profile a few KB; 8 MiB bounds what a hostile peer can make us buffer."""

VALID_KEY_LENGTHS = (16, 24, 32)
ENVELOPE_OVERHEAD = 4 + 12 + 16 + 3
"""Bytes an envelope adds around its messages at most: header, nonce, GCM tag
and the msgpack array header of the compound."""
_FRAME_LEN = struct.Struct(">I")


class Keyring:
    """The cluster keys, primary first. Empty means unencrypted, which only
    the simulator and tests of the codec use: a peer daemon refuses to run
    without a key.

    Copy-on-write: every change replaces the key list in one assignment, so
    the Raft thread, which reads `keys` while the trio thread rotates them,
    always sees a whole list."""

    def __init__(self, keys: Iterable[bytes] = ()) -> None:
        self._keys: list[bytes] = []
        for key in keys:
            self.add(key)

    def add(self, key: bytes) -> None:
        """Install a key (not primary unless it is the first)."""
        if len(key) not in VALID_KEY_LENGTHS:
            raise ConfigError(f"a cluster key must be 16, 24 or 32 bytes, not {len(key)}")
        if key not in self._keys:
            self._keys = [*self._keys, key]

    def use(self, key: bytes) -> None:
        """Make an installed key the primary (the one we encrypt with)."""
        if key not in self._keys:
            raise ConfigError("cannot make a key primary before it is installed")
        self._keys = [key, *(k for k in self._keys if k != key)]

    def remove(self, key: bytes) -> None:
        if key not in self._keys:
            raise ConfigError("cannot remove a key that is not installed")
        if self._keys[0] == key:
            raise ConfigError("cannot remove the primary key; make another key primary first")
        self._keys = [k for k in self._keys if k != key]

    def replace_keys(self, other: Keyring) -> None:
        """Take `other`'s keys, in one assignment (a live rotation applies a
        change to a copy, persists it, then swaps it in)."""
        self._keys = list(other.keys)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def derive(self, purpose: str) -> bytes:
        """A 32-byte secret for one `purpose` (e.g. ``"raft"``, ``"internal-api"``,
        ``"service-curve"``), derived from the *primary* key: what this peer
        presents. ConfigError without a key: every credential of the mesh comes
        from secret material, never from a constant."""
        if not self._keys:
            raise ConfigError("no cluster key: nothing to derive credentials from")
        return derive_secret(self._keys[0], purpose)

    def derive_all(self, purpose: str) -> tuple[bytes, ...]:
        """The `purpose` secret of every installed key, primary first: what
        this peer accepts, so a rolling key rotation never splits the mesh."""
        return tuple(derive_secret(key, purpose) for key in self._keys)

    @property
    def keys(self) -> Sequence[bytes]:
        return tuple(self._keys)

    def to_text(self) -> str:
        """The key file form (`from_file` reads it back)."""
        return "".join(base64.b64encode(k).decode() + "\n" for k in self._keys)

    @classmethod
    def from_file(cls, path: Path) -> Keyring:
        """One base64 key per line, primary first; '#' starts a comment."""
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read key file {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"key file {path} is not text (base64 keys, one per line)"
                              ) from None
        return cls.from_text(text, where=f"key file {path}")

    @classmethod
    def from_text(cls, text: str, where: str = "key file") -> Keyring:
        """`from_file` on text; ConfigError naming `where` and the line."""
        keys: list[bytes] = []
        for lineno, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            try:
                key = base64.b64decode(line, validate=True)
            except ValueError:
                raise ConfigError(f"{where}:{lineno}: not a base64 key") from None
            if len(key) not in VALID_KEY_LENGTHS:
                raise ConfigError(f"{where}:{lineno}: a cluster key must be 16, 24 or 32 "
                                  f"bytes, not {len(key)}")
            keys.append(key)
        if not keys:
            raise ConfigError(f"{where} holds no key")
        return cls(keys)


def derive_secret(key: bytes, purpose: str) -> bytes:
    """HKDF-SHA256 of a cluster key, bound to `purpose` (RFC 5869): secrets for
    different uses never coincide, and none reveals the key."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"nanomesh-v1",
                info=purpose.encode()).derive(key)


def generate_key() -> str:
    """A new random AES-256 cluster key, base64 as key files hold it."""
    return base64.b64encode(os.urandom(32)).decode()


def _header(flags: int) -> bytes:
    return MAGIC + bytes((PROTOCOL_VERSION, flags))


def seal(messages: Sequence[Message], keyring: Keyring) -> bytes:
    """Encode and (with a keyring) encrypt a compound of messages."""
    body = pack_messages(messages)
    if not keyring.enabled:
        return _header(0) + body
    header = _header(FLAG_ENCRYPTED)
    nonce = os.urandom(NONCE_LEN)
    return header + nonce + AESGCM(keyring.keys[0]).encrypt(nonce, body, header)


def open_envelope(data: bytes, keyring: Keyring, limit: int = MAX_DATAGRAM_IN) -> list[Message]:
    """Check, decrypt and decode one envelope; raise RemoteProtocolError."""
    if len(data) > limit:
        raise RemoteProtocolError("oversized", f"{len(data)} > {limit} bytes")
    if len(data) < HEADER_LEN or data[:2] != MAGIC:
        raise RemoteProtocolError("malformed", "bad magic")
    version, flags = data[2], data[3]
    if flags & ~FLAG_ENCRYPTED:
        raise RemoteProtocolError("malformed", f"unknown flags {flags:#04x}")
    if not PROTOCOL_MIN <= version <= PROTOCOL_MAX:
        raise RemoteProtocolError("version", f"protocol {version} not in "
                                  f"{PROTOCOL_MIN}..{PROTOCOL_MAX}")
    encrypted = bool(flags & FLAG_ENCRYPTED)
    if encrypted != keyring.enabled:
        raise RemoteProtocolError(
            "decrypt", "encrypted packet but no keyring" if encrypted
            else "plaintext packet refused: this mesh requires the cluster key")
    body = data[HEADER_LEN:]
    if encrypted:
        body = _decrypt(data[:HEADER_LEN], body, keyring)
    return unpack_messages(body)


def _decrypt(header: bytes, body: bytes, keyring: Keyring) -> bytes:
    if len(body) < NONCE_LEN + TAG_LEN:
        raise RemoteProtocolError("decrypt", "ciphertext too short")
    nonce, ciphertext = body[:NONCE_LEN], body[NONCE_LEN:]
    for key in keyring.keys:
        try:
            return AESGCM(key).decrypt(nonce, ciphertext, header)
        except InvalidTag:
            continue
    raise RemoteProtocolError("decrypt", "no installed key authenticates this packet")


MAX_BOX = 64 * 1024
"""Largest sealed box `open_box` accepts, in bytes (a key operation is ~100)."""


def seal_box(keyring: Keyring, purpose: str, plaintext: bytes) -> bytes:
    """``nonce | AES-GCM(plaintext)`` under the primary key's `purpose` secret:
    a secret (a new cluster key) that must cross an unencrypted channel (the
    HTTP API) readable only by members."""
    nonce = os.urandom(NONCE_LEN)
    return nonce + AESGCM(keyring.derive(purpose)).encrypt(nonce, plaintext, purpose.encode())


def open_box(keyring: Keyring, purpose: str, data: bytes) -> bytes:
    """The plaintext of a `seal_box` made with any installed key;
    RemoteProtocolError if none authenticates it."""
    if len(data) > MAX_BOX:
        raise RemoteProtocolError("oversized", f"{len(data)} > {MAX_BOX} bytes")
    if len(data) < NONCE_LEN + TAG_LEN:
        raise RemoteProtocolError("decrypt", "sealed box too short")
    nonce, ciphertext = data[:NONCE_LEN], data[NONCE_LEN:]
    for secret in keyring.derive_all(purpose):
        try:
            return AESGCM(secret).decrypt(nonce, ciphertext, purpose.encode())
        except InvalidTag:
            continue
    raise RemoteProtocolError("decrypt", "no installed key opens this sealed box")


def frame(envelope: bytes) -> bytes:
    """Length-prefix an envelope for a stream."""
    if len(envelope) > MAX_FRAME:
        raise ValueError(f"frame of {len(envelope)} bytes exceeds MAX_FRAME")
    return _FRAME_LEN.pack(len(envelope)) + envelope


def frame_length(prefix: bytes) -> int:
    """Decode a u32 frame prefix, refusing oversized frames before reading them."""
    (length,) = _FRAME_LEN.unpack(prefix)
    if length > MAX_FRAME:
        raise RemoteProtocolError("oversized", f"frame of {length} bytes")
    return int(length)


FRAME_PREFIX_LEN = _FRAME_LEN.size
