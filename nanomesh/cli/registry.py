"""The `nanomesh registry` commands.

- ``nanomesh registry [--peer IP[:PORT]] [--json]``: what the mesh can deploy,
  as a table NAME VERSION KIND REQUIRES SIZE HOLDERS (or the raw JSON list).
- ``nanomesh registry push DIR [--peer ...] [--token ...]``: pack the service
  folder DIR into a bundle, upload it (``PUT /v1/bundles/{sha}``) and commit
  its registry entry (``POST /v1/registry``); ``--replace`` overwrites an
  existing ``name@version`` that names different content.

Public API: `register(subparsers)`, `format_size(n)`,
`requires_summary(requires)`, `registry_rows(listing)`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nanomesh.cli.common import PEER_HELP, add_token_args, management_token, peer_api, print_table
from nanomesh.transport.apiclient import get_json, request_bytes, request_json

# The bundle packer and the manifest loader (which loads the placement and
# runtime packages) are imported inside `push`: `nanomesh --help` does not
# need them.

PUSH_TIMEOUT = 600.0
"""Seconds the CLI waits for a bundle upload (matches the server's
BUNDLE_UPLOAD_TIMEOUT, sized for MAX_BUNDLE_BYTES over a slow link)."""


def register(subparsers: Any) -> None:
    """Add ``registry`` (list) and ``registry push`` to the top-level ``subparsers``."""
    registry = subparsers.add_parser(
        "registry", help="list deployable services (bundles) and their requirements",
        description="List the mesh's service registry: every pushed name@version, "
        "its requirements and the peers holding its bundle.")
    # Its own dest: the push subcommand's --peer default would overwrite a shared one.
    registry.add_argument("--peer", dest="registry_peer", metavar="IP[:PORT]", help=PEER_HELP)
    registry.add_argument("--json", action="store_true", help="print the raw JSON list")
    registry.set_defaults(func=_registry_list)
    actions = registry.add_subparsers(metavar="ACTION")
    push = actions.add_parser(
        "push", help="pack a service folder and publish it to the registry",
        description="Pack DIR (a service folder with nanoservice.toml) into a "
        "content-addressed bundle, upload it to a peer and register name@version.")
    push.add_argument("dir", type=Path, metavar="DIR", help="service folder")
    push.add_argument("--replace", action="store_true",
                      help="overwrite an existing name@version that names other content")
    add_token_args(push)
    push.set_defaults(func=_registry_push)


def _registry_list(args: argparse.Namespace) -> int:
    listing = get_json(peer_api(args.registry_peer), "/v1/registry")
    if args.json:
        print(json.dumps(listing, indent=2, sort_keys=True))
        return 0
    if not listing:
        print("the registry is empty; publish a service with `nanomesh registry push DIR`")
        return 0
    print_table(registry_rows(listing))
    return 0


def _registry_push(args: argparse.Namespace) -> int:
    from nanomesh.bundles import pack_bundle
    from nanomesh.runtime.manifest import load_manifest

    load_manifest(args.dir)  # a bad manifest is refused here, before any upload
    bundle = pack_bundle(args.dir)
    peer, token = peer_api(args.peer or args.registry_peer), management_token(args)
    request_bytes("PUT", peer, f"/v1/bundles/{bundle.sha256}", bundle.data, token=token,
                  timeout=PUSH_TIMEOUT, content_type="application/x-tar")
    reply = request_json("POST", peer, "/v1/registry",
                         {"sha256": bundle.sha256, "replace": args.replace}, token=token)
    verb = "pushed" if reply["changed"] else "unchanged:"
    print(f"{verb} {reply['key']} (bundle {bundle.sha256[:16]}, {format_size(bundle.size)})")
    return 0


def registry_rows(listing: Sequence[Mapping[str, Any]]) -> list[tuple[str, ...]]:
    """The table (header first) for a ``GET /v1/registry`` listing."""
    rows: list[tuple[str, ...]] = [("NAME", "VERSION", "KIND", "REQUIRES", "SIZE", "HOLDERS")]
    for e in listing:
        rows.append((str(e.get("name")), str(e.get("version")), str(e.get("kind")),
                     requires_summary(e.get("requires") or {}),
                     format_size(int(e.get("size") or 0)),
                     ",".join(e.get("holders") or []) or "(none alive)"))
    return rows


def requires_summary(requires: Mapping[str, Any]) -> str:
    """A compact one-line view of a requirement profile: capabilities, then
    every non-empty, non-zero requirement as key=value."""
    parts = [",".join(requires.get("capabilities") or [])]
    parts += [f"{k}={v}" for k, v in sorted(requires.items())
              if k != "capabilities" and v not in (None, 0, 0.0, "", [], {})]
    return " ".join(p for p in parts if p) or "-"


def format_size(n: int) -> str:
    """Bytes as a short human size (``512 B``, ``1.5 KiB``, ``20.0 MiB``)."""
    size = float(n)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024 or unit == "MiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} MiB"
