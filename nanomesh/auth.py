"""The mesh's management token.

Deploying a service runs code on every device, so every mutating API call
requires the token; read-only calls do not. The peer that bootstraps a mesh
generates the token, keeps it in its data directory (owner-only) and commits
its SHA-256 to the replicated state, so that *every* peer can check it without
holding the token itself.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from nanomesh.errors import ConfigError
from nanomesh.wire import Keyring

TOKEN_FILE = "management.token"
TOKEN_META_KEY = "token_sha256"
"""Key of the token's hash in the replicated mesh settings."""


def generate_token() -> str:
    return secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def secret_matches(presented: str | None, secret: str) -> bool:
    """Constant-time check of a presented bearer token against a secret held
    here. Compares bytes: a header with non-ASCII characters is a mismatch,
    never an error."""
    if not presented or not secret:
        return False
    return hmac.compare_digest(presented.encode("utf-8", "surrogateescape"),
                               secret.encode("utf-8", "surrogateescape"))


def token_matches(token: str | None, digest: str | None) -> bool:
    """Constant-time check of a presented token against the committed digest."""
    if not token or not digest:
        return False
    return hmac.compare_digest(token_digest(token), digest)


def ensure_token_file(data_dir: Path) -> str:
    """The token in `data_dir`, created (mode 0600) if absent."""
    path = data_dir / TOKEN_FILE
    if path.exists():
        return read_token_file(path)
    token = generate_token()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def read_token_file(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read token file {path}: {exc.strerror}") from None
    if not token:
        raise ConfigError(f"token file {path} is empty")
    return token


INTERNAL_PURPOSE = "internal-api"
"""`Keyring.derive` purpose of the secret peers present to each other's API
(``/v1/internal/*``, bundle transfers)."""


def internal_secret(keyring: Keyring) -> str:
    """The bearer secret this peer presents on peer-to-peer API calls: derived
    from the primary cluster key, so only members know it (never a constant)."""
    return keyring.derive(INTERNAL_PURPOSE).hex()


def is_internal_caller(presented: str | None, keyring: Keyring) -> bool:
    """Does `presented` come from a member? Any installed key's secret counts,
    so peers whose primary keys differ during a rotation still trust each
    other."""
    return any(secret_matches(presented, secret.hex())
               for secret in keyring.derive_all(INTERNAL_PURPOSE))
