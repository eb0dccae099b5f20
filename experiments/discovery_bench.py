"""How long does a peer take to discover its capabilities?

Runs ``nanomesh.discovery.discover()`` 200 times on this machine, prints the
median / p99 / max wall time in milliseconds, and writes one row per run to
``experiments/results/discovery.csv`` (run, discover_ms, refresh_live_ms);
the first (cold) call is timed and printed separately. The budget is 100 ms per
discovery; the daemon runs it at start-up and on config changes, and the live
part (``refresh_live``) every few seconds, which is timed too.

    .venv/bin/python experiments/discovery_bench.py [--runs N] [--out PATH]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # nanomesh is not installed into the venv
    sys.path.insert(0, str(REPO_ROOT))

from nanomesh.discovery import DiscoveryConfig, discover, refresh_live  # noqa: E402

BUDGET_MS = 100.0
DEVICES = ({"type": "pir", "pin": 4}, {"type": "ble"}, {"type": "display"})


def time_ms(fn: Callable[[], object], runs: int) -> list[float]:
    """Wall time of ``runs`` calls of ``fn``, in milliseconds."""
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        timings.append((time.perf_counter() - start) * 1000.0)
    return timings


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100)."""
    ordered = sorted(values)
    rank = max(1, round(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary(name: str, timings: list[float]) -> str:
    return (f"{name}: n={len(timings)} median={statistics.median(timings):.3f} ms "
            f"p99={percentile(timings, 99):.3f} ms max={max(timings):.3f} ms")


def write_csv(path: Path, discover_ms: list[float], refresh_ms: list[float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "discover_ms", "refresh_live_ms"])
        for i, (d, r) in enumerate(zip(discover_ms, refresh_ms, strict=True)):
            writer.writerow([i, f"{d:.4f}", f"{r:.4f}"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--out", type=Path,
                        default=REPO_ROOT / "experiments/results/discovery.csv")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = DiscoveryConfig(data_dir=Path(tmp) / "data", devices=DEVICES,
                                 labels={"room": "bench"})
        start = time.perf_counter()
        profile = discover(config)  # cold: first file reads, page cache misses
        cold_ms = (time.perf_counter() - start) * 1000.0
        discover_ms = time_ms(lambda: discover(config), args.runs)
        refresh_ms = time_ms(lambda: refresh_live(profile, config), args.runs)
    print(f"discover (first call, cold): {cold_ms:.3f} ms")
    print(summary("discover", discover_ms))
    print(summary("refresh_live", refresh_ms))
    write_csv(args.out, discover_ms, refresh_ms)
    print(f"wrote {args.out}")
    return 0 if max(cold_ms, *discover_ms) < BUDGET_MS else 1


if __name__ == "__main__":
    raise SystemExit(main())
