"""Where do an idle mesh's Raft bytes go? (issue 9)

Starts N real peer daemons on loopback (default 10 on 127.0.90.1-10, cluster
key, gossip preset ``lan``, the daemon's Raft timing: 5 voters, the rest
learners), waits for a healthy mesh (all alive, one leader, 5 voters) and
``--settle`` s, then counts for ``--window`` s, with nftables on the output
hook (root), the bytes and packets each peer *sends*, IP and TCP headers
included, in these classes:

- ``raft_noload``: Raft-port segments without payload (IP length < 64:
  ACK-only segments, SYN/FIN); a frame is longer (the smallest compact frame,
  the former keepalive, is 82 bytes on the wire);
- ``raft_leader``: other Raft-port segments to or from the leader: from the
  leader, heartbeats (and entries); from a follower, their answers;
- ``raft_ff``: other Raft-port segments between two followers (between
  elections only the keepalives of before; nothing now);
- ``gossip`` (UDP and TCP on 7946) and ``other`` (peer API between peers...);
  answers to this script's own API polls (to 127.0.0.1) are left out.

And the CPU of each process over the window (psutil user + system, % of one
core). Prints per role (leader, the other voters, learners) the bytes/s and
packets/s of each class, and writes ``results/<name>.csv`` (per peer) and
``results/<name>.summary.json``.

    .venv/bin/python experiments/raft_idle_bytes.py                 # N = 10, 30 s
    .venv/bin/python experiments/raft_idle_bytes.py --window 15     # shorter
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _meshlib as ml
import psutil
from control_failover import Mesh60, start_mesh, timing_info

CLASSES = ("raft_noload", "raft_leader", "raft_ff", "gossip", "other")
RAFT_PORT = 7948


class RaftNft(ml.NftTraffic):
    """`_meshlib.NftTraffic` with `CLASSES`; the leader's address decides
    which Raft segments are ``raft_leader``."""

    def __init__(self, ips: list[str], leader_ip: str) -> None:
        super().__init__(ips)
        self.leader_ip = leader_ip

    def classes(self, ip: str) -> list[tuple[str, str]]:
        raft = f"tcp sport {RAFT_PORT}", f"tcp dport {RAFT_PORT}"
        to_leader = "" if ip == self.leader_ip else f"ip daddr {self.leader_ip} "
        return [("ip daddr 127.0.0.1", "bench"),
                *((f"{r} ip length < 64", "raft_noload") for r in raft),
                *((f"{to_leader}{r}", "raft_leader") for r in raft),
                *((r, "raft_ff") for r in raft),
                ("udp sport 7946", "gossip"), ("tcp sport 7946", "gossip"),
                ("tcp dport 7946", "gossip"), ("", "other")]


def measure(mesh: Mesh60, leader_ip: str, voters: set[str], window: float
            ) -> list[dict[str, Any]]:
    procs = {p.name: psutil.Process(p.proc.pid) for p in mesh.peers}  # type: ignore[union-attr]
    with RaftNft([p.ip for p in mesh.peers], leader_ip) as nft:
        n0, c0, t0 = nft.counters(), {k: v.cpu_times() for k, v in procs.items()}, time.monotonic()
        time.sleep(window)
        n1, c1, t1 = nft.counters(), {k: v.cpu_times() for k, v in procs.items()}, time.monotonic()
    dt = t1 - t0
    rows = []
    for p in mesh.peers:
        cpu = (c1[p.name].user + c1[p.name].system - c0[p.name].user - c0[p.name].system)
        role = "leader" if p.ip == leader_ip else "voter" if p.ip in voters else "learner"
        row: dict[str, Any] = {"peer": p.name, "ip": p.ip, "role": role,
                               "cpu_pct": round(100.0 * cpu / dt, 3)}
        for cls in CLASSES:
            b = n1[p.ip][cls][0] - n0[p.ip][cls][0]
            n = n1[p.ip][cls][1] - n0[p.ip][cls][1]
            row[f"{cls}_Bps"] = round(b / dt, 1)
            row[f"{cls}_pps"] = round(n / dt, 2)
        row["raft_Bps"] = round(sum(row[f"{c}_Bps"] for c in CLASSES if c.startswith("raft")), 1)
        row["total_Bps"] = round(sum(row[f"{c}_Bps"] for c in CLASSES), 1)
        rows.append(row)
    return rows


def by_role(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    keys = [k for k in rows[0] if k.endswith(("_Bps", "_pps")) or k == "cpu_pct"]
    for role in ("leader", "voter", "learner", "all"):
        group = [r for r in rows if role in ("all", r["role"])]
        if group:
            out[role] = {k: round(statistics.mean(r[k] for r in group), 2) for k in keys}
            out[role]["peers"] = len(group)
    return out


def headline(roles: dict[str, dict[str, float]]) -> dict[str, float]:
    """The figures of the README's issue-9 table, from `by_role`."""
    return {"bytes_per_s_mean_all": roles["all"]["total_Bps"],
            "bytes_per_s_voter": roles["voter"]["total_Bps"],
            "raft_bytes_per_s_voter": roles["voter"]["raft_Bps"],
            "bytes_per_s_leader": roles["leader"]["total_Bps"],
            "raft_bytes_per_s_leader": roles["leader"]["raft_Bps"],
            "cpu_pct_leader": roles["leader"]["cpu_pct"],
            "cpu_pct_voter": roles["voter"]["cpu_pct"],
            "cpu_pct_learner": roles.get("learner", {}).get("cpu_pct", float("nan"))}


