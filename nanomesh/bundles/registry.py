"""The mesh's service registry: what can be deployed, with its requirements.

The registry is a replicated (Raft) map ``"name@version" -> entry``. An entry
describes one pushed bundle; *where* the bundle can be fetched from is not
replicated but computed from gossip: every peer lists the id prefixes of the
bundles it holds in its profile's ``"bundles"`` section, and `holders_index`
turns the alive members' profiles into ``prefix -> [peer names]``.

Entry schema (JSON-shaped; `validate_registry_entry` checks it field by field)::

    {"name": str, "version": str, "description": str, "kind": str,
     "requires": {...},          # the service document's spec["requires"]
     "sha256": 64 hex, "size": int bytes, "pushed_by": peer name,
     "service": {...}}           # the whole service document, so a deploy of
                                 # name@version needs no bundle in hand
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from nanomesh.bundles.errors import BundleError
from nanomesh.bundles.pack import MAX_BUNDLE_BYTES
from nanomesh.bundles.store import PROFILE_PREFIX_LEN, SHA_RE

BUNDLES_SECTION = "bundles"
"""Key of the held-bundle id prefixes in a peer's gossiped profile."""

MAX_HOLDER_PREFIXES = 10_000
"""Most prefixes read from one peer's profile section (a hostile or broken
profile must not cost unbounded work)."""

_STR_FIELDS = ("name", "version", "description", "kind", "pushed_by")


def registry_key(name: str, version: str) -> str:
    """The registry key of a service version: ``"name@version"``."""
    return f"{name}@{version}"


def registry_entry(manifest_doc: Mapping[str, Any], sha: str, size: int, pushed_by: str
                   ) -> dict[str, Any]:
    """The registry entry for a bundle whose manifest gave `manifest_doc` (a
    service document from `nanomesh.runtime.manifest`); BundleError if the document or
    the other fields are unusable (a registry entry needs a version)."""
    spec = manifest_doc.get("spec")
    requires = spec.get("requires") if isinstance(spec, Mapping) else None
    entry = {
        "name": manifest_doc.get("name"), "version": manifest_doc.get("version"),
        "description": manifest_doc.get("description", ""),
        "kind": manifest_doc.get("kind"), "requires": requires,
        "sha256": sha, "size": size, "pushed_by": pushed_by,
        "service": dict(manifest_doc),
    }
    return validate_registry_entry(entry)


def validate_registry_entry(entry: Any) -> dict[str, Any]:
    """`entry` if it follows the schema above, else BundleError naming the field."""
    if not isinstance(entry, Mapping):
        raise BundleError("registry entry must be an object")
    for key in _STR_FIELDS:
        if not isinstance(entry.get(key), str):
            raise BundleError(f"registry entry: {key} must be a string")
    if not entry["name"]:
        raise BundleError("registry entry: name must not be empty")
    if not entry["version"]:
        raise BundleError(f"registry entry {entry['name']}: version must not be empty; "
                          f"set version in the manifest")
    if not isinstance(entry.get("requires"), Mapping):
        raise BundleError("registry entry: requires must be an object")
    if not isinstance(entry.get("sha256"), str) or not SHA_RE.fullmatch(entry["sha256"]):
        raise BundleError("registry entry: sha256 must be 64 lowercase hex characters")
    size = entry.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= MAX_BUNDLE_BYTES:
        raise BundleError(f"registry entry: size must be 1..{MAX_BUNDLE_BYTES} bytes")
    service = entry.get("service")
    if not isinstance(service, Mapping) or service.get("name") != entry["name"]:
        raise BundleError("registry entry: service must be the service document of "
                          f"{entry['name']}")
    return {k: entry[k] for k in (*_STR_FIELDS, "requires", "sha256", "size", "service")}


def holders_index(alive_profiles: Iterable[tuple[str, Mapping[str, Any] | None]]
                  ) -> dict[str, list[str]]:
    """``prefix -> sorted peer names`` from (name, gossiped profile) of the
    *alive* members. Malformed sections are ignored, never raised on: they come
    from the network."""
    index: dict[str, set[str]] = {}
    for name, profile in alive_profiles:
        section = profile.get(BUNDLES_SECTION) if isinstance(profile, Mapping) else None
        if not isinstance(section, list):
            continue
        for prefix in section[:MAX_HOLDER_PREFIXES]:
            if isinstance(prefix, str) and len(prefix) == PROFILE_PREFIX_LEN:
                index.setdefault(prefix, set()).add(name)
    return {prefix: sorted(names) for prefix, names in index.items()}


def holders_of(sha: str, index: Mapping[str, list[str]]) -> list[str]:
    """The peers holding bundle `sha`, by its gossiped prefix."""
    return list(index.get(sha[:PROFILE_PREFIX_LEN], []))


def registry_listing(entries: Mapping[str, Mapping[str, Any]],
                     index: Mapping[str, list[str]]) -> list[dict[str, Any]]:
    """The ``GET /v1/registry`` body: entries sorted by key, each with its
    ``"key"`` and ``"holders"``; entries that fail validation are skipped."""
    listing = []
    for key in sorted(entries):
        try:
            entry = validate_registry_entry(entries[key])
        except BundleError:
            continue
        listing.append({**entry, "key": key, "holders": holders_of(entry["sha256"], index)})
    return listing
