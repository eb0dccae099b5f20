"""What does an idle peer weigh: memory per peer and per component, and CPU by role.

Two parts, both on real processes:

1. Components. For each component (a list of modules) a fresh interpreter
   imports it and reports its own RSS and PSS (``Rss``/``Pss`` of
   ``/proc/self/smaps_rollup``), and which heavy third-party modules ended up
   loaded; the row ``python`` is a bare interpreter, ``peer`` is what
   ``nanomesh peer run`` imports before it starts. Each component is measured
   alone (not cumulatively), so the deltas over ``python`` overlap (trio is
   in most of them). Also the wall time of ``nanomesh --help`` (median of 5).
2. Peers. N real daemons on loopback (127.0.60.FIRST.., default .71-.75,
   preset ``lan``, key file; every peer a Raft voter up to 5), waits for a
   healthy mesh (all alive, one leader, all voters), settles, then measures
   over D seconds per peer: CPU % of one core (user + system time from
   ``/proc/PID/stat`` via psutil, over wall time), RSS and PSS from
   ``/proc/PID/smaps_rollup`` at the end, wake-ups per second (voluntary
   context switches of all threads), threads, and the Raft role from
   ``GET /v1/status``. The peers share the machine's cores and are measured
   together.

CSV: ``results/peer_memory.csv`` (one row per component and per peer,
``kind`` tells which). Goals (issue 9): CPU <= 0.5 % (non-leader), <= 2 %
(leader), RSS <= 32 MiB, PSS <= 18 MiB.

    .venv/bin/python experiments/peer_memory.py            # 60 s window
    .venv/bin/python experiments/peer_memory.py --quick    # 15 s window
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _meshlib as ml
import control_failover as cf
import psutil

MIB = 1024 * 1024
GOAL_CPU_FOLLOWER, GOAL_CPU_LEADER = 0.5, 2.0
GOAL_RSS_MIB, GOAL_PSS_MIB = 32.0, 18.0
HEAVY = ("zmq", "aiocoap", "psutil", "asyncio", "ssl", "cryptography", "msgpack",
         "tarfile", "email", "http.client", "uuid", "ctypes", "pysyncobj", "h11")
"""Third-party or large standard modules whose presence is reported."""

PEER_IMPORTS = ("trio", "nanomesh.config", "nanomesh.consensus.recovery",
                "nanomesh.daemon.assemble", "nanomesh.daemon.profile",
                "nanomesh.security.keys")
"""What `nanomesh.cli.peer` imports inside ``peer run`` before it starts."""

COMPONENTS: dict[str, tuple[str, ...]] = {
    "python": (),
    "trio": ("trio",),
    "consensus": ("nanomesh.consensus",),
    "gossip": ("nanomesh.gossip.machine", "nanomesh.daemon.membership"),
    "http api": ("nanomesh.daemon.http",),
    "runtime": ("nanomesh.runtime.lifecycle",),
    "rpc (zmq)": ("nanomesh.transport.rpc",),
    "coap gateway": ("nanomesh.gateway.coap",),
    "psutil": ("psutil",),
    "cli (--help)": ("nanomesh.cli",),
    "peer": PEER_IMPORTS,
}

_PROBE = """
import importlib, json, sys
for m in sys.argv[2:]:
    importlib.import_module(m)
roll = {}
with open('/proc/self/smaps_rollup') as f:
    for line in f:
        parts = line.split()
        if len(parts) == 3 and parts[2] == 'kB':
            roll[parts[0].rstrip(':')] = int(parts[1]) * 1024
heavy = [h for h in sys.argv[1].split(',') if h in sys.modules]
print(json.dumps({'rss': roll['Rss'], 'pss': roll['Pss'], 'modules': len(sys.modules),
                  'heavy': heavy}))
"""


def parse_args() -> argparse.Namespace:
    p = ml.experiment_parser(__doc__, 5, "mesh size (default 5: all voters)")
    p.add_argument("--duration", type=float, default=None,
                   help="measurement window in seconds (default 60; 15 with --quick)")
    p.add_argument("--quick", action="store_true", help="short run: 15 s window")
    p.add_argument("--settle", type=float, default=10.0,
                   help="seconds between a healthy mesh and the window (default 10)")
    p.add_argument("--profile", type=float, default=0.0, metavar="S",
                   help="after the window, sample the leader and one follower with "
                        "py-spy for S seconds (needs py-spy); top frames are printed and "
                        "the raw stacks written to results/peer_memory_<role>.folded")
    p.add_argument("--no-gateways", action="store_true",
                   help="peers without the CoAP gateway and the event relay (coap_port = "
                        "events_*_port = 0): what those two cost at run time")
    ml.add_run_options(p, name="peer_memory", subnet="127.0.60", first_octet=71)
    ml.add_subnet_option(p, "127.0.60")
    args = p.parse_args()
    if args.duration is None:
        args.duration = 15.0 if args.quick else 60.0
    return args


def smaps_rollup(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return out


def measure_component(modules: tuple[str, ...]) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(ml.REPO_ROOT))
    out = subprocess.run([ml.PY, "-c", _PROBE, ",".join(HEAVY), *modules], env=env,
                         capture_output=True, text=True, check=True, cwd=ml.REPO_ROOT)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def wakeups(pid: int) -> int:
    """Voluntary context switches of all the process's threads so far: each
    is one sleep (poll, epoll, a lock) that ended, so their rate counts the
    wake-ups, which unlike CPU % barely depends on the machine's load."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):  # a thread that just ended
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
    return total


