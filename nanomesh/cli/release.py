"""``nanomesh release build`` and ``nanomesh version``.

The release build is a command of the CLI (not a separate script) because the
machine that builds a release already runs ``nanomesh`` from the checkout, and
the bundle's manifest needs what the package itself knows (its version, the
wire protocol range); the work is in `nanomesh.cli.release_bundle`.

    nanomesh release build -o dist/                 # x86_64, aarch64, armv7l; Python 3.11
    nanomesh release build --platform native -o dist/   # this machine only (tests, a lab)

Then copy ``dist/nanomesh-VERSION-bundle.tar``, its ``.sha256`` and
``dist/install.sh`` to each device and run ``sudo ./install.sh --bundle
nanomesh-VERSION-bundle.tar --join IP --key-file cluster.key``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

from nanomesh import __version__
from nanomesh.cli.release_bundle import (
    DEFAULT_PLATFORMS,
    DEFAULT_PYTHON,
    PLATFORMS,
    build_bundle,
    default_source,
    protocol_info,
)


def register(subparsers: Any) -> None:
    """Add ``release build`` and ``version`` to the top-level ``subparsers``."""
    release = subparsers.add_parser(
        "release", help="build the release bundle to install on devices offline",
        description=__doc__.replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).add_subparsers(metavar="ACTION")
    build = release.add_parser(
        "build", help="build nanomesh-VERSION-bundle.tar (wheel, wheelhouse, installer, "
                      "unit, configs, manifest) and its .sha256")
    build.add_argument("-o", "--output", type=Path, default=Path("dist"), metavar="DIST",
                       help="directory to write the bundle into (default: dist)")
    build.add_argument("--platform", action="append", metavar="NAME",
                       choices=[*PLATFORMS, "native"],
                       help=f"a target platform, repeatable: {', '.join(PLATFORMS)}, or "
                            "native (this machine and its Python only); default: "
                            f"{' '.join(DEFAULT_PLATFORMS)}")
    build.add_argument("--python-version", default=DEFAULT_PYTHON, metavar="X.Y",
                       help=f"the devices' Python (default {DEFAULT_PYTHON}: Debian 12, "
                            "Raspberry Pi OS bookworm)")
    build.add_argument("--source", type=Path, metavar="DIR",
                       help="the nanomesh checkout to build (default: the one this "
                            "nanomesh runs from)")
    build.add_argument("--find-links", type=Path, action="append", default=[], metavar="DIR",
                       help="also look for wheels in DIR (passed to pip), repeatable")
    build.add_argument("--set-version", metavar="X.Y.Z",
                       help="build it as this version instead of the checkout's (a rehearsal "
                            "of `nanomesh upgrade`)")
    build.add_argument("--no-index", action="store_true",
                       help="use only --find-links, no package index (passed to pip)")
    build.set_defaults(func=build_command)

    version = subparsers.add_parser(
        "version", help="this nanomesh's version and the protocol versions it speaks")
    version.add_argument("--json", action="store_true", help="print JSON")
    version.set_defaults(func=version_command)


def build_command(args: argparse.Namespace) -> int:
    build_bundle(source=args.source or default_source(), out_dir=args.output,
                 platforms=args.platform or DEFAULT_PLATFORMS, python=args.python_version,
                 find_links=args.find_links, no_index=args.no_index,
                 log=lambda line: print(line, file=sys.stderr), set_version=args.set_version)
    return 0


def version_info() -> dict[str, Any]:
    from nanomesh.versions import THIS
    return {"version": __version__, "protocol": protocol_info(),
            "protocols": THIS.protocols_json(),
            "python": platform.python_version(), "machine": platform.machine()}


def version_command(args: argparse.Namespace) -> int:
    info = version_info()
    if args.json:
        print(json.dumps(info))
        return 0
    protocol = info["protocol"]
    print(f"nanomesh {info['version']}")
    print(f"wire protocol {protocol['speaks']} (accepts {protocol['accepts_min']} to "
          f"{protocol['accepts_max']} from peers)")
    ranges = ", ".join(f"{name} {low}..{high}" for name, (low, high) in info["protocols"].items())
    print(f"protocol ranges {ranges} (gossiped; peers must overlap in each)")
    print(f"python {info['python']} on {info['machine']}")
    return 0
