"""Service bundles: content-addressed distribution of nanoservices.

A *bundle* is a service folder (``services/<name>/``: ``nanoservice.toml`` and
the code, or a container rootfs) packed as a deterministic tar; its id is the
SHA-256 of the tar bytes. Any peer that holds a bundle serves it; a peer
assigned an instance fetches the bundle from one that has it and verifies the
hash, so a mesh with no internet can still deploy. The registry (replicated by
Raft) lists what can be deployed and with which requirements.

Public API (blocking calls are meant for ``trio.to_thread``):

- `pack_bundle(folder, *, require_manifest=True) -> Bundle(data, sha256)`;
  `pack_bundle_to(folder, out) -> (sha256, size)` streams instead (`pack`).
- `BundleStore(root)`: `has(sha)`, `held()`, `path(sha)`, `add(bytes | Path |
  BinaryIO, expected_sha) -> Path`, `staging_path()`, `open_tar(sha) ->
  BinaryIO`, `verify(sha)`, `check_all()`, `list() -> [BundleInfo]`,
  `remove(sha)`, `gc(keep) -> removed`, `profile_section() -> [prefix]`
  (`store`).
- ``async fetch_bundle(store, sha, sources, *, token, timeout) -> Path`` (`fetch`).
- Registry: `registry_key`, `registry_entry(manifest_doc, sha, size,
  pushed_by)`, `validate_registry_entry`, `holders_index(alive (name,
  profile) pairs)`, `holders_of(sha, index)`, `registry_listing(entries,
  index)`, `BUNDLES_SECTION` (`registry`).
- `BundleError`; caps `MAX_BUNDLE_BYTES`, `MAX_BUNDLE_ENTRIES`;
  `PROFILE_PREFIX_LEN`; `check_sha(sha)`.
"""

from nanomesh.bundles.errors import BundleError
from nanomesh.bundles.fetch import DEFAULT_FETCH_TIMEOUT, fetch_bundle
from nanomesh.bundles.pack import (
    MANIFEST_FILE,
    MAX_BUNDLE_BYTES,
    MAX_BUNDLE_ENTRIES,
    Bundle,
    pack_bundle,
    pack_bundle_to,
    sha256_of,
)
from nanomesh.bundles.registry import (
    BUNDLES_SECTION,
    holders_index,
    holders_of,
    registry_entry,
    registry_key,
    registry_listing,
    validate_registry_entry,
)
from nanomesh.bundles.store import (
    PROFILE_PREFIX_LEN,
    BundleInfo,
    BundleStore,
    check_sha,
    extract_checked,
)

__all__ = [
    "BUNDLES_SECTION", "DEFAULT_FETCH_TIMEOUT", "MANIFEST_FILE", "MAX_BUNDLE_BYTES",
    "MAX_BUNDLE_ENTRIES", "PROFILE_PREFIX_LEN", "Bundle", "BundleError", "BundleInfo",
    "BundleStore", "check_sha", "extract_checked", "fetch_bundle", "holders_index",
    "holders_of", "pack_bundle", "pack_bundle_to", "registry_entry", "registry_key",
    "registry_listing", "sha256_of", "validate_registry_entry",
]
