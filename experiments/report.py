"""Write experiments/REPORT.md from the recorded runs in experiments/results/.

    python experiments/report.py            # rewrite REPORT.md
    python experiments/report.py --check    # exit 1 if REPORT.md is stale

Nothing in the report is typed by hand: every number comes from a
``results/*.summary.json`` (one per benchmark run, written by the scripts
through ``_meshlib``) or a ``results/scenarios/<name>/summary.json`` (one per
``nanomesh experiment run``), and every line names the command that
reproduces it. README.md keeps the discussion (goals, causes of gaps); this
file is the record. A test (tests/test_experiment_report.py) fails when a
result is added or changed without regenerating it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
REPORT = HERE / "REPORT.md"

STAT_ORDER = ("median", "median_ms", "p50_ms", "mean", "mean_ms", "p90", "p90_ms", "max",
              "max_ms")
"""Which fields of a statistics dict to print, in this order (the mean only
where there is no median)."""

MAX_HEADLINES = 10
"""Statistics printed per run; the rest stay in the summary file."""

SKIP_KEYS = frozenset({"machine", "targets", "goals", "raft_timing", "network", "csv", "plot",
                       "note", "anomalies", "components", "per_size", "rows", "simulator",
                       "leader_model", "platforms", "steps", "errors"})
"""Top-level summary fields that are set-up or too large for a table cell."""


@dataclass(frozen=True)
class Experiment:
    """What a benchmark measures, for the report's reader."""

    title: str
    what: str


EXPERIMENTS: dict[str, Experiment] = {
    "failure_detection": Experiment(
        "Failure detection", "20 real daemons; SIGKILL a peer, time until the others mark "
        "it dead (`*_detect_s`)"),
    "false_positives": Experiment(
        "False positives under packet loss", "20 daemons in network namespaces with packet "
        "loss; live peers wrongly declared dead"),
    "convergence": Experiment(
        "Profile convergence (simulated)", "simulator; time until a new profile reaches the "
        "mesh"),
    "idle_footprint": Experiment(
        "Idle footprint", "20 idle daemons: bytes, CPU and memory per peer"),
    "footprint_vs_n": Experiment(
        "Idle cost against mesh size", "N real daemons: bytes by class, CPU, memory, "
        "convergence (issue 9)"),
    "peer_memory": Experiment(
        "Peer memory and CPU by role", "5 daemons: RSS/PSS, CPU of the leader and the others"),
    "control_failover": Experiment(
        "Control-plane failover", "SIGKILL the Raft leader; time until a write through a "
        "survivor is acknowledged (`failover_s`)"),
    "reschedule": Experiment(
        "Rescheduling", "SIGKILL a host; time until its instance runs elsewhere"),
    "call_failover": Experiment(
        "Calls across a failover", "SIGKILL the host of a service; time until calls by name "
        "succeed again"),
    "name_latency": Experiment(
        "Calls by name", "latency through the CoAP gateway and the Python client, against "
        "direct calls"),
    "gateway_bench": Experiment("CoAP gateway", "gateway latency and throughput"),
    "bundle_transfer": Experiment("Bundle transfer", "pack, add and fetch service bundles"),
    "release_bundle": Experiment("Release bundle", "build and offline install of the release"),
    "research_figures": Experiment(
        "Measured against the research", "fresh 3-peer labs with simulated devices; every "
        "nanoservice on main deployed with `nanomesh deploy`: deploy, initiate and the "
        "research's steps L1-L5 (`*_s`; research figures in the summary's `research_s`)"),
    "meeting_room": Experiment(
        "Meeting room: presence detection and BLE authentication", "4 real peers, simulated "
        "PIR and BLE; PD1 motion to DETECTED, DETECTED to AUTHENTICATED (a BLE scan window "
        "included), per visit"),
}


# ------------------------------------------------------------------ reading


