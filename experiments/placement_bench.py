"""How fast is placement, and how good are its plans compared with Algorithm 1?

Timing: the default strategy (balanced, spread) planning 1,000 services on
100 peers and 10,000 services on 1,000 peers from scratch, and re-planning the
larger one after 10 % of its peers died (the stable path). Targets: 50 ms and
1 s; the median of several runs is reported.

Quality, on generated scenarios (Raspberry Pi 3/4, laptops and routers with
random sensors, mains or battery; services bound to a device or free, 1-3
replicas), for first-fit (the research's Algorithm 1) and balanced in spread
and binpack modes:

- instances placed;
- peak utilisation: the largest, over peers, of reserved CPU / cores or
  reserved memory / available memory (and the mean over alive peers);
- churn: kill 10 % of the peers and re-plan from the previous plan (moves of
  instances placed before and after), then bring them back and re-plan
  again; for balanced, also the plans and moves until the returning peers
  are settled (``rebalance_pending`` false).

Writes ``experiments/results/placement.csv`` (one row per scenario and
strategy, ``kind`` = timing | quality) and prints a summary.

    .venv/bin/python experiments/placement_bench.py [--runs N] [--out PATH] [--quick]
"""

from __future__ import annotations

import argparse
import csv
import random
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from nanomesh.placement import (  # noqa: E402
    PeerView,
    PlacementConfig,
    Plan,
    ServiceSpec,
    place,
    service_spec_from_dict,
    usage_by_peer,
)
from nanomesh.placement.requirements import NetworkKind  # noqa: E402

DEVICES = ["pir", "ble", "display", "camera", "pulse-oximeter", "body-temperature",
           "oxygen-controller", "speaker", "temperature", "humidity"]
TIME_TARGETS_MS = {(1000, 100): 50.0, (10000, 1000): 1000.0}
STRATEGIES = {
    "first-fit": PlacementConfig(strategy="first-fit"),
    "balanced/spread": PlacementConfig(),
    "balanced/binpack": PlacementConfig(mode="binpack"),
}
COLUMNS = ["kind", "scenario", "strategy", "services", "instances", "peers", "placed",
           "unplaced", "peak_util", "mean_util", "peers_used", "moves_kill", "moves_return",
           "plans_to_settle", "moves_to_settle", "median_ms", "runs", "target_ms"]


# -- scenario generation -------------------------------------------------------------------

def make_peer(i: int, rng: random.Random, rooms: int) -> PeerView:
    """One peer of a mixed edge fleet (the research testbed's device classes)."""
    kind = rng.choices(["rpi3", "rpi4", "laptop", "router"], [30, 40, 15, 15])[0]
    cores, memory, nets = {
        "rpi3": (4, rng.randint(550, 750), {"wifi", "bluetooth"}),
        "rpi4": (4, rng.randint(2800, 3500), {"wifi", "bluetooth", "ethernet"}),
        "laptop": (rng.choice([4, 8]), rng.randint(6000, 14000), {"wifi", "ethernet",
                                                                  "bluetooth"}),
        "router": (2, rng.randint(300, 450), {"wifi", "ethernet"}),
    }[kind]
    battery = kind in ("rpi3", "laptop") and rng.random() < 0.4
    devices = set(rng.sample(DEVICES, rng.choice([0, 0, 1, 1, 2]))) if kind != "router" else set()
    return PeerView(
        name=f"peer-{i:04d}", alive=True, capabilities=frozenset(devices | {"compute"}),
        cpu_cores=float(cores), memory_mb=memory, storage_mb=rng.randint(2000, 30000),
        power="battery" if battery else "ac",
        battery_percent=float(rng.randint(10, 100)) if battery else 0.0,
        networks=cast("frozenset[NetworkKind]", frozenset(nets)),
        labels={"room": f"room-{rng.randrange(rooms)}"},
        cpu_load_percent=float(rng.randint(0, 80)))


