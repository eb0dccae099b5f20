"""Raft write latency: how long one committed write takes, alone and in a
burst (what the durable journal's fsyncs cost).

Setup: 5 real node processes (`nanomesh.consensus.harness`, the production
`ConsensusNode`, default timing preset) on loopback addresses
127.0.31.200-204, port 7948, each with its journal in a temporary directory
(on the machine's disk, not a tmpfs: fsync must reach a device).

1. sequential: the leader's process submits `--writes` writes one after the
   other; latency = request sent to "committed" received (includes the
   stdin/stdout round trip to the node process, ~1 ms);
2. burst: `--burst` writes submitted at once to the leader; time until the
   last one is committed (a burst shares journal syncs).

Output: experiments/results/raft_write_latency.json (median, p90, p99, max).

    python experiments/raft_write_latency.py            # 500 writes, bursts of 100
    python experiments/raft_write_latency.py --quick    # 100 writes, bursts of 50
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import math
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from nanomesh.consensus.harness import RaftCluster, open_cluster, wait_until  # noqa: E402

RESULTS = REPO_ROOT / "experiments" / "results"
IPS = [f"127.0.31.{200 + i}" for i in range(5)]
"""This experiment's loopback range (the failover experiment uses 127.0.30.x)."""
BURSTS = 5


def nearest_rank(values: list[float], q: float) -> float:
    vals = sorted(values)
    return vals[max(1, math.ceil(q / 100 * len(vals))) - 1] if vals else math.nan


async def leader_of(cluster: RaftCluster) -> str:
    async def agreed() -> str | None:
        st = await cluster.statuses()
        leaders = {s["leader"] for s in st.values()}
        if len(st) == len(cluster.nodes) and len(leaders) == 1 and None not in leaders:
            leader: str = leaders.pop()
            return leader if st[leader]["role"] == "leader" else None
        return None
    return await wait_until(agreed, 15.0, what="one agreed leader")


async def measure(writes: int, burst: int, workdir: Path) -> dict[str, Any]:
    async with open_cluster(workdir) as cluster:
        await cluster.start_voters(IPS)
        leader = cluster.nodes[await leader_of(cluster)]
        for i in range(20):  # warm-up: connections, first entries
            await leader.call("put_service", name=f"warm-{i}", spec={"i": i}, timeout=5.0)
        sequential = []
        for i in range(writes):
            t0 = trio.current_time()
            await leader.call("put_service", name=f"seq-{i}", spec={"i": i}, timeout=5.0)
            sequential.append(trio.current_time() - t0)
        bursts = []
        for b in range(BURSTS):
            t0 = trio.current_time()
            async with trio.open_nursery() as nursery:
                for i in range(burst):
                    nursery.start_soon(functools.partial(
                        leader.call, "put_service", name=f"burst-{b}-{i}", spec={"i": i},
                        timeout=10.0))
            bursts.append(trio.current_time() - t0)
    return {"sequential_s": stats(sequential), "burst_s": stats(bursts),
            "burst_size": burst, "bursts": BURSTS}


def stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "p90": nearest_rank(values, 90),
            "p99": nearest_rank(values, 99), "max": max(values), "n": len(values)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--writes", type=int, default=500)
    p.add_argument("--burst", type=int, default=100)
    p.add_argument("--quick", action="store_true", help="100 writes, bursts of 50")
    p.add_argument("--name", default="raft_write_latency", help="results file name")
    args = p.parse_args()
    writes, burst = (100, 50) if args.quick else (args.writes, args.burst)
    with tempfile.TemporaryDirectory(prefix="raft-latency-", dir="/var/tmp") as tmp:
        result = trio.run(measure, writes, burst, Path(tmp))
    result.update({"experiment": "raft_write_latency",
                   "date": dt.datetime.now().isoformat(timespec="seconds"),
                   "python": platform.python_version(), "cpus": os.cpu_count(),
                   "loadavg_at_end": os.getloadavg(), "quick": args.quick})
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    s, b = result["sequential_s"], result["burst_s"]
    print(f"one write, sequential x{s['n']:.0f}: median {s['median'] * 1000:.1f} ms, "
          f"p90 {s['p90'] * 1000:.1f} ms, p99 {s['p99'] * 1000:.1f} ms; "
          f"burst of {burst}: median {b['median'] * 1000:.0f} ms "
          f"(max {b['max'] * 1000:.0f} ms) until all committed")


if __name__ == "__main__":
    main()
