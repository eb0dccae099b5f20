"""Where a peer's cluster keys come from, and how they are kept.

The cluster key is mandatory: gossip, Raft, the peers' internal API calls
and service traffic are all authenticated with keys derived from it, and
pysyncobj's Raft would run code for anyone who reaches an unauthenticated
port. A peer keeps its *keyring* (the keys it holds, primary first) in
``DATA_DIR/cluster.key`` and finds it, in order (`resolve_keyring`):

1. ``DATA_DIR/cluster.key``: the keyring as this peer last held it,
   including every live rotation (`nanomesh keys`). As with Consul's
   keyring file, it wins over ``--key-file``; a differing ``--key-file`` is
   named in the log, and deleting the file starts over from ``--key-file``;
2. ``--key-file`` (or ``key_file`` in the config file), copied to
   ``DATA_DIR/cluster.key`` on the first start;
3. a founder (no ``--join``) without either generates a key there and says,
   in its log, to copy it to the other devices (as k3s does with its
   token);
4. a peer that joins without a key refuses to start, with a one-line error
   that says how to fix it.

Every change is written atomically (`write_key_file`): a crash or a power
cut leaves the old keyring or the new one, never a torn file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nanomesh.config import PeerConfig
from nanomesh.disk import describe_disk_error, write_durably
from nanomesh.errors import ConfigError, RemoteProtocolError
from nanomesh.wire import Keyring, generate_key, open_box, seal_box

log = logging.getLogger("nanomesh.security.keys")

KEYRING_FILE = "cluster.key"
"""The peer's keyring in its data directory (module doc)."""

JOIN_WITHOUT_KEY = (
    "a peer that joins a mesh needs the mesh's cluster key: copy the key file from the "
    "first device (its DATA_DIR/cluster.key, or the file it was started with) and pass "
    "--key-file FILE")


def resolve_keyring(config: PeerConfig) -> tuple[Keyring, Path]:
    """The peer's keyring and the file it is kept in (module doc). ConfigError
    for a joiner without a key, or an unreadable key file."""
    stored = config.data_dir / KEYRING_FILE
    if stored.exists():
        keyring = Keyring.from_file(stored)
        if config.key_file is not None and config.key_file != stored:
            given = Keyring.from_file(config.key_file)
            if given.keys != keyring.keys:
                log.warning("using the keyring in %s (as last rotated), not --key-file %s, "
                            "which differs; delete %s to start over from --key-file",
                            stored, config.key_file, stored)
        return keyring, stored
    if config.key_file is not None:
        keyring = Keyring.from_file(config.key_file)
    elif config.join:
        raise ConfigError(JOIN_WITHOUT_KEY)
    else:
        keyring = Keyring.from_text(generate_key())
        log.warning("no --key-file: generated a new cluster key in %s. Copy this file to "
                    "every other device and start them with --key-file FILE (keep it "
                    "secret: it admits a device to the mesh)", stored)
    _prepare(config.data_dir)
    write_key_file(stored, keyring)
    return keyring, stored


def _prepare(data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)


def write_key_file(path: Path, keyring: Keyring) -> None:
    """Write `keyring` to `path` atomically and durably, owner-only: a crash
    or a power cut leaves the old file or the new one, never a torn one."""
    try:
        write_durably(str(path), keyring.to_text().encode())
    except OSError as exc:
        raise ConfigError(f"cannot write key file {path}: {describe_disk_error(exc)}"
                          ) from None


# ------------------------------------------------------------------ live rotation

KEY_OP_PURPOSE = "keyring-op"
"""`Keyring.derive` purpose of the seal around key operations: a new key
crosses the (unencrypted) HTTP API sealed under the current cluster key."""
KEY_ACTIONS = ("install", "use", "remove")
"""As in ``serf keys``: install a key everywhere, make it the primary (the
one that seals) everywhere, then remove the old one everywhere."""


def fingerprint(key: bytes) -> str:
    """A key's public name: 16 hex digits of its SHA-256 (shown instead of
    the key, which is secret)."""
    return hashlib.sha256(key).hexdigest()[:16]


