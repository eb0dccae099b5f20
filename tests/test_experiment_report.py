"""experiments/report.py: REPORT.md is built from the recorded results only,
names the command of every run, and is regenerated whenever results change."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_report() -> ModuleType:
    spec = importlib.util.spec_from_file_location("experiments_report",
                                                  REPO / "experiments" / "report.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


report = load_report()


def write(path: Path, data: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_the_committed_report_matches_the_results() -> None:
    assert (REPO / "experiments" / "REPORT.md").read_text() == report.build(), (
        "experiments/REPORT.md is stale: run python experiments/report.py")


def test_a_benchmark_run_shows_its_numbers_its_load_and_its_command(tmp_path: Path) -> None:
    write(tmp_path / "control_failover_quiet.summary.json", {
        "experiment": "control_failover", "peers": 5, "trials": 20, "quick": False,
        "failover_s": {"n": 20, "min": 0.17, "median": 0.287, "mean": 0.3, "p90": 0.366,
                       "p99": 0.556, "max": 0.556},
        "raft_timing": {"append_entries_period": 0.03},
        "machine": {"date": "2026-12-06T20:01:02+00:00", "loadavg_at_start": [1.5, 1, 1],
                    "command": "python experiments/control_failover.py --trials 20"}})
    text = report.build(tmp_path)
    row = next(line for line in text.splitlines() if "`control_failover_quiet`" in line)
    assert "failover_s: median 0.287, p90 0.366, max 0.556 (n 20)" in row
    assert "mean" not in row  # the median says it; set-up fields stay out
    assert "append_entries_period" not in row
    assert "2026-12-06 20:01 · load 1.5" in row
    assert "`python experiments/control_failover.py --trials 20`" in row
    assert "### Control-plane failover" in text


def test_an_old_run_without_a_recorded_command_gets_its_script_and_mode(tmp_path: Path) -> None:
    write(tmp_path / "reschedule.summary.json", {"experiment": "reschedule", "quick": True})
    write(tmp_path / "gateway_bench_v2.summary.json", {"gateway": {"p50_ms": 2.5}})
    text = report.build(tmp_path)
    assert "`python experiments/reschedule.py --quick`" in text
    # no "experiment" field: the file name says which script wrote it
    assert "### CoAP gateway" in text and "gateway: p50 2.5 ms" in text
    assert "(variant gateway_bench_v2: flags in README)" in text


def test_a_scenario_run_shows_availability_and_moves(tmp_path: Path) -> None:
    write(tmp_path / "scenarios" / "churn" / "summary.json", {
        "scenario": "churn", "peers": 8, "duration_s": 90, "calls": 900, "failed": 3,
        "availability": 0.99666, "latency_median_s": 0.0051, "latency_p99_s": 0.05,
        "longest_outage_s": 0.4, "leader_changes": 2, "moves": 5,
        "moves_necessary": 4, "moves_avoidable": 1,
        "placement_settled_after_last_step_s": 1.25, "recorded": "2026-12-06T22:00:00+0000",
        "loadavg_at_end": [3.2, 2, 1]})
    (tmp_path / "scenarios" / "churn" / "timeline.png").write_bytes(b"png")
    text = report.build(tmp_path)
    row = next(line for line in text.splitlines() if line.startswith("| `churn`"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:9] == ["900", "3", "99.67%", "5.1 ms / 50.0 ms", "0.40 s", "2", "5 (4 / 1)",
                          "1.2 s"]
    assert "2026-12-06 22:00 · load 3.2" in row
    assert ("nanomesh experiment run experiments/scenarios/churn.toml "
            "--out experiments/results/scenarios/churn") in row
    assert "![churn timeline](results/scenarios/churn/timeline.png)" in text
    assert "instances.png" not in text  # only plots that exist are linked


def test_check_mode_says_when_the_report_is_stale(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report, "REPORT", tmp_path / "REPORT.md")
    assert report.main(["--check"]) == 1
    assert report.main([]) == 0
    assert report.main(["--check"]) == 0
