"""The `nanomesh` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nanomesh import __version__
from nanomesh.errors import ConfigError, NanomeshError
from nanomesh.gossip.config import PRESETS

DESCRIPTION = """\
nanomesh: a peer-to-peer service mesh for local edge/IoT clusters.

Every device runs the same peer daemon (`nanomesh peer run`). Peers discover
their own capabilities, find each other by gossip (SWIM + Lifeguard), and
share their capability profiles. Try a local mesh: `nanomesh lab up -n 3`.
"""

PEER_HELP = ("peer API to ask, IP[:PORT] (default: $NANOMESH_PEER, else the first peer "
             "of a running lab, else 127.0.0.1:7947)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        result: int = args.func(args)
        return result
    except NanomeshError as exc:
        print(f"nanomesh: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nanomesh", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"nanomesh {__version__}")
    sub = p.add_subparsers(metavar="COMMAND")

    peer = sub.add_parser("peer", help="run the peer daemon").add_subparsers(metavar="ACTION")
    run = peer.add_parser("run", help="run a peer in the foreground (logs to stderr)",
                          description="Run a peer in the foreground. Logs go to stderr; "
                          "SIGINT/SIGTERM leave the mesh gracefully and exit.")
    run.add_argument("--name", help="peer name, unique in the mesh (default: host name)")
    run.add_argument("--bind", metavar="IP[:PORT]",
                     help="gossip address, UDP and TCP (default 127.0.0.1:7946)")
    run.add_argument("--join", metavar="IP[:PORT]", action="append",
                     help="seed peer to join through; repeatable. Retried until one answers")
    run.add_argument("--data-dir", type=Path, metavar="DIR",
                     help="state directory (default /var/lib/nanomesh/NAME as root, "
                     "else ~/.local/share/nanomesh/NAME)")
    run.add_argument("--config", type=Path, metavar="FILE",
                     help="peer config TOML (see peers/*.toml); flags override it")
    run.add_argument("--key-file", type=Path, metavar="FILE",
                     help="cluster keyring: base64 keys, one per line, primary first "
                     "(nanomesh keygen). Required to --join; the first peer without one "
                     "generates DATA_DIR/cluster.key, to copy to the other devices")
    run.add_argument("--api-port", type=int, metavar="PORT", help="HTTP API port (default 7947)")
    run.add_argument("--coap-port", type=int, metavar="PORT",
                     help="CoAP gateway port, UDP (default 5683; 0: no gateway)")
    run.add_argument("--container-engine", choices=["auto", "runc", "podman", "docker"],
                     help="engine for container services (default auto: runc for a rootfs, "
                     "podman then docker for an image, whichever really works here)")
    run.add_argument("--gossip-preset", choices=list(PRESETS),
                     help="timing preset (default lan; see nanomesh/gossip/config.py)")
    run.add_argument("--log-level", default=os.environ.get("NANOMESH_LOG_LEVEL", "INFO"),
                     choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    run.set_defaults(func=_peer_run)
    recover = peer.add_parser(
        "recover", help="rebuild the control plane from this stopped peer when a majority "
        "of the Raft voters is lost for good",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Operator recovery, like Consul's peers.json or etcd's "
        "--force-new-cluster. Run it on a STOPPED peer that was a voter: without --yes it "
        "only reports what that peer's journal holds (run it on every survivor and pick the "
        "highest commit index); with --yes it asks the peer to become, at its next start, "
        "the only voter of a new control plane that keeps its committed state (services, "
        "their saved state, plan, registry, management token). The other peers rejoin and "
        "are promoted again by themselves.",
        epilog="steps: systemctl stop nanomesh; nanomesh peer recover --data-dir DIR; "
        "nanomesh peer recover --data-dir DIR --yes; systemctl start nanomesh")
    recover.add_argument("--data-dir", type=Path, metavar="DIR", required=True,
                         help="the stopped peer's data directory (as given to `peer run`)")
    recover.add_argument("--yes", action="store_true",
                         help="really request the recovery (default: only report)")
    recover.set_defaults(func=_peer_recover)

    members = sub.add_parser("members", help="list the mesh as a peer sees it")
    members.add_argument("--peer", metavar="IP[:PORT]", help=PEER_HELP)
    members.add_argument("--json", action="store_true", help="print the JSON array")
    members.set_defaults(func=_members)

    profile = sub.add_parser("profile", help="show a peer's capability profile")
    profile.add_argument("--peer", metavar="IP[:PORT]", help=PEER_HELP)
    profile.add_argument("--json", action="store_true", help="print JSON")
    profile.set_defaults(func=_profile)

    from nanomesh.cli_bundles import add_registry_commands
    from nanomesh.cli_keys import add_key_commands
    from nanomesh.cli_runtime import add_runtime_commands
    add_runtime_commands(sub, PEER_HELP, _token_args)
    add_registry_commands(sub)
    add_key_commands(sub, PEER_HELP, _token_args)

    services = sub.add_parser(
        "services", help="list the desired services",
        description="List the desired services. With the management token (found as for "
        "deploy) --json shows them in full; without it, saved state and the values of "
        "run.env are withheld.")
    services.add_argument("--json", action="store_true", help="print JSON")
    _token_args(services)
    services.set_defaults(func=_services)
    for name, func, text in (
            ("placement", _placement, "which instance runs on which peer, and what waits"),
            ("status", _status, "Raft leader, term, voters and plan epoch")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--peer", metavar="IP[:PORT]", help=PEER_HELP)
        cmd.add_argument("--json", action="store_true", help="print JSON")
        cmd.set_defaults(func=func)

    keygen = sub.add_parser("keygen", help="print a new random cluster key (base64)")
    keygen.set_defaults(func=lambda _: print(_generate_key()) or 0)

    lab = sub.add_parser("lab", help="a local mesh of peer processes on loopback addresses"
                         ).add_subparsers(metavar="ACTION")
    lab_up = lab.add_parser("up", help="start N peers on 127.0.0.2.. joined into one mesh")
    lab_up.add_argument("-n", type=int, default=3, help="number of peers (default 3)")
    lab_up.add_argument("--dir", type=Path, help="lab directory (default $NANOMESH_LAB_DIR, "
                        "else ~/.local/state/nanomesh/lab)")
    lab_up.add_argument("--preset", default="local", choices=list(PRESETS),
                        help="gossip timing preset (default local)")
    lab_up.set_defaults(func=_lab_up)
    for action, func, text in (("status", _lab_status, "show the lab's peers"),
                               ("down", _lab_down, "stop every lab peer (graceful leave)")):
        cmd = lab.add_parser(action, help=text)
        cmd.add_argument("--dir", type=Path, help="lab directory")
        cmd.set_defaults(func=func)

    demo = sub.add_parser("demo", help="guided demonstrations on a local mesh"
                          ).add_subparsers(metavar="DEMO")
    failover = demo.add_parser(
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
    return p


def _token_args(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--peer", metavar="IP[:PORT]", help=PEER_HELP)
    cmd.add_argument("--token", help="management token (default: $NANOMESH_TOKEN, "
                     "--token-file, else the running lab's token)")
    cmd.add_argument("--token-file", type=Path, metavar="FILE",
                     help="file holding the management token (the bootstrapping peer "
                     "writes DATA_DIR/management.token)")


def _token(args: argparse.Namespace) -> str | None:
    """The management token from --token, $NANOMESH_TOKEN, --token-file or the
    running lab (commands without the flags use the last two)."""
    from nanomesh import lab
    from nanomesh.auth import TOKEN_FILE, read_token_file

    if getattr(args, "token", None):
        return str(args.token)
    if os.environ.get("NANOMESH_TOKEN"):
        return os.environ["NANOMESH_TOKEN"]
    if getattr(args, "token_file", None):
        return read_token_file(args.token_file)
    lab_token = lab.default_dir() / lab.FOUNDER / TOKEN_FILE
    return read_token_file(lab_token) if lab_token.exists() else None


def _generate_key() -> str:
    from nanomesh.wire import generate_key
    return generate_key()


# ------------------------------------------------------------------ peer run


def _peer_run(args: argparse.Namespace) -> int:
    import trio

    from nanomesh.config import build_config
    from nanomesh.consensus.recovery import hold_lock
    from nanomesh.daemon.assemble import PeerAssembly
    from nanomesh.daemon.profile import ProfileSource
    from nanomesh.keys import resolve_keyring

    config = build_config(config_file=args.config, name=args.name, bind=args.bind,
                          join=args.join, data_dir=args.data_dir, key_file=args.key_file,
                          api_port=args.api_port, gossip_preset=args.gossip_preset,
                          coap_port=args.coap_port, container_engine=args.container_engine)
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr,
        format=f"%(asctime)s {config.name} %(levelname)s %(name)s: %(message)s")
    # One daemon per data directory: say so in one line, before anything
    # starts (the role manager takes the same lock for good later).
    with hold_lock(config.data_dir / "consensus"):
        pass
    keyring, key_path = resolve_keyring(config)
    daemon = PeerAssembly(config, keyring, ProfileSource(config), key_path=key_path)
    try:
        trio.run(daemon.run)
    except OSError as exc:
        raise ConfigError(f"cannot start peer on {config.bind[0]}: {exc.strerror or exc}"
                          ) from None
    return 0


def _peer_recover(args: argparse.Namespace) -> int:
    from nanomesh.auth import TOKEN_META_KEY
    from nanomesh.consensus import recovery

    consensus_dir = Path(args.data_dir) / "consensus"
    with recovery.hold_lock(consensus_dir):  # refuses while the peer runs
        found = recovery.inspect(consensus_dir)
    st, status = found.state, found.status
    print(f"peer data   {args.data_dir}\nrole        {found.role} (generation "
          f"{found.generation})\nterm        {status.term}\ncommit      "
          f"{status.commit_index}\nrevision    {st.revision}\nplan epoch  "
          f"{st.plan_epoch}\nservices    {', '.join(sorted(st.services)) or '(none)'}\n"
          f"registry    {len(st.registry)} entries\ntoken hash  "
          f"{'yes' if TOKEN_META_KEY in st.meta else 'no'}\n")
    print(recovery.WARNING)
    if not args.yes:
        print("\nnothing changed; re-run with --yes to request the recovery")
        return 0
    recovery.request(consensus_dir, found.generation, time.time())
    print(f"\nrecovery requested ({consensus_dir / recovery.RECOVER_FILE}): start the "
          "peer; it becomes the only voter and the others follow it")
    return 0


# ------------------------------------------------------------------ queries


def _default_peer() -> str:
    from nanomesh import lab
    from nanomesh.config import DEFAULT_API_PORT

    env = os.environ.get("NANOMESH_PEER")
    if env:
        return env
    for p in lab.load_state(lab.default_dir()):
        if lab.alive(p.pid):
            return p.api
    return f"127.0.0.1:{DEFAULT_API_PORT}"


def _peer_api(text: str | None) -> str:
    from nanomesh.config import DEFAULT_API_PORT, host_port, parse_address

    host, port = parse_address(text or _default_peer(), DEFAULT_API_PORT, "--peer")
    return host_port(host, port)


def _members(args: argparse.Namespace) -> int:
    from nanomesh.apiclient import get_json

    members = get_json(_peer_api(args.peer), "/v1/members")
    if args.json:
        print(json.dumps(members, indent=2, sort_keys=True))
        return 0
    from nanomesh.disk import summary

    rows: list[tuple[str, ...]] = [
        ("NAME", "ADDRESS", "STATE", "INC", "HEALTH", "CPU", "MEM MB (free/total)", "POWER",
         "DEVICES")]
    rows += [(m["name"], m["address"], m["state"], str(m["incarnation"]),
              summary(_problems(m.get("profile"))), *_profile_summary(m.get("profile")))
             for m in members]
    _print_table(rows)
    for m in members:
        for problem in _problems(m.get("profile")):
            print(f"{m['name']}: {problem}")
    return 0


def _problems(profile: dict[str, Any] | None) -> list[str]:
    """A peer's gossiped data disk problems (`nanomesh.disk`)."""
    problems = (profile or {}).get("degraded")
    return [str(p) for p in problems] if isinstance(problems, list) else []


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


