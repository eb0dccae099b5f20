"""Seed files: one file that re-establishes a service with its saved state.

The research saved a terminated nanoservice's state to a "seed file" from
which it could be re-established later, anywhere. `nanomesh undeploy NAME
--save SEED` writes one; `nanomesh deploy --from-seed SEED` reads it.

Format (a msgpack map; this module owns its fields, `nanomesh.wire.seedfile`
its bytes)::

    {"format": "nanomesh-seed", "version": 1,
     "service": {...},               # the service document (nanomesh.runtime.manifest)
     "bundle": <tar bytes> | None,   # the service's bundle, if it has one
     "bundle_sha256": str | None,    # its id; present iff bundle is
     "state": <bytes> | None,        # the blob the service handed the runtime
     "saved_at": float,              # unix time
     "saved_from": str}              # peer name

`read_seed` is strict: a truncated, garbage, oversized or wrong-version file,
a missing or extra field, or a bundle whose SHA-256 differs from
``bundle_sha256`` raises `SeedError` saying what is wrong. `write_seed`
writes atomically (temporary file, fsync, rename) with mode 0600: the state
may be private.

Public API: `Seed` (dataclass, fields as above), `write_seed(path, seed)`,
`read_seed(path) -> Seed`, `encode_seed(seed) -> bytes`,
`decode_seed(data, where=...) -> Seed`, `SeedError`, `SEED_FORMAT`,
`SEED_VERSION`, `MAX_STATE_BYTES`, `MAX_SEED_BYTES`.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nanomesh.bundles import MAX_BUNDLE_BYTES
from nanomesh.checks import is_json, is_number
from nanomesh.errors import NanomeshError, RemoteProtocolError
from nanomesh.runtime.manifest import MAX_STATE_BYTES as MANIFEST_MAX_STATE_BYTES
from nanomesh.wire.seedfile import pack_seed_file, unpack_seed_file

SEED_FORMAT = "nanomesh-seed"
SEED_VERSION = 1
"""Format version written; `read_seed` accepts exactly this one."""

MAX_STATE_BYTES = MANIFEST_MAX_STATE_BYTES
"""Largest state blob in a seed: the runtime's own limit (64 KiB, see
`nanomesh.runtime.manifest.MAX_STATE_BYTES`), so a seed that reads is one that
deploys."""

MAX_SERVICE_BYTES = 1 << 20
"""Room for the service document and the other fields."""

MAX_SEED_BYTES = MAX_BUNDLE_BYTES + MAX_STATE_BYTES + MAX_SERVICE_BYTES
"""Largest seed file read; anything longer is refused before parsing."""

_FIELDS = {"format", "version", "service", "bundle", "bundle_sha256", "state", "saved_at",
           "saved_from"}


class SeedError(NanomeshError):
    """A seed file cannot be read or written; the message names the file and
    what is wrong with it."""


@dataclass(frozen=True)
class Seed:
    """The content of a seed file (see the module docstring)."""

    service: dict[str, Any]
    bundle: bytes | None
    bundle_sha256: str | None
    state: bytes | None
    saved_at: float
    saved_from: str


def encode_seed(seed: Seed) -> bytes:
    """The file bytes of `seed`; SeedError if the seed itself is inconsistent."""
    _check(_as_map(seed), "seed")
    return pack_seed_file(_as_map(seed))


def write_seed(path: Path, seed: Seed) -> None:
    """Write `seed` to `path` atomically, mode 0600."""
    data = encode_seed(seed)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        # The rename must reach the disk too: `undeploy --save` deletes the
        # service right after, and a power cut must not lose both.
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise SeedError(f"cannot write seed file {path}: {exc.strerror or exc}") from None


def read_seed(path: Path) -> Seed:
    """The seed in `path`; SeedError if it is unreadable or not a valid seed."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_SEED_BYTES + 1)
    except OSError as exc:
        raise SeedError(f"cannot read seed file {path}: {exc.strerror or exc}") from None
    return decode_seed(data, where=str(path))


def decode_seed(data: bytes, where: str = "seed") -> Seed:
    """Strictly decode seed-file bytes (see the module docstring)."""
    if len(data) > MAX_SEED_BYTES:
        raise SeedError(f"{where}: larger than {MAX_SEED_BYTES} bytes; not a seed file")
    try:
        obj = unpack_seed_file(data, max_bin_len=MAX_BUNDLE_BYTES,
                               max_str_len=MAX_SERVICE_BYTES,
                               max_container_len=MAX_SERVICE_BYTES)
    except RemoteProtocolError as exc:
        raise SeedError(f"{where}: not a seed file (truncated or corrupt: "
                        f"{exc.detail})") from None
    _check(obj, where)
    return Seed(service=obj["service"], bundle=obj["bundle"],
                bundle_sha256=obj["bundle_sha256"], state=obj["state"],
                saved_at=float(obj["saved_at"]), saved_from=obj["saved_from"])


def _as_map(seed: Seed) -> dict[str, Any]:
    return {"format": SEED_FORMAT, "version": SEED_VERSION, "service": seed.service,
            "bundle": seed.bundle, "bundle_sha256": seed.bundle_sha256, "state": seed.state,
            "saved_at": seed.saved_at, "saved_from": seed.saved_from}


def _check(obj: Any, where: str) -> None:
    if not isinstance(obj, dict) or obj.get("format") != SEED_FORMAT:
        raise SeedError(f"{where}: not a nanomesh seed file")
    if obj.get("version") != SEED_VERSION:
        raise SeedError(f"{where}: seed format version {obj.get('version')!r} is not "
                        f"supported (this nanomesh reads version {SEED_VERSION})")
    if set(obj) != _FIELDS:
        missing, extra = sorted(_FIELDS - set(obj)), sorted(set(obj) - _FIELDS)
        raise SeedError(f"{where}: seed fields wrong (missing: {missing or '-'}, "
                        f"unexpected: {extra or '-'})")
    _check_service(obj["service"], where)
    _check_bundle(obj["bundle"], obj["bundle_sha256"], where)
    state = obj["state"]
    if state is not None and (not isinstance(state, bytes) or len(state) > MAX_STATE_BYTES):
        raise SeedError(f"{where}: state must be bytes of at most {MAX_STATE_BYTES}, or nil")
    saved_at = obj["saved_at"]
    if not (is_number(saved_at) and saved_at >= 0):
        raise SeedError(f"{where}: saved_at must be a unix time")
    if not isinstance(obj["saved_from"], str):
        raise SeedError(f"{where}: saved_from must be a peer name")


def _check_service(service: Any, where: str) -> None:
    if not isinstance(service, dict) or not isinstance(service.get("name"), str) \
            or not service["name"]:
        raise SeedError(f"{where}: service must be a service document with a name")
    if not is_json(service):
        raise SeedError(f"{where}: service document holds non-JSON values")


def _check_bundle(bundle: Any, sha: Any, where: str) -> None:
    if bundle is None and sha is None:
        return
    if not isinstance(bundle, bytes) or not isinstance(sha, str):
        raise SeedError(f"{where}: bundle and bundle_sha256 must be both present "
                        f"(bytes and hex) or both nil")
    actual = hashlib.sha256(bundle).hexdigest()
    if actual != sha:
        raise SeedError(f"{where}: the bundle is damaged: it hashes to {actual[:16]}, "
                        f"not {sha[:16]}")
