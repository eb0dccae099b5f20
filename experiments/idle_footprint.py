"""What does an idle peer cost: bandwidth, memory and CPU?

Starts N real peer daemons on loopback (127.0.20.101..; gossip preset ``lan``,
cluster key from ``python -m nanomesh keygen``), waits until every peer sees
every peer alive, lets the mesh settle 10 s, then measures over D seconds,
per peer:

- bytes_out/s and bytes_in/s: deltas of ``bytes_out``/``bytes_in`` from each
  peer's ``GET /v1/health`` at the start and end of the window (two requests
  per peer in total, so the measurement adds next to no load; they count
  gossip UDP and TCP payload, not the HTTP API);
- RSS: ``psutil.Process.memory_info().rss`` sampled every 5 s (mean and max),
  plus USS (memory unique to the process, ``memory_full_info().uss``) at the end;
- CPU: (user + system time delta from ``psutil.Process.cpu_times()``) / wall
  time, in % of one core;
- Raft and peer-API bytes (``--port-bytes``, default on as root): nftables
  counters in a table of this script's own (removed at the end), one per
  peer and port, counting every IP packet a peer's address sends from or to
  the Raft port (7948) and the API port (7947; learners' state pulls go
  there), headers included; plus what 127.0.0.1 sends to the peers' API
  port (this script's own 3 requests per peer; before peer calls left from
  the peer's address, a learner's pulls were counted there too).
  ``/v1/health`` counts neither.

The N peers share the machine's cores (2 here), so they are measured together,
and each one's CPU share includes contention with the others. Targets: RSS <=
35 MB (10^6 bytes) and CPU <= 1 % of a core per idle peer.

    .venv/bin/python experiments/idle_footprint.py            # full: N=20, 60 s
    .venv/bin/python experiments/idle_footprint.py --quick    # 15 s
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _meshlib as ml
import psutil

TARGET_RSS_MB = 35.0
TARGET_CPU_PCT = 1.0
MB = 1e6


def parse_args() -> argparse.Namespace:
    p = ml.experiment_parser(__doc__, 20, "mesh size (default 20)")
    p.add_argument("--duration", type=float, default=None,
                   help="measurement window in seconds (default 60; 15 with --quick)")
    p.add_argument("--quick", action="store_true", help="short run: 15 s window")
    p.add_argument("--settle", type=float, default=10.0,
                   help="seconds between convergence and the window (default 10)")
    ml.add_run_options(p, name="idle_footprint", subnet="127.0.20", first_octet=101)
    ml.add_subnet_option(p, "127.0.20")
    p.add_argument("--sample-every", type=float, default=5.0,
                   help="seconds between RSS samples (default 5)")
    p.add_argument("--no-port-bytes", dest="port_bytes", action="store_false",
                   help="skip the nftables byte counters on the Raft and API ports")
    args = p.parse_args()
    if args.duration is None:
        args.duration = 15.0 if args.quick else 60.0
    return args


PORTS = {"raft": 7948, "api": ml.API_PORT}


class PortCounters:
    """nftables byte counters: what each of `ips` sends from or to each of
    `PORTS`, in a table of our own (``nm_idle_<pid>``) deleted by `close`."""

    def __init__(self, ips: list[str]) -> None:
        self.table = f"nm_idle_{os.getpid()}"
        self.ips = ips
        rules = [f"add table ip {self.table}",
                 f"add chain ip {self.table} out {{ type filter hook output priority 0; }}",
                 f"add rule ip {self.table} out ip saddr 127.0.0.1 ip daddr "
                 f"{{ {', '.join(ips)} }} tcp dport {PORTS['api']} counter"]
        for ip in ips:
            for port in PORTS.values():
                for direction in ("sport", "dport"):
                    rules.append(f"add rule ip {self.table} out ip saddr {ip} tcp "
                                 f"{direction} {port} counter")
        subprocess.run(["nft", "-f", "-"], input="\n".join(rules).encode(), check=True)

    def read(self) -> dict[tuple[str, str], int]:
        """(ip, port name) -> bytes sent so far."""
        out = subprocess.run(["nft", "list", "table", "ip", self.table], check=True,
                             capture_output=True, text=True).stdout
        names = {str(v): k for k, v in PORTS.items()}
        totals: dict[tuple[str, str], int] = {}
        for m in re.finditer(r"ip saddr (\S+) tcp [sd]port (\d+) counter packets \d+ "
                             r"bytes (\d+)", out):
            key = (m.group(1), names[m.group(2)])
            totals[key] = totals.get(key, 0) + int(m.group(3))
        m = re.search(r"ip saddr 127\.0\.0\.1 ip daddr .* counter packets \d+ bytes (\d+)", out)
        totals[("127.0.0.1", "api")] = int(m.group(1)) if m else 0
        return totals

    def close(self) -> None:
        subprocess.run(["nft", "delete", "table", "ip", self.table], check=False)


def main() -> int:
    args = parse_args()
    ml.install_sigterm_handler()
    csv_path, json_path = ml.results_paths(args.name)
    info = ml.machine_info()
    load = ml.wait_for_quiet(args.max_load, timeout=900)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="nm-idle-") as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        key = ml.keygen(root / "cluster.key")
        mesh = ml.LoopbackMesh(args.peers, root, preset=args.preset, key_file=key,
                               first_octet=args.first_octet, subnet=f"{args.subnet}.")
        try:
            conv = mesh.start_all(timeout=60)
            print(f"{args.peers} peers ({args.preset}) converged in {conv:.1f}s; settling "
                  f"{args.settle:.0f}s", flush=True)
            time.sleep(args.settle)
            procs = [psutil.Process(p.proc.pid) for p in mesh.peers]  # type: ignore[union-attr]
            counters = stack.enter_context(contextlib.closing(
                PortCounters([p.ip for p in mesh.peers]))) if args.port_bytes else None
            b0 = counters.read() if counters else {}
            h0 = ml.parallel(lambda p: p.get("/v1/health"), mesh.peers)
            c0 = [pr.cpu_times() for pr in procs]
            t0 = time.monotonic()
            load_start = os.getloadavg()[0]
            rss: list[list[int]] = [[] for _ in procs]
            end = t0 + args.duration
            while True:
                for i, pr in enumerate(procs):
                    rss[i].append(pr.memory_info().rss)
                left = end - time.monotonic()
                if left <= 0:
                    break
                time.sleep(min(args.sample_every, left))
            c1 = [pr.cpu_times() for pr in procs]
            t1 = time.monotonic()
            h1 = ml.parallel(lambda p: p.get("/v1/health"), mesh.peers)
            b1 = counters.read() if counters else {}
            roles = ml.parallel(lambda p: p.get("/v1/status").get("role"), mesh.peers)
            uss = [pr.memory_full_info().uss for pr in procs]
            threads = [pr.num_threads() for pr in procs]
            system_cpu = psutil.cpu_percent(interval=None)
            members_ok = mesh.views_converged()
        finally:
            mesh.close()
    wall = time.monotonic() - started
    dt = t1 - t0
    rows = []
    for i, p in enumerate(mesh.peers):
        cpu_s = (c1[i].user + c1[i].system) - (c0[i].user + c0[i].system)
        dc = {k: h1[i]["counters"][k] - h0[i]["counters"][k] for k in h1[i]["counters"]}
        rows.append({
            "peer": p.name,
            "bytes_out_per_s": (h1[i]["bytes_out"] - h0[i]["bytes_out"]) / dt,
            "bytes_in_per_s": (h1[i]["bytes_in"] - h0[i]["bytes_in"]) / dt,
            "rss_mb_mean": statistics.fmean(rss[i]) / MB,
            "rss_mb_max": max(rss[i]) / MB,
            "uss_mb": uss[i] / MB,
            "cpu_pct": 100.0 * cpu_s / dt,
            "datagrams_out_per_s": dc.get("datagrams_out", 0) / dt,
            "probes_per_s": dc.get("probes", 0) / dt,
            "profiles_pulled": dc.get("profiles_pulled", 0),
            "suspicions": dc.get("suspicions", 0),
            "threads": threads[i],
            "raft_role": roles[i],
            **{f"{port}_bytes_per_s": (b1.get((p.ip, port), 0) - b0.get((p.ip, port), 0)) / dt
               for port in PORTS},
        })
    header = list(rows[0])
    ml.write_csv(csv_path, header, [[r[h] for h in header] for r in rows])

    def agg(key: str) -> dict[str, float]:
        vals = [float(r[key]) for r in rows]  # type: ignore[arg-type]
        return {"mean": round(statistics.fmean(vals), 3), "max": round(max(vals), 3),
                "min": round(min(vals), 3)}

    summary = {
        "experiment": "idle_footprint",
        "peers": args.peers,
        "preset": args.preset,
        "duration_s": round(dt, 1),
        "quick": args.quick,
        "bytes_out_per_s": agg("bytes_out_per_s"),
        "bytes_in_per_s": agg("bytes_in_per_s"),
        "sum_in_over_sum_out": round(sum(float(r["bytes_in_per_s"]) for r in rows)  # type: ignore[arg-type]
                                     / max(1e-9, sum(float(r["bytes_out_per_s"])  # type: ignore[arg-type]
                                                     for r in rows)), 2),
        "bytes_note": "/v1/health bytes_out counts UDP datagrams only (TCP push-pull and "
                      "profile-pull sends are not added), while bytes_in counts UDP and TCP "
                      "frames; on lossless loopback the mesh's total in must equal its total "
                      "out, so mean bytes_in/s is the true mean traffic sent per peer",
        **({f"{port}_bytes_per_s": agg(f"{port}_bytes_per_s") for port in PORTS}
           if args.port_bytes else {}),
        **({f"{port}_bytes_per_s_{who}": _agg_where(rows, f"{port}_bytes_per_s", who)
            for port in PORTS for who in ("leader", "others")} if args.port_bytes else {}),
        **({"api_bytes_per_s_from_127_0_0_1": round(
            (b1.get(("127.0.0.1", "api"), 0) - b0.get(("127.0.0.1", "api"), 0)) / dt, 1)}
           if args.port_bytes else {}),
        "port_bytes_note": "nftables counters per peer address: IP packets sent from or to "
                           "the Raft port (7948) and the API port (7947), headers included; "
                           "learners pull the committed state over the API port; "
                           "api_bytes_per_s_from_127_0_0_1 is this script's own requests",
        "rss_mb": {"mean": agg("rss_mb_mean")["mean"], "max": agg("rss_mb_max")["max"]},
        "uss_mb": agg("uss_mb"),
        "cpu_pct_of_core": agg("cpu_pct"),
        "datagrams_out_per_s": agg("datagrams_out_per_s"),
        "profiles_pulled_total": sum(int(r["profiles_pulled"]) for r in rows),  # type: ignore[call-overload]
        "suspicions_total": sum(int(r["suspicions"]) for r in rows),  # type: ignore[call-overload]
        "all_peers_cpu_pct_of_machine": round(sum(float(r["cpu_pct"]) for r in rows)  # type: ignore[arg-type]
                                              / (os.cpu_count() or 1), 2),
        "mesh_whole_at_end": members_ok,
        "targets": {"rss_mb": TARGET_RSS_MB, "cpu_pct": TARGET_CPU_PCT},
        "meets_rss_target": agg("rss_mb_max")["max"] <= TARGET_RSS_MB,
        "meets_cpu_target": agg("cpu_pct")["max"] <= TARGET_CPU_PCT,
        "note": f"{args.peers} peers share {os.cpu_count()} cores and are measured together; "
                "MB = 10^6 bytes",
        "loadavg_at_window_start": round(load_start, 2),
        "loadavg_when_started": round(load, 2),
        "system_cpu_pct_since_start": system_cpu,
        "wall_s": round(wall, 1),
        "machine": info,
        "csv": str(csv_path.relative_to(ml.REPO_ROOT)),
    }
    ml.write_json(json_path, summary)
    s = summary
    print()
    print(f"Idle footprint, {args.peers} peers on loopback (preset {args.preset}) measured "
          f"together over {dt:.0f}s on {os.cpu_count()} cores: per peer bytes_out "
          f"{s['bytes_out_per_s']['mean']:.0f} B/s mean ({s['bytes_out_per_s']['max']:.0f} max) "
          f"as /v1/health counts it (UDP only; with TCP, i.e. mean bytes_in, "
          f"{s['bytes_in_per_s']['mean']:.0f} B/s), "
          f"RSS {s['rss_mb']['mean']:.1f} MB mean ({s['rss_mb']['max']:.1f} max; USS "
          f"{s['uss_mb']['mean']:.1f} MB mean), CPU {s['cpu_pct_of_core']['mean']:.2f}% of a "
          f"core mean ({s['cpu_pct_of_core']['max']:.2f}% max). Targets RSS <= "
          f"{TARGET_RSS_MB:.0f} MB: {'met' if s['meets_rss_target'] else 'NOT met'}; CPU <= "
          f"{TARGET_CPU_PCT:.0f}%: {'met' if s['meets_cpu_target'] else 'NOT met'}. "
          f"{s['profiles_pulled_total']} profile pulls and {s['suspicions_total']} suspicions "
          f"in the window. Run took {wall:.0f}s. Wrote {csv_path} and {json_path}.")
    if args.port_bytes:
        total = sum(s[k]["mean"] for k in ("bytes_in_per_s", "raft_bytes_per_s",
                                            "api_bytes_per_s"))
        print(f"Raft port bytes sent per peer: {s['raft_bytes_per_s']['mean']:.0f} B/s mean "
              f"(leader {s['raft_bytes_per_s_leader']['mean']:.0f}, others "
              f"{s['raft_bytes_per_s_others']['mean']:.0f} mean); API port "
              f"{s['api_bytes_per_s']['mean']:.0f} B/s mean, plus "
              f"{s['api_bytes_per_s_from_127_0_0_1']:.0f} B/s in all from 127.0.0.1 (this "
              f"script's requests). Total per peer (bytes_in + Raft + API): "
              f"{total:.0f} B/s mean.")
    return 0


def _agg_where(rows: list[dict[str, object]], key: str, who: str) -> dict[str, float]:
    """`key` over the leader's row (who="leader") or the others' rows."""
    vals = [float(r[key]) for r in rows  # type: ignore[arg-type]
            if (r["raft_role"] == "leader") == (who == "leader")]
    if not vals:
        return {"mean": 0.0, "max": 0.0, "min": 0.0}
    return {"mean": round(statistics.fmean(vals), 3), "max": round(max(vals), 3),
            "min": round(min(vals), 3)}


if __name__ == "__main__":
    sys.exit(main())
