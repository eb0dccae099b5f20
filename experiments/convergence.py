"""How fast does a changed capability profile reach every peer, as the mesh grows?

Uses the deterministic simulator (`nanomesh.sim`: the real `Membership` cores,
simulated clock and network; no processes). For each mesh size N and seed it
builds an already-converged mesh with ``Simulator.add_converged`` (gossip
preset ``lan``; default `NetworkModel`: 0.5 ms latency + up to 0.5 ms jitter,
``--drop`` adds datagram loss), runs 2 simulated seconds to settle, then one
random peer publishes a new profile (``Simulator.update_profile``). The
profile version travels by gossip; each peer then pulls the profile over
(simulated) TCP. Coverage is tracked cheaply with the simulator's ``on_event``
hook, which sees every ``ProfileUpdated`` notification (a peer accepted the
new version), while the simulation advances in 10 ms steps; at the end the
count is cross-checked against every peer's ``member(name).held_version``.

Recorded per run (CSV): simulated seconds until 50 %, 99 %, 99.99 % and 100 %
of the other N-1 peers hold the new version (a fraction f needs
ceil(f * (N-1)) peers, so below 10,000 peers 99.99 % means all of them), and
the wall time to build and to simulate. Target: 99.99 % within 2 s at 1000
peers. The measurement window ends ``--limit`` s after the change (default 5 s,
so that it ends before the first periodic push-pull at >= 7.5 s, which at
5000 peers would exchange the whole table and dominate the run time).

    .venv/bin/python experiments/convergence.py                 # full: 10,100,1000,5000 x 5 seeds
    .venv/bin/python experiments/convergence.py --quick         # 2 seeds
    .venv/bin/python experiments/convergence.py --sizes 10,100 --seeds 3 --drop 0.05

Building a converged 5000-peer mesh takes about 1.5 minutes and 5 GiB here:
``add_converged`` is O(N^2) (every peer holds every other), see the README.
"""

from __future__ import annotations

import argparse
import gc
import math
import random
import sys
import time

import _meshlib as ml
import psutil

from nanomesh.gossip.config import PRESETS, preset
from nanomesh.gossip.effects import ProfileUpdated
from nanomesh.sim import NetworkModel, Simulator, TraceEvent

FRACTIONS = (("t50_s", 0.5), ("t99_s", 0.99), ("t9999_s", 0.9999), ("t100_s", 1.0))
TARGET_N = 1000
TARGET_S = 2.0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10,100,1000,5000",
                   help="comma-separated mesh sizes (default 10,100,1000,5000)")
    p.add_argument("--seeds", type=int, default=None,
                   help="seeds per size, 1..S (default 5; 2 with --quick)")
    p.add_argument("--quick", action="store_true", help="short run: 2 seeds per size")
    p.add_argument("--drop", type=float, default=0.0,
                   help="probability that the simulated network drops a datagram")
    p.add_argument("--preset", default="lan", choices=list(PRESETS))
    p.add_argument("--settle", type=float, default=2.0,
                   help="simulated seconds between building the mesh and the change")
    p.add_argument("--limit", type=float, default=5.0,
                   help="simulated seconds to follow the change (default 5)")
    p.add_argument("--step", type=float, default=0.01,
                   help="simulated seconds between coverage checks (default 0.01)")
    p.add_argument("--name", default="convergence", help="result file stem")
    p.add_argument("--max-load", type=float, default=1.5,
                   help="wait until the 1-min load average is below this (wall times)")
    args = p.parse_args()
    if args.seeds is None:
        args.seeds = 2 if args.quick else 5
    args.sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if any(n < 2 for n in args.sizes):
        p.error("sizes must be at least 2")
    return args


def base_profile(name: str) -> dict[str, object]:
    return {"peer": {"name": name}, "cpu": {"cores": 4, "arch": "aarch64"},
            "memory": {"total_mb": 3906, "available_mb": 3100}, "devices": []}


def one_run(n: int, seed: int, args: argparse.Namespace) -> dict[str, object]:
    names = [f"p{i:05d}" for i in range(n)]
    t_build = time.perf_counter()
    sim = Simulator(seed, preset(args.preset), NetworkModel(drop=args.drop))
    sim.add_converged(names, profile=base_profile)
    build_s = time.perf_counter() - t_build
    rss_gib = psutil.Process().memory_info().rss / 2**30

    t_sim = time.perf_counter()
    sim.run_for(args.settle)
    target = random.Random(seed).choice(names)
    changed = base_profile(target)
    changed["devices"] = [{"type": "camera", "path": "/dev/video0"}]
    # Simulator.update_profile applies the core's effects (sim._apply) for us.
    sim.update_profile(target, changed)
    version = sim.core(target).me.profile_version
    t0 = sim.now
    got: dict[str, float] = {}

    def on_event(ev: TraceEvent) -> None:
        e = ev.event
        if (isinstance(e, ProfileUpdated) and e.name == target and ev.node != target
                and e.version >= version and ev.node not in got):
            got[ev.node] = ev.time - t0

    sim.on_event = on_event
    others = n - 1
    end = t0 + args.limit
    while len(got) < others and sim.now < end - 1e-12:
        sim.run_until(min(end, sim.now + args.step))
    sim_s = time.perf_counter() - t_sim

    holding = sum(1 for o in names if o != target
                  and (m := sim.core(o).member(target)) is not None and m.held_version >= version)
    times = sorted(got.values())
    row: dict[str, object] = {"n": n, "seed": seed, "target": target}
    for key, frac in FRACTIONS:
        k = max(1, math.ceil(frac * others))
        row[key] = times[k - 1] if len(times) >= k else float("nan")
    datagrams = sum(nd.datagrams_out for nd in sim.nodes.values())
    row.update({"reached": len(got), "others": others, "held_check": holding,
                "sim_end_s": round(sim.now - t0, 3), "build_wall_s": round(build_s, 2),
                "sim_wall_s": round(sim_s, 2), "rss_gib": round(rss_gib, 2),
                "datagrams_total": datagrams, "drop": args.drop})
    sim.on_event = None
    del sim
    gc.collect()
    return row


