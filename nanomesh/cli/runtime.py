"""CLI commands for nanoservices: deploy (with bundles and seed files),
undeploy, activate/idle, logs, resolve and call.

Each command is a thin client of a peer's HTTP API (any peer: writes are
forwarded to the Raft leader). Deploying a service folder packs it into a
content-addressed bundle and uploads it to that peer first, so the peers that
run the service fetch the code from the mesh, not from the internet.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
import tomllib
import urllib.parse
from pathlib import Path
from typing import Any

from nanomesh.cli.common import PEER_HELP, add_token_args, management_token, peer_api, print_table
from nanomesh.config import host_port, member_api
from nanomesh.errors import ConfigError, NanomeshError
from nanomesh.ids import partition_instance_id, service_of
from nanomesh.security.auth import REDACTED_KEY, TOKEN_SOURCES
from nanomesh.transport.apiclient import ApiError, get_json, request_bytes, request_json

# The bundle, manifest and seed modules (they load the placement and runtime
# packages) and the service client (trio, ZeroMQ) are imported inside the
# commands that use them, so that `nanomesh --help` and the other commands
# do not load them.

DEPLOY_WAIT = 150.0
"""Seconds ``deploy`` watches the instances come up and waits for the mesh's
verdict on the new version (as ``nomad job run`` monitors a deployment):
longer than the default ``update.healthy_deadline`` (120 s,
`nanomesh.runtime.deployment_core.UpdatePolicy`), so the default wait ends with a verdict;
``--detach`` skips the wait."""
MODE_WAIT = 60.0
"""Seconds ``idle`` waits for the instances to stop and ``activate`` for them
to run and pass their health checks (a health check's default start period
is well inside it); ``--detach`` skips the wait."""
SAVE_TIMEOUT = 30.0
"""Seconds ``undeploy --save`` waits for the instances to stop (and hand over
their state) before it gives up without deleting anything."""


def register(subparsers: Any) -> None:
    """Add the commands to the top-level ``subparsers``."""
    deploy = subparsers.add_parser(
        "deploy", help="deploy (or update) a nanoservice",
        description="Deploy a nanoservice, or update it. MANIFEST is a service folder (or its "
        "nanoservice.toml): the folder is packed into a content-addressed bundle and uploaded, "
        "so peers fetch the code from the mesh. --from-seed restores a service saved with "
        "`nanomesh undeploy --save`, with its state. An update keeps the state the service "
        "saved (unless --reset-state) and is watched by the mesh: if the new version's "
        "instances do not become healthy (they crash, fail their health check, or are not "
        "healthy within the manifest's update.healthy_deadline, default 120 s), the mesh "
        "puts the previous version back (update.auto_revert, default true) and this command "
        "says so and exits 1. Needs the management token.")
    deploy.add_argument("manifest", type=Path, metavar="MANIFEST", nargs="?")
    deploy.add_argument("--from-seed", type=Path, metavar="SEED",
                        help="restore a service and its state from a seed file")
    deploy.add_argument("--from-registry", metavar="NAME[@VERSION]",
                        help="deploy a service pushed with `nanomesh registry push` (newest "
                        "version unless given); works with no internet")
    deploy.add_argument("--no-bundle", action="store_true",
                        help="send the manifest only: the command must exist on every peer")
    deploy.add_argument("--reset-state", action="store_true",
                        help="drop the state the service saved (by default an update keeps "
                        "it; a seed file's state replaces it)")
    deploy.add_argument("--detach", action="store_true",
                        help="return once the change is committed, without waiting for the "
                        "instances to run")
    deploy.add_argument("--wait", type=float, default=DEPLOY_WAIT, metavar="SECONDS",
                        help=f"how long to wait for the mesh's verdict on the new version "
                        f"(every instance running and healthy for update.min_healthy_time) "
                        f"(default {DEPLOY_WAIT:g}); exit status 1 if it failed, was rolled "
                        f"back, or is still undecided")
    add_token_args(deploy)
    deploy.set_defaults(func=deploy_command)

    undeploy = subparsers.add_parser(
        "undeploy", help="remove a nanoservice from the mesh",
        description="Remove a nanoservice. With --save SEED, first stop its instances "
        "(they may hand over their state as they stop), then write the service, its bundle "
        "and its state to SEED, then remove it; `nanomesh deploy --from-seed SEED` brings "
        "it back.")
    undeploy.add_argument("name", metavar="NAME")
    undeploy.add_argument("--save", type=Path, metavar="SEED",
                          help="write a seed file before removing the service")
    undeploy.add_argument("--timeout", type=float, default=SAVE_TIMEOUT,
                          help=f"seconds to wait for the instances to stop (default "
                          f"{SAVE_TIMEOUT:g})")
    add_token_args(undeploy)
    undeploy.set_defaults(func=undeploy_command)

    for verb, text, awaited in (
            ("activate", "start a service's idle instances", "running and healthy"),
            ("idle", "stop a service's instances but keep them placed and ready", "stopped")):
        cmd = subparsers.add_parser(verb, help=text, description=text[0].upper() + text[1:] +
                             ", and wait until they have (exit status 1 if they have not "
                             "within --wait). Needs the management token.")
        cmd.add_argument("name", metavar="NAME")
        cmd.add_argument("--detach", action="store_true",
                         help="return once the change is committed, without waiting")
        cmd.add_argument("--wait", type=float, default=MODE_WAIT, metavar="SECONDS",
                         help=f"how long to wait for every instance to be {awaited} "
                         f"(default {MODE_WAIT:g})")
        add_token_args(cmd)
        cmd.set_defaults(func=mode_command, verb=verb)

    logs = subparsers.add_parser("logs", help="show the output of a service's instances",
                          description="Print the last lines of each instance's log, fetched "
                          "from the peer that runs it; with -f, then follow new lines (across "
                          "restarts, and to a peer an instance moves to) until Ctrl-C. Needs "
                          "the management token.")
    logs.add_argument("name", metavar="NAME")
    logs.add_argument("--instance", type=int, metavar="INDEX", help="only instance NAME/INDEX")
    logs.add_argument("-n", "--lines", type=int, default=50, help="lines per instance "
                      "(default 50)")
    logs.add_argument("-f", "--follow", action="store_true",
                      help="keep printing new lines until Ctrl-C; with several instances "
                      "each line starts with its instance id")
    add_token_args(logs)
    logs.set_defaults(func=logs_command)

    resolve = subparsers.add_parser("resolve", help="where a service can be reached",
                             description="List the endpoints of a service's running "
                             "instances as a peer's gossip shows them: peer, protocol, "
                             "address, health.")
    resolve.add_argument("name", metavar="NAME")
    resolve.add_argument("--protocol", choices=["coap", "zmq", "http"])
    resolve.add_argument("--all", action="store_true", help="include unhealthy instances")
    resolve.add_argument("--peer", metavar="IP[:PORT]", help=PEER_HELP)
    resolve.add_argument("--json", action="store_true", help="print JSON")
    resolve.set_defaults(func=resolve_command)

    call = subparsers.add_parser("call", help="call a service by name",
                          description="Send one request to SERVICE (any healthy instance, "
                          "failing over between replicas) and print the reply body. Exit "
                          "status 0 on a 2xx reply, 1 otherwise.")
    call.add_argument("service", metavar="SERVICE")
    call.add_argument("path", metavar="PATH", nargs="?", default="")
    call.add_argument("--data", metavar="JSON", help="request body (JSON, sent as is)")
    call.add_argument("--method", default=None, choices=["GET", "POST", "PUT", "DELETE"],
                      help="default GET, or POST with --data")
    call.add_argument("--timeout", type=float, default=2.0, help="seconds per try (default 2)")
    call.add_argument("--peer", metavar="IP[:PORT]", help=PEER_HELP)
    call.add_argument("--key-file", type=Path, metavar="FILE",
                      help="the cluster key file, for private services (default: "
                      "$NANOMESH_KEY_FILE, else the running lab's, else "
                      "/etc/nanomesh/cluster.key when readable; without one only public "
                      "services answer, through the CoAP gateway)")
    call.set_defaults(func=call_command)


# ------------------------------------------------------------------ deploy


def deploy_command(args: argparse.Namespace) -> int:

    sources = [args.manifest, args.from_seed, args.from_registry]
    if sum(x is not None for x in sources) != 1:
        raise ConfigError("give one of: a service folder or manifest, --from-seed SEED, "
                          "--from-registry NAME[@VERSION]")
    peer, token = peer_api(args.peer), management_token(args)
    if args.from_seed is not None:
        raw = _manifest_from_seed(args.from_seed, peer, token)
    elif args.from_registry is not None:
        raw = _manifest_from_registry(args.from_registry, peer, token)
    else:
        raw = _manifest_with_bundle(args.manifest, peer, token, bundle=not args.no_bundle)

    if args.reset_state:
        if args.from_seed is not None:
            raise ConfigError("--reset-state and --from-seed: the seed file's state replaces "
                              "the saved one anyway; give one of them")
        raw["reset_state"] = True
    reply = request_json("POST", peer, "/v1/services", raw, token)
    verb = "deployed" if reply["changed"] else "unchanged:"
    print(f"{verb} {reply['name']} (revision {reply['revision']})")
    if not raw.get("endpoints"):
        # Valid (a sensor loop that only publishes events), but usually a
        # forgotten [[endpoints]] table: it runs and `call` never reaches it.
        print(f"warning: {reply['name']} declares no [[endpoints]]: its instances run, but "
              "nothing can call it by name (nanomesh call, the CoAP gateway, the client)",
              file=sys.stderr)
    if args.detach:
        return 0
    return 0 if watch_deployment(reply["name"], peer, args.wait,
                                 deployment=reply.get("deployment")) else 1


def watch_deployment(name: str, peer: str, timeout: float, *,
                     deployment: int | None = None) -> bool:
    """Print the service's instances as they come up. With ``deployment``
    (the id a deploy reply gave): True once the mesh settles it successful,
    False if it failed or was reverted (the reason is printed). Without: True
    once every instance is running and healthy (or has no check). False at
    the deadline, or when the service cannot be placed (reasons printed)."""
    deadline = time.monotonic() + timeout
    shown: dict[str, tuple[str, str]] = {}
    while True:
        try:
            plan = get_json(peer, "/v1/placement")
            docs = {d["name"]: d for d in get_json(peer, "/v1/services")}
        except ApiError:
            plan, docs = None, {}
        mode = {n: d.get("mode", "active") for n, d in docs.items()}
        if deployment is None and docs.get(name, {}).get("replicas") == 0:
            print(f"{name}: no instances to wait for (replicas = 0)")
            return True
        dep = plan.get("deployments", {}).get(name) if plan is not None else None
        verdict = _deployment_verdict(name, docs.get(name), dep, deployment)
        if verdict is not None:
            return verdict
        if plan is not None:
            mine = [i for i in plan["instances"] if i["service"] == name]
            for inst in mine:
                now = (inst["state"] if inst.get("current", True) else "updating",
                       inst.get("health", "none"))
                if shown.get(inst["instance"]) != now:
                    shown[inst["instance"]] = now
                    print(f"  {inst['instance']:<24} on {inst['peer']:<16} {now[0]:<9} {now[1]}")
            unplaced = [i for i in plan.get("unplaced", []) if service_of(i) == name]
            if name in plan["unplaceable"] or unplaced:
                reasons = plan["unplaceable"].get(name, {})
                print(f"{name}: not all instances can be placed now (they will be once a "
                      "suitable peer appears):")
                for peer_name, why in sorted(reasons.items()):
                    print(f"  {peer_name}: {why}")
                return False
            wanted = "idle" if mode.get(name) == "idle" else "running"
            if deployment is None and mine and all(
                    i["state"] == wanted and i.get("current", True)
                    and i.get("health", "none") in ("healthy", "none") for i in mine):
                print(f"{name}: {len(mine)} instance(s) {wanted}")
                return True
        if time.monotonic() > deadline:
            undecided = " (the mesh is still judging the new version: see `nanomesh " \
                "services`)" if deployment is not None else ""
            print(f"{name}: not every instance is up after {timeout:g} s{undecided}; see "
                  f"`nanomesh placement` and `nanomesh logs {name}`", file=sys.stderr)
            return False
        time.sleep(0.1)


def _deployment_verdict(name: str, doc: dict[str, Any] | None, dep: dict[str, Any] | None,
                        deployment: int | None) -> bool | None:
    """Whether deployment ``deployment`` of ``name`` (its record ``dep``, from
    ``/v1/placement``) succeeded, printing the verdict; None while it runs
    (or there is none to watch)."""
    if deployment is None or doc is None or dep is None:
        return None
    if dep.get("id") != deployment:
        print(f"{name}: a newer deploy replaced this one (deployment {dep.get('id')})",
              file=sys.stderr)
        return False
    status, reason = dep.get("status"), dep.get("reason", "")
    if status == "successful":
        print(f"{name}: deployment {deployment} successful ({reason})")
        return True
    if status == "reverted":
        print(f"{name}: deployment {deployment} failed: {reason}\n{name}: rolled back to the "
              f"previous version{_version_text(doc)}", file=sys.stderr)
        return False
    if status == "failed":
        print(f"{name}: deployment {deployment} failed: {reason} (no previous version to "
              f"roll back to, or update.auto_revert is off)", file=sys.stderr)
        return False
    return None


def _version_text(doc: dict[str, Any]) -> str:
    version = doc.get("version")
    return f" ({version})" if version else ""


def _manifest_with_bundle(path: Path, peer: str, token: str | None, *, bundle: bool
                          ) -> dict[str, Any]:
    from nanomesh.runtime.manifest import ManifestError, load_manifest

    load_manifest(path)  # refuse a bad manifest before touching the mesh
    manifest = path / "nanoservice.toml" if path.is_dir() else path
    with manifest.open("rb") as f:
        raw = tomllib.load(f)
    if bundle:
        if manifest.name != "nanoservice.toml":
            raise ManifestError(f"{manifest}: to ship the service's code, the manifest must be "
                                "a service folder's nanoservice.toml (or use --no-bundle)")
        raw["bundle"] = upload_bundle(manifest.parent, peer, token)
    return raw


def upload_bundle(folder: Path, peer: str, token: str | None) -> dict[str, Any]:
    """Pack ``folder`` and upload it to ``peer``; the service document's bundle ref."""
    from nanomesh.bundles import pack_bundle

    bundle = pack_bundle(folder)
    request_bytes("PUT", peer, f"/v1/bundles/{bundle.sha256}", bundle.data, token,
                  timeout=120.0, content_type="application/x-tar")
    copies = [peer, *_second_copy(bundle.sha256, bundle.data, peer, token)]
    print(f"uploaded bundle {bundle.sha256[:12]} ({len(bundle.data)} bytes) from {folder} "
          f"to {' and '.join(copies)}")
    return {"sha256": bundle.sha256, "size": len(bundle.data)}