def load_runs(results: Path) -> list[tuple[str, dict[str, Any]]]:
    """(file stem, summary) of every benchmark run, sorted by file name."""
    runs = []
    for path in sorted(results.glob("*.summary.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise SystemExit(f"report: {path}: {exc}") from None
        if isinstance(data, dict):
            runs.append((path.name.removesuffix(".summary.json"), data))
    return runs


def load_scenarios(results: Path) -> list[tuple[str, dict[str, Any]]]:
    runs = []
    for path in sorted((results / "scenarios").glob("*/summary.json")):
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            runs.append((path.parent.name, data))
    return runs


# ------------------------------------------------------------------ formatting


def experiment_of(stem: str, data: dict[str, Any]) -> str:
    """The benchmark a summary belongs to: its own word, else the longest
    known name its file starts with (older scripts did not record it)."""
    if isinstance(data.get("experiment"), str):
        return str(data["experiment"])
    known = [name for name in EXPERIMENTS if stem.startswith(name)]
    return max(known, key=len) if known else stem


def number(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:  # NaN: the script could not measure it
            return "-"
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
    return str(value)


def stats(name: str, value: dict[str, Any]) -> str | None:
    """``name: median 0.23, p90 0.3, max 0.39 (n 50)`` for a statistics dict."""
    fields = [k for k in STAT_ORDER if isinstance(value.get(k), int | float)
              and not isinstance(value.get(k), bool)]
    if any(k in fields for k in ("median", "median_ms", "p50_ms")):
        fields = [k for k in fields if not k.startswith("mean")]
    if not fields:
        return None
    text = ", ".join(f"{k.removesuffix('_ms')} {number(value[k])}" for k in fields)
    unit = " ms" if any(k.endswith("_ms") for k in fields) else ""
    count = f" (n {number(value['n'])})" if isinstance(value.get("n"), int) else ""
    return f"{name}: {text}{unit}{count}"


SETUP_KEYS = frozenset({"peers", "trials", "trials_done", "quick", "seed", "preset",
                        "gossip_preset", "duration_s", "wall_s", "settle_s", "window_s",
                        "loadavg_when_started", "loadavg_at_end", "loadavg_at_window_start",
                        "write_interval_s", "poll_interval_s", "attempt_timeout_s",
                        "interval_s", "limit_s", "grace_s", "lossy_window_s", "replicas",
                        "requests", "concurrency", "requests_per_path", "warmup_per_path",
                        "runs", "seeds", "help_s", "loss", "simulated", "no_gateways",
                        "load_average_1m", "system_cpu_pct_since_start"})
"""Top-level numbers that describe how a run was made, not what it measured."""

ROW_FIELDS = (("bytes_per_s_mean", "B/s mean"), ("bytes_per_s_leader", "B/s leader"),
              ("cpu_pct_others_median", "% CPU others"), ("cpu_pct_leader", "% CPU leader"),
              ("rss_mib_median", "MiB RSS"), ("pss_mib_median", "MiB PSS"))
"""What a row of ``footprint_vs_n`` contributes (one row per mesh size)."""


def headlines(data: dict[str, Any]) -> list[str]:
    """The run's numbers worth a table cell: statistics dicts (and dicts of
    them, one level down), per-size rows, then plain numbers that are results
    rather than set-up."""
    out = []
    for key, value in data.items():
        if key in SKIP_KEYS or not isinstance(value, dict):
            continue
        line = stats(key, value)
        if line:
            out.append(line)
            continue
        out += [line for sub, inner in value.items() if isinstance(inner, dict)
                for line in [stats(f"{key} {sub}", inner)] if line]
    for size, per in (data.get("per_size") or {}).items():
        if isinstance(per, dict) and isinstance(per.get("t100_s"), dict):
            out.append(stats(f"N = {size}, all reached (s)", per["t100_s"]) or "")
    for row in data.get("rows") or []:
        if isinstance(row, dict) and "n" in row:
            out.append(f"N = {row['n']}: " + ", ".join(
                f"{number(row[k])} {label}" for k, label in ROW_FIELDS if k in row))
    out += [f"{key}: {number(value)}" for key, value in data.items()
            if key not in SETUP_KEYS and key not in SKIP_KEYS
            and isinstance(value, int | float) and not isinstance(value, bool)]
    return out[:MAX_HEADLINES]


def setup(data: dict[str, Any]) -> str:
    parts = []
    for key in ("peers", "trials", "preset", "gossip_preset", "duration_s", "quick"):
        if key in data:
            parts.append(f"{key} {number(data[key])}")
    if "sizes" in data:
        parts.append("sizes " + ", ".join(number(n) for n in data["sizes"]))
    return ", ".join(parts)


def when_and_load(data: dict[str, Any]) -> str:
    machine = data.get("machine") or {}
    date = str(machine.get("date") or data.get("recorded") or "")[:16].replace("T", " ")
    load = machine.get("loadavg_at_start") or data.get("loadavg_when_started")
    load_text = ""
    if isinstance(load, list) and load:
        load_text = f"load {number(float(load[0]))}"
    elif isinstance(load, int | float):
        load_text = f"load {number(float(load))}"
    return " · ".join(p for p in (date, load_text) if p)


def command(stem: str, experiment: str, data: dict[str, Any]) -> str:
    machine = data.get("machine") or {}
    if isinstance(machine.get("command"), str):
        return str(machine["command"])
    flags = " --quick" if data.get("quick") else ""
    guess = f"python experiments/{experiment}.py{flags}"
    # runs from before summaries recorded their command: the script and its
    # mode are certain; a named variant's other flags are in experiments/README.md
    return guess if stem == experiment else f"{guess} (variant {stem}: flags in README)"


def table(rows: Iterable[Iterable[str]], header: list[str]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"
              for row in rows]
    return lines


# ------------------------------------------------------------------ the report


def benchmark_sections(runs: list[tuple[str, dict[str, Any]]]) -> list[str]:
    grouped: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for stem, data in runs:
        grouped.setdefault(experiment_of(stem, data), []).append((stem, data))
    order = [e for e in EXPERIMENTS if e in grouped] + sorted(set(grouped) - set(EXPERIMENTS))
    lines: list[str] = []
    for name in order:
        info = EXPERIMENTS.get(name, Experiment(name, ""))
        lines += ["", f"### {info.title}", ""]
        if info.what:
            lines += [info.what + ".", ""]
        rows = []
        for stem, data in grouped[name]:
            rows.append((f"`{stem}`", setup(data), "<br>".join(headlines(data)) or "-",
                         when_and_load(data), f"`{command(stem, name, data)}`"))
        lines += table(rows, ["run", "set-up", "results", "when, load", "reproduce"])
    return lines


SCENARIO_FIELDS: list[tuple[str, str, Callable[[Any], str]]] = [
    ("calls", "calls", number),
    ("failed", "failed", number),
    ("availability", "availability", lambda v: f"{v:.2%}" if v is not None else "-"),
    ("latency median / p99", "latency_median_s",
     lambda v: f"{v * 1000:.1f} ms" if v is not None else "-"),
    ("longest outage", "longest_outage_s", lambda v: f"{v:.2f} s"),
    ("leader changes", "leader_changes", number),
    ("moves (necessary / avoidable)", "moves",
     lambda v: number(v)),
    ("placement settled after last step", "placement_settled_after_last_step_s",
     lambda v: f"{v:.1f} s" if v is not None else "not seen"),
]


def scenario_sections(runs: list[tuple[str, dict[str, Any]]], results: Path) -> list[str]:
    if not runs:
        return ["", "No scenario runs recorded yet."]
    header = ["scenario", *(label for label, _, _ in SCENARIO_FIELDS), "when, load", "reproduce"]
    rows = []
    for name, data in runs:
        cells = []
        for _, key, fmt in SCENARIO_FIELDS:
            value = data.get(key)
            text = fmt(value) if key in data else "-"
            if key == "latency_median_s" and data.get("latency_p99_s") is not None:
                text += f" / {data['latency_p99_s'] * 1000:.1f} ms"
            if key == "moves" and "moves_necessary" in data:
                text += f" ({data['moves_necessary']} / {data['moves_avoidable']})"
            cells.append(text)
        load = data.get("loadavg_at_end")
        when = " · ".join(p for p in (str(data.get("recorded", ""))[:16].replace("T", " "),
                                      f"load {load[0]}" if load else "") if p)
        rows.append((f"`{name}` ({data.get('peers', '?')} peers, "
                     f"{number(data.get('duration_s', 0))} s)", *cells, when or "-",
                     f"`nanomesh experiment run experiments/scenarios/{data.get('scenario', name)}"
                     f".toml --out experiments/results/scenarios/{name}`"))
    lines = ["", *table(rows, header)]
    for name, _ in runs:
        for plot in ("timeline", "instances"):
            if (results / "scenarios" / name / f"{plot}.png").exists():
                lines += ["", f"![{name} {plot}](results/scenarios/{name}/{plot}.png)"]
    return lines


def plots(results: Path) -> list[str]:
    pngs = sorted(results.glob("*.png"))
    return [line for p in pngs for line in ("", f"![{p.stem}](results/{p.name})")]


def build(results: Path = RESULTS) -> str:
    lines = [
        "# Experiment report",
        "",
        "Generated by `python experiments/report.py` from the recorded runs in",
        "`experiments/results/`; do not edit by hand. Each row names the command that",
        "reproduces it (`python` is the project's venv python, run from the repository",
        "root). Runs shared the machine (2 cores) with other work at times: the load",
        "average at the start of each run is beside its numbers. README.md discusses",
        "the goals and the causes of the gaps; experiments/README.md describes each script.",
        "",
        "## Scenarios (`nanomesh experiment run`)",
        "",
        "A live lab, a service called by name at a fixed rate, and a timeline of",
        "joins, leaves, crashes and partitions. Moves are instances that changed peer",
        "between two samples: necessary when their peer was gone, avoidable otherwise.",
        *scenario_sections(load_scenarios(results), results),
        "",
        "## Benchmarks",
        *benchmark_sections(load_runs(results)),
        "",
        "## Plots",
        *plots(results),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if REPORT.md differs from what the results give")
    args = parser.parse_args(argv)
    text = build()
    if args.check:
        if not REPORT.exists() or REPORT.read_text() != text:
            print("experiments/REPORT.md is stale: run python experiments/report.py",
                  file=sys.stderr)
            return 1
        return 0
    REPORT.write_text(text)
    print(f"wrote {REPORT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
