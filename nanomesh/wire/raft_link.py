"""Compact frames of an established Raft link (issue 9: an idle voter is heavy).

Why. pysyncobj's leader sends every follower an ``append_entries`` every
``append_entries_period`` (then 30 ms) even with nothing to replicate, and the
follower answers each with a ``next_node_idx``. Through the hardened
transport (`nanomesh.consensus._transport`) each heartbeat cost, measured
2026-12-06 (a 4-field dict, term 3, indexes ~1,200)::

    pickle of the dict                        132 B
    + the link's 32-byte random key, wrapped  229 B  (pickle protocol 2 spells
                                                      bytes as a codecs call)
    zlib                                      210 B
    Fernet (version, time, IV, CBC padding,
            HMAC-SHA256, then base64)         376 B
    + u32 length prefix                       380 B of TCP payload
    + IPv4 and TCP headers (with timestamps)  432 B on the wire

and its answer 368 B: ~14 kB/s per leader-to-voter link each way at 33 Hz.

What. Once both ends of a link know both random keys of pysyncobj's
handshake, and the other end said it reads them (`HELLO`, a message type
pysyncobj ignores, so an older peer just keeps the old frames), each side
sends::

    MARK (0x01) | AES-GCM(key of this direction, nonce = frame counter,
                          kind: u8 | body)

    kind HEARTBEAT   body = msgpack [term, commit_index, prevLogIdx, prevLogTerm]
    kind NEXT_INDEX  body = msgpack [next_node_idx, reset, success]
    kind KEEPALIVE   body = empty
    kind GENERIC     body = the caller's bytes (zlib of a pickle, decoded by
                            the transport only after the tag checked out)

A heartbeat is then ~27 bytes of frame (+4 length, +52 headers = ~83 B on
the wire), its answer ~24.

Security, compared with the Fernet frames it replaces:

- **Authenticated and encrypted** with AES-256-GCM; the tag is checked before
  a byte of the body is decoded (rule 1 of `_transport`).
- **Bound to the link.** The key of each direction is HKDF of the cluster
  key's link secret over both random keys of this link (receiver's first),
  so a frame from another link, another session of the same pair, or the
  other direction fails its tag. Fernet frames carried the receiver's key
  inside every frame for this; here it costs no byte.
- **Replay-safe, strictly.** The nonce is the frame's number on this link
  and direction, counted by both ends and never sent: a replayed, dropped,
  reordered or injected frame fails its tag, and the link is closed. (A
  Fernet frame only had to carry a timestamp not older than the last one, to
  the second.) A nonce never repeats under one key: the counter only grows,
  and each link has fresh keys.
- **Key rotation** as before: sealed with the primary key's secret, opened
  with any installed key's; a removed key opens nothing more.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgpack
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from nanomesh.errors import RemoteProtocolError

MARK = b"\x01"
"""First byte of a compact frame. A Fernet token always starts with ``g``
(base64 of its version byte 0x80), so one look tells the two apart."""
HELLO: dict[str, Any] = {"type": "nanomesh.compact", "version": 1}
"""Sent once per link, as an ordinary (Fernet) message, by a side that reads
compact frames: the other side may send them from then on."""
RANDOM_KEY_LEN = 32
"""pysyncobj's handshake keys: ``os.urandom(32)``."""
NONCE_LEN = 12
TAG_LEN = 16
OVERHEAD = len(MARK) + TAG_LEN + 1
"""Bytes a compact frame adds to its body: mark, GCM tag, kind."""
_U64 = 2**64 - 1

GENERIC, HEARTBEAT, NEXT_INDEX, KEEPALIVE = 0, 1, 2, 3
KEEPALIVE_MESSAGE: dict[str, Any] = {"type": "nanomesh.keepalive"}
"""The idle-link keepalive of `nanomesh.consensus._pysyncobj`."""
_HEARTBEAT_KEYS = frozenset({"type", "term", "commit_index", "entries", "prevLogIdx",
                             "prevLogTerm"})
_NEXT_INDEX_KEYS = frozenset({"type", "next_node_idx", "reset", "success"})


def _bad(detail: str) -> RemoteProtocolError:
    return RemoteProtocolError("malformed", f"raft compact frame: {detail}")


# --------------------------------------------------------------------------- messages


def _count(v: object) -> bool:
    return type(v) is int and 0 <= v <= _U64


def encode(message: Any) -> bytes | None:
    """``kind | body`` of a message that has a compact form: an
    ``append_entries`` without entries (a heartbeat), a ``next_node_idx``, a
    keepalive. None for any other message (send it as `generic`). Exact
    matches only: a message with one more field, or entries, is not
    shortened, so nothing the other side needs is dropped."""
    if not isinstance(message, dict):
        return None
    kind = message.get("type")
    keys = message.keys()
    if (kind == "append_entries" and keys == _HEARTBEAT_KEYS and message["entries"] == []
            and all(_count(message[k]) for k in ("term", "commit_index", "prevLogIdx",
                                                  "prevLogTerm"))):
        fields = [message["term"], message["commit_index"], message["prevLogIdx"],
                  message["prevLogTerm"]]
        return bytes((HEARTBEAT,)) + msgpack.packb(fields)
    if (kind == "next_node_idx" and keys == _NEXT_INDEX_KEYS
            and _count(message["next_node_idx"])
            and type(message["reset"]) is bool and type(message["success"]) is bool):
        fields = [message["next_node_idx"], message["reset"], message["success"]]
        return bytes((NEXT_INDEX,)) + msgpack.packb(fields)
    if message == KEEPALIVE_MESSAGE:
        return bytes((KEEPALIVE,))
    return None


