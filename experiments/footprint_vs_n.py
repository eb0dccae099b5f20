"""How does an idle peer's cost grow with the mesh? Traffic, CPU, memory,
convergence, failure detection and failover for 10 to 100 real daemons, then
the simulator and a leader-load model beyond.

For each N in ``--sizes`` (default 10, 25, 50, 100; quick 10, 25), real
``python -m nanomesh peer run`` daemons on 127.0.70.1..N (gossip preset
``lan``, cluster key from ``nanomesh keygen``, Raft defaults: 5 voters):

1. **converge**: the seed starts, then the N-1 others at once; converge_s runs
   from the first start until every peer sees every peer alive, all name one
   Raft leader and term, and the voters are ``voter_goal`` (5 from N = 5 on).
   On 2 cores this includes N Python start-ups competing for the CPU.
2. **idle window**: after ``--settle`` s (default 20), for ``--window`` s
   (default 30; quick 15), per peer:
   - bytes sent per second, counted by the kernel (`_meshlib.NftTraffic`: an
     nftables counter per peer address and class, IP and UDP/TCP headers
     included): gossip UDP, gossip TCP, Raft TCP (7948) and other peer-to-peer
     traffic (the peer API between peers, ...). Answers to this script's own
     API polls (to 127.0.0.1) are left out. Without root or nft the classes
     are empty and only /v1/health's gossip payload counters are reported;
   - CPU in % of one core (psutil user+system time over the window), the Raft
     leader apart from the others;
   - RSS and PSS (/proc/PID/smaps_rollup) at the end of the window;
   - the leader's Raft links (established TCP connections on its Raft port,
     from ``ss``).
3. **failure detection**: ``--kills`` times (default 3; quick 1), SIGKILL a
   random peer that is neither leader nor voter; per survivor, the time until
   its log says ``member VICTIM failed``. Victims stay down (N shrinks by one
   per kill; the voters are untouched).
4. **failover**: SIGKILL the Raft leader, then write through a random survivor
   (``POST /v1/services`` of a replicas = 0 probe, management token) every
   20 ms until one is acknowledged: failover = ack - kill, as
   ``control_failover.py`` measures it.

Then ``--sim-sizes`` (default 1000, 5000; quick 1000) in the simulator
(`nanomesh.sim`: the very gossip core, simulated clock and network, no
processes; ``wire=True`` so every datagram is sealed and counted): gossip
bytes/s per idle peer over 10 simulated s, and the time a profile change takes
to reach 99 % and 100 % of the peers (``convergence.one_run``). And a leader
load model for N up to 10,000: the leader's Raft bytes/s and CPU per Raft link
measured above, times the number of Raft links the leader holds at N (fitted
to the measured counts: N - 1 if every peer follows Raft, constant if only the
voters do).

Writes ``results/footprint_vs_n.csv`` (one row per N), ``.summary.json``
(with the simulator rows and the model) and ``footprint_vs_n.png``.

    .venv/bin/python experiments/footprint_vs_n.py            # full, ~15 min
    .venv/bin/python experiments/footprint_vs_n.py --quick    # N = 10, 25; ~3 min
    .venv/bin/python experiments/footprint_vs_n.py --sizes 10,100 --sim-sizes 1000
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import _meshlib as ml
import control_failover as cf
import convergence
import psutil

from nanomesh.consensus.role_core import RoleConfig
from nanomesh.consensus.voters import voter_goal
from nanomesh.gossip.config import preset
from nanomesh.sim import NetworkModel, Simulator
from nanomesh.transport.apiclient import ApiError, request_json

SUBNET = "127.0.70."
"""This experiment uses 127.0.70.1-250 unless ``--subnet`` names another /24."""

GOALS = {"bytes_per_s_per_peer_at_20": 1500, "cpu_pct_non_leader": 0.5, "cpu_pct_leader": 2.0,
         "rss_mib": 32, "pss_mib": 18, "failover_median_s": 0.5, "failover_max_s": 1.0}
"""Issue 9's goals (bytes at 20 idle peers; CPU in % of one core)."""

