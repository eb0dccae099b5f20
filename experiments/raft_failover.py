"""Raft failover time: SIGKILL the leader of a 5-voter cluster, measure until
a new leader has *committed* a write.

Setup: 5 real node processes (`nanomesh.consensus.harness`, the production
`ConsensusNode` with the default timing preset) on loopback addresses
127.0.30.200-204, port 7948, each with its own journal.

One trial:
1. wait until all nodes agree on one leader and have applied the same
   revision, then let the cluster idle for `--settle` s;
2. t0 = just before SIGKILL of the leader;
3. every survivor submits the same kind of write in a loop (a caller's
   behaviour: retry on NoLeaderError / NotLeaderError, 5 ms apart);
   t1 = the first write acknowledged as committed; failover = t1 - t0
   (includes the stdin/stdout round trip to the node process, ~1 ms);
4. check every earlier trial's write is still in the committed state
   (no acknowledged write lost);
5. restart the killed node on its data directory; measure how long until it
   has caught up, and note whether its return forced an election (a new
   term: pysyncobj has no PreVote).

Output: experiments/results/raft_failover.csv (one row per trial) and
raft_failover.json (median, p90, max, targets: median <= 0.5 s, max <= 1 s).

    python experiments/raft_failover.py            # 50 trials
    python experiments/raft_failover.py --quick    # 5 trials
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import os
import platform
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import trio

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from nanomesh.consensus import RaftTiming  # noqa: E402
from nanomesh.consensus._pysyncobj import PYSYNCOBJ_VERSION  # noqa: E402
from nanomesh.consensus.harness import (  # noqa: E402
    HarnessError,
    NodeProcess,
    ProcessDied,
    RaftCluster,
    open_cluster,
    wait_until,
)

RESULTS = REPO_ROOT / "experiments" / "results"
IPS = [f"127.0.30.{200 + i}" for i in range(50)]
"""This experiment's loopback range: 127.0.30.200-249 (tests use .10-.199)."""
TARGET_MEDIAN, TARGET_MAX = 0.5, 1.0
RETRY = 0.005
"""Seconds between a survivor's failed write and its next attempt."""
RETRYABLE = {"NoLeaderError", "NotLeaderError", "CommitTimeout", "DiscardedError"}


@dataclass
class Trial:
    trial: int
    killed: str
    new_leader: str
    term_before: int
    term_after: int
    failover_s: float
    writes_attempted: int
    writes_lost: int
    restart_catch_up_s: float
    restart_forced_election: bool


def nearest_rank(values: list[float], q: float) -> float:
    vals = sorted(values)
    return vals[max(1, math.ceil(q / 100 * len(vals))) - 1] if vals else math.nan


async def stable(cluster: RaftCluster, timeout: float = 15.0) -> tuple[str, int, int]:
    """Wait for one agreed leader and equal revisions everywhere; return
    (leader, term, revision)."""
    async def check() -> tuple[str, int, int] | None:
        st = await cluster.statuses()
        leaders = {s["leader"] for s in st.values()}
        revisions = {s["revision"] for s in st.values()}
        terms = {s["term"] for s in st.values()}
        if len(st) != len(cluster.nodes) or len(leaders) != 1 or None in leaders:
            return None
        if len(revisions) != 1 or len(terms) != 1:
            return None
        leader = leaders.pop()
        return (leader, terms.pop(), revisions.pop()) if st[leader]["role"] == "leader" else None
    return await wait_until(check, timeout, what="a stable cluster")


async def write_until_committed(nodes: list[NodeProcess], name: str
                                ) -> tuple[float, int, NodeProcess]:
    """All `nodes` retry the write; return (commit time, attempts, node)."""
    attempts = 0
    winner: list[tuple[float, NodeProcess]] = []

    async def writer(node: NodeProcess, scope: trio.CancelScope) -> None:
        nonlocal attempts
        while True:
            attempts += 1
            try:
                await node.call("put_service", name=name, spec={"by": node.address},
                                timeout=1.0)
            except HarnessError as exc:
                if exc.error not in RETRYABLE:
                    raise
                await trio.sleep(RETRY)
                continue
            winner.append((trio.current_time(), node))
            scope.cancel()
            return

    async with trio.open_nursery() as nursery:
        for node in nodes:
            nursery.start_soon(writer, node, nursery.cancel_scope)
    t, node = winner[0]
    return t, attempts, node