BUNDLE_COPIES = 2
"""Peers a deploy uploads the bundle to. With one copy, a service placed on
the peer that received the upload cannot be rescheduled when that peer dies:
no alive peer holds its code (seen in CI, where placement ties put the
instance on the uploader). Hosts fetch and hold it too, so copies grow."""


def _second_copy(sha: str, data: bytes, first: str, token: str | None) -> list[str]:
    """Upload the bundle to BUNDLE_COPIES - 1 more alive peers (best effort:
    a deploy to a one-peer mesh, or a refusing peer, only warns)."""
    try:
        members = get_json(first, "/v1/members")
    except ApiError:
        return []
    others = [member_api(m) for m in members
              if m.get("state") == "alive" and member_api(m) != first]
    done: list[str] = []
    for api in others:
        if len(done) >= BUNDLE_COPIES - 1:
            break
        try:
            request_bytes("PUT", api, f"/v1/bundles/{sha}", data, token, timeout=120.0,
                          content_type="application/x-tar")
        except ApiError as exc:
            print(f"warning: a second copy of the bundle on {api} failed: "
                  f"{exc.operator_message()}", file=sys.stderr)
            continue
        done.append(api)
    return done


def _manifest_from_seed(path: Path, peer: str, token: str | None) -> dict[str, Any]:
    from nanomesh.bundles.seed import read_seed
    from nanomesh.runtime.manifest import manifest_from_document

    seed = read_seed(path)
    raw = manifest_from_document(seed.service)
    raw.pop("state", None)
    raw.pop("mode", None)  # it was idled to be saved: bring it back active
    if seed.bundle is not None and seed.bundle_sha256 is not None:
        request_bytes("PUT", peer, f"/v1/bundles/{seed.bundle_sha256}", seed.bundle, token,
                      timeout=120.0, content_type="application/x-tar")
        raw["bundle"] = {"sha256": seed.bundle_sha256, "size": len(seed.bundle)}
    if seed.state is not None:
        raw["state"] = base64.b64encode(seed.state).decode("ascii")
    saved = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seed.saved_at))
    state = f"{len(seed.state)} bytes of state" if seed.state is not None else "no state"
    print(f"restoring {raw.get('name')} from {path} (saved {saved} on {seed.saved_from}, "
          f"{state})")
    return raw