MIB = 2**20


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default=None,
                   help="comma-separated mesh sizes of real daemons (default 10,25,50,100; "
                        "quick 10,25)")
    p.add_argument("--sim-sizes", default=None,
                   help="simulated mesh sizes (default 1000,5000; quick 1000; '' for none)")
    p.add_argument("--quick", action="store_true", help="short run (see --sizes, --window)")
    p.add_argument("--settle", type=float, default=20.0,
                   help="seconds between convergence and the idle window (default 20)")
    p.add_argument("--window", type=float, default=None,
                   help="idle window in seconds (default 30; quick 15)")
    p.add_argument("--kills", type=int, default=None,
                   help="failure-detection kills per N (default 3; quick 1)")
    p.add_argument("--preset", default="lan", help="gossip preset (default lan)")
    p.add_argument("--seed", type=int, default=1, help="victim RNG seed (default 1)")
    ml.add_run_options(p, name="footprint_vs_n", subnet=SUBNET.rstrip("."), first_octet=1)
    ml.add_subnet_option(p, SUBNET.rstrip("."))
    args = p.parse_args()
    args.sizes = [int(x) for x in (args.sizes or ("10,25" if args.quick else "10,25,50,100")
                                   ).split(",")]
    sim = args.sim_sizes if args.sim_sizes is not None else ("1000" if args.quick
                                                            else "1000,5000")
    args.sim_sizes = [int(x) for x in sim.split(",") if x]
    args.window = args.window or (15.0 if args.quick else 30.0)
    args.kills = args.kills if args.kills is not None else (1 if args.quick else 3)
    if args.first_octet + max(args.sizes) - 1 > 250:
        p.error(f"at most {251 - args.first_octet} real daemons ({args.subnet}.FIRST-250)")
    return args


# --------------------------------------------------------------------------- the mesh


def settled_leader(mesh: cf.Mesh60, why: list[str] | None = None) -> ml.Peer | None:
    """The leader's peer if every running peer sees every running peer alive
    and names the same leader and term, with the expected number of voters;
    else None, and what is missing appended to `why`."""
    why = why if why is not None else []
    running = [p for p in mesh.peers if p.running]
    names = {p.name for p in running}

    def sees_all_alive(p: ml.Peer) -> bool:
        try:
            members = p.get("/v1/members", timeout=3.0)
        except ApiError:
            return False
        return {m["name"] for m in members if m["state"] == "alive"} == names
    partial = [p.name for p, ok in zip(running, ml.parallel(sees_all_alive, running),
                                        strict=True) if not ok]
    if partial:  # (killed victims may still be listed, as dead)
        why[:] = [f"{len(partial)} peers do not see all {len(names)} alive "
                  f"({', '.join(partial[:5])}...)"]
        return None
    sts = list(cf.statuses(running, timeout=3.0).values())
    if any(s is None for s in sts):
        why[:] = ["a peer's /v1/status did not answer"]
        return None
    keys = Counter((s["leader"], s["term"], len(s["voters"])) for s in sts)  # type: ignore[index]
    want = voter_goal(RoleConfig().target_voters, len(running))
    if len(keys) != 1 or (leader_key := next(iter(keys)))[0] is None or \
            leader_key[2] != want:
        why[:] = [f"(leader, term, voters) seen: {dict(keys.most_common(4))}; "
                  f"want {want} voters"]
        return None
    return mesh.by_ip(str(leader_key[0]).rpartition(":")[0])


def wait_settled(mesh: cf.Mesh60, timeout: float) -> ml.Peer:
    found: list[ml.Peer] = []
    why: list[str] = []

    def ok() -> bool:
        leader = settled_leader(mesh, why)
        if leader is not None:
            found[:] = [leader]
        return leader is not None
    try:
        mesh.wait(ok, timeout, "every peer alive, one leader, the voters in place",
                  interval=0.5)
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}: {'; '.join(why)}") from None
    return found[0]


def best_known_leader(mesh: cf.Mesh60) -> ml.Peer:
    """The leader most running peers name (for an unsettled mesh)."""
    named = Counter(str(s["leader"]) for s in
                    cf.statuses([p for p in mesh.peers if p.running]).values()
                    if s is not None and s.get("leader"))
    if not named:
        raise RuntimeError("no peer knows a Raft leader")
    return mesh.by_ip(named.most_common(1)[0][0].rpartition(":")[0])