async def one_trial(cluster: RaftCluster, i: int, settle: float) -> Trial:
    leader, term, _ = await stable(cluster)
    await trio.sleep(settle)
    leader, term, _ = await stable(cluster)
    killed = cluster.nodes[leader]
    survivors = [n for n in cluster.nodes.values() if n is not killed]
    t0 = trio.current_time()
    killed.kill()
    t1, attempts, writer = await write_until_committed(survivors, f"trial-{i}")
    failover = t1 - t0
    status = await writer.status() or {}
    state = await writer.call("wait_revision", revision=0)
    lost = sum(1 for j in range(i + 1) if f"trial-{j}" not in state["services"])
    new_leader, term_after = status.get("leader") or "?", status.get("term", -1)

    await killed.stop(grace=0)
    t2 = trio.current_time()
    await killed.start(cluster.nursery)
    _, term_restarted, _ = await stable(cluster)
    catch_up = trio.current_time() - t2
    return Trial(i, leader, new_leader, term, term_after, round(failover, 4), attempts, lost,
                 round(catch_up, 3), term_restarted != term_after)


async def run(trials: int, nodes: int, settle: float, workdir: Path) -> list[Trial]:
    results: list[Trial] = []
    async with open_cluster(workdir) as cluster:
        await cluster.start_voters(IPS[:nodes])
        await stable(cluster)
        for i in range(trials):
            try:
                trial = await one_trial(cluster, i, settle)
            except ProcessDied as exc:
                raise SystemExit(f"trial {i}: a node died unexpectedly: {exc}") from exc
            results.append(trial)
            print(f"trial {i:3d}: failover {trial.failover_s * 1000:6.1f} ms "
                  f"({trial.killed} -> {trial.new_leader}, term {trial.term_before}->"
                  f"{trial.term_after}), rejoin {trial.restart_catch_up_s:.2f} s"
                  f"{', forced an election' if trial.restart_forced_election else ''}",
                  flush=True)
    return results


def summarize(results: list[Trial], nodes: int, settle: float) -> dict[str, Any]:
    f = [t.failover_s for t in results]
    median, worst = statistics.median(f), max(f)
    return {
        "experiment": "raft_failover",
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "nodes": nodes, "trials": len(results), "settle_s": settle,
        "timing": asdict(RaftTiming.lan()),
        "pysyncobj": PYSYNCOBJ_VERSION, "python": platform.python_version(),
        "cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg(),
        "failover_s": {"min": min(f), "median": median, "p90": nearest_rank(f, 90),
                       "max": worst, "mean": statistics.fmean(f)},
        "targets": {"median_le_0.5s": median <= TARGET_MEDIAN, "max_le_1s": worst <= TARGET_MAX},
        "writes_lost": sum(t.writes_lost for t in results),
        "restarts_that_forced_an_election": sum(t.restart_forced_election for t in results),
        "restart_catch_up_s_median": statistics.median(t.restart_catch_up_s for t in results),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=50)
    p.add_argument("--quick", action="store_true", help="5 trials")
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--settle", type=float, default=0.5,
                   help="idle seconds before each kill, after the cluster is stable")
    args = p.parse_args()
    trials = 5 if args.quick else args.trials
    with tempfile.TemporaryDirectory(prefix="raft-failover-") as tmp:
        results = trio.run(run, trials, args.nodes, args.settle, Path(tmp))
    summary = summarize(results, args.nodes, args.settle)
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "raft_failover.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(asdict(results[0])))
        writer.writeheader()
        writer.writerows(asdict(t) for t in results)
    (RESULTS / "raft_failover.json").write_text(json.dumps(summary, indent=2) + "\n")
    fo = summary["failover_s"]
    print(f"failover over {len(results)} trials: median {fo['median'] * 1000:.0f} ms, "
          f"p90 {fo['p90'] * 1000:.0f} ms, max {fo['max'] * 1000:.0f} ms; targets "
          f"{summary['targets']}; writes lost {summary['writes_lost']}")


if __name__ == "__main__":
    main()