def mapped_extensions(pid: int) -> str:
    """The heavy native extensions a running peer has loaded (from its maps)."""
    marks = {"_zmq": "zmq", "_greenlet": "greenlet", "_asyncio": "asyncio",
             "_psutil": "psutil", "_rust": "cryptography", "_cmsgpack": "msgpack"}
    with open(f"/proc/{pid}/maps") as f:
        text = f.read()
    return " ".join(name for mark, name in marks.items() if f"/{mark}" in text)


def help_time(runs: int = 5) -> float:
    env = dict(os.environ, PYTHONPATH=str(ml.REPO_ROOT))
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([ml.PY, "-m", "nanomesh", "--help"], env=env, check=True,
                       stdout=subprocess.DEVNULL, cwd=ml.REPO_ROOT)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_peers(args: argparse.Namespace) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="nm-mem-") as tmp:
        root = Path(tmp)
        key = ml.keygen(root / "cluster.key")
        mesh = cf.Mesh60(args.peers, root, preset=args.preset, key_file=key,
                         first_octet=args.first_octet, prefix="mem", subnet=f"{args.subnet}.")
        if args.no_gateways:
            conf = root / "bare.toml"
            conf.write_text("[peer]\ncoap_port = 0\nevents_xpub_port = 0\n"
                            "events_xsub_port = 0\n")
            for p in mesh.peers:
                p.extra_args += ["--config", str(conf)]
        try:
            mesh.start_all(timeout=60)
            _, waited = cf.wait_healthy(mesh, timeout=90)
            print(f"{args.peers} peers healthy after {waited:.1f}s more; settling "
                  f"{args.settle:.0f}s", flush=True)
            time.sleep(args.settle)
            procs = [psutil.Process(p.proc.pid) for p in mesh.peers]  # type: ignore[union-attr]
            c0 = [pr.cpu_times() for pr in procs]
            w0 = [wakeups(pr.pid) for pr in procs]
            t0 = time.monotonic()
            time.sleep(args.duration)
            c1 = [pr.cpu_times() for pr in procs]
            w1 = [wakeups(pr.pid) for pr in procs]
            dt = time.monotonic() - t0
            mem = [smaps_rollup(pr.pid) for pr in procs]
            libs = [mapped_extensions(pr.pid) for pr in procs]
            threads = [pr.num_threads() for pr in procs]
            status = cf.statuses(mesh.peers)
            if args.profile > 0:
                profile_roles(args, mesh.peers, status)
        finally:
            mesh.close()
    rows = []
    for i, p in enumerate(mesh.peers):
        st = status[p.name] or {}
        cpu_s = (c1[i].user + c1[i].system) - (c0[i].user + c0[i].system)
        rows.append({"kind": "peer", "name": p.name, "role": st.get("role", "?"),
                     "cpu_pct": round(100.0 * cpu_s / dt, 3),
                     "wakeups_per_s": round((w1[i] - w0[i]) / dt, 1),
                     "rss_mib": round(mem[i]["Rss"] / MIB, 2),
                     "pss_mib": round(mem[i]["Pss"] / MIB, 2),
                     "threads": threads[i], "modules": "", "heavy": libs[i]})
    return rows


