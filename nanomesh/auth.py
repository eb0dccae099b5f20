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
import secrets
from pathlib import Path

from nanomesh.disk import write_durably
from nanomesh.errors import ConfigError

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
    # Whole or absent (a full disk used to leave an empty file, refused ever
    # after), and durable: its digest is committed to the mesh next.
    write_durably(str(path), (token + "\n").encode())
    return token


def read_token_file(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read token file {path}: {exc.strerror}") from None
    if not token:
        raise ConfigError(f"token file {path} is empty")
    return token
