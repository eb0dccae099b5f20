"""What a peer knows about the mesh: ``members`` and ``profile`` (gossip),
``services``, ``placement`` and ``status`` (the Raft-replicated desired state
and plan). Each is one read of a peer's HTTP API, printed as a table, or as
JSON with ``--json``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from nanomesh.cli.common import PEER_HELP, add_token_args, management_token, peer_api, print_table
from nanomesh.disk import summary
from nanomesh.security.auth import REDACTED_KEY, TOKEN_SOURCES
from nanomesh.transport.apiclient import get_json


def register_views(subparsers: Any) -> None:
    """Add ``members`` and ``profile`` to the top-level ``subparsers``."""
    members = subparsers.add_parser("members", help="list the mesh as a peer sees it")
    members.add_argument("--peer", metavar="IP[:PORT]", help=PEER_HELP)
    members.add_argument("--json", action="store_true", help="print the JSON array")
    members.set_defaults(func=_members)

    profile = subparsers.add_parser("profile", help="show a peer's capability profile")
    profile.add_argument("--peer", metavar="IP[:PORT]", help=PEER_HELP)
    profile.add_argument("--json", action="store_true", help="print JSON")
    profile.set_defaults(func=_profile)


def register_state(subparsers: Any) -> None:
    """Add ``services``, ``placement`` and ``status`` to the top-level ``subparsers``."""
    services = subparsers.add_parser(
        "services", help="list the desired services",
        description="List the desired services. With the management token (found as for "
        "deploy) --json shows them in full; without it, saved state and the values of "
        "run.env are withheld.")
    services.add_argument("--json", action="store_true", help="print JSON")
    add_token_args(services)
    services.set_defaults(func=_services)
    for name, func, text in (
            ("placement", _placement, "which instance runs on which peer, and what waits"),
            ("status", _status, "Raft leader, term, voters and plan epoch")):
        cmd = subparsers.add_parser(name, help=text)
        cmd.add_argument("--peer", metavar="IP[:PORT]", help=PEER_HELP)
        cmd.add_argument("--json", action="store_true", help="print JSON")
        cmd.set_defaults(func=func)


# ------------------------------------------------------------------ members / profile


def _members(args: argparse.Namespace) -> int:
    members = get_json(peer_api(args.peer), "/v1/members")
    if args.json:
        print(json.dumps(members, indent=2, sort_keys=True))
        return 0

    rows: list[tuple[str, ...]] = [
        ("NAME", "ADDRESS", "STATE", "INC", "VERSION", "HEALTH", "CPU", "MEM MB (free/total)",
         "POWER", "DEVICES")]
    rows += [(m["name"], m["address"], m["state"], str(m["incarnation"]), version_cell(m),
              summary(problems(m.get("profile"))), *_profile_summary(m.get("profile")))
             for m in members]
    print_table(rows)
    for m in members:
        for problem in problems(m.get("profile")):
            print(f"{m['name']}: {problem}")
        for why in m.get("incompatible") or ():
            print(f"{m['name']}: incompatible: {why}")
    return 0


def version_cell(member: dict[str, Any]) -> str:
    """A member's nanomesh version, ``!`` appended when the peer that
    answered finds it incompatible (the reasons are printed below the table).
    ``?`` before its profile arrives; read from the profile when an older
    peer answered (it has no ``nanomesh`` field)."""
    peer = (member.get("profile") or {}).get("peer")
    version = member.get("nanomesh") or (peer.get("nanomesh") if isinstance(peer, dict)
                                         else None) or "?"
    return f"{version}!" if member.get("incompatible") else str(version)


def problems(profile: dict[str, Any] | None) -> list[str]:
    """A peer's gossiped data disk problems (`nanomesh.disk`)."""
    found = (profile or {}).get("degraded")
    return [str(p) for p in found] if isinstance(found, list) else []


def _profile_summary(p: dict[str, Any] | None) -> tuple[str, str, str, str]:
    if not p:
        return ("-", "-", "-", "(profile not yet pulled)")
    cpu, mem, power = p.get("cpu", {}), p.get("memory", {}), p.get("power", {})
    cores = f"{cpu.get('cores', '?')}x{cpu.get('arch', '?')}"
    memory = f"{mem.get('available_mb', '?')}/{mem.get('total_mb', '?')}"
    source = power.get("source", "?")
    if power.get("battery_percent") is not None:
        source += f" {power['battery_percent']:.0f}%"
    devices = ",".join(f"{d.get('type')}" for d in p.get("devices", [])) or "-"
    return (cores, memory, source, devices)


def _profile(args: argparse.Namespace) -> int:
    me = get_json(peer_api(args.peer), "/v1/self")
    if args.json:
        print(json.dumps(me["profile"], indent=2, sort_keys=True))
        return 0
    print(f"{me['name']} at {me['address']} (incarnation {me['incarnation']}, "
          f"profile version {me['profile_version']})")
    _print_nested(me["profile"] or {}, indent=2)
    return 0