def profile_roles(args: argparse.Namespace, peers: list[ml.Peer],
                  status: dict[str, dict[str, Any] | None]) -> None:
    """py-spy on the leader and the first follower at once, idle leaf frames
    (``--idle`` off: only frames that run on the CPU are counted)."""
    chosen: dict[str, ml.Peer] = {}
    for p in peers:
        role = (status[p.name] or {}).get("role", "?")
        if role not in chosen:
            chosen[role] = p
    spies = {}
    for role, p in chosen.items():
        out = ml.RESULTS_DIR / f"{args.name}_{role}.folded"
        assert p.proc is not None
        spies[role] = (out, subprocess.Popen(
            [_py_spy(), "record", "--nonblocking", "--threads", "--format", "raw", "--rate",
             "200", "--duration", str(int(args.profile)), "--output", str(out), "--pid",
             str(p.proc.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for role, (out, spy) in spies.items():
        spy.wait()
        print(f"py-spy, {role} ({chosen[role].name}), {args.profile:.0f}s at 200 Hz, "
              f"top leaf frames (samples):")
        for frame, n in top_frames(out)[:12]:
            print(f"  {n:6d}  {frame}")


def _py_spy() -> str:
    beside = Path(ml.PY).parent / "py-spy"
    return str(beside) if beside.exists() else "py-spy"


def top_frames(folded: Path) -> list[tuple[str, int]]:
    """Self samples per leaf frame from py-spy's raw (folded) output."""
    counts: dict[str, int] = {}
    if not folded.exists():
        return []
    for line in folded.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        leaf = stack.split(";")[-1]
        counts[leaf] = counts.get(leaf, 0) + int(n)
    return sorted(counts.items(), key=lambda kv: -kv[1])


def main() -> int:
    args = parse_args()
    ml.install_sigterm_handler()
    csv_path, json_path = ml.results_paths(args.name)
    load = ml.wait_for_quiet(args.max_load, timeout=900)
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    for name, modules in COMPONENTS.items():
        r = measure_component(modules)
        rows.append({"kind": "component", "name": name, "role": "", "cpu_pct": "",
                     "wakeups_per_s": "",
                     "rss_mib": round(r["rss"] / MIB, 2), "pss_mib": round(r["pss"] / MIB, 2),
                     "threads": "", "modules": r["modules"], "heavy": " ".join(r["heavy"])})
    help_s = help_time()
    rows += measure_peers(args)
    header = list(rows[0])
    ml.write_csv(csv_path, header, [[r[h] for h in header] for r in rows])
    peers = [r for r in rows if r["kind"] == "peer"]
    leaders = [r for r in peers if r["role"] == "leader"]
    others = [r for r in peers if r["role"] != "leader"]

    def stat(rs: list[dict[str, Any]], key: str) -> dict[str, float]:
        vals = [float(r[key]) for r in rs] or [float("nan")]
        return {"mean": round(statistics.fmean(vals), 3), "max": round(max(vals), 3)}

    summary = {
        "experiment": "peer_memory",
        "peers": args.peers,
        "preset": args.preset,
        "duration_s": args.duration,
        "quick": args.quick,
        "cpu_pct_leader": stat(leaders, "cpu_pct"),
        "cpu_pct_others": stat(others, "cpu_pct"),
        "wakeups_per_s_leader": stat(leaders, "wakeups_per_s"),
        "wakeups_per_s_others": stat(others, "wakeups_per_s"),
        "no_gateways": args.no_gateways,
        "rss_mib": stat(peers, "rss_mib"),
        "pss_mib": stat(peers, "pss_mib"),
        "components": {r["name"]: {"rss_mib": r["rss_mib"], "pss_mib": r["pss_mib"],
                                   "heavy": r["heavy"]}
                       for r in rows if r["kind"] == "component"},
        "help_s": round(help_s, 3),
        "goals": {"cpu_pct_others": GOAL_CPU_FOLLOWER, "cpu_pct_leader": GOAL_CPU_LEADER,
                  "rss_mib": GOAL_RSS_MIB, "pss_mib": GOAL_PSS_MIB},
        "note": f"{args.peers} peers share {os.cpu_count()} cores, measured together; "
                "MiB = 2^20 bytes; PSS splits pages shared with the other peers",
        "loadavg_when_started": round(load, 2),
        "wall_s": round(time.monotonic() - started, 1),
        "machine": ml.machine_info(),
        "csv": str(csv_path.relative_to(ml.REPO_ROOT)),
    }
    ml.write_json(json_path, summary)
    s = summary
    comp = s["components"]
    print()
    print(f"Idle peers, {args.peers} on loopback over {args.duration:.0f}s: CPU leader "
          f"{s['cpu_pct_leader']['mean']:.2f}% of a core, others "
          f"{s['cpu_pct_others']['mean']:.2f}% mean ({s['cpu_pct_others']['max']:.2f}% max); "
          f"wake-ups/s leader {s['wakeups_per_s_leader']['mean']:.0f}, others "
          f"{s['wakeups_per_s_others']['mean']:.0f}; "
          f"RSS {s['rss_mib']['mean']:.1f} MiB mean, PSS {s['pss_mib']['mean']:.1f} MiB mean. "
          f"Imports alone: python {comp['python']['rss_mib']} MiB RSS, peer "
          f"{comp['peer']['rss_mib']} MiB RSS / {comp['peer']['pss_mib']} MiB PSS "
          f"(heavy modules loaded: {comp['peer']['heavy'] or 'none'}). "
          f"nanomesh --help {help_s:.3f}s. Wrote {csv_path} and {json_path}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
