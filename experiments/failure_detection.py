"""How fast does the mesh declare a crashed peer dead?

Starts N real peer daemons on loopback (127.0.20.1..N, one cluster key made by
``python -m nanomesh keygen``, gossip preset ``lan`` by default), waits until
every peer sees every peer alive, then runs T trials. Each trial SIGKILLs one
random non-seed peer (recording the wall time of the kill with time.time())
and reads the surviving peers' logs for ``member VICTIM failed`` lines written
after the kill: the log stamps (local wall time, ms) say when each survivor
declared the victim dead, so measuring puts no load on the peers. Then the
victim is restarted with the same name and address, the script waits until
every peer sees all N alive again, lets the mesh settle 2 s, and goes on.

Per trial (CSV): trial, victim, first_detect_s (first survivor to mark it dead),
all_detect_s (last survivor to do so), and diagnostics. Summary: median, p99
(nearest rank: with 50 trials it is the maximum) and max of all_detect_s.
Targets for ``lan``: median <= 1.5 s, p99 <= 3 s. ``--preset memberlist-lan``
runs memberlist's DefaultLANConfig timings for comparison (expected ~5-6 s).

    .venv/bin/python experiments/failure_detection.py            # full: N=20, 50 trials
    .venv/bin/python experiments/failure_detection.py --quick    # 5 trials
    .venv/bin/python experiments/failure_detection.py --preset memberlist-lan --trials 5
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import _meshlib as ml

TARGET_MEDIAN_S = 1.5
TARGET_P99_S = 3.0


def parse_args() -> argparse.Namespace:
    p = ml.experiment_parser(__doc__, 20, "mesh size (default 20)")
    p.add_argument("--trials", type=int, default=None,
                   help="kill/restart trials (default 50; 5 with --quick)")
    p.add_argument("--quick", action="store_true", help="short run: 5 trials")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds to wait for all survivors to detect a kill "
                   "(default 30, 90 for memberlist-lan)")
    p.add_argument("--settle", type=float, default=2.0,
                   help="seconds of quiet after the victim is back, before the next kill")
    p.add_argument("--seed", type=int, default=1, help="RNG seed for choosing victims")
    ml.add_run_options(p, name=None, name_help="result file stem (default "
                       "failure_detection[_PRESET])", subnet="127.0.20", first_octet=1)
    ml.add_subnet_option(p, "127.0.20")
    p.add_argument("--keep-logs", type=Path, default=None,
                   help="copy the peers' logs to this directory at the end")
    args = p.parse_args()
    if args.trials is None:
        args.trials = 5 if args.quick else 50
    if args.timeout is None:
        args.timeout = 90.0 if args.preset == "memberlist-lan" else 30.0
    if args.name is None:
        args.name = "failure_detection" + ("" if args.preset == "lan" else f"_{args.preset}")
    if args.peers < 3:
        p.error("need at least 3 peers")
    return args


def run_trial(mesh: ml.LoopbackMesh, victim: ml.Peer, timeout: float) -> dict[str, object]:
    survivors = [p for p in mesh.peers if p is not victim]
    for p in survivors:  # everything logged so far is history
        p.tail.skip_to_end()
    load1 = os.getloadavg()[0]
    kill_time = mesh.kill(victim)
    failed_at: dict[str, float] = {}
    suspected_at: dict[str, float] = {}
    declared_by: set[str] = set()
    other_failures: list[str] = []
    refutations = 0
    deadline = time.monotonic() + timeout
    while len(failed_at) < len(survivors) and time.monotonic() < deadline:
        time.sleep(0.1)
        for p in survivors:
            for line in p.tail.read():
                if (m := ml.FAILED_RE.match(line.msg)) is not None:
                    if m.group(1) == victim.name:
                        failed_at.setdefault(p.name, line.ts)
                        declared_by.add(m.group(2))
                    else:
                        other_failures.append(f"{p.name}: {line.msg}")
                elif (m := ml.SUSPECTED_RE.match(line.msg)) is not None:
                    if m.group(1) == victim.name:
                        suspected_at.setdefault(p.name, line.ts)
                elif ml.REFUTED_RE.match(line.msg):
                    refutations += 1
    detect = sorted(t - kill_time for t in failed_at.values())
    suspect = sorted(t - kill_time for t in suspected_at.values())
    missing = sorted(p.name for p in survivors if p.name not in failed_at)
    return {
        "kill_time": kill_time,
        "first_detect_s": detect[0] if detect else float("nan"),
        "all_detect_s": detect[-1] if not missing else float("nan"),
        "median_peer_detect_s": detect[len(detect) // 2] if detect else float("nan"),
        "first_suspect_s": suspect[0] if suspect else float("nan"),
        "detected_by": len(failed_at),
        "missing": missing,
        "declared_by": sorted(declared_by),
        "other_failures": other_failures,
        "refutations": refutations,
        "load1": load1,
    }


def main() -> int:
    args = parse_args()
    ml.install_sigterm_handler()
    csv_path, json_path = ml.results_paths(args.name)
    info = ml.machine_info()
    load = ml.wait_for_quiet(args.max_load, timeout=900)
    rng = random.Random(args.seed)
    rows: list[list[object]] = []
    anomalies: list[str] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="nm-fd-") as tmp:
        root = Path(tmp)
        key = ml.keygen(root / "cluster.key")
        mesh = ml.LoopbackMesh(args.peers, root, preset=args.preset, key_file=key,
                               first_octet=args.first_octet, subnet=f"{args.subnet}.")
        try:
            converge_s = mesh.start_all(timeout=60)
            print(f"{args.peers} peers ({args.preset}) converged in {converge_s:.1f}s; "
                  f"settling 5s", flush=True)
            time.sleep(5)
            for trial in range(1, args.trials + 1):
                victim = rng.choice(mesh.peers[1:])
                r = run_trial(mesh, victim, args.timeout)
                if r["missing"]:
                    anomalies.append(f"trial {trial}: {victim.name} not declared dead within "
                                     f"{args.timeout:.0f}s by {r['missing']}")
                if r["other_failures"]:
                    anomalies.append(f"trial {trial}: live peers declared dead: "
                                     f"{r['other_failures']}")
                mesh.start(victim)
                try:
                    rejoin_s = mesh.wait_converged(timeout=60)
                except (TimeoutError, RuntimeError) as exc:
                    # keep what was measured: record the trial and stop
                    anomalies.append(f"trial {trial}: mesh not whole again after restarting "
                                     f"{victim.name}: {exc}; stopped early")
                    rejoin_s = float("nan")
                    stop = True
                else:
                    stop = False
                rows.append([trial, victim.name, r["first_detect_s"], r["all_detect_s"],
                             r["median_peer_detect_s"], r["first_suspect_s"], r["detected_by"],
                             len(r["declared_by"]), len(r["other_failures"]),
                             r["refutations"], rejoin_s, round(float(r["load1"]), 2)])  # type: ignore[arg-type]
                print(f"trial {trial:3d}/{args.trials}: killed {victim.name}: first "
                      f"{r['first_detect_s']:.3f}s all {r['all_detect_s']:.3f}s "
                      f"({r['detected_by']}/{args.peers - 1} peers, "
                      f"{len(r['declared_by'])} declarers); back in {rejoin_s:.1f}s",
                      flush=True)
                if stop:
                    break
                time.sleep(args.settle)
        finally:
            mesh.close()
            if args.keep_logs is not None:
                import shutil
                args.keep_logs.mkdir(parents=True, exist_ok=True)
                for p in mesh.peers:
                    if p.log_path.exists():
                        shutil.copy(p.log_path, args.keep_logs / p.log_path.name)
    wall = time.monotonic() - started
    header = ["trial", "victim", "first_detect_s", "all_detect_s", "median_peer_detect_s",
              "first_suspect_s", "survivors_detecting", "declarers", "other_failures",
              "refutations", "rejoin_s", "load1"]
    ml.write_csv(csv_path, header, rows)
    all_d = [float(r[3]) for r in rows]  # type: ignore[arg-type]
    first_d = [float(r[2]) for r in rows]  # type: ignore[arg-type]
    all_s, first_s = ml.describe(all_d), ml.describe(first_d)
    summary = {
        "experiment": "failure_detection",
        "peers": args.peers,
        "trials": args.trials,
        "preset": args.preset,
        "quick": args.quick,
        "seed": args.seed,
        "all_detect_s": all_s,
        "first_detect_s": first_s,
        "first_suspect_s": ml.describe([float(r[5]) for r in rows]),  # type: ignore[arg-type]
        "rejoin_s": ml.describe([float(r[10]) for r in rows]),  # type: ignore[arg-type]
        "undetected_trials": sum(1 for v in all_d if v != v),
        "targets": {"median_s": TARGET_MEDIAN_S, "p99_s": TARGET_P99_S},
        "meets_targets": bool(all_s.get("n") and all_s["median"] <= TARGET_MEDIAN_S
                              and all_s["p99"] <= TARGET_P99_S
                              and all_s["n"] == args.trials),
        "anomalies": anomalies,
        "wall_s": round(wall, 1),
        "loadavg_when_started": round(load, 2),
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "machine": info,
        "csv": str(csv_path.relative_to(ml.REPO_ROOT)),
    }
    ml.write_json(json_path, summary)
    print()
    print(f"Failure detection, {args.peers} peers on loopback, preset {args.preset}, "
          f"{args.trials} SIGKILL trials (seed {args.seed}): every survivor marked the victim "
          f"dead after median {all_s.get('median', float('nan')):.3f}s, p99 "
          f"{all_s.get('p99', float('nan')):.3f}s, max {all_s.get('max', float('nan')):.3f}s "
          f"(first survivor: median {first_s.get('median', float('nan')):.3f}s); "
          f"{summary['undetected_trials']} trials not fully detected, "
          f"{len(anomalies)} anomalies. Targets median <= {TARGET_MEDIAN_S}s, p99 <= "
          f"{TARGET_P99_S}s: {'met' if summary['meets_targets'] else 'NOT met'}. "
          f"Run took {wall:.0f}s. Wrote {csv_path} and {json_path}.")
    for a in anomalies:
        print("anomaly:", a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