def raft_links(ip: str) -> int:
    """Established TCP connections of `ip` on a Raft port: accepted on its
    own, or opened by it to another peer's."""
    out = subprocess.run(["ss", "-Htn", "state", "established"], capture_output=True,
                         text=True).stdout
    count = 0
    for line in out.splitlines():
        cols = line.split()  # Recv-Q Send-Q Local Peer (no State column with a filter)
        if len(cols) < 4 or not cols[2].startswith(f"{ip}:"):
            continue
        if cols[2] == f"{ip}:{ml.RAFT_PORT}" or cols[3].endswith(f":{ml.RAFT_PORT}"):
            count += 1
    return count


# --------------------------------------------------------------------------- one size


def idle_window(mesh: cf.Mesh60, leader: ml.Peer, args: argparse.Namespace,
                traffic: ml.NftTraffic | None) -> dict[str, Any]:
    peers = [p for p in mesh.peers if p.running]
    procs = {p.name: psutil.Process(p.proc.pid) for p in peers}  # type: ignore[union-attr]
    h0 = dict(zip([p.name for p in peers], ml.parallel(lambda p: p.get("/v1/health"), peers),
                  strict=True))
    b0 = traffic.read() if traffic else None
    term0 = _term(leader)
    c0 = {n: pr.cpu_times() for n, pr in procs.items()}
    t0 = time.monotonic()
    load0 = os.getloadavg()[0]
    time.sleep(args.window)
    c1 = {n: pr.cpu_times() for n, pr in procs.items()}
    b1 = traffic.read() if traffic else None
    dt = time.monotonic() - t0
    h1 = dict(zip([p.name for p in peers], ml.parallel(lambda p: p.get("/v1/health"), peers),
                  strict=True))
    mem = {n: ml.smaps_rollup(pr.pid) for n, pr in procs.items()}
    links = raft_links(leader.ip)
    term1 = _term(leader)
    voters = {str(a).rpartition(":")[0] for a in leader.get("/v1/status").get("voters", ())}

    per_peer: list[dict[str, Any]] = []
    for p in peers:
        cpu = (c1[p.name].user + c1[p.name].system - c0[p.name].user - c0[p.name].system)
        row: dict[str, Any] = {
            "peer": p.name, "leader": p is leader, "voter": p.ip in voters,
            "cpu_pct": 100.0 * cpu / dt,
            "rss_mib": mem[p.name]["rss"] / MIB, "pss_mib": mem[p.name]["pss"] / MIB,
            "health_bytes_out_per_s": (h1[p.name]["bytes_out"] - h0[p.name]["bytes_out"]) / dt,
            # Profile churn: how often this peer published its profile (a
            # counter older peers lack: NaN) and pulled another's.
            "profiles_published_per_min": _per_min(h0[p.name], h1[p.name],
                                                   "profiles_published", dt),
            "profiles_pulled_per_min": _per_min(h0[p.name], h1[p.name], "profiles_pulled", dt),
            # Why it published (`nanomesh.discovery.publish.PublishStats`):
            # live values, a capacity fall, a static change; the rest of the
            # publications came from the control plane's sections (Raft role
            # or term, instances, bundles).
            **{f"profile_{why}_per_min": _per_min(h0[p.name], h1[p.name], why, dt, "profile")
               for why in ("live", "fell", "static", "carried")},
        }
        if b0 is not None and b1 is not None:
            for cls in ml.TRAFFIC_CLASSES:
                row[f"{cls}_per_s"] = (b1[p.ip][cls] - b0[p.ip][cls]) / dt
            row["bytes_per_s"] = sum(row[f"{c}_per_s"] for c in ml.TRAFFIC_CLASSES)
        per_peer.append(row)
    return {"per_peer": per_peer, "window_s": dt, "load_at_window": load0,
            "leader_raft_links": links,
            "raft_terms_in_window": term1 - term0 if term0 is not None and term1 is not None
            else float("nan")}


def _term(peer: ml.Peer) -> int | None:
    try:
        return int(peer.get("/v1/status")["term"])
    except (ApiError, KeyError, TypeError, ValueError):
        return None


def _per_min(h0: dict[str, Any], h1: dict[str, Any], counter: str, dt: float,
             group: str = "counters") -> float:
    """A `/v1/health` counter's rate per minute over the window (NaN if the
    peer does not report it)."""
    c0, c1 = h0.get(group, {}), h1.get(group, {})
    if counter not in c0 or counter not in c1:
        return float("nan")
    return 60.0 * (c1[counter] - c0[counter]) / dt


