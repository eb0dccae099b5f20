"""The mesh's management token, and what a caller without it may see.

Deploying a service runs code on every device, so every mutating API call
requires the token. The peer that bootstraps a mesh generates the token,
keeps it in its data directory (owner-only) and commits its SHA-256 to the
replicated state, so that *every* peer can check it without holding the
token itself.

Reads are open, with two exceptions:

- reads of things that may hold secrets need the token outright, and their
  401 says so (`read_refusal`): instance logs, state blobs
  (``/v1/instances/*/state``; the instance's own token also works), bundles;
- reads that list the desired state are answered to everyone, but a reader
  without the token gets them redacted (`redact_service`,
  `redact_registry_entry`): no state blob, and the values of ``run.env``
  replaced by ``"(redacted)"`` (a manifest's environment is where a
  service's secrets go; the names stay visible). A redacted document names
  what it withholds in ``"redacted"``, a field no manifest may have, so it
  can never be deployed back by mistake. A wrong token on such a read is
  treated as none (the CLI may send a stale lab token to another mesh),
  and the CLI says that it was not accepted.

The HTTP side of these rules (who the caller is, the 401s with their
``WWW-Authenticate`` challenge) is `nanomesh.daemon.api_auth`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nanomesh.disk import write_durably
from nanomesh.errors import ConfigError
from nanomesh.wire import Keyring

TOKEN_FILE = "management.token"
TOKEN_META_KEY = "token_sha256"
"""Key of the token's hash in the replicated mesh settings."""
TOKEN_SOURCES = "--token, $NANOMESH_TOKEN or --token-file"
"""How an operator hands the CLI the token (named in every 401)."""
REDACTED = "(redacted)"
"""What a withheld value reads as."""
REDACTED_KEY = "redacted"
"""The field of a redacted document listing what it withholds (dotted paths)."""


def write_refusal() -> str:
    """The 401 text of a call that changes the mesh."""
    return f"this call changes the mesh and needs its management token: {TOKEN_SOURCES}"


def read_refusal(what: str) -> str:
    """The 401 text of a read that needs the token (``what`` is being read)."""
    return f"reading {what} needs the mesh's management token: {TOKEN_SOURCES}"


def redact_service(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The service document as a reader without the management token sees it
    (see the module docstring); unchanged but for a copy if it holds nothing
    to withhold."""
    out = dict(doc)
    withheld = []
    if "state" in out:
        del out["state"]
        withheld.append("state")
    run = out.get("run")
    env = run.get("env") if isinstance(run, Mapping) else None
    if isinstance(run, Mapping) and isinstance(env, Mapping) and env:
        out["run"] = {**run, "env": dict.fromkeys(env, REDACTED)}
        withheld.append("run.env")
    if withheld:
        out[REDACTED_KEY] = withheld
    return out


def redact_registry_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A registry entry (`nanomesh.bundles.registry`) with its service
    document redacted."""
    out = dict(entry)
    if isinstance(out.get("service"), Mapping):
        out["service"] = redact_service(out["service"])
    return out


def generate_token() -> str:
    """A fresh management token: 32 random bytes, URL-safe text that never
    starts with "-", so ``nanomesh ... --token TOKEN`` cannot mistake it for
    an option (argparse would say "expected one argument"; 1 token in 64
    did before)."""
    while True:
        token = secrets.token_urlsafe(32)
        if not token.startswith("-"):
            return token


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


INTERNAL_PURPOSE = "internal-api"
"""`Keyring.derive` purpose of the key peers sign their calls to each other's
API with (``/v1/internal/*``, bundle transfers, key rotation)."""
NONCES_REMEMBERED = 10_000
"""Internal-call nonces a peer remembers, to refuse a replayed request."""


def internal_token(keyring: Keyring, method: str, path: str, body: bytes = b"") -> str:
    """The bearer token of one peer-to-peer call: a fresh nonce and an
    HMAC-SHA256, under a key derived from the primary cluster key, of the
    method, path, nonce and body. The API is plain HTTP: someone who records
    a call learns nothing they can use for another request, and the same
    request replayed is refused (`InternalCalls`)."""
    nonce = secrets.token_hex(12)
    return f"v1.{nonce}.{_sign(keyring.derive(INTERNAL_PURPOSE), method, path, nonce, body)}"


def _sign(key: bytes, method: str, path: str, nonce: str, body: bytes) -> str:
    message = "\n".join((method.upper(), path, nonce, hashlib.sha256(body).hexdigest()))
    return hmac.new(key, message.encode("utf-8", "surrogateescape"), hashlib.sha256
                    ).hexdigest()


class InternalCalls:
    """Checks the tokens of peer-to-peer calls (`internal_token`): signed by
    any installed key (peers whose primaries differ during a rotation still
    trust each other), and each nonce once. Nonces are remembered in memory,
    the last `NONCES_REMEMBERED`: a recorded call can be replayed only after
    that many others, and only as the identical request."""

    def __init__(self, remembered: int = NONCES_REMEMBERED) -> None:
        self._seen: dict[str, None] = {}
        self._remembered = remembered

    def check(self, presented: str | None, keyring: Keyring, method: str, path: str,
              body: bytes = b"") -> bool:
        version, _, rest = (presented or "").partition(".")
        nonce, _, signature = rest.partition(".")
        if version != "v1" or not nonce or not signature or nonce in self._seen:
            return False
        if not any(hmac.compare_digest(
                signature.encode("utf-8", "surrogateescape"),
                _sign(key, method, path, nonce, body).encode())
                for key in keyring.derive_all(INTERNAL_PURPOSE)):
            return False
        self._seen[nonce] = None
        if len(self._seen) > self._remembered:
            del self._seen[next(iter(self._seen))]
        return True
