"""How long until the instance of a crashed peer runs on another peer?

Starts N real peer daemons on loopback (127.0.60.FIRST.., default .11-.15, one
cluster key, gossip preset ``lan``, Raft ``RaftTiming.lan()``), waits until the
mesh is healthy (all alive, one leader, min(N, 5) voters: more peers are
learners), then deploys one service with ``POST /v1/services``: the raw TOML
of ``services/hello/nanoservice.toml`` (a process printing a line a second)
renamed ``resched`` with ``--replicas`` (default 4, spread) replicas. T trials
follow. Each trial:

1. waits until every instance is assigned to a live peer and reported
   ``running`` and the plan epoch has not changed for ``--settle`` s;
2. SIGKILLs a random non-leader peer that hosts an instance; t0 =
   time.time() just before the kill;
3. every ``--interval`` s (50 ms) polls the leader's ``/v1/members`` and
   every survivor's ``/v1/placement`` (in parallel) until the victim's
   instance is assigned to another peer and reported ``running`` there.
   Measured: detection (the victim is ``dead`` in the leader's
   ``/v1/members``), plan (a survivor first shows a new plan epoch without
   the victim), **running elsewhere** (first survivor showing every instance
   on a live peer and running; the new host's own view, which has its own
   state at once) and the same as the leader sees it (its gossip view of the
   new host's profile). The logs add the leader's "member X failed" and
   "placement: committed plan epoch N" stamps and the new host's "started
   IID" stamp;
4. restarts the victim (same name, address, data directory), waits for a
   healthy mesh and a settled plan, and counts the plan changes on the way
   (rebalancing back onto the returning peer).

CSV per trial; summary JSON with median, p90 (nearest rank), max of the
time to running elsewhere. Target: median <= 2.5 s.

    .venv/bin/python experiments/reschedule.py            # full: 5 peers, 30 trials
    .venv/bin/python experiments/reschedule.py --quick    # 5 trials
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import sys
import tempfile
import time
import tomllib
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import _meshlib as ml
from control_failover import (
    PLAN_RE,
    Mesh60,
    copy_logs,
    read_token,
    start_mesh,
    statuses,
    timing_info,
    wait_healthy,
    write_retry,
)

from nanomesh.transport.apiclient import ApiError

TARGET_MEDIAN_S = 2.5
SERVICE = "resched"
STARTED_RE = re.compile(r"^started (\S+) \(pid \d+\)")


def manifest(replicas: int, marker: str) -> dict[str, Any]:
    """The hello service's raw TOML, renamed, with `replicas` and a marker
    argument (so leftover instance processes can be found by their command)."""
    with (ml.REPO_ROOT / "services" / "hello" / "nanoservice.toml").open("rb") as f:
        raw = tomllib.load(f)
    raw["name"] = SERVICE
    raw["replicas"] = replicas
    raw.setdefault("placement", {})["spread"] = True
    raw["run"]["command"] = [*raw["run"]["command"], marker]
    return raw


def placement_of(peer: ml.Peer, timeout: float = 1.0) -> dict[str, Any] | None:
    try:
        pl: dict[str, Any] = peer.get("/v1/placement", timeout=timeout)
        return pl
    except ApiError:
        return None


def members_of(peer: ml.Peer) -> list[dict[str, Any]] | None:
    try:
        members: list[dict[str, Any]] = peer.get("/v1/members", timeout=1.0)
        return members
    except ApiError:
        return None


def all_running(pl: dict[str, Any] | None, replicas: int, live: set[str]) -> bool:
    """Every instance of the service is on a live peer and reported running."""
    if pl is None:
        return False
    inst = [i for i in pl["instances"] if i["service"] == SERVICE]
    return (len(inst) == replicas and not pl.get("unplaced")
            and all(i["peer"] in live and i["state"] == "running" for i in inst))


def wait_settled(mesh: Mesh60, replicas: int, settle: float, timeout: float
                 ) -> tuple[dict[str, Any], dict[str, Any], int, float]:
    """Wait for a healthy mesh, then until the leader's placement shows every
    instance running on a live peer with an epoch unchanged for `settle` s.
    Returns (leader status, placement, plan epochs seen change, seconds)."""
    t0 = time.monotonic()
    st, _ = wait_healthy(mesh, timeout)
    live = {p.name for p in mesh.peers}
    leader = mesh.by_ip(st["leader"].rpartition(":")[0])
    epochs: set[int] = set()
    stable_since: float | None = None
    last_epoch = None
    while True:
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"placement not settled after {timeout:.0f}s: "
                               f"{placement_of(leader)}")
        pl = placement_of(leader)
        if pl is not None:
            epochs.add(pl["epoch"])
        if pl is not None and all_running(pl, replicas, live):
            if pl["epoch"] != last_epoch:
                last_epoch, stable_since = pl["epoch"], time.monotonic()
            elif time.monotonic() - stable_since >= settle:  # type: ignore[operator]
                st2, _ = wait_healthy(mesh, timeout)
                if st2["leader"] == st["leader"]:
                    return st2, pl, len(epochs) - 1, time.monotonic() - t0
                st, leader = st2, mesh.by_ip(st2["leader"].rpartition(":")[0])
                last_epoch = None
        else:
            last_epoch = None
        time.sleep(0.2)


def run_trial(mesh: Mesh60, trial: int, rng: random.Random, args: argparse.Namespace
              ) -> dict[str, Any]:
    st, pl, _, _ = wait_settled(mesh, args.replicas, args.settle, args.heal_timeout)
    leader = mesh.by_ip(st["leader"].rpartition(":")[0])
    hosts = {i["peer"]: i["instance"] for i in pl["instances"] if i["service"] == SERVICE}
    candidates = [p for p in mesh.peers if p is not leader and p.name in hosts]
    victim = rng.choice(candidates)
    iid = hosts[victim.name]
    epoch0 = pl["epoch"]
    survivors = [p for p in mesh.peers if p is not victim]
    live = {p.name for p in survivors}
    # Raft roles before the kill: a learner that becomes the new host learns
    # the new plan by pulling it (issue 9), a voter through Raft.
    roles = {name: (s or {}).get("role") for name, s in statuses(mesh.peers).items()}
    for p in survivors:
        p.tail.skip_to_end()
    load1 = os.getloadavg()[0]
    t0 = mesh.kill(victim)

    nan = float("nan")
    detect_api = plan_seen = running_any = running_leader = nan
    new_host: str | None = None
    running_by: str | None = None
    stale_running_on_dead = False
    polls = 0
    pool = ThreadPoolExecutor(max_workers=len(survivors) + 1)
    while time.time() - t0 < args.bound:
        tick = time.time()

        fut_members = pool.submit(members_of, leader)
        views = list(zip(survivors, pool.map(placement_of, survivors), strict=True))
        members = fut_members.result()
        now = time.time()
        polls += 1
        for p, v in views:
            if v is None:
                continue
            assigned = {i["instance"]: i for i in v["instances"]}
            moved = iid in assigned and assigned[iid]["peer"] != victim.name
            if moved and v["epoch"] > epoch0 and plan_seen != plan_seen:
                plan_seen = now - t0
            if not moved and iid in assigned and detect_api == detect_api \
                    and assigned[iid]["state"] == "running":
                stale_running_on_dead = True
            if moved and all_running(v, args.replicas, live):
                new_host = assigned[iid]["peer"]
                if running_any != running_any:
                    running_any, running_by = now - t0, p.name
                if p is leader and running_leader != running_leader:
                    running_leader = now - t0
        if members is not None and detect_api != detect_api and any(
                m["name"] == victim.name and m["state"] in ("dead", "left") for m in members):
            detect_api = now - t0
        if running_leader == running_leader and detect_api == detect_api:
            break
        time.sleep(max(0.0, args.interval - (time.time() - tick)))
    pool.shutdown()

    # log stamps (no load while measuring)
    failed_leader = failed_first = plan_log = started_log = nan
    plan_epochs_logged: list[int] = []
    for p in survivors:
        for line in p.tail.read():
            if (m := ml.FAILED_RE.match(line.msg)) and m.group(1) == victim.name:
                failed_first = min(failed_first, line.ts - t0) \
                    if failed_first == failed_first else line.ts - t0
                if p is leader and failed_leader != failed_leader:
                    failed_leader = line.ts - t0
            elif (m := PLAN_RE.match(line.msg)) and p is leader:
                plan_epochs_logged.append(int(m.group(1)))
                if plan_log != plan_log:
                    plan_log = line.ts - t0
            elif (m := STARTED_RE.match(line.msg)) and m.group(1) == iid \
                    and p.name == new_host and started_log != started_log:
                started_log = line.ts - t0

    # restart the victim; wait for health and a settled plan, counting plan changes
    before = placement_of(leader, timeout=3.0)
    epoch_before_restart = before["epoch"] if before else epoch0 + len(plan_epochs_logged)
    t_restart = time.monotonic()
    mesh.start(victim)
    st2, pl2, _, healed_s = wait_settled(mesh, args.replicas, args.settle, args.heal_timeout)
    healed_s = time.monotonic() - t_restart
    final_hosts = sorted(i["peer"] for i in pl2["instances"] if i["service"] == SERVICE)
    return {
        "trial": trial,
        "victim": victim.name,
        "instance": iid,
        "leader": leader.name,
        "new_host": new_host,
        "new_host_role": roles.get(new_host) if new_host else None,
        "running_elsewhere_s": running_any,
        "running_seen_by": running_by,
        "running_leader_view_s": running_leader,
        "detect_api_s": detect_api,
        "detect_leader_log_s": failed_leader,
        "detect_first_log_s": failed_first,
        "plan_commit_log_s": plan_log,
        "plan_seen_s": plan_seen,
        "started_log_s": started_log,
        "epoch_before": epoch0,
        "plans_committed": len(plan_epochs_logged),
        "stale_running_on_dead": stale_running_on_dead,
        "polls": polls,
        "healed_s": healed_s,
        "plan_changes_on_return": pl2["epoch"] - epoch_before_restart,
        "victim_hosts_after_return": victim.name in final_hosts,
        "leader_changed": st2["leader"] != st["leader"],
        "load1": round(load1, 2),
    }


COLUMNS = ["trial", "victim", "instance", "leader", "new_host", "new_host_role",
           "running_elsewhere_s",
           "running_seen_by", "running_leader_view_s", "detect_api_s", "detect_leader_log_s",
           "detect_first_log_s", "plan_commit_log_s", "plan_seen_s", "started_log_s",
           "epoch_before", "plans_committed", "stale_running_on_dead", "polls", "healed_s",
           "plan_changes_on_return", "victim_hosts_after_return", "leader_changed", "load1"]


def parse_args() -> argparse.Namespace:
    p = ml.experiment_parser(__doc__, 5, "mesh size (default 5)")
    p.add_argument("--replicas", type=int, default=4,
                   help="replicas of the service, spread (default 4)")
    p.add_argument("--trials", type=int, default=None,
                   help="kill/restart trials (default 30; 5 with --quick)")
    p.add_argument("--quick", action="store_true", help="short run: 5 trials")
    p.add_argument("--interval", type=float, default=0.05,
                   help="seconds between two polling rounds (default 0.05)")
    p.add_argument("--settle", type=float, default=2.0,
                   help="seconds the plan must stay unchanged, all running, before a kill")
    p.add_argument("--bound", type=float, default=60.0,
                   help="give a trial up after this many seconds (default 60)")
    p.add_argument("--heal-timeout", type=float, default=120.0,
                   help="seconds to wait for a healthy, settled mesh (default 120)")
    p.add_argument("--seed", type=int, default=1, help="RNG seed for choosing victims")
    ml.add_run_options(p, name="reschedule", subnet="127.0.60", first_octet=11)
    ml.add_subnet_option(p, "127.0.60")
    p.add_argument("--keep-logs", type=Path, default=None,
                   help="copy the peers' logs to this directory at the end")
    args = p.parse_args()
    if args.trials is None:
        args.trials = 5 if args.quick else 30
    if args.peers < 3:
        p.error("need at least 3 peers")
    if not 1 <= args.replicas <= args.peers - 1:
        p.error("replicas must be 1 .. peers - 1")
    return args


def leftover_instances(marker: str) -> list[int]:
    """PIDs of instance processes (ours: the marker is in their command) still alive."""
    try:
        import psutil
    except ImportError:  # pragma: no cover
        return []
    out = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if marker in (proc.info.get("cmdline") or []):
            out.append(proc.info["pid"])
    return out


def main() -> int:
    args = parse_args()
    ml.install_sigterm_handler()
    csv_path, json_path = ml.results_paths(args.name)
    info = ml.machine_info()
    load = ml.wait_for_quiet(args.max_load, timeout=900)
    rng = random.Random(args.seed)
    marker = f"nm-resched-{uuid.uuid4().hex[:12]}"
    rows: list[dict[str, Any]] = []
    anomalies: list[str] = []
    started = time.monotonic()
    leftovers: list[int] = []
    with tempfile.TemporaryDirectory(prefix="nm-rs-") as tmp:
        root = Path(tmp)
        key = ml.keygen(root / "cluster.key")
        mesh = Mesh60(args.peers, root, preset=args.preset, key_file=key,
                      first_octet=args.first_octet, prefix="rs", subnet=f"{args.subnet}.")
        try:
            st, up_s = start_mesh(mesh)
            token = read_token(mesh)
            leader = mesh.by_ip(st["leader"].rpartition(":")[0])
            reply = write_retry(leader, manifest(args.replicas, marker), token, 30)
            st, pl, _, deploy_s = wait_settled(mesh, args.replicas, args.settle,
                                               args.heal_timeout)
            print(f"{args.peers} peers up in {up_s:.1f}s (leader {st['leader']}); "
                  f"{SERVICE} x{args.replicas} deployed (revision {reply.get('revision')}), "
                  f"running and settled after {deploy_s:.1f}s on "
                  f"{sorted(i['peer'] for i in pl['instances'])}", flush=True)
            for trial in range(1, args.trials + 1):
                try:
                    r = run_trial(mesh, trial, rng, args)
                except (TimeoutError, RuntimeError) as exc:
                    anomalies.append(f"trial {trial}: {exc}; stopped early")
                    print(f"trial {trial}: {exc}; stopping", flush=True)
                    break
                rows.append(r)
                if r["running_elsewhere_s"] != r["running_elsewhere_s"]:
                    anomalies.append(f"trial {trial}: {r['instance']} not running elsewhere "
                                     f"within {args.bound:.0f}s")
                if r["leader_changed"]:
                    anomalies.append(f"trial {trial}: the Raft leader changed while "
                                     f"{r['victim']} was killed/restarted")
                print(f"trial {trial:3d}/{args.trials}: killed {r['victim']} ({r['instance']}): "
                      f"dead at leader {r['detect_api_s']:.3f}s (log "
                      f"{r['detect_leader_log_s']:.3f}s), plan committed "
                      f"{r['plan_commit_log_s']:.3f}s, running on {r['new_host']} "
                      f"({r['new_host_role']}) "
                      f"{r['running_elsewhere_s']:.3f}s (leader's view "
                      f"{r['running_leader_view_s']:.3f}s); back+settled {r['healed_s']:.1f}s, "
                      f"{r['plan_changes_on_return']} plan changes on return", flush=True)
        finally:
            mesh.close()
            copy_logs(mesh, args.keep_logs)
            # the shims stop instances when their daemon dies (SIGTERM, grace, SIGKILL)
            deadline = time.monotonic() + 15
            while (leftovers := leftover_instances(marker)) and time.monotonic() < deadline:
                time.sleep(0.5)
            for pid in leftovers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
    if leftovers:
        anomalies.append(f"{len(leftovers)} instance processes outlived their peers by 15 s "
                         f"(killed): {leftovers}")
    wall = time.monotonic() - started
    ml.write_csv(csv_path, COLUMNS, ([r[c] for c in COLUMNS] for r in rows))
    res = ml.describe([r["running_elsewhere_s"] for r in rows])
    summary = {
        "experiment": "reschedule",
        "peers": args.peers,
        "replicas": args.replicas,
        "trials": args.trials,
        "trials_done": len(rows),
        "quick": args.quick,
        "seed": args.seed,
        "gossip_preset": args.preset,
        "raft_timing": timing_info(),
        "poll_interval_s": args.interval,
        "settle_s": args.settle,
        "running_elsewhere_s": res,
        "running_leader_view_s": ml.describe([r["running_leader_view_s"] for r in rows]),
        "detect_api_s": ml.describe([r["detect_api_s"] for r in rows]),
        "detect_leader_log_s": ml.describe([r["detect_leader_log_s"] for r in rows]),
        "plan_commit_log_s": ml.describe([r["plan_commit_log_s"] for r in rows]),
        "plan_seen_s": ml.describe([r["plan_seen_s"] for r in rows]),
        "started_log_s": ml.describe([r["started_log_s"] for r in rows]),
        "after_detection": {
            "plan_commit_minus_detect_s": ml.describe(
                [r["plan_commit_log_s"] - r["detect_leader_log_s"] for r in rows]),
            "running_minus_plan_s": ml.describe(
                [r["running_elsewhere_s"] - r["plan_commit_log_s"] for r in rows]),
            **{f"running_minus_plan_s_new_host_{role}": ml.describe(
                [r["running_elsewhere_s"] - r["plan_commit_log_s"] for r in rows
                 if r["new_host_role"] == role]) for role in ("learner", "follower")},
        },
        "healed_s": ml.describe([r["healed_s"] for r in rows]),
        "plan_changes_on_return": ml.describe([r["plan_changes_on_return"] for r in rows]),
        "trials_with_stale_running_on_dead": sum(1 for r in rows if r["stale_running_on_dead"]),
        "not_rescheduled_trials": sum(1 for r in rows
                                      if r["running_elsewhere_s"] != r["running_elsewhere_s"]),
        "targets": {"median_s": TARGET_MEDIAN_S},
        "meets_targets": bool(res.get("n") == args.trials and res["median"] <= TARGET_MEDIAN_S),
        "load1_at_kills": ml.describe([r["load1"] for r in rows]),
        "anomalies": anomalies,
        "wall_s": round(wall, 1),
        "loadavg_when_started": round(load, 2),
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "machine": info,
        "csv": str(csv_path.relative_to(ml.REPO_ROOT)),
    }
    ml.write_json(json_path, summary)
    nan = float("nan")
    print()
    print(f"Rescheduling, {args.peers} peers on loopback, {SERVICE} x{args.replicas} (spread), "
          f"{len(rows)}/{args.trials} SIGKILLs of a non-leader host: the victim's instance ran "
          f"on another peer after median {res.get('median', nan):.3f}s, p90 "
          f"{res.get('p90', nan):.3f}s, max {res.get('max', nan):.3f}s (leader's view median "
          f"{summary['running_leader_view_s'].get('median', nan):.3f}s; dead at the leader "
          f"median {summary['detect_api_s'].get('median', nan):.3f}s, plan committed median "
          f"{summary['plan_commit_log_s'].get('median', nan):.3f}s). Target median <= "
          f"{TARGET_MEDIAN_S}s: {'met' if summary['meets_targets'] else 'NOT met'}. Load "
          f"{load:.2f} at start. Run took {wall:.0f}s. Wrote {csv_path} and {json_path}.")
    for a in anomalies:
        print("anomaly:", a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