def detect(mesh: cf.Mesh60, victim: ml.Peer, bound: float) -> list[float]:
    """SIGKILL `victim`; seconds until each survivor logs it failed."""
    survivors = [p for p in mesh.peers if p.running and p is not victim]
    for p in survivors:
        p.tail.skip_to_end()
    t0 = mesh.kill(victim)
    seen: dict[str, float] = {}
    deadline = time.monotonic() + bound
    while len(seen) < len(survivors) and time.monotonic() < deadline:
        time.sleep(0.2)
        for p in survivors:
            for line in p.tail.read():
                m = ml.FAILED_RE.match(line.msg)
                if m and m.group(1) == victim.name and p.name not in seen:
                    seen[p.name] = line.ts - t0
    return sorted(seen.values())


def failover(mesh: cf.Mesh60, leader: ml.Peer, token: str, rng: random.Random,
             bound: float = 30.0) -> float:
    """SIGKILL the leader; seconds until a write through a survivor is acknowledged."""
    writer = rng.choice([p for p in mesh.peers if p.running and p is not leader])
    t0 = mesh.kill(leader)
    attempt = 0
    while time.time() - t0 < bound:
        attempt += 1
        start = time.time()
        try:
            request_json("POST", writer.api, "/v1/services",
                         cf.probe_manifest(f"fvn-probe-{attempt}"), token=token, timeout=2.0)
            return time.time() - t0
        except ApiError:
            time.sleep(max(0.0, 0.02 - (time.time() - start)))
    return float("nan")


def one_size(n: int, args: argparse.Namespace, rng: random.Random) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"nm-fvn{n}-") as tmp:
        root = Path(tmp)
        key = ml.keygen(root / "cluster.key")
        mesh = cf.Mesh60(n, root, preset=args.preset, key_file=key,
                         first_octet=args.first_octet, prefix="p", subnet=f"{args.subnet}.")
        counting = ml.NftTraffic.available()
        traffic = ml.NftTraffic([p.ip for p in mesh.peers]) if counting else None
        try:
            if traffic:
                traffic.__enter__()
            t0 = time.monotonic()
            mesh.launch()
            unsettled = ""
            try:
                leader = wait_settled(mesh, timeout=60 + n)
                converge_s = time.monotonic() - t0
                print(f"N={n}: converged in {converge_s:.1f}s (leader {leader.name}); "
                      f"settling {args.settle:.0f}s", flush=True)
            except TimeoutError as exc:
                # On a machine too small for N daemons the views never agree at
                # once (probes time out under load): measure the idle cost all
                # the same; detection and failover would mean nothing.
                unsettled, converge_s = str(exc), float("nan")
                print(f"N={n}: NOT converged ({exc}); measuring the idle cost anyway",
                      flush=True)
            time.sleep(args.settle)
            detections: list[list[float]] = []
            fail_s = float("nan")
            if unsettled:
                leader = best_known_leader(mesh)
                idle = idle_window(mesh, leader, args, traffic)
            else:
                leader = wait_settled(mesh, timeout=60)
                idle = idle_window(mesh, leader, args, traffic)
                token = cf.read_token(mesh)
                voters = {str(a).rpartition(":")[0] for a in
                          mesh.peers[0].get("/v1/status")["voters"]}
                for _ in range(args.kills):
                    candidates = [p for p in mesh.peers if p.running and p.ip not in voters]
                    if not candidates:
                        break
                    detections.append(detect(mesh, rng.choice(candidates), bound=30.0))
                leader = wait_settled(mesh, timeout=60)
                fail_s = failover(mesh, leader, token, rng)
        finally:
            mesh.close()
            if traffic:
                traffic.__exit__(None, None, None)
    row = summarise(n, converge_s, idle, detections, fail_s, counting)
    row["unsettled"] = unsettled
    return row