KEY_OP_WINDOW = 300.0
"""Seconds a sealed key operation stays valid either side of its issue time
(by the clock of the machine that ran ``nanomesh keys``). HTTP is not
encrypted, so a recorded sealed body could be sent again: outside this
window it is refused as stale; inside it, by its op id (`SeenKeyOps`). The
window tolerates up to 5 minutes of clock skew between the operator's
machine and each peer (less the seconds the operation itself takes), as
Kerberos does; a larger skew gets an error naming it."""
MAX_SEEN_KEY_OPS = 4096
"""Op ids a peer remembers at once (each for at most two windows). Key
operations need the management token or the internal secret, so only an
operator fills this; a full table refuses new operations rather than
forgetting one that could then be replayed."""


@dataclass(frozen=True)
class KeyOp:
    """One keyring change. `key` is the key itself for install; use and
    remove may name an installed key by `fingerprint` alone. `op_id` (random)
    and `issued_at` (Unix seconds) make a replay detectable; `force` skips
    the checks that keep every member reachable (`remove_blockers`,
    `use_blockers`). All of it is sealed: none can be altered in transit."""

    action: str
    op_id: str
    issued_at: float
    key: bytes | None = None
    fingerprint: str | None = None
    force: bool = False

    @classmethod
    def new(cls, action: str, key: bytes | None, fp: str | None, *, now: float,
            force: bool = False) -> KeyOp:
        """A fresh operation issued at `now` (the operator's wall clock)."""
        return cls(action, secrets.token_hex(16), now, key, fp, force)

    @property
    def target(self) -> str:
        """The fingerprint of the key this operation is about."""
        return fingerprint(self.key) if self.key is not None else self.fingerprint or "?"

    def seal(self, keyring: Keyring) -> bytes:
        doc = {"action": self.action, "fingerprint": self.fingerprint,
               "key": base64.b64encode(self.key).decode() if self.key else None,
               "op_id": self.op_id, "issued_at": self.issued_at, "force": self.force}
        return seal_box(keyring, KEY_OP_PURPOSE, json.dumps(doc).encode())

    @classmethod
    def open(cls, keyring: Keyring, data: bytes) -> KeyOp:
        """The operation in a sealed body; RemoteProtocolError if no installed
        key opens it or it is malformed (an operation without an op id and an
        issue time, from an older ``nanomesh keys``, included)."""
        try:
            doc = json.loads(open_box(keyring, KEY_OP_PURPOSE, data))
            action, fp, key = doc["action"], doc.get("fingerprint"), doc.get("key")
            op_id, issued, force = doc["op_id"], doc["issued_at"], doc.get("force", False)
            if action not in KEY_ACTIONS or not (fp is None or isinstance(fp, str)):
                raise ValueError(action)
            if not (isinstance(op_id, str) and 16 <= len(op_id) <= 64):
                raise ValueError("op_id")
            if isinstance(issued, bool) or not isinstance(issued, (int, float)) or \
                    not math.isfinite(issued) or not isinstance(force, bool):
                raise ValueError("issued_at/force")
            return cls(action, op_id, float(issued),
                       base64.b64decode(key, validate=True) if key else None, fp, force)
        except (ValueError, KeyError, TypeError) as exc:
            raise RemoteProtocolError("malformed", f"key operation: {exc}") from None