def main() -> int:
    p = ml.experiment_parser(__doc__, 10, "mesh size (default 10)")
    p.add_argument("--window", type=float, default=30.0, help="counting window, s (30)")
    p.add_argument("--settle", type=float, default=10.0,
                   help="seconds between a healthy mesh and the window (10)")
    ml.add_run_options(p, name="raft_idle_bytes", subnet="127.0.90", first_octet=1)
    ml.add_subnet_option(p, "127.0.90")
    args = p.parse_args()
    if os.geteuid() != 0:
        p.error("needs root (nftables counters)")
    ml.install_sigterm_handler()
    csv_path, json_path = ml.results_paths(args.name)
    info = ml.machine_info()
    load = ml.wait_for_quiet(args.max_load, timeout=900)
    with tempfile.TemporaryDirectory(prefix="nm-rib-") as tmp:
        root = Path(tmp)
        key = ml.keygen(root / "cluster.key")
        mesh = Mesh60(args.peers, root, preset=args.preset, key_file=key,
                      first_octet=args.first_octet, prefix="rib", subnet=f"{args.subnet}.")
        try:
            st, up_s = start_mesh(mesh, timeout=180)
            time.sleep(args.settle)
            leader_ip = st["leader"].rpartition(":")[0]
            voters = {v.rpartition(":")[0] for v in st["voters"]}
            load_window = os.getloadavg()[0]
            rows = measure(mesh, leader_ip, voters, args.window)
            after = mesh.by_ip(leader_ip).get("/v1/status")
        finally:
            mesh.close()
    roles = by_role(rows)
    ml.write_csv(csv_path, list(rows[0]), ([r[k] for k in rows[0]] for r in rows))
    summary = {
        "experiment": "raft_idle_bytes", "peers": args.peers, "window_s": args.window,
        "raft_timing": timing_info(), **headline(roles), "by_role": roles,
        "term_before": st["term"], "term_after": after.get("term"),
        "loadavg_when_started": round(load, 2), "load1_at_window": round(load_window, 2),
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()], "up_s": round(up_s, 1),
        "machine": info, "csv": str(csv_path.relative_to(ml.REPO_ROOT)),
    }
    ml.write_json(json_path, summary)
    print(f"N = {args.peers}, {args.window:.0f} s window, load {load_window:.2f}, terms "
          f"{st['term']} -> {after.get('term')}; bytes/s sent (packets/s):")
    for role, m in roles.items():
        parts = ", ".join(f"{c} {m[f'{c}_Bps']:.0f} ({m[f'{c}_pps']:.1f})" for c in CLASSES)
        print(f"  {role:8s} x{m['peers']:.0f}: total {m['total_Bps']:.0f}, raft "
              f"{m['raft_Bps']:.0f}: {parts}; CPU {m['cpu_pct']:.2f} %")
    print(f"Wrote {csv_path} and {json_path}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