def summarise(n: int, converge_s: float, idle: dict[str, Any], detections: list[list[float]],
              fail_s: float, counting: bool) -> dict[str, Any]:
    rows = idle["per_peer"]
    lead = next(r for r in rows if r["leader"])
    others = [r for r in rows if not r["leader"]]
    voters = [r for r in others if r.get("voter")]
    learners = [r for r in others if not r.get("voter")]

    def med(key: str, rs: list[dict[str, Any]] = others) -> float:
        return statistics.median(float(r[key]) for r in rs) if rs and key in rs[0] else \
            float("nan")

    per_kill_median = [statistics.median(d) for d in detections if d]
    out: dict[str, Any] = {
        "n": n, "converge_s": converge_s,
        "bytes_per_s_others_median": med("bytes_per_s"),
        "bytes_per_s_leader": lead.get("bytes_per_s", float("nan")),
        "bytes_per_s_mean": statistics.fmean(float(r.get("bytes_per_s", float("nan")))
                                             for r in rows),
        "raft_per_s_others_median": med("raft_per_s"),
        "raft_per_s_leader": lead.get("raft_per_s", float("nan")),
        "gossip_per_s_others_median": med("gossip_udp_per_s") + med("gossip_tcp_per_s"),
        "other_per_s_others_median": med("other_per_s"),
        "health_bytes_out_per_s_median": med("health_bytes_out_per_s", rows),
        "profiles_published_per_min_median": med("profiles_published_per_min", rows),
        "profiles_published_per_min_mesh": sum(float(r["profiles_published_per_min"])
                                               for r in rows),
        "profiles_pulled_per_min_median": med("profiles_pulled_per_min", rows),
        **{f"profile_{why}_per_min_mesh": sum(float(r[f"profile_{why}_per_min"]) for r in rows)
           for why in ("live", "fell", "static", "carried")},
        "raft_terms_in_window": idle["raft_terms_in_window"],
        "cpu_pct_others_median": med("cpu_pct"),
        # The roles apart (issue 9): a voter runs the Raft loop, a learner does not.
        "bytes_per_s_voters_median": med("bytes_per_s", voters),
        "raft_per_s_voters_median": med("raft_per_s", voters),
        "cpu_pct_voters_median": med("cpu_pct", voters),
        "bytes_per_s_learners_median": med("bytes_per_s", learners),
        "cpu_pct_learners_median": med("cpu_pct", learners),
        "cpu_pct_others_max": max(float(r["cpu_pct"]) for r in others),
        "cpu_pct_leader": lead["cpu_pct"],
        "rss_mib_median": med("rss_mib", rows), "pss_mib_median": med("pss_mib", rows),
        "leader_raft_links": idle["leader_raft_links"],
        "detect_median_s": statistics.median(per_kill_median) if per_kill_median
        else float("nan"),
        "detect_all_max_s": max((max(d) for d in detections if d), default=float("nan")),
        "detect_kills": len(detections),
        "failover_s": fail_s,
        "window_s": idle["window_s"], "load_at_window": idle["load_at_window"],
        "kernel_counters": counting,
    }
    return out


# --------------------------------------------------------------------------- simulator and model


def simulate(n: int, args: argparse.Namespace) -> dict[str, Any]:
    """Idle gossip bytes per peer (sealed) and profile convergence at `n`."""
    names = [f"s{i:05d}" for i in range(n)]
    t = time.perf_counter()
    sim = Simulator(args.seed, preset(args.preset), NetworkModel(), wire=True)
    sim.add_converged(names, profile=convergence.base_profile)
    sim.run_for(2.0)
    before = {k: nd.bytes_out for k, nd in sim.nodes.items()}
    sim.run_for(10.0)
    per_peer = [(nd.bytes_out - before[k]) / 10.0 for k, nd in sim.nodes.items()]
    wall = time.perf_counter() - t
    del sim
    conv = convergence.one_run(n, args.seed, argparse.Namespace(
        preset=args.preset, drop=0.0, settle=2.0, limit=5.0, step=0.01))
    return {"n": n, "gossip_bytes_per_s_per_peer": statistics.fmean(per_peer),
            "t99_s": conv["t99_s"], "t100_s": conv["t100_s"], "sim_wall_s": round(wall, 1)}