class KeyOpRefused(ConfigError):
    """A well-sealed key operation this peer will not apply: `reason` is one
    of ``"action"`` (sent to another action's URL), ``"stale"``, ``"future"``
    (outside `KEY_OP_WINDOW`), ``"replay"`` (op id already seen), ``"busy"``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class SeenKeyOps:
    """The op ids a peer has accepted, each kept while its operation could
    still pass the freshness check: with `KEY_OP_WINDOW` this refuses every
    replay of a recorded operation, on every peer. Each peer keeps its own
    table, so the one operation fanned out to every member applies once on
    each. Kept in memory: a peer restarted inside the window forgets the ids
    (a replay to it within those minutes would re-apply an operation it had
    already applied). Pure: the caller passes `now` (wall-clock seconds)."""

    def __init__(self, window: float = KEY_OP_WINDOW, limit: int = MAX_SEEN_KEY_OPS) -> None:
        self.window = window
        self.limit = limit
        self._expiry: dict[str, float] = {}

    def admit(self, op: KeyOp, now: float, url_action: str | None = None) -> None:
        """Accept `op` (and remember its id) or raise `KeyOpRefused`.
        `url_action` is the action named by the URL it came on, if any."""
        if url_action is not None and url_action != op.action:
            raise KeyOpRefused("action", f"the sealed operation is {op.action!r} but was "
                               f"sent to /v1/keyring/{url_action}; refused")
        check_fresh(op, now, self.window)
        self._expiry = {i: t for i, t in self._expiry.items() if t >= now}
        if op.op_id in self._expiry:
            raise KeyOpRefused("replay", f"key operation {op.op_id[:8]} was already received "
                               "by this peer (a replay of a recorded request?); run the "
                               "command again to make a new operation")
        if len(self._expiry) >= self.limit:
            raise KeyOpRefused("busy", f"{self.limit} key operations in the last "
                               f"{self.window:.0f} s; wait and run the command again")
        # Acceptable until issued_at + window; max() keeps it longer when the
        # sender's clock is behind ours, never shorter.
        self._expiry[op.op_id] = max(op.issued_at, now) + self.window


def check_fresh(op: KeyOp, now: float, window: float = KEY_OP_WINDOW) -> None:
    """`KeyOpRefused` if `op` was issued more than `window` seconds before or
    after `now`; the message names the skew, the likely cause."""
    age = now - op.issued_at
    if abs(age) <= window:
        return
    when, reason = (f"{age:.0f} s ago", "stale") if age > 0 else (
        f"{-age:.0f} s in the future", "future")
    raise KeyOpRefused(reason, (
        f"key operation {op.op_id[:8]} was issued {when} by this peer's clock, outside "
        f"the {window:.0f} s a key operation stays valid: the clocks of the machine that "
        f"ran `nanomesh keys` and of this peer differ by {abs(age):.0f} s (more than "
        f"{window:.0f} s allowed), or a recorded operation was replayed; sync the clocks "
        "(NTP) and run the command again"))


def use_blockers(target: str, replies: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The alive members (`replies`: name -> its ``GET /v1/internal/keyring``
    answer) that ``use target`` would cut off: they lack the key, so they
    could not open what the others seal with it, or did not answer."""
    out = []
    for name, reply in sorted(replies.items()):
        if not reply.get("ok"):
            out.append(f"{name} (did not answer: {reply.get('error', '?')})")
        elif target not in (reply.get("keys") or []):
            out.append(f"{name} (does not have key {target})")
    return out


def remove_blockers(target: str, replies: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The members that have not left (alive, suspect or dead; `replies` as in
    `use_blockers`) that ``remove target`` could strand: one that did not
    answer, or still seals with `target`, would come back unable to talk to
    anyone, and no key operation could reach it any more."""
    out = []
    for name, reply in sorted(replies.items()):
        keys = reply.get("keys") or []
        if not reply.get("ok"):
            out.append(f"{name} (did not answer: {reply.get('error', '?')})")
        elif not keys or keys[0] == target:
            out.append(f"{name} (its primary is still {target})")
    return out


def apply_key_op(keyring: Keyring, op: KeyOp) -> bool:
    """Apply `op` to `keyring`; True if it changed anything. ConfigError with
    the reason if it cannot apply (unknown key, removing the primary, ...)."""
    if op.action == "install":
        if op.key is None:
            raise ConfigError("install needs the key itself, not a fingerprint")
        if op.key in keyring.keys:
            return False
        keyring.add(op.key)
        return True
    key = _installed(keyring, op)
    if op.action == "use":
        if keyring.keys[0] == key:
            return False
        keyring.use(key)
        return True
    keyring.remove(key)  # ConfigError for the primary
    return True


def _installed(keyring: Keyring, op: KeyOp) -> bytes:
    wanted = fingerprint(op.key) if op.key is not None else op.fingerprint
    for key in keyring.keys:
        if fingerprint(key) == wanted:
            return key
    raise ConfigError(f"key {wanted} is not installed on this peer")