def _manifest_from_registry(wanted: str, peer: str, token: str | None) -> dict[str, Any]:
    from nanomesh.runtime.manifest import manifest_from_document

    name, _, version = wanted.partition("@")
    entries = [e for e in get_json(peer, "/v1/registry", token=token) if e["name"] == name
               and (not version or e["version"] == version)]
    if not entries:
        raise NanomeshError(f"the registry has no {wanted!r}; see `nanomesh registry`")
    entry = max(entries, key=lambda e: _version_key(e["version"]))
    if not entry.get("holders"):
        print(f"warning: no alive peer holds the bundle of {entry['name']}@{entry['version']} "
              "right now; instances will wait in 'fetching' until one does", file=sys.stderr)
    _refuse_redacted(entry["service"], f"{entry['name']}@{entry['version']}")
    raw = manifest_from_document(entry["service"])
    raw["bundle"] = {"sha256": entry["sha256"], "size": entry["size"]}
    print(f"deploying {entry['name']}@{entry['version']} from the registry "
          f"(bundle {entry['sha256'][:12]})")
    return raw


def _version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Order versions numerically where they are numbers (1.10 after 1.9)."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in version.split("."))


# ------------------------------------------------------------------ undeploy


def undeploy_command(args: argparse.Namespace) -> int:
    peer, token = peer_api(args.peer), management_token(args)
    quoted = urllib.parse.quote(args.name, safe="")
    if args.save is not None:
        save_seed(args.name, args.save, peer, token, args.timeout)
    reply = request_json("DELETE", peer, f"/v1/services/{quoted}", token=token)
    print(f"undeployed {reply['name']} (revision {reply['revision']})")
    return 0


