"""``nanomesh upgrade BUNDLE``: a rolling upgrade of the whole mesh to a release
bundle (``nanomesh release build``), through the mesh itself.

    nanomesh upgrade dist/nanomesh-0.2.0-bundle.tar --peer 10.0.0.5 --token-file T

1. The bundle goes into the mesh's bundle store (``PUT /v1/bundles/{sha}`` on
   ``--peer``): every peer then fetches it from a holder and checks its sha256,
   with no internet.
2. Every peer installs it at once, beside its running version, switching
   nothing (``POST /v1/upgrade`` with ``prepare_only``): a peer that cannot
   stops the run before anything restarted.
3. Peers are upgraded one at a time, the Raft leader last
   (`nanomesh.cli.upgrade_core` decides; this module carries it out): ``POST
   /v1/upgrade`` on the peer (it installs the version beside the running one,
   switches and restarts: `nanomesh.daemon.upgrade`), then wait until it is
   back healthy on the new version, as another peer's gossip and its own API
   show, then ``POST /v1/upgrade/confirm``.
4. The first failure stops the run; the peers not reached keep their version.
   A peer that does not come back healthy in ``--rejoin-timeout`` is rolled back
   to its previous version (``POST /v1/upgrade/rollback``, or its launcher
   does it if it cannot start), and the upgrader waits for that too.

Every peer needs an install root (install.sh sets ``--install-root
/opt/nanomesh``); a peer without one refuses, and the run stops there.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from nanomesh.cli.common import add_token_args, management_token, peer_api
from nanomesh.cli.release_bundle import read_manifest, sha256_file
from nanomesh.cli.upgrade_core import (
    REJOIN_TIMEOUT,
    ROLLBACK_TIMEOUT,
    Ask,
    Confirm,
    Finished,
    PeerSeen,
    RollBack,
    Upgrade,
    Wait,
    order,
)
from nanomesh.config import member_api
from nanomesh.errors import NanomeshError
from nanomesh.transport.apiclient import ApiError, get_json, request_bytes, request_json

POLL = 0.5
"""Seconds between two looks at a peer that is restarting."""
UPLOAD_TIMEOUT = 300.0
INSTALL_TIMEOUT = 900.0
"""Seconds one peer may take to answer ``POST /v1/upgrade``: it fetches the
bundle and runs pip before answering (`nanomesh.daemon.upgrade.INSTALL_TIMEOUT`
per step)."""
LOOK_TIMEOUT = 2.0
SERVING = ("healthy", "none")
"""Health of an instance that serves: passing its check, or it has none."""


def register(subparsers: Any) -> None:
    cmd = subparsers.add_parser(
        "upgrade", help="upgrade every peer of the mesh to a release bundle, one at a time",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cmd.add_argument("bundle", type=Path, metavar="BUNDLE",
                     help="nanomesh-VERSION-bundle.tar from `nanomesh release build`")
    cmd.add_argument("--rejoin-timeout", type=float, default=REJOIN_TIMEOUT, metavar="S",
                     help=f"seconds a peer may take to be back healthy on the new version "
                          f"before it is rolled back (default {REJOIN_TIMEOUT:g})")
    cmd.add_argument("--json", action="store_true", help="print the report as JSON")
    add_token_args(cmd)
    cmd.set_defaults(func=upgrade_command)


def upgrade_command(args: argparse.Namespace) -> int:
    target = read_manifest(args.bundle)["version"]
    entry, token = peer_api(args.peer), management_token(args)
    sha = sha256_file(args.bundle)
    _say(f"uploading {args.bundle.name} (nanomesh {target}, bundle {sha[:12]}) to {entry}")
    request_bytes("PUT", entry, f"/v1/bundles/{sha}", args.bundle.read_bytes(), token=token,
                  timeout=UPLOAD_TIMEOUT, content_type="application/x-tar")
    apis, leader = _mesh(entry)
    run = Upgrade(target, tuple(order(list(apis), leader)),
                  timeouts=(args.rejoin_timeout, ROLLBACK_TIMEOUT))
    mesh = _Mesh(apis, token, sha)
    started = time.monotonic()
    _say(f"installing {target} on all {len(apis)} peers at once (nothing restarts yet)")
    failed = mesh.prepare_all()
    if failed:
        for peer, why in sorted(failed.items()):
            print(f"{peer}: cannot install {target}: {why}")
        print(f"stopped before any peer restarted: every peer keeps its version "
              f"(took {time.monotonic() - started:.1f} s)")
        return 1
    _say(f"installed; restarting {len(apis)} peers one at a time, leader last: "
         f"{', '.join(run.peers)}")
    run = _drive(run, mesh)
    elapsed = time.monotonic() - started
    if args.json:
        print(json.dumps({"target": target, "ok": run.failure is None, "seconds":
                          round(elapsed, 1), "failure": run.failure,
                          "peers": [{"peer": r.peer, "outcome": r.outcome, "detail": r.detail,
                                     "seconds": r.seconds} for r in run.results]}))
    else:
        for line in run.report():
            print(line)
        print(f"took {elapsed:.1f} s")
    return 0 if run.failure is None else 1


class _Mesh:
    """The upgrader's calls to the peers."""

    def __init__(self, apis: dict[str, str], token: str | None, sha: str) -> None:
        self.apis = apis
        self.token = token
        self.sha = sha

    def ask(self, peer: str) -> tuple[bool, str, PeerSeen | None, bool]:
        """(accepted, detail, how it was before, already at the target)."""
        api = self.apis[peer]
        try:
            before = self.look(peer)
            reply = request_json("POST", api, "/v1/upgrade", {"sha256": self.sha},
                                 token=self.token, timeout=INSTALL_TIMEOUT)
        except ApiError as exc:
            return False, exc.detail or str(exc), None, False
        return True, "", before, bool(reply.get("already"))

    def prepare_all(self) -> dict[str, str]:
        """Install the bundle on every peer at once, switching none; the
        peers that could not, and why."""
        failed: dict[str, str] = {}

        def prepare(peer: str) -> None:
            try:
                request_json("POST", self.apis[peer], "/v1/upgrade",
                             {"sha256": self.sha, "prepare_only": True}, token=self.token,
                             timeout=INSTALL_TIMEOUT)
            except ApiError as exc:
                failed[peer] = exc.detail or str(exc)

        threads = [threading.Thread(target=prepare, args=(peer,)) for peer in self.apis]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return failed

    def post(self, peer: str, path: str) -> tuple[bool, str]:
        try:
            request_json("POST", self.apis[peer], path, {}, token=self.token,
                         timeout=LOOK_TIMEOUT * 5)
        except ApiError as exc:
            return False, exc.detail or str(exc)
        return True, ""

    def leader(self) -> str | None:
        """The Raft leader's name, as the first peer that answers knows it."""
        for api in self.apis.values():
            try:
                return _leader_name(get_json(api, "/v1/members", timeout=LOOK_TIMEOUT),
                                    get_json(api, "/v1/status", timeout=LOOK_TIMEOUT))
            except ApiError:
                continue
        return None

    def look(self, peer: str) -> PeerSeen:
        """How `peer` looks: alive in another peer's gossip view, and its own
        version, health and Raft leader."""
        gossip_alive = any(self._sees_alive(other, peer) for other in self.apis if other != peer) \
            if len(self.apis) > 1 else True
        try:
            me = get_json(self.apis[peer], "/v1/self", timeout=LOOK_TIMEOUT)
            health = get_json(self.apis[peer], "/v1/health", timeout=LOOK_TIMEOUT)
            status = get_json(self.apis[peer], "/v1/status", timeout=LOOK_TIMEOUT)
            placement = get_json(self.apis[peer], "/v1/placement", timeout=LOOK_TIMEOUT)
        except ApiError:
            return PeerSeen(alive=False, version=None, healthy=False)
        # Its own instances must be back too: upgrading the next peer while
        # they start would leave a 2-replica service with one, or none.
        instances_up = all(i.get("state") == "running" and i.get("health") in SERVING
                           for i in placement.get("instances", []) if i.get("peer") == peer)
        healthy = (health.get("status") == "ok" and status.get("leader") is not None
                   and instances_up)
        uptime, voters = health.get("uptime_s"), status.get("voters")
        return PeerSeen(alive=gossip_alive, version=_version_of(me), healthy=healthy,
                        voters=len(voters) if isinstance(voters, list) else None,
                        uptime=float(uptime) if isinstance(uptime, int | float) else None)

    def _sees_alive(self, observer: str, peer: str) -> bool:
        try:
            members = get_json(self.apis[observer], "/v1/members", timeout=LOOK_TIMEOUT)
        except ApiError:
            return False
        return any(m.get("name") == peer and m.get("state") == "alive" for m in members)


