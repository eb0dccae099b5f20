"""The HTTP API's bundle and registry endpoints.

Bundles (every call needs `authorize`: the management token or the mesh's
internal secret, since a bundle is code that peers will run):

- ``PUT /v1/bundles/{sha}``: body = the bundle's tar bytes (up to
  MAX_BUNDLE_BYTES; serve with ``large_bodies=BUNDLE_BODY_LIMITS``). Verified
  against ``sha`` and extracted before it is visible. 201 ``{"sha256",
  "size", "stored": true}``; 200 with ``"stored": false`` if already held;
  400 if the bytes do not hash to ``sha`` or the tar is unsafe.
- ``GET /v1/bundles/{sha}``: the tar (``application/x-tar``), verified before
  it is sent; 404 if not held (or found corrupt, and then removed).
- ``GET /v1/bundles``: ``[{"sha256", "size", "name", "version"}, ...]``.

Registry (the replicated ``"name@version" -> entry`` map, see
`nanomesh.bundles.registry` for the entry schema):

- ``GET /v1/registry`` (open, like every read): ``[entry + {"key",
  "holders": [peer names]}, ...]`` sorted by key; with the management token
  in full, else each entry's ``service`` redacted (`nanomesh.security.auth`).
- ``POST /v1/registry`` (management token) ``{"sha256": ..., "replace":
  false}``: reads and validates the manifest of a bundle this peer holds and
  commits its entry. 201 ``{"key", "entry", "changed": true}``; 200 with
  ``"changed": false`` if identical; 404 if the bundle is not held here; 400
  for a bad manifest; 409 if ``name@version`` names a different bundle and
  ``replace`` is not true (a version should mean one content).
- ``DELETE /v1/registry/{name@version}`` (management token): drops an entry;
  404 if absent.

The handlers depend on a `RegistryBackend` protocol, so they are testable
without Raft; the daemon wires the consensus-backed one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import trio

from nanomesh.bundles import (
    MAX_BUNDLE_BYTES,
    BundleError,
    BundleStore,
    check_sha,
    registry_entry,
    registry_key,
    registry_listing,
)
from nanomesh.daemon.http import BodyLimit, FileBody, Handler, HttpError, Request
from nanomesh.disk import describe_disk_error
from nanomesh.runtime.manifest import ManifestError, load_manifest
from nanomesh.security.auth import redact_registry_entry

log = logging.getLogger("nanomesh.bundles")

BUNDLE_UPLOAD_TIMEOUT = 600.0
"""Seconds a client may take to upload one bundle: MAX_BUNDLE_BYTES at about
0.45 MB/s, a poor Wi-Fi link; the usual kilobyte bundle takes milliseconds."""

BUNDLE_BODY_LIMITS = {"/v1/bundles/": BodyLimit(MAX_BUNDLE_BYTES, BUNDLE_UPLOAD_TIMEOUT)}
"""The ``large_bodies`` argument of `serve_http` that bundle uploads need."""

Authorize = Callable[[Request], None]
"""Raises HttpError (401, or 503 before the mesh has a token) to refuse a call."""


class RegistryBackend(Protocol):
    """What the registry routes need from the replicated state."""

    def entries(self) -> Mapping[str, Mapping[str, Any]]:
        """The committed registry, ``"name@version" -> entry``."""

    async def put(self, key: str, entry: dict[str, Any] | None) -> None:
        """Commit an entry (None deletes it); may raise HttpError (e.g. 503
        when no leader is reachable)."""

    def holders(self) -> Mapping[str, list[str]]:
        """Bundle id prefix -> alive peers holding it (`holders_index`)."""


def bundle_routes(store: BundleStore, authorize: Authorize
                  ) -> dict[tuple[str, str], Handler]:
    """The bundle endpoints over `store`."""

    async def put_bundle(request: Request) -> tuple[int, Any]:
        authorize(request)
        sha = _sha_param(request)
        source = request.body_file if request.body_file is not None else request.body
        if await trio.to_thread.run_sync(store.has, sha):
            return 200, {"sha256": sha, "size": await _tar_size(store, sha), "stored": False}
        try:
            await trio.to_thread.run_sync(store.add, source, sha)
        except BundleError as exc:
            raise HttpError(400, str(exc)) from None
        except OSError as exc:  # the store leaves no partial file behind
            message = f"cannot store bundle {sha[:16]} on this peer: {describe_disk_error(exc)}"
            log.error("%s", message)
            raise HttpError(507, message) from None
        return 201, {"sha256": sha, "size": await _tar_size(store, sha), "stored": True}

    async def get_bundle(request: Request) -> tuple[int, Any]:
        authorize(request)
        sha = _sha_param(request)
        try:
            f = await trio.to_thread.run_sync(store.open_tar, sha)
        except BundleError as exc:
            raise HttpError(404, str(exc)) from None
        return 200, FileBody(f, os.fstat(f.fileno()).st_size, "application/x-tar")

    async def list_bundles(request: Request) -> tuple[int, Any]:
        authorize(request)
        infos = await trio.to_thread.run_sync(store.list)
        return 200, [i.to_dict() for i in infos]

    return {("PUT", "/v1/bundles/{name}"): put_bundle,
            ("GET", "/v1/bundles/{name}"): get_bundle,
            ("GET", "/v1/bundles"): list_bundles}


def registry_routes(store: BundleStore, backend: RegistryBackend,
                    authorize_management: Authorize, peer_name: str
                    ) -> dict[tuple[str, str], Handler]:
    """The registry endpoints; entries pushed here name `peer_name` as pusher."""

    def sees_secrets(request: Request) -> bool:
        """The operator (whom `authorize_management` lets through) sees entries
        in full; anyone else without the environments of their services."""
        try:
            authorize_management(request)
        except HttpError:
            return False
        return True

    async def listing(request: Request) -> tuple[int, Any]:
        entries = registry_listing(backend.entries(), backend.holders())
        if sees_secrets(request):
            return 200, entries
        return 200, [redact_registry_entry(e) for e in entries]

    async def register(request: Request) -> tuple[int, Any]:
        authorize_management(request)
        body = request.json()
        if not isinstance(body, dict):
            raise HttpError(400, 'body must be {"sha256": "<bundle id>"}')
        try:
            sha = check_sha(body.get("sha256"))
        except BundleError as exc:
            raise HttpError(400, f"sha256: {exc}") from None
        entry = await _entry_for(store, sha, peer_name)
        key = registry_key(entry["name"], entry["version"])
        current = backend.entries().get(key)
        if current == entry:
            return 200, {"key": key, "entry": entry, "changed": False}
        if current is not None and current.get("sha256") != sha and body.get("replace") is not True:
            raise HttpError(409, f"{key} is already registered with bundle "
                            f"{str(current.get('sha256'))[:16]}; bump the version in the "
                            f"manifest, or replace it deliberately")
        await backend.put(key, entry)
        return 201, {"key": key, "entry": entry, "changed": True}

    async def unregister(request: Request) -> tuple[int, Any]:
        authorize_management(request)
        key = request.params["name"]
        if key not in backend.entries():
            raise HttpError(404, f"no registry entry {key!r} (keys are name@version)")
        await backend.put(key, None)
        return 200, {"key": key, "changed": True}

    return {("GET", "/v1/registry"): listing,
            ("POST", "/v1/registry"): register,
            ("DELETE", "/v1/registry/{name}"): unregister}


async def _entry_for(store: BundleStore, sha: str, peer_name: str) -> dict[str, Any]:
    """The registry entry of a held bundle, from its own manifest."""
    if not await trio.to_thread.run_sync(store.has, sha):
        raise HttpError(404, f"bundle {sha[:16]} is not held by this peer; PUT "
                        f"/v1/bundles/{sha} here first (`nanomesh registry push` does both)")
    try:
        doc = await trio.to_thread.run_sync(load_manifest, store.path(sha))
    except ManifestError as exc:
        raise HttpError(400, f"bundle {sha[:16]}: {exc}") from None
    try:
        return registry_entry(doc, sha, await _tar_size(store, sha), peer_name)
    except BundleError as exc:
        raise HttpError(400, f"bundle {sha[:16]}: {exc}") from None


def _sha_param(request: Request) -> str:
    try:
        return check_sha(request.params.get("name"))
    except BundleError as exc:
        raise HttpError(400, str(exc)) from None


async def _tar_size(store: BundleStore, sha: str) -> int:
    path = store.root / f"{sha}.tar"
    return (await trio.to_thread.run_sync(path.stat)).st_size