def save_seed(name: str, path: Path, peer: str, token: str | None, timeout: float) -> None:
    """Idle the service, wait until no instance runs, and write its seed file.
    Raises (and deletes nothing) if the instances do not stop in time."""
    from nanomesh.bundles.seed import Seed, write_seed

    quoted = urllib.parse.quote(name, safe="")
    request_json("POST", peer, f"/v1/services/{quoted}/idle", token=token)
    deadline = time.monotonic() + timeout
    while True:
        placement = get_json(peer, "/v1/placement")
        busy = [i for i in placement["instances"] if i["service"] == name
                and i["state"] in ("starting", "running", "stopping")]
        if not busy:
            break
        if time.monotonic() > deadline:
            raise NanomeshError(f"{name}: {len(busy)} instance(s) still running after "
                                f"{timeout:g} s; nothing was saved or removed (the service is "
                                f"idle now: `nanomesh activate {name}` to undo)")
        time.sleep(0.2)
    # Read the service from the leader: the state the instances saved as they
    # stopped is committed there first; a follower may trail it.
    docs = {d["name"]: d for d in get_json(_leader_api(peer), "/v1/services", token=token)}
    doc = docs.get(name)
    if doc is None:
        raise NanomeshError(f"no service named {name!r}")
    _refuse_redacted(doc, name)
    bundle = doc.get("bundle")
    data = None
    if isinstance(bundle, dict):
        data = _bundle_bytes(bundle["sha256"], peer, token)
    state = base64.b64decode(doc["state"]) if isinstance(doc.get("state"), str) else None
    status = get_json(peer, "/v1/status")
    write_seed(path, Seed(service=doc, bundle=data,
                          bundle_sha256=bundle["sha256"] if data is not None else None,
                          state=state, saved_at=time.time(), saved_from=str(status["peer"])))
    print(f"saved {name} to {path} ({len(state) if state else 0} bytes of state"
          f"{', bundle ' + bundle['sha256'][:12] if data is not None else ''})")