def generic(blob: bytes) -> bytes:
    """``kind | body`` of a message without a compact form: `blob` is the
    caller's encoding of it (zlib of a pickle)."""
    return bytes((GENERIC,)) + blob


def decode(plain: bytes) -> dict[str, Any] | bytes:
    """The message of an opened frame: the pysyncobj dict of a compact kind
    (the very fields `encode` took), or the caller's bytes of a `generic`
    one. RemoteProtocolError for anything else."""
    if not plain:
        raise _bad("empty body")
    kind, body = plain[0], plain[1:]
    if kind == GENERIC:
        return bytes(body)
    if kind == KEEPALIVE:
        if body:
            raise _bad("keepalive with a body")
        return dict(KEEPALIVE_MESSAGE)
    if kind == HEARTBEAT:
        term, commit, prev_idx, prev_term = _counts(body, 4, "heartbeat")
        return {"type": "append_entries", "term": term, "commit_index": commit,
                "entries": [], "prevLogIdx": prev_idx, "prevLogTerm": prev_term}
    if kind == NEXT_INDEX:
        fields = _fields(body, 3, "next_node_idx")
        if not _count(fields[0]) or type(fields[1]) is not bool or type(fields[2]) is not bool:
            raise _bad("next_node_idx needs [count, bool, bool]")
        return {"type": "next_node_idx", "next_node_idx": fields[0], "reset": fields[1],
                "success": fields[2]}
    raise _bad(f"unknown kind {kind}")


def _fields(body: bytes, n: int, what: str) -> list[Any]:
    try:
        fields = msgpack.unpackb(body, strict_map_key=True, raw=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise _bad(f"{what}: {exc}") from None
    if not isinstance(fields, list) or len(fields) != n:
        raise _bad(f"{what} needs {n} fields")
    return fields


def _counts(body: bytes, n: int, what: str) -> list[int]:
    fields = _fields(body, n, what)
    if not all(_count(f) for f in fields):
        raise _bad(f"{what} fields must be integers 0..2**64-1")
    return fields


# --------------------------------------------------------------------------- sealing


def _direction_key(secret: bytes, receiver: bytes, sender: bytes) -> AESGCM:
    """The AES-GCM key of one direction of one link: HKDF-SHA256 of a link
    secret over both random keys, the receiver's first (RFC 5869)."""
    return AESGCM(HKDF(algorithm=hashes.SHA256(), length=32, salt=receiver + sender,
                       info=b"nanomesh raft link").derive(secret))


class LinkSeal:
    """Seals and opens the compact frames of one link, for one end.

    `secrets()` returns the link secret of every installed cluster key,
    primary first (read at each frame, so a rotation applies at once).
    `ours` is the random key this end generated in pysyncobj's handshake,
    `theirs` the one the other end sent. ValueError if either is not 32
    bytes (the other end's comes off the wire)."""

    def __init__(self, secrets: Callable[[], Sequence[bytes]], ours: bytes,
                 theirs: object) -> None:
        if not (isinstance(theirs, bytes) and len(theirs) == RANDOM_KEY_LEN
                and len(ours) == RANDOM_KEY_LEN):
            raise ValueError("a compact link needs both 32-byte handshake keys")
        self._secrets = secrets
        self._ours = ours
        self._theirs = theirs
        self._sent = 0
        self._received = 0
        self._keys: dict[tuple[bytes, bool], AESGCM] = {}

    @property
    def frames(self) -> tuple[int, int]:
        """(sealed, opened) so far."""
        return self._sent, self._received

    def _key(self, secret: bytes, sending: bool) -> AESGCM:
        key = self._keys.get((secret, sending))
        if key is None:
            if len(self._keys) >= 16:  # keys rotated many times: drop the stale ones
                self._keys.clear()
            receiver, sender = ((self._theirs, self._ours) if sending
                                else (self._ours, self._theirs))
            key = self._keys[(secret, sending)] = _direction_key(secret, receiver, sender)
        return key

    def seal(self, plain: bytes) -> bytes:
        """``MARK | ciphertext | tag`` of the next frame this end sends."""
        nonce = self._sent.to_bytes(NONCE_LEN, "big")
        self._sent += 1
        return MARK + self._key(self._secrets()[0], True).encrypt(nonce, plain, None)

    def open(self, frame: bytes) -> bytes:
        """The plaintext of the next frame from the other end;
        RemoteProtocolError if it is not exactly that frame under an
        installed key (then the link must be closed: the counters no longer
        match)."""
        if frame[:1] != MARK:
            raise _bad("not a compact frame")
        if len(frame) < len(MARK) + TAG_LEN:
            raise RemoteProtocolError("decrypt", "raft compact frame too short")
        nonce = self._received.to_bytes(NONCE_LEN, "big")
        for secret in self._secrets():
            try:
                plain = self._key(secret, False).decrypt(nonce, frame[len(MARK):], None)
            except InvalidTag:
                continue
            self._received += 1
            return plain
        raise RemoteProtocolError("decrypt", "no installed key opens this frame as the "
                                  "next one of this link")