def _drive(run: Upgrade, mesh: _Mesh) -> Upgrade:
    while True:
        action = run.next_action()
        now = time.monotonic()
        match action:
            case Finished():
                return run
            case Ask(_):
                run = run.leader_now(mesh.leader())
                peer = run.current or ""
                _say(f"{peer}: switching to {run.target} ...")
                accepted, detail, before, already = mesh.ask(peer)
                if accepted:
                    _say(f"{peer}: {'already on ' + run.target if already else 'restarting'}")
                run = run.answered(accepted, detail, time.monotonic(), already=already,
                                   old_version=before.version if before else None,
                                   voters=before.voters if before else None)
            case Wait(peer):
                run = run.seen(mesh.look(peer), now)
                if isinstance(run.next_action(), Wait):
                    time.sleep(POLL)
            case Confirm(peer):
                ok, detail = mesh.post(peer, "/v1/upgrade/confirm")
                _say(f"{peer}: healthy on {run.target}"
                     + ("" if ok else f" (confirm failed: {detail}; its launcher may roll it "
                                      "back at its next restarts)"))
                run = run.confirmed(now)
            case RollBack(peer):
                _say(f"{peer}: {run.failure}; rolling it back")
                ok, detail = mesh.post(peer, "/v1/upgrade/rollback")
                run = run.answered(ok, detail, time.monotonic())


def _mesh(entry: str) -> tuple[dict[str, str], str | None]:
    """The alive peers' API addresses by name, and the Raft leader's name."""
    members = get_json(entry, "/v1/members")
    alive = {m["name"]: m for m in members if m.get("state") == "alive"}
    if not alive:
        raise NanomeshError(f"{entry} knows no alive peer")
    leader = _leader_name(members, get_json(entry, "/v1/status"))
    return {name: member_api(m) for name, m in alive.items()}, leader


def _leader_name(members: list[dict[str, Any]], status: dict[str, Any]) -> str | None:
    """The member whose gossiped Raft address is the leader in ``status``."""
    leader_addr = status.get("leader")
    for m in members:
        raft = (m.get("profile") or {}).get("raft") or {}
        if leader_addr is not None and raft.get("addr") == leader_addr:
            return str(m["name"])
    return None


def _version_of(member: dict[str, Any]) -> str | None:
    peer = (member.get("profile") or {}).get("peer") or {}
    version = peer.get("nanomesh") if isinstance(peer, dict) else None
    return version if isinstance(version, str) else None


def _say(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {line}", file=sys.stderr, flush=True)
