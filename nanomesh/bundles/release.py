"""nanomesh's own release bundle as the mesh's bundle store holds it
(``nanomesh upgrade`` uploads it like a service bundle: content-addressed,
sha256-checked on every fetch), and the check of its manifest.

A release bundle (`nanomesh.cli.release_bundle` builds it) unpacks to one
directory ``nanomesh-VERSION/`` with ``manifest.json`` (the version, the
protocol range, every file's sha256) and ``wheels/`` (nanomesh's wheel and
the wheelhouse of its dependencies). The store's content address proves the
tar is the one uploaded; `verify_tree` proves each unpacked file is the one
the manifest names, as ``install.sh`` checks it on a device.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nanomesh.bundles.errors import BundleError
from nanomesh.bundles.pack import sha256_file

MANIFEST = "manifest.json"
FORMAT = 1
"""Bumped when the bundle's layout changes in a way install.sh must know of."""


def verify_tree(root: Path, manifest: dict[str, Any]) -> list[str]:
    """The problems of an unpacked bundle against its manifest (empty: sound)."""
    problems = []
    for relpath, digest in manifest["files"].items():
        path = root / relpath
        if not path.is_file():
            problems.append(f"{relpath}: missing")
        elif _sha256(path) != digest:
            problems.append(f"{relpath}: sha256 differs from the manifest")
    return problems


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return sha256_file(f)[0]


def release_name_version(extracted: Path) -> tuple[str | None, str | None]:
    """``("nanomesh", VERSION)`` if ``extracted`` holds a release bundle, by
    its manifest alone (cheap: for listings, not a check), else ``(None, None)``."""
    for path in extracted.glob(f"*/{MANIFEST}"):
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(manifest, dict) and manifest.get("name") == "nanomesh" \
                and isinstance(manifest.get("version"), str):
            return "nanomesh", manifest["version"]
    return None, None


def open_release(extracted: Path) -> tuple[Path, dict[str, Any]]:
    """The release directory inside an extracted bundle and its manifest,
    checked file by file. BundleError if it is not a sound nanomesh release
    (a service bundle, a missing or changed file, a manifest from a newer
    layout)."""
    tops = [p for p in extracted.iterdir() if (p / MANIFEST).is_file()]
    if len(tops) != 1:
        raise BundleError(f"not a nanomesh release bundle: no single */{MANIFEST} in it")
    top = tops[0]
    try:
        manifest = json.loads((top / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise BundleError(f"{MANIFEST} unreadable: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("name") != "nanomesh" \
            or not isinstance(manifest.get("version"), str) \
            or not isinstance(manifest.get("files"), dict):
        raise BundleError(f"{MANIFEST} is not a nanomesh release manifest")
    if manifest.get("format") != FORMAT:
        raise BundleError(f"release bundle format {manifest.get('format')!r}; this nanomesh "
                          f"reads format {FORMAT}")
    if problems := verify_tree(top, manifest):
        raise BundleError("release bundle does not match its manifest: "
                          + "; ".join(problems[:5]))
    return top, manifest