def _print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _profile(args: argparse.Namespace) -> int:
    from nanomesh.apiclient import get_json

    me = get_json(_peer_api(args.peer), "/v1/self")
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
    from nanomesh.apiclient import get_json

    token = _token(args)
    docs = get_json(_peer_api(args.peer), "/v1/services", token=token)
    note_redacted(docs, token)
    deployments = get_json(_peer_api(args.peer), "/v1/deployments")
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
    _print_table(rows)
    for note in notes:
        print(note)
    return 0


def note_redacted(docs: Sequence[Any], token: str | None) -> None:
    """Tell the operator (on stderr) when the peer withheld secrets, and why."""
    from nanomesh.auth import REDACTED_KEY, TOKEN_SOURCES

    if not any(isinstance(d, dict) and d.get(REDACTED_KEY) for d in docs):
        return
    why = ("the management token given was not accepted by this mesh" if token
           else f"no management token given ({TOKEN_SOURCES})")
    print(f"note: saved state and environment values are withheld: {why}", file=sys.stderr)


def _placement(args: argparse.Namespace) -> int:
    from nanomesh.apiclient import get_json

    p = get_json(_peer_api(args.peer), "/v1/placement")
    if args.json:
        print(json.dumps(p, indent=2, sort_keys=True))
        return 0
    print(f"plan epoch {p['epoch']} ({p['strategy'] or 'no plan yet'})")
    rows: list[tuple[str, ...]] = [("INSTANCE", "PEER", "STATE", "HEALTH")]
    rows += [(i["instance"], i["peer"], i["state"], i.get("health", "-"))
             for i in p["instances"]]
    _print_table(rows)
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
    from nanomesh.apiclient import get_json

    st = get_json(_peer_api(args.peer), "/v1/status")
    if args.json:
        print(json.dumps(st, indent=2, sort_keys=True))
        return 0
    print(f"leader   {_leader_line(st)}\nterm     {st['term']}\n"
          f"voters   {', '.join(st['voters']) or '(unknown)'}\nepoch    {st['epoch']}\n"
          f"revision {st['revision']}\nthis peer {st['peer']} ({st['role']})")
    return 0


