"""What the `nanomesh` commands share: which peer API to ask, the management
token, and plain-text tables.

A command finds its peer as ``--peer``, else as `nanomesh.client.connect`
does (`nanomesh.labstate.default_peer_api`): ``$NANOMESH_PEER_API``, else
``$NANOMESH_PEER``, else the first alive peer of a running lab, else the
default API address on loopback; the management token as ``--token``, ``$NANOMESH_TOKEN``,
``--token-file``, else the running lab's, else the one the installed
daemon's founding peer wrote (`management_token`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from nanomesh.cli import lab
from nanomesh.config import DEFAULT_API_PORT, default_lab_dir, host_port, parse_address
from nanomesh.labstate import default_peer_api
from nanomesh.security.auth import TOKEN_FILE, read_token_file

INSTALLED_TOKEN = Path("/var/lib/nanomesh") / TOKEN_FILE
"""Where the founding peer of a device installed with ``peers/install.sh``
(whose unit runs ``--data-dir /var/lib/nanomesh``) writes the token: the CLI
run as root on that device finds it without flags, as ``consul`` finds its
agent's ACL token file."""

PEER_HELP = ("peer API to ask, IP[:PORT] (default: $NANOMESH_PEER, else the first peer "
             "of a running lab, else 127.0.0.1:7947)")


def add_token_args(cmd: argparse.ArgumentParser) -> None:
    """Add ``--peer``, ``--token`` and ``--token-file`` (a command that writes)."""
    cmd.add_argument("--peer", metavar="IP[:PORT]", help=PEER_HELP)
    cmd.add_argument("--token", help="management token (default: $NANOMESH_TOKEN, "
                     "--token-file, else the running lab's token, else "
                     f"{INSTALLED_TOKEN} where it is readable)")
    cmd.add_argument("--token-file", type=Path, metavar="FILE",
                     help="file holding the management token (the bootstrapping peer "
                     "writes DATA_DIR/management.token)")


def management_token(args: argparse.Namespace) -> str | None:
    """The management token from --token, $NANOMESH_TOKEN, --token-file or the
    running lab (commands without the flags use the last two)."""
    if getattr(args, "token", None):
        return str(args.token)
    if os.environ.get("NANOMESH_TOKEN"):
        return os.environ["NANOMESH_TOKEN"]
    if getattr(args, "token_file", None):
        return read_token_file(args.token_file)
    lab_token = default_lab_dir() / lab.FOUNDER / TOKEN_FILE
    if lab.load_state(default_lab_dir()) and lab_token.exists():
        return read_token_file(lab_token)
    if os.access(INSTALLED_TOKEN, os.R_OK):
        return read_token_file(INSTALLED_TOKEN)
    return None


def peer_api(text: str | None) -> str:
    """``HOST:PORT`` of the peer API named by ``--peer`` (``text``), else
    `nanomesh.labstate.default_peer_api` (the SDK's default too)."""
    host, port = parse_address(text or default_peer_api(), DEFAULT_API_PORT, "--peer")
    return host_port(host, port)


def print_table(rows: Sequence[Sequence[str]]) -> None:
    """Print ``rows`` (the header first) in left-aligned columns."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
