"""``nanomesh keys``: list and rotate the cluster keys of a running mesh.

A rotation without downtime, as with ``serf keys``::

    nanomesh keygen > new.key
    nanomesh keys install new.key      # every member now accepts it
    nanomesh keys use new.key          # every member now seals with it
    nanomesh keys remove OLD_FINGERPRINT

The operation travels sealed under the cluster key (``--key-file``), so the
new key never crosses the network in clear; the management token authorises
it. Each member writes its keyring to its data directory before answering.

Each operation carries a random id and its issue time, sealed with it: a
peer refuses one issued more than 5 minutes before or after its own clock
(keep the clocks in sync, e.g. with NTP) and one it has already received,
so a recorded request cannot be replayed. ``use`` is refused while an alive
member lacks the key, and ``remove`` while any member that has not left
(alive, suspect or dead) still has the key as its primary or does not
answer: such a member would be cut off for good. --force overrides both.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from nanomesh.cli.common import add_token_args, management_token, peer_api, print_table
from nanomesh.errors import ConfigError
from nanomesh.security.keys import KeyOp, fingerprint
from nanomesh.transport.apiclient import request_bytes, request_json
from nanomesh.wire import Keyring, generate_key

# This module also holds ``nanomesh keygen`` (`register_keygen`). Its
# docstring is the help text of ``nanomesh keys``.
#
# The service-key search (ZeroMQ) is imported inside the one function that
# uses it: `nanomesh --help` does not need it.

KEY_FILE_HELP = ("a file holding the mesh's current cluster key, to seal the operation "
                 "with (default: $NANOMESH_KEY_FILE, else the running lab's key, else "
                 "/etc/nanomesh/cluster.key)")
FORCE_HELP = {
    "use": "make it the primary even if some alive member lacks the key or does not "
           "answer (those members are cut off until they get it)",
    "remove": "remove it even if some member that has not left (alive, suspect or dead) "
              "still has it as its primary or does not answer (such a member can never "
              "rejoin: it must be given the new key by hand)"}


def register(subparsers: Any) -> None:
    """Add ``keys list|install|use|remove`` to the top-level ``subparsers``."""
    keys = subparsers.add_parser(
        "keys", help="list and rotate the cluster keys of the running mesh",
        description=__doc__.replace("``", ""), formatter_class=argparse.RawDescriptionHelpFormatter,
    ).add_subparsers(metavar="ACTION")
    listing = keys.add_parser("list", help="each member's keys (fingerprints), primary first")
    add_token_args(listing)
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=list_command)
    for action, text in (("install", "install a key on every member (it is accepted)"),
                         ("use", "make an installed key the primary on every member "
                                 "(it seals)"),
                         ("remove", "remove a key from every member (not the primary)")):
        cmd = keys.add_parser(action, help=text)
        cmd.add_argument("key", metavar="KEY",
                         help="a key file, a base64 key" + (
                             "" if action == "install" else ", or a key's fingerprint"))
        add_token_args(cmd)
        cmd.add_argument("--key-file", type=Path, metavar="FILE", help=KEY_FILE_HELP)
        cmd.add_argument("--json", action="store_true", help="print JSON")
        if action != "install":
            cmd.add_argument("--force", action="store_true", help=FORCE_HELP[action])
        cmd.set_defaults(func=operate_command, action=action, force=False)


def register_keygen(subparsers: Any) -> None:
    """Add ``keygen`` to the top-level ``subparsers``."""
    keygen = subparsers.add_parser("keygen", help="print a new random cluster key (base64)")
    keygen.set_defaults(func=_keygen)


def _keygen(args: argparse.Namespace) -> int:
    print(generate_key())
    return 0


def operate_command(args: argparse.Namespace) -> int:
    op = KeyOp.new(args.action, *_key_or_fingerprint(args.key, args.action),
                   now=time.time(), force=args.force)
    sealed = op.seal(_sealing_keyring(args.key_file))
    reply = json.loads(request_bytes("POST", peer_api(args.peer),
                                     f"/v1/keyring/{args.action}", sealed,
                                     token=management_token(args)))
    if args.json:
        print(json.dumps(reply, indent=2, sort_keys=True))
    else:
        rows: list[tuple[str, ...]] = [("MEMBER", "RESULT", "KEYS (primary first)")]
        for name, result in sorted(reply["members"].items()):
            outcome = ("changed" if result.get("changed") else "unchanged") if result.get(
                "ok") else f"FAILED: {result.get('error', '?')}"
            rows.append((name, outcome, " ".join(result.get("keys") or []) or "-"))
        print_table(rows)
    if reply["failed"]:
        print(f"nanomesh: error: {len(reply['failed'])} member(s) failed: "
              f"{', '.join(reply['failed'])}; fix them and run the same command again")
        return 1
    return 0


def list_command(args: argparse.Namespace) -> int:
    reply = request_json("GET", peer_api(args.peer), "/v1/keyring",
                         token=management_token(args))
    if args.json:
        print(json.dumps(reply, indent=2, sort_keys=True))
        return 0
    members = reply["members"]
    rows: list[tuple[str, ...]] = [("KEY", "INSTALLED", "PRIMARY")]
    for fp, counts in sorted(reply["summary"].items()):
        rows.append((fp, f"{counts['installed']}/{len(members)}",
                     f"{counts['primary']}/{len(members)}"))
    print_table(rows)
    failed = sorted(n for n, r in members.items() if not r.get("ok"))
    if failed:
        print(f"no answer from: {', '.join(failed)}")
        return 1
    return 0


def _key_or_fingerprint(text: str, action: str) -> tuple[bytes | None, str | None]:
    """(key, None) for a key file or a base64 key; (None, fingerprint) for a
    16-hex-digit fingerprint (use and remove only)."""
    path = Path(text)
    if path.is_file():
        ring = Keyring.from_file(path)
        if len(ring.keys) != 1:
            raise ConfigError(f"{path} holds {len(ring.keys)} keys; name one key")
        return ring.keys[0], fingerprint(ring.keys[0])
    if action != "install" and len(text) == 16 and all(c in "0123456789abcdef" for c in text):
        return None, text
    ring = Keyring.from_text(text, where="KEY")
    return ring.keys[0], fingerprint(ring.keys[0])


def _sealing_keyring(given: Path | None) -> Any:
    from nanomesh.security.servicekeys import find_key_file

    path = find_key_file(given)  # the same search as every other client's
    if path is None:
        raise ConfigError("no cluster key to seal the operation with: pass --key-file FILE "
                          "(a file holding the mesh's current key)")
    return Keyring.from_file(path)

