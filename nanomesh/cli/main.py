"""The `nanomesh` command: the top-level parser, built from the command
groups, and the dispatch with its exit codes (0 success, 1 a `NanomeshError`
printed as ``nanomesh: error: ...``, 2 usage, 130 Ctrl-C)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from nanomesh import __version__
from nanomesh.cli import keys, local, mesh, monitor, peer, registry, release, runtime, upgrade
from nanomesh.errors import NanomeshError
from nanomesh.transport.apiclient import ApiError

DESCRIPTION = """\
nanomesh: a peer-to-peer service mesh for local edge/IoT clusters.

Every device runs the same peer daemon (`nanomesh peer run`). Peers discover
their own capabilities, find each other by gossip (SWIM + Lifeguard), and
share their capability profiles. Try a local mesh: `nanomesh lab up -n 3`.
"""

COMMAND_GROUPS: tuple[Callable[[Any], None], ...] = (
    peer.register, mesh.register_views, runtime.register, registry.register, keys.register,
    mesh.register_state, monitor.register, keys.register_keygen, local.register_lab,
    local.register_demo, local.register_experiment, release.register, upgrade.register)
"""Each adds its commands to the top-level subparsers, in the order
``nanomesh --help`` lists them: the daemon, what a peer sees, the services,
then the control plane and its events, the keys, the local meshes and the release."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        result: int = args.func(args)
        return result
    except ApiError as exc:
        print(f"nanomesh: error: {exc.operator_message()}", file=sys.stderr)
        return 1
    except NanomeshError as exc:
        print(f"nanomesh: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; each sets ``func`` (args -> exit status)."""
    parser = argparse.ArgumentParser(prog="nanomesh", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"nanomesh {__version__}")
    subparsers = parser.add_subparsers(metavar="COMMAND")
    for register in COMMAND_GROUPS:
        register(subparsers)
    return parser
