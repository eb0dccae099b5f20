"""``nanomesh lab`` and ``nanomesh demo``: meshes of real peer processes on
this machine, for trying nanomesh out (`nanomesh.cli.lab`) and for watching
it survive the loss of its leader (`nanomesh.cli.demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from nanomesh.cli import demo, lab
from nanomesh.cli.common import print_table
from nanomesh.config import default_lab_dir
from nanomesh.gossip.config import PRESETS


def register_lab(subparsers: Any) -> None:
    """Add ``lab up``, ``lab status`` and ``lab down`` to the top-level ``subparsers``."""
    actions = subparsers.add_parser(
        "lab", help="a local mesh of peer processes on loopback addresses"
    ).add_subparsers(metavar="ACTION")
    lab_up = actions.add_parser("up", help="start N peers on 127.0.0.2.. joined into one mesh")
    lab_up.add_argument("-n", type=int, default=3, help="number of peers (default 3)")
    lab_up.add_argument("--dir", type=Path, help="lab directory (default $NANOMESH_LAB_DIR, "
                        "else ~/.local/state/nanomesh/lab)")
    lab_up.add_argument("--preset", default="local", choices=list(PRESETS),
                        help="gossip timing preset (default local)")
    lab_up.set_defaults(func=_lab_up)
    for action, func, text in (("status", _lab_status, "show the lab's peers"),
                               ("down", _lab_down, "stop every lab peer (graceful leave)")):
        cmd = actions.add_parser(action, help=text)
        cmd.add_argument("--dir", type=Path, help="lab directory")
        cmd.set_defaults(func=func)


def register_demo(subparsers: Any) -> None:
    """Add ``demo failover`` to the top-level ``subparsers``."""
    demos = subparsers.add_parser("demo", help="guided demonstrations on a local mesh"
                                  ).add_subparsers(metavar="DEMO")
    failover = demos.add_parser(
        "failover", help="kill the Raft leader of a local mesh and watch it recover",
        description="Start a local mesh (like `nanomesh lab up`, on the same addresses "
        "127.0.0.2.. but in its own directory), deploy three small services, SIGKILL the "
        "peer that leads Raft and narrate, with the seconds since the kill: failure "
        "detected, new leader, the dead peer's instances rescheduled, mesh healthy again. "
        "Then check that writes work, and stop every peer (also on Ctrl-C). Refuses to run "
        "while a lab or another demo uses those addresses.")
    failover.add_argument("-n", type=int, default=5, metavar="N",
                          help="number of peers (default 5, minimum 3: the leader is a Raft "
                          "voter, and electing its successor needs a majority of the voters "
                          "to survive it: 2 of 3 do, while with 2 peers the survivor alone "
                          "is no majority of 2)")
    failover.add_argument("--dir", type=Path,
                          help="demo directory (default ~/.local/state/nanomesh/demo, never "
                          "the lab's); replaced at each run and removed at the end")
    failover.add_argument("--keep", action="store_true",
                          help="keep the demo directory (manifests, peer and instance logs) "
                          "afterwards; the peers are stopped regardless")
    failover.set_defaults(func=_demo_failover)


# ------------------------------------------------------------------ lab


def _lab_dir(args: argparse.Namespace) -> Path:
    return Path(args.dir) if args.dir else default_lab_dir()


def _lab_up(args: argparse.Namespace) -> int:
    lab_dir = _lab_dir(args)
    peers = lab.up(args.n, lab_dir, preset=args.preset)
    print(f"mesh of {len(peers)} peers is up:")
    for p in peers:
        print(f"  {p.name}  gossip {p.ip}:{p.gossip_port}  api http://{p.api}  pid {p.pid}  "
              f"log {p.log}")
    print("\ntry:\n  nanomesh members\n  nanomesh profile --peer " + peers[-1].api +
          f"\n  curl http://{peers[0].api}/v1/health\n"
          "  nanomesh deploy services/echo      (the token is wired for the lab)\n"
          f"  nanomesh call echo whoami --peer {peers[-1].api}\n"
          "  nanomesh placement\n  nanomesh lab status\n  nanomesh lab down")
    return 0


def _lab_status(args: argparse.Namespace) -> int:
    rows = lab.status(_lab_dir(args))
    if not rows:
        print(f"no lab in {_lab_dir(args)}")
        return 1
    table: list[tuple[str, ...]] = [("NAME", "PID", "PROCESS", "API", "MEMBERS")]
    for r in rows:
        seen = ", ".join(f"{n} {s}" for s, n in r["members"].items()) if r["members"] else (
            r.get("error", "-"))
        table.append((r["name"], str(r["pid"]), r["process"], r["api"], seen))
    print_table(table)
    return 0


def _lab_down(args: argparse.Namespace) -> int:
    stopped = lab.down(_lab_dir(args))
    print(f"stopped {stopped} peers")
    return 0


# ------------------------------------------------------------------ demo


def _demo_failover(args: argparse.Namespace) -> int:
    return demo.failover(args.n, args.dir, keep=args.keep)
