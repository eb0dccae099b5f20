"""How often does a peer re-publish its profile for live values alone? The
rule before issue 9's fix and `nanomesh.discovery.publish` on one trace.

In a mesh, a profile publication costs every other peer a pull, so live
values that move often cost O(N) per peer. Measured on real daemons the count
drowns in what else republishes (a Raft election changes every peer's
profile), so this compares the two decisions on the *same* samples:

1. **trace**: every ``--every`` s (5, the daemon's ``profile_refresh``) for
   ``--minutes``, `nanomesh.discovery.refresh_live` samples this machine's
   live values (what a daemon here would sample), written to
   ``results/<name>.trace.json``; or ``--trace FILE`` replays one;
2. **before**: the rule the daemon had (``load_changed``: publish the raw
   sample when CPU moved 10 points, memory 5 points, available memory or
   free storage 10 %, battery 5 points, or the power source changed), kept
   here only for this comparison;
3. **after**: `ProfilePublisher` (buckets, hysteresis, live-only changes at
   most every `live_interval`, which depends on the mesh size) for each N in
   ``--sizes``.

Writes ``results/<name>.csv`` (one row per rule and N: publications per
hour, per peer; the profile bytes each peer then sends per second,
(N - 1) pulls x ``--pull-bytes``) and ``.summary.json``.

    .venv/bin/python experiments/profile_churn.py                 # 10 min trace
    .venv/bin/python experiments/profile_churn.py --trace results/profile_churn.trace.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import _meshlib as ml

from nanomesh.discovery import DiscoveryConfig, discover, refresh_live
from nanomesh.discovery.publish import ProfilePublisher, PublishPolicy, live_interval

PULL_BYTES = 1500
"""Bytes a peer sends for one profile pull it serves: the ~1.2 kB profile,
sealed, plus TCP set-up and teardown (IP headers included)."""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="trace length (default 10)")
    p.add_argument("--every", type=float, default=5.0, help="seconds between samples (5)")
    p.add_argument("--trace", type=Path, help="replay this trace instead of sampling")
    p.add_argument("--sizes", default="10,25,100", help="mesh sizes (default 10,25,100)")
    p.add_argument("--pull-bytes", type=int, default=PULL_BYTES,
                   help=f"bytes sent per profile pull served (default {PULL_BYTES})")
    p.add_argument("--name", default="profile_churn", help="result file stem")
    args = p.parse_args()
    args.sizes = [int(x) for x in args.sizes.split(",")]
    return args


def _value(profile: Mapping[str, Any], section: str, key: str) -> Any:
    part = profile.get(section)
    return part.get(key) if isinstance(part, Mapping) else None


def _points(old: Any, new: Any, points: float) -> bool:
    if old is None or new is None:
        return (old is None) != (new is None)
    return bool(abs(new - old) >= points)


def _ratio(old: Any, new: Any, ratio: float) -> bool:
    if old is None or new is None:
        return (old is None) != (new is None)
    return bool(new != 0) if old == 0 else bool(abs(new - old) >= ratio * abs(old))


def changed_before_fix(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """The daemon's rule before issue 9's fix (``discovery/load.py``'s
    ``load_changed`` with its default thresholds), for comparison only."""
    return any((
        _points(_value(old, "load", "cpu_percent"), _value(new, "load", "cpu_percent"), 10.0),
        _points(_value(old, "load", "memory_percent"), _value(new, "load", "memory_percent"),
                5.0),
        _ratio(_value(old, "memory", "available_mb"), _value(new, "memory", "available_mb"),
               0.10),
        _ratio(_value(old, "storage", "free_mb"), _value(new, "storage", "free_mb"), 0.10),
        _points(_value(old, "power", "battery_percent"), _value(new, "power", "battery_percent"),
                5.0),
        _value(old, "power", "source") != _value(new, "power", "source"),
    ))


def record(minutes: float, every: float) -> list[dict[str, Any]]:
    """Live samples of this machine, as the daemon takes them."""
    with tempfile.TemporaryDirectory(prefix="nm-churn-") as tmp:
        config = DiscoveryConfig(data_dir=Path(tmp))
        # The first sample after discover: discover's CPU percent is 0.0 (no
        # window yet), which would count as a change under either rule.
        time.sleep(every)
        profile = refresh_live(discover(config), config)
        trace = [profile]
        end = time.monotonic() + minutes * 60
        while time.monotonic() < end:
            time.sleep(every)
            profile = refresh_live(profile, config)
            trace.append(profile)
            if len(trace) % 12 == 0:
                print(f"  {len(trace)} samples, load {os.getloadavg()[0]:.1f}, cpu "
                      f"{profile['load']['cpu_percent']}%", flush=True)
    return trace


def before_fix(trace: list[dict[str, Any]]) -> int:
    published, count = trace[0], 0
    for sample in trace[1:]:
        if changed_before_fix(published, sample):
            published, count = sample, count + 1
    return count


def after_fix(trace: list[dict[str, Any]], every: float, members: int
              ) -> tuple[int, dict[str, int]]:
    publisher = ProfilePublisher(trace[0], now=0.0)
    count = 0
    for i, sample in enumerate(trace[1:], 1):
        # The daemon samples with its published profile's static parts.
        live = {**publisher.published, "load": sample["load"],
                "memory": sample["memory"], "storage": sample["storage"],
                "power": sample["power"]}
        count += publisher.observe(live, i * every, members)
    return count, dict(vars(publisher.stats))


def main() -> int:
    args = parse_args()
    csv_path, json_path = ml.results_paths(args.name)
    if args.trace:
        trace = json.loads(args.trace.read_text())
        load = None
    else:
        print(f"sampling this machine every {args.every:g}s for {args.minutes:g} min",
              flush=True)
        load = os.getloadavg()
        trace = record(args.minutes, args.every)
        trace_path = csv_path.with_suffix(".trace.json")
        trace_path.write_text(json.dumps(trace) + "\n")
    hours = (len(trace) - 1) * args.every / 3600
    rows = []
    old = before_fix(trace)
    for n in args.sizes:
        new, stats = after_fix(trace, args.every, n)
        for rule, count in (("before", old), ("after", new)):
            per_hour = count / hours
            rows.append({"rule": rule, "n": n, "publications": count,
                         "per_hour_per_peer": round(per_hour, 1),
                         "profile_bytes_per_s_per_peer": round(
                             per_hour / 3600 * (n - 1) * args.pull_bytes, 1),
                         "live_interval_s": live_interval(PublishPolicy(), n)
                         if rule == "after" else 0.0,
                         "stats": stats if rule == "after" else {}})
    columns = ["rule", "n", "publications", "per_hour_per_peer",
               "profile_bytes_per_s_per_peer", "live_interval_s"]
    ml.write_csv(csv_path, columns, [[r[c] for c in columns] for r in rows])
    ml.write_json(json_path, {"experiment": "profile_churn", "samples": len(trace),
                              "every_s": args.every, "hours": round(hours, 3),
                              "loadavg_when_started": load, "rows": rows,
                              "machine": ml.machine_info(), "pull_bytes": args.pull_bytes})
    for r in rows:
        print(f"N={r['n']:>3} {r['rule']:>6}: {r['publications']:>3} publications "
              f"({r['per_hour_per_peer']:.0f}/h per peer) -> "
              f"{r['profile_bytes_per_s_per_peer']:.0f} B/s per peer of profile pulls")
    print(f"{len(trace)} samples over {hours * 60:.1f} min. Wrote {csv_path}, {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