def _refuse_redacted(doc: dict[str, Any], what: str) -> None:
    """A document the peer redacted (no valid token) must not be saved or
    deployed: its state and environment would be lost."""
    if doc.get(REDACTED_KEY):
        raise NanomeshError(f"{what}: the peer withheld {', '.join(doc[REDACTED_KEY])} "
                            f"(no valid management token: {TOKEN_SOURCES}); nothing was "
                            "saved or deployed from it")


def _leader_api(peer: str) -> str:
    """The API of the Raft leader as ``peer`` knows it (else ``peer`` itself)."""
    leader = get_json(peer, "/v1/status").get("leader")
    for member in get_json(peer, "/v1/members"):
        profile = member.get("profile") or {}
        raft = profile.get("raft") if isinstance(profile, dict) else None
        if leader and isinstance(raft, dict) and raft.get("addr") == leader:
            return member_api(member)
    return peer


def _bundle_bytes(sha: str, peer: str, token: str | None) -> bytes:
    """Bundle ``sha`` from ``peer``, else from an alive peer that gossips it:
    a peer serves only the bundles it holds (uploaded to it, or fetched to run
    an instance), and ``peer`` may be neither."""
    from nanomesh.bundles import holders_index, holders_of

    path = f"/v1/bundles/{sha}"
    try:
        return request_bytes("GET", peer, path, token=token, timeout=120.0)
    except ApiError as exc:
        if exc.status != 404:
            raise
        first = exc
    members = [m for m in get_json(peer, "/v1/members") if m.get("state") == "alive"]
    holders = holders_of(sha, holders_index((m["name"], m.get("profile")) for m in members))
    apis = {m["name"]: member_api(m) for m in members}
    for name in holders:
        api = apis[name]
        if api == peer:
            continue
        try:
            return request_bytes("GET", api, path, token=token, timeout=120.0)
        except ApiError:
            continue
    raise NanomeshError(f"{first}; and no other alive peer could serve it") from None