def _print_nested(value: Any, indent: int) -> None:
    pad = " " * indent
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, dict | list) and v:
                print(f"{pad}{k}:")
                _print_nested(v, indent + 2)
            else:
                print(f"{pad}{k}: {json.dumps(v) if not isinstance(v, str) else v}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                print(f"{pad}- " + ", ".join(f"{k}={v}" for k, v in item.items()))
            else:
                print(f"{pad}- {item}")


# ------------------------------------------------------------------ desired state


def _services(args: argparse.Namespace) -> int:
    token = management_token(args)
    docs = get_json(peer_api(args.peer), "/v1/services", token=token)
    note_redacted(docs, token)
    deployments = get_json(peer_api(args.peer), "/v1/deployments")
    if args.json:
        print(json.dumps(docs, indent=2, sort_keys=True))
        return 0
    rows: list[tuple[str, ...]] = [("NAME", "VERSION", "KIND", "MODE", "REPLICAS", "REQUIRES",
                                    "DEPLOYMENT", "RUNS")]
    notes = []
    for d in docs:
        req = d["spec"]["requires"]
        needs = ",".join(req.get("capabilities", [])) or "-"
        container = d.get("container") or {}
        runs = " ".join(d["run"]["command"]) or container.get("image") or "(image default)"
        dep = deployments.get(d["name"]) or {}
        rows.append((d["name"], d.get("version") or "-", d.get("kind", "process"),
                     d.get("mode", "active"), str(d["spec"]["replicas"]), needs,
                     dep.get("status", "-"), " ".join(runs.split())[:40]))
        if dep.get("status") in ("failed", "reverted"):
            undone = f" (version {dep['reverted_from']} undone)" if dep.get("reverted_from") \
                else ""
            notes.append(f"{d['name']}: deployment {dep.get('id')} {dep['status']}{undone}: "
                         f"{dep.get('reason', '')}")
    print_table(rows)
    for note in notes:
        print(note)
    return 0


def note_redacted(docs: Sequence[Any], token: str | None) -> None:
    """Tell the operator (on stderr) when the peer withheld secrets, and why."""
    if not any(isinstance(d, dict) and d.get(REDACTED_KEY) for d in docs):
        return
    why = ("the management token given was not accepted by this mesh" if token
           else f"no management token given ({TOKEN_SOURCES})")
    print(f"note: saved state and environment values are withheld: {why}", file=sys.stderr)


def _placement(args: argparse.Namespace) -> int:
    p = get_json(peer_api(args.peer), "/v1/placement")
    if args.json:
        print(json.dumps(p, indent=2, sort_keys=True))
        return 0
    print(f"plan epoch {p['epoch']} ({p['strategy'] or 'no plan yet'})")
    rows: list[tuple[str, ...]] = [("INSTANCE", "PEER", "STATE", "HEALTH")]
    rows += [(i["instance"], i["peer"], i["state"], i.get("health", "-"))
             for i in p["instances"]]
    print_table(rows)
    for svc, dep in sorted(p.get("deployments", {}).items()):
        if dep.get("status") != "successful":
            reason = f": {dep['reason']}" if dep.get("reason") else ""
            print(f"{svc}: deployment {dep.get('id')} {dep.get('status')}{reason}")
    for svc, reasons in sorted(p["unplaceable"].items()):
        print(f"\n{svc} cannot be placed (it will be as soon as a suitable peer appears):")
        for peer, why in sorted(reasons.items()):
            print(f"  {peer}: {why}")
    return 0


def _status(args: argparse.Namespace) -> int:
    st = get_json(peer_api(args.peer), "/v1/status")
    if args.json:
        print(json.dumps(st, indent=2, sort_keys=True))
        return 0
    print(f"leader   {leader_line(st)}\nterm     {st['term']}\n"
          f"voters   {', '.join(st['voters']) or '(unknown)'}\nepoch    {st['epoch']}\n"
          f"revision {st['revision']}\nthis peer {st['peer']} ({st['role']})")
    return 0


NO_QUORUM_HINT_AFTER = 30.0
"""Seconds without a leader after which `nanomesh status` points at
`nanomesh peer recover` (elections take well under a second)."""


def leader_line(st: dict[str, Any], now: float | None = None) -> str:
    """The leader, or "none since T" with the last leader this peer heard."""
    if st.get("leader"):
        return str(st["leader"])
    since = st.get("no_leader_since")
    if not isinstance(since, int | float):
        return "none"
    now = time.time() if now is None else now
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since))
    line = f"none since {when} ({max(0.0, now - since):.0f} s"
    line += f"; last {st['last_leader']})" if st.get("last_leader") else ")"
    if now - since >= NO_QUORUM_HINT_AFTER:
        line += ("\n         a majority of the voters may be lost for good: once they are "
                 "gone, see `nanomesh peer recover --help`")
    return line