def leader_model(rows: list[dict[str, Any]], sizes: list[int]) -> dict[str, Any]:
    """Leader Raft bytes/s and extra CPU at `sizes`, from the measured cost per
    Raft link and a least-squares line through the measured link counts."""
    pts = [(r["n"], r["leader_raft_links"]) for r in rows]
    per_link = [r["raft_per_s_leader"] / r["leader_raft_links"] for r in rows
                if r["leader_raft_links"]]
    cpu_per_link = [(r["cpu_pct_leader"] - r["cpu_pct_others_median"]) / r["leader_raft_links"]
                    for r in rows if r["leader_raft_links"]]
    if len(pts) < 2 or not per_link:
        return {}
    mean_n = statistics.fmean(n for n, _ in pts)
    mean_l = statistics.fmean(link for _, link in pts)
    var = sum((n - mean_n) ** 2 for n, _ in pts)
    slope = sum((n - mean_n) * (link - mean_l) for n, link in pts) / var if var else 0.0
    bps = statistics.median(per_link)
    cpu = statistics.median(cpu_per_link)

    def links(n: int) -> float:
        return max(0.0, mean_l + slope * (n - mean_n))
    return {"links_fit": {"slope_per_peer": round(slope, 4),
                          "intercept": round(mean_l - slope * mean_n, 2)},
            "raft_bytes_per_s_per_link": round(bps, 1),
            "leader_extra_cpu_pct_per_link": round(cpu, 4),
            "at": {str(n): {"raft_links": round(links(n), 1),
                            "leader_raft_bytes_per_s": round(bps * links(n)),
                            "leader_extra_cpu_pct": round(cpu * links(n), 2)}
                   for n in sizes}}


# --------------------------------------------------------------------------- output