def main() -> int:
    args = parse_args()
    csv_path, json_path = ml.results_paths(args.name)
    info = ml.machine_info()
    load = ml.wait_for_quiet(args.max_load, timeout=900)
    started = time.monotonic()
    rows: list[dict[str, object]] = []
    anomalies: list[str] = []
    skipped: list[str] = []
    for n in args.sizes:
        for seed in range(1, args.seeds + 1):
            try:
                row = one_run(n, seed, args)
            except MemoryError:
                skipped.append(f"N={n} seed={seed}: MemoryError")
                print(f"N={n} seed={seed}: out of memory, skipped", flush=True)
                gc.collect()
                break
            rows.append(row)
            if row["held_check"] != row["reached"]:
                anomalies.append(f"N={n} seed={seed}: {row['reached']} ProfileUpdated events "
                                 f"but {row['held_check']} peers hold the version")
            print(f"N={n:5d} seed={seed}: 50% {row['t50_s']:.3f}s 99% {row['t99_s']:.3f}s "
                  f"99.99% {row['t9999_s']:.3f}s 100% {row['t100_s']:.3f}s "
                  f"({row['reached']}/{row['others']}); build {row['build_wall_s']}s "
                  f"sim {row['sim_wall_s']}s rss {row['rss_gib']} GiB", flush=True)
    wall = time.monotonic() - started
    header = ["n", "seed", "target", *(k for k, _ in FRACTIONS), "reached", "others",
              "held_check", "sim_end_s", "build_wall_s", "sim_wall_s", "rss_gib",
              "datagrams_total", "drop"]
    ml.write_csv(csv_path, header, [[r[h] for h in header] for r in rows])
    per_size: dict[str, object] = {}
    for n in args.sizes:
        rs = [r for r in rows if r["n"] == n]
        if not rs:
            continue
        entry: dict[str, object] = {"seeds": len(rs)}
        for key, _ in FRACTIONS:
            entry[key] = ml.describe([float(r[key]) for r in rs])  # type: ignore[arg-type]
        entry["incomplete_runs"] = sum(1 for r in rs if r["reached"] != r["others"])
        entry["build_wall_s_mean"] = round(sum(float(r["build_wall_s"]) for r in rs)  # type: ignore[arg-type]
                                           / len(rs), 2)
        entry["sim_wall_s_mean"] = round(sum(float(r["sim_wall_s"]) for r in rs)  # type: ignore[arg-type]
                                         / len(rs), 2)
        entry["rss_gib_max"] = max(float(r["rss_gib"]) for r in rs)  # type: ignore[arg-type]
        per_size[str(n)] = entry
    tgt = [float(r["t9999_s"]) for r in rows if r["n"] == TARGET_N]  # type: ignore[arg-type]
    meets = bool(tgt) and all(t <= TARGET_S for t in tgt)
    summary = {
        "experiment": "convergence",
        "simulated": True,
        "preset": args.preset,
        "network": {"latency_s": NetworkModel().latency, "jitter_s": NetworkModel().jitter,
                    "drop": args.drop},
        "sizes": args.sizes,
        "seeds": args.seeds,
        "quick": args.quick,
        "settle_s": args.settle,
        "limit_s": args.limit,
        "per_size": per_size,
        "target": f"99.99% of peers within {TARGET_S}s at N={TARGET_N}",
        "meets_target": meets if tgt else None,
        "skipped": skipped,
        "anomalies": anomalies,
        "wall_s": round(wall, 1),
        "peak_rss_gib": round(psutil.Process().memory_info().rss / 2**30, 2),
        "loadavg_when_started": round(load, 2),
        "machine": info,
        "csv": str(csv_path.relative_to(ml.REPO_ROOT)),
    }
    ml.write_json(json_path, summary)
    print()
    parts = []
    for n, e in per_size.items():
        parts.append(f"N={n}: 50% {e['t50_s'].get('median', float('nan')):.3f}s, "  # type: ignore[union-attr,attr-defined]
                     f"99% {e['t99_s'].get('median', float('nan')):.3f}s, "  # type: ignore[union-attr,attr-defined]
                     f"99.99% {e['t9999_s'].get('median', float('nan')):.3f}s "  # type: ignore[union-attr,attr-defined]
                     f"(max {e['t9999_s'].get('max', float('nan')):.3f}s), "  # type: ignore[union-attr,attr-defined]
                     f"100% {e['t100_s'].get('median', float('nan')):.3f}s; "  # type: ignore[union-attr,attr-defined]
                     f"wall {e['build_wall_s_mean']}s build + {e['sim_wall_s_mean']}s sim")
    print(f"Profile convergence in the simulator (preset {args.preset}, drop {args.drop}, "
          f"{args.seeds} seeds per size, medians over seeds): " + "; ".join(parts) + ". "
          f"Target 99.99% within {TARGET_S}s at N={TARGET_N}: "
          f"{'met' if meets else 'NOT met' if tgt else 'not measured'}. "
          f"Run took {wall:.0f}s. Wrote {csv_path} and {json_path}.")
    for a in anomalies + skipped:
        print("note:", a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