# ------------------------------------------------------------------ activate / idle / logs


def mode_command(args: argparse.Namespace) -> int:
    quoted = urllib.parse.quote(args.name, safe="")
    reply = request_json("POST", peer_api(args.peer), f"/v1/services/{quoted}/{args.verb}",
                         token=management_token(args))
    state = "active" if reply["mode"] == "active" else "idle"
    print(f"{reply['name']} is {state}" + ("" if reply["changed"] else " (already)"))
    if args.detach:
        return 0
    return 0 if watch_deployment(reply["name"], peer_api(args.peer), args.wait) else 1


def logs_command(args: argparse.Namespace) -> int:
    peer, token = peer_api(args.peer), management_token(args)
    wanted, apis = _placed_instances(args, peer)
    if not wanted:
        raise NanomeshError(f"no placed instance of {args.name!r}; see `nanomesh placement`")
    cursors: dict[tuple[str, str], str | None] = {}
    """(instance id, peer) -> where its log was read up to (None: not yet)."""
    failures = 0
    for inst in wanted:
        print(f"==> {inst['instance']} on {inst['peer']} ({inst['state']}) <==")
        reply = _log_request(apis.get(inst["peer"], peer), inst["instance"],
                             f"lines={args.lines}", token)
        if isinstance(reply, ApiError):
            print(f"   (no log: {reply.operator_message()})")
            failures += 1
        cursors[inst["instance"], inst["peer"]] = None if isinstance(reply, ApiError) \
            else reply.get("cursor")
        for line in [] if isinstance(reply, ApiError) else reply["lines"]:
            print(line)
    if not args.follow or failures == len(wanted):
        return 1 if failures == len(wanted) else 0  # nothing to follow (a bad token?)
    sys.stdout.flush()
    _follow_logs(args, peer, token, cursors, apis)
    return 0  # unreachable: following ends with Ctrl-C (exit status 130)


FOLLOW_POLL = 1.0
"""Seconds between two reads of each followed log (`logs -f`): new lines show
within a second, at one small request per instance per second."""
FOLLOW_PLACEMENT_EVERY = 5
"""Polls between two reads of the placement while following: an instance
that moved to another peer (or a new replica) is followed there within
FOLLOW_POLL * this many seconds."""