def make_service(i: int, rng: random.Random, rooms: int, scale: float) -> ServiceSpec:
    """A service: free-running compute (50 %), bound to a device (40 %) or to a
    room / mains power (10 %)."""
    kind = rng.choices(["compute", "device", "constrained"], [50, 40, 10])[0]
    requires: dict[str, Any] = {
        "cpu": round(rng.uniform(0.02, 0.3) * scale, 2),
        "memory_mb": int(rng.randint(16, 192) * scale),
        "storage_mb": rng.choice([0, 10, 50, 200]),
    }
    placement: dict[str, Any] = {}
    if kind == "device":
        requires["capabilities"] = [rng.choice(DEVICES)]
        if rng.random() < 0.3:
            requires["network"] = "bluetooth"
        if rng.random() < 0.2:
            requires["min_battery_percent"] = 20
    elif kind == "constrained":
        if rng.random() < 0.5:
            placement["labels"] = {"room": f"room-{rng.randrange(rooms)}"}
        else:
            requires["power"] = "ac"
    replicas = rng.choices([1, 2, 3], [70, 20, 10])[0]
    return service_spec_from_dict({"name": f"svc-{i:05d}", "replicas": replicas,
                                   "requires": requires, "placement": placement})


@dataclass(frozen=True)
class Scenario:
    name: str
    services: int
    peers: int
    scale: float = 1.0
    """Multiplies every CPU and memory demand: 1 is a comfortable fleet, 2.5 an
    over-subscribed one where not everything fits."""
    seed: int = 1

    def build(self) -> tuple[list[ServiceSpec], list[PeerView]]:
        rng = random.Random(self.seed)
        rooms = max(1, self.peers // 10)
        peers = [make_peer(i, rng, rooms) for i in range(self.peers)]
        specs = [make_service(i, rng, rooms, self.scale) for i in range(self.services)]
        return specs, peers


# -- measurements --------------------------------------------------------------------------

def plan_with(config: PlacementConfig, specs: list[ServiceSpec], peers: list[PeerView],
              previous: Plan | None = None, seed: int = 0) -> Plan:
    return place(specs, peers, previous, config=config, rng=random.Random(seed))


def median_ms(fn: Any, runs: int) -> float:
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        timings.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(timings)


def utilisation(plan: Plan, specs: list[ServiceSpec], peers: list[PeerView]) -> list[float]:
    """Per alive peer: the larger of reserved CPU / cores and reserved memory /
    available memory (0 for an empty peer)."""
    usage = usage_by_peer(plan, specs)
    out = []
    for p in peers:
        used = usage.get(p.name)
        if not p.alive:
            continue
        cpu = used.cpu / p.cpu_cores if used and p.cpu_cores else 0.0
        mem = used.memory_mb / p.memory_mb if used and p.memory_mb else 0.0
        out.append(max(cpu, mem))
    return out


def moves(before: Plan, after: Plan) -> int:
    return sum(1 for iid, peer in before.assignments.items()
               if iid in after.assignments and after.assignments[iid] != peer)


def churn(config: PlacementConfig, specs: list[ServiceSpec], peers: list[PeerView],
          first: Plan, seed: int) -> dict[str, Any]:
    """Kill 10 % of the peers, re-plan; bring them back, re-plan; then (balanced)
    re-plan until the returning peers are settled."""
    victims = set(random.Random(seed).sample([p.name for p in peers], max(1, len(peers) // 10)))
    dead = [replace(p, alive=False) if p.name in victims else p for p in peers]
    killed = plan_with(config, specs, dead, first, seed)
    back = plan_with(config, specs, peers, killed, seed)
    result = {"moves_kill": moves(first, killed), "moves_return": moves(killed, back)}
    if config.strategy == "balanced":
        plans, total, current = 1, result["moves_return"], back
        while current.stats.rebalance_pending and plans < 1000:
            following = plan_with(config, specs, peers, current, seed + plans)
            total += moves(current, following)
            current, plans = following, plans + 1
        result.update(plans_to_settle=plans, moves_to_settle=total)
    return result


def quality_row(scenario: Scenario, strategy: str) -> dict[str, Any]:
    specs, peers = scenario.build()
    config = STRATEGIES[strategy]
    first = plan_with(config, specs, peers)
    util = utilisation(first, specs, peers)
    return {
        "kind": "quality", "scenario": scenario.name, "strategy": strategy,
        "services": len(specs), "instances": sum(s.replicas for s in specs),
        "peers": len(peers), "placed": len(first.assignments), "unplaced": len(first.unplaced),
        "peak_util": round(max(util, default=0.0), 3),
        "mean_util": round(statistics.fmean(util) if util else 0.0, 3),
        "peers_used": len(set(first.assignments.values())),
        **churn(config, specs, peers, first, scenario.seed),
    }


def timing_rows(runs: int, quick: bool) -> list[dict[str, Any]]:
    rows = []
    sizes = [(1000, 100)] if quick else [(1000, 100), (10000, 1000)]
    config = PlacementConfig()
    for services, peers_n in sizes:
        specs, peers = Scenario(f"{services}x{peers_n}", services, peers_n).build()
        n = runs if services <= 1000 else max(3, runs // 2)
        first = plan_with(config, specs, peers)
        scratch = median_ms(lambda: plan_with(config, specs, peers), n)  # noqa: B023
        victims = {p.name for p in peers[:: 10]}
        dead = [replace(p, alive=False) if p.name in victims else p for p in peers]
        replan = median_ms(lambda: plan_with(config, specs, dead, first), n)  # noqa: B023
        common = {"kind": "timing", "strategy": "balanced/spread", "services": services,
                  "instances": sum(s.replicas for s in specs), "peers": peers_n,
                  "placed": len(first.assignments), "unplaced": len(first.unplaced),
                  "runs": n, "target_ms": TIME_TARGETS_MS[(services, peers_n)]}
        rows.append({**common, "scenario": f"{services}x{peers_n} from scratch",
                     "median_ms": round(scratch, 2)})
        rows.append({**common, "scenario": f"{services}x{peers_n} replan, 10% dead",
                     "median_ms": round(replan, 2), "target_ms": ""})
    return rows


QUALITY = [
    Scenario("small 30x10", 30, 10),
    Scenario("fleet 1000x100", 1000, 100),
    Scenario("tight 300x20", 300, 20, scale=2.5),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9, help="timed runs (half for 10k)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "experiments/results/placement.csv")
    parser.add_argument("--quick", action="store_true", help="skip the 10,000-service timing")
    args = parser.parse_args()
    rows = timing_rows(args.runs, args.quick)
    for scenario in QUALITY:
        rows.extend(quality_row(scenario, strategy) for strategy in STRATEGIES)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(rows)
    print_summary(rows)
    print(f"wrote {args.out}")
    failed = [r for r in rows if r["kind"] == "timing" and r["target_ms"]
              and r["median_ms"] > r["target_ms"]]
    return 1 if failed else 0


def print_summary(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        if r["kind"] == "timing":
            target = f" (target {r['target_ms']:g} ms)" if r["target_ms"] else ""
            print(f"time  {r['scenario']:<32} {r['instances']:>6} instances: "
                  f"median {r['median_ms']:8.2f} ms over {r['runs']} runs{target}")
    print(f"{'scenario':<16} {'strategy':<17} {'placed':>11} {'peak':>5} {'mean':>5} "
          f"{'used':>5} {'kill':>5} {'return':>6} {'settle':>11}")
    for r in rows:
        if r["kind"] == "quality":
            settle = (f"{r['moves_to_settle']} in {r['plans_to_settle']}"
                      if "plans_to_settle" in r else "-")
            print(f"{r['scenario']:<16} {r['strategy']:<17} "
                  f"{r['placed']:>5}/{r['instances']:<5} {r['peak_util']:>5.2f} "
                  f"{r['mean_util']:>5.2f} "
                  f"{r['peers_used']:>5} {r['moves_kill']:>5} {r['moves_return']:>6} "
                  f"{settle:>11}")


if __name__ == "__main__":
    sys.exit(main())