NO_QUORUM_HINT_AFTER = 30.0
"""Seconds without a leader after which `nanomesh status` points at
`nanomesh peer recover` (elections take well under a second)."""


def _leader_line(st: dict[str, Any], now: float | None = None) -> str:
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


# ------------------------------------------------------------------ lab


def _lab_dir(args: argparse.Namespace) -> Path:
    from nanomesh import lab
    return Path(args.dir) if args.dir else lab.default_dir()


def _lab_up(args: argparse.Namespace) -> int:
    from nanomesh import lab

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
    from nanomesh import lab

    rows = lab.status(_lab_dir(args))
    if not rows:
        print(f"no lab in {_lab_dir(args)}")
        return 1
    table: list[tuple[str, ...]] = [("NAME", "PID", "PROCESS", "API", "MEMBERS")]
    for r in rows:
        seen = ", ".join(f"{n} {s}" for s, n in r["members"].items()) if r["members"] else (
            r.get("error", "-"))
        table.append((r["name"], str(r["pid"]), r["process"], r["api"], seen))
    _print_table(table)
    return 0


def _lab_down(args: argparse.Namespace) -> int:
    from nanomesh import lab

    stopped = lab.down(_lab_dir(args))
    print(f"stopped {stopped} peers")
    return 0


# ------------------------------------------------------------------ demo


def _demo_failover(args: argparse.Namespace) -> int:
    from nanomesh import demo

    return demo.failover(args.n, args.dir, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