def _follow_logs(args: argparse.Namespace, peer: str, token: str | None,
                 cursors: dict[tuple[str, str], str | None], apis: dict[str, str]) -> None:
    """Print each instance's new lines until Ctrl-C. A peer that does not
    answer (restarting, gone) is asked again at the next poll."""
    polls = 0
    while True:
        time.sleep(FOLLOW_POLL)
        polls += 1
        if polls % FOLLOW_PLACEMENT_EVERY == 0:
            try:
                wanted, apis = _placed_instances(args, peer)
            except ApiError:
                wanted = []
            for inst in wanted:
                if (inst["instance"], inst["peer"]) not in cursors:
                    print(f"==> {inst['instance']} now on {inst['peer']} <==", flush=True)
                    cursors[inst["instance"], inst["peer"]] = None
        tagged = len({iid for iid, _ in cursors}) > 1
        for (iid, host), cursor in list(cursors.items()):
            # A log not read yet starts at its last --lines lines (a replica
            # moved here: its new run's start), else after the cursor.
            query = f"lines={args.lines}" if cursor is None else \
                "after=" + urllib.parse.quote(cursor)
            reply = _log_request(apis.get(host, peer), iid, query, token)
            if isinstance(reply, ApiError):
                continue
            if reply.get("gap"):
                print(f"({iid}: lines lost: its log rotated faster than it was followed)")
            for line in reply["lines"]:
                print(f"{iid} | {line}" if tagged else line)
            cursors[iid, host] = reply.get("cursor") or cursor
        sys.stdout.flush()


def _placed_instances(args: argparse.Namespace, peer: str
                      ) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The placed instances `args` asks for, and every member's API address."""
    placement = get_json(peer, "/v1/placement")
    apis = {m["name"]: member_api(m) for m in get_json(peer, "/v1/members")}
    wanted = [i for i in placement["instances"] if i["service"] == args.name
              and (args.instance is None or i["instance"] == f"{args.name}/{args.instance}")]
    return wanted, apis


def _log_request(api: str, iid: str, query: str, token: str | None
                 ) -> dict[str, Any] | ApiError:
    """One read of instance `iid`'s log on the peer at `api` (an ApiError is
    returned, not raised: one instance's missing log is not the command's end)."""
    service, index = partition_instance_id(iid)
    path = f"/v1/instances/{urllib.parse.quote(service, safe='')}/{index}/logs?{query}"
    try:
        reply = request_json("GET", api, path, token=token)
    except ApiError as exc:
        return exc
    return reply if isinstance(reply, dict) else ApiError(f"unexpected reply from {api}")


# ------------------------------------------------------------------ resolve / call


def resolve_command(args: argparse.Namespace) -> int:
    query = {k: v for k, v in (("protocol", args.protocol), ("all", "1" if args.all else None))
             if v}
    path = f"/v1/resolve/{urllib.parse.quote(args.name, safe='')}"
    if query:
        path += "?" + urllib.parse.urlencode(query)
    reply = get_json(peer_api(args.peer), path)
    if args.json:
        print(json.dumps(reply, indent=2, sort_keys=True))
        return 0
    endpoints = reply["endpoints"]
    if not endpoints:
        print(f"{args.name}: no reachable instance right now (see `nanomesh placement`)",
              file=sys.stderr)
        return 1
    rows: list[tuple[str, ...]] = [("INSTANCE", "PEER", "ENDPOINT", "PROTOCOL", "ADDRESS",
                                    "HEALTH")]
    rows += [(e["instance"], e["peer"], e["name"], e["protocol"],
              host_port(e["host"], e["port"]), e["health"]) for e in endpoints]
    print_table(rows)
    return 0


def call_command(args: argparse.Namespace) -> int:
    from nanomesh.sdk.client import call_sync

    body = b""
    if args.data is not None:
        try:
            json.loads(args.data)
        except ValueError as exc:
            raise ConfigError(f"--data must be JSON: {exc}") from None
        body = args.data.encode()
    method = args.method or ("POST" if args.data is not None else "GET")
    reply = call_sync(args.service, args.path, body, method=method, timeout=args.timeout,
                      peer=peer_api(args.peer), key_file=args.key_file)
    sys.stdout.buffer.write(reply.body)
    if reply.body and not reply.body.endswith(b"\n"):
        sys.stdout.buffer.write(b"\n")
    return 0 if 200 <= reply.status < 300 else 1