def plot(rows: list[dict[str, Any]], sims: list[dict[str, Any]], out: Path) -> Path | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ns = [r["n"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.plot(ns, [r["bytes_per_s_leader"] for r in rows], "o-", label="leader, all traffic")
    ax1.plot(ns, [r["bytes_per_s_others_median"] for r in rows], "s-",
             label="others (median), all traffic")
    ax1.plot(ns, [r["raft_per_s_others_median"] for r in rows], "^:",
             label="others (median), Raft only")
    if sims:
        ax1.plot([s["n"] for s in sims], [s["gossip_bytes_per_s_per_peer"] for s in sims],
                 "x--", label="simulator: gossip per peer")
    ax1.axhline(GOALS["bytes_per_s_per_peer_at_20"], color="grey", lw=0.8, ls="--",
                label="goal per peer (at 20)")
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("peers (N)")
    ax1.set_ylabel("bytes sent per second (IP packets)")
    ax1.legend(fontsize=7)
    ax2.plot(ns, [r["cpu_pct_leader"] for r in rows], "o-", label="leader")
    ax2.plot(ns, [r["cpu_pct_others_median"] for r in rows], "s-", label="others (median)")
    ax2.axhline(GOALS["cpu_pct_leader"], color="C0", lw=0.8, ls="--", label="goal, leader")
    ax2.axhline(GOALS["cpu_pct_non_leader"], color="C1", lw=0.8, ls="--", label="goal, others")
    ax2.set_xlabel("peers (N), all on 2 cores")
    ax2.set_ylabel("CPU, % of one core")
    ax2.legend(fontsize=7)
    fig.suptitle("Idle nanomesh peer: cost vs mesh size (real daemons on loopback)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


COLUMNS = ["n", "converge_s", "bytes_per_s_others_median", "bytes_per_s_leader",
           "bytes_per_s_mean", "raft_per_s_others_median", "raft_per_s_leader",
           "gossip_per_s_others_median", "other_per_s_others_median",
           "health_bytes_out_per_s_median", "profiles_published_per_min_median",
           "profiles_published_per_min_mesh", "profiles_pulled_per_min_median",
           "profile_live_per_min_mesh", "profile_fell_per_min_mesh",
           "profile_static_per_min_mesh", "profile_carried_per_min_mesh",
           "raft_terms_in_window", "cpu_pct_others_median", "cpu_pct_others_max",
           "cpu_pct_leader", "bytes_per_s_voters_median", "raft_per_s_voters_median",
           "cpu_pct_voters_median", "bytes_per_s_learners_median", "cpu_pct_learners_median",
           "rss_mib_median", "pss_mib_median", "leader_raft_links",
           "detect_median_s", "detect_all_max_s", "detect_kills", "failover_s", "window_s",
           "load_at_window", "kernel_counters", "unsettled"]


def main() -> int:
    args = parse_args()
    ml.install_sigterm_handler()
    csv_path, json_path = ml.results_paths(args.name)
    info = ml.machine_info()
    load = ml.wait_for_quiet(args.max_load, timeout=900)
    started = time.monotonic()
    rng = random.Random(args.seed)
    rows = []
    failed: list[dict[str, Any]] = []
    for n in args.sizes:
        try:
            row = one_size(n, args, rng)
        except (TimeoutError, RuntimeError) as exc:
            # A mesh this machine cannot run (no leader under CPU starvation):
            # a result too, recorded as such; the larger sizes are skipped.
            print(f"N={n}: FAILED: {exc}", flush=True)
            failed.append({"n": n, "error": str(exc), "loadavg": os.getloadavg()[0]})
            break
        rows.append(row)
        print(f"N={n}: per peer {row['bytes_per_s_others_median']:.0f} B/s (leader "
              f"{row['bytes_per_s_leader']:.0f}; Raft {row['raft_per_s_others_median']:.0f} / "
              f"{row['raft_per_s_leader']:.0f}, {row['leader_raft_links']} leader links), CPU "
              f"{row['cpu_pct_others_median']:.2f}% (leader {row['cpu_pct_leader']:.2f}%), "
              f"voters {row['bytes_per_s_voters_median']:.0f} B/s "
              f"{row['cpu_pct_voters_median']:.2f}%, learners "
              f"{row['bytes_per_s_learners_median']:.0f} B/s "
              f"{row['cpu_pct_learners_median']:.2f}%, "
              f"RSS/PSS {row['rss_mib_median']:.1f}/{row['pss_mib_median']:.1f} MiB, profiles "
              f"published {row['profiles_published_per_min_mesh']:.1f}/min in all, pulled "
              f"{row['profiles_pulled_per_min_median']:.1f}/min per peer, detect "
              f"{row['detect_median_s']:.2f}s, failover {row['failover_s']:.3f}s", flush=True)
        ml.write_csv(csv_path, COLUMNS, [[r[c] for c in COLUMNS] for r in rows])
    sims = []
    for n in args.sim_sizes:
        sims.append(simulate(n, args))
        print(f"simulator N={n}: gossip {sims[-1]['gossip_bytes_per_s_per_peer']:.0f} B/s per "
              f"peer; profile change at 99% {sims[-1]['t99_s']:.3f}s, 100% "
              f"{sims[-1]['t100_s']:.3f}s ({sims[-1]['sim_wall_s']}s wall)", flush=True)
    model = leader_model(rows, [100, 1000, 10000])
    png = plot(rows, sims, ml.RESULTS_DIR / f"{args.name}.png")
    wall = time.monotonic() - started
    summary = {
        "experiment": "footprint_vs_n", "quick": args.quick, "preset": args.preset,
        "sizes": args.sizes, "settle_s": args.settle, "window_s": args.window,
        "rows": rows, "failed_sizes": failed, "simulator": sims, "leader_model": model,
        "goals": GOALS,
        "note": "all N daemons share this machine's cores; bytes are IP packets (headers "
                "included) counted by nftables per peer address, answers to the script's "
                "own API polls excluded",
        "loadavg_when_started": round(load, 2), "wall_s": round(wall, 1), "machine": info,
        "csv": str(csv_path.relative_to(ml.REPO_ROOT)),
        "plot": str(png.relative_to(ml.REPO_ROOT)) if png else None,
    }
    ml.write_json(json_path, summary)
    print()
    at = model.get("at", {})
    print(f"Footprint vs N ({', '.join(map(str, args.sizes))} real daemons, "
          f"{os.cpu_count()} cores): per idle peer "
          + "; ".join(f"N={r['n']} {r['bytes_per_s_others_median']:.0f} B/s, "
                      f"{r['cpu_pct_others_median']:.2f}% CPU (leader "
                      f"{r['bytes_per_s_leader']:.0f} B/s, {r['cpu_pct_leader']:.2f}%)"
                      for r in rows)
          + ". Leader model: "
          + "; ".join(f"N={k}: {v['leader_raft_bytes_per_s']} B/s Raft, "
                      f"+{v['leader_extra_cpu_pct']}% CPU" for k, v in at.items())
          + f". Run took {wall:.0f}s. Wrote {csv_path}, {json_path}"
          + (f" and {png}." if png else "."))
    return 0


if __name__ == "__main__":
    sys.exit(main())
