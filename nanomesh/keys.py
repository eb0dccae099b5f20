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
import os
from dataclasses import dataclass
from pathlib import Path

from nanomesh.config import PeerConfig
from nanomesh.disk import describe_disk_error, write_durably
from nanomesh.errors import ConfigError, RemoteProtocolError
from nanomesh.wire import Keyring, generate_key, open_box, seal_box

log = logging.getLogger("nanomesh.keys")

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


@dataclass(frozen=True)
class KeyOp:
    """One keyring change. `key` is the key itself for install; use and
    remove may name an installed key by `fingerprint` alone."""

    action: str
    key: bytes | None = None
    fingerprint: str | None = None

    def seal(self, keyring: Keyring) -> bytes:
        doc = {"action": self.action, "fingerprint": self.fingerprint,
               "key": base64.b64encode(self.key).decode() if self.key else None}
        return seal_box(keyring, KEY_OP_PURPOSE, json.dumps(doc).encode())

    @classmethod
    def open(cls, keyring: Keyring, data: bytes) -> KeyOp:
        """The operation in a sealed body; RemoteProtocolError if no installed
        key opens it or it is malformed."""
        try:
            doc = json.loads(open_box(keyring, KEY_OP_PURPOSE, data))
            action, fp, key = doc["action"], doc.get("fingerprint"), doc.get("key")
            if action not in KEY_ACTIONS or not (fp is None or isinstance(fp, str)):
                raise ValueError(action)
            return cls(action, base64.b64decode(key, validate=True) if key else None, fp)
        except (ValueError, KeyError, TypeError) as exc:
            raise RemoteProtocolError("malformed", f"key operation: {exc}") from None


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
