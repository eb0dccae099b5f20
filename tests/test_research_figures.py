"""experiments/research_figures.py: its pure part, which turns the deploy
CLI's output and the daemons' log lines into the research's steps."""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def load() -> ModuleType:
    if str(EXPERIMENTS) not in sys.path:
        sys.path.insert(0, str(EXPERIMENTS))  # it imports _meshlib by name, as scripts do
    return importlib.import_module("research_figures")


rf = load()
ml = rf.ml
T0 = 1_800_000_000.0


def line(ts: float, msg: str, peer: str = "rf-1") -> object:
    return ml.LogLine(ts, peer, "INFO", "nanomesh.runtime", msg)


def test_cli_marks_take_the_upload_and_commit_lines() -> None:
    marks = rf.cli_marks(T0, [(T0 + 0.5, "uploaded bundle 0123456789ab (10240 bytes) from x"),
                              (T0 + 0.6, "deployed echo (revision 3)"),
                              (T0 + 0.7, "deployed echo (revision 4)")])
    assert (marks.uploaded, marks.committed) == (T0 + 0.5, T0 + 0.6)
    assert (marks.bundle_sha, marks.bundle_bytes) == ("0123456789ab", 10240)


def test_cli_marks_reject_an_output_without_the_commit() -> None:
    with pytest.raises(ValueError, match="deployed"):
        rf.cli_marks(T0, [(T0 + 0.5, "uploaded bundle 0123456789ab (10 bytes) from x")])


def test_plan_commit_is_the_first_after_the_upload_at_log_resolution() -> None:
    logs = [line(T0 - 5.0, "placement: committed plan epoch 1 (0 placed, 0 unplaced, ...)"),
            # the upload happened at T0 + 0.1004; the log floors to ms
            line(T0 + 0.300, "placement: committed plan epoch 3 (2 placed, ...)"),
            line(T0 + 0.100, "placement: committed plan epoch 2 (1 placed, ...)")]
    assert rf.plan_commit(logs, T0 + 0.1004) == T0 + 0.100
    assert math.isnan(rf.plan_commit(logs, T0 + 1.0))


def test_host_marks_match_the_instance_not_its_prefix() -> None:
    sha = "0123456789abcdef"
    logs = [line(T0 - 1, "started echo/0 (pid 1, process): old run before the deploy"),
            line(T0 + 0.2, "fetched bundle 0123456789ab from the mesh"),
            line(T0 + 0.3, "started echo/10 (pid 5, process): python3 echo.py"),
            line(T0 + 0.4, "started echo/0 (pid 7, process): python3 echo.py"),
            line(T0 + 0.5, "echo/0 is unhealthy (connection refused)"),
            line(T0 + 0.9, "echo/0 is healthy")]
    marks = rf.host_marks(logs, "echo/0", sha, T0)
    assert (marks.fetched, marks.started, marks.healthy) == (T0 + 0.2, T0 + 0.4, T0 + 0.9)
    other = rf.host_marks(logs, "echo/1", "ffff", T0)
    assert all(math.isnan(v) for v in (other.fetched, other.started, other.healthy))


def test_joining_at_is_the_peers_join_stamp() -> None:
    logs = [line(T0, "CoAP gateway on coap://..."), line(T0 + 0.02, "joining via 127.0.19.1:7946")]
    assert rf.joining_at(logs) == T0 + 0.02
    assert math.isnan(rf.joining_at(logs[:1]))


def test_deploy_steps_add_up_to_the_deploy() -> None:
    cli = rf.CliMarks(T0, T0 + 0.7, T0 + 0.75, "ab", 10)
    host = rf.HostMarks(started=T0 + 1.0, healthy=T0 + 1.8, fetched=math.nan)
    steps = rf.deploy_steps(cli, T0 + 0.8, host)
    assert steps["L3"] + steps["L4"] + steps["L5"] == pytest.approx(steps["deploy"])
    assert steps["deploy"] == pytest.approx(1.0)
    assert steps["initiate"] == pytest.approx(0.8)
    assert math.isnan(steps["fetch_after_plan"])


def test_summary_total_adds_the_median_discovery_and_reporting() -> None:
    rows = [{"L3": 0.5, "L4": 0.1, "L5": 0.2, "deploy": 0.8, "initiate": 1.0},
            {"L3": 0.7, "L4": 0.1, "L5": 0.2, "deploy": 1.0, "initiate": math.nan}]
    out = rf.summarise(rows, l1=[0.01, 0.03, 0.02], l2=[0.05])
    assert out["total"]["min"] == pytest.approx(0.02 + 0.05 + 0.8)
    assert out["total"]["max"] == pytest.approx(0.02 + 0.05 + 1.0)
    assert out["initiate"]["n"] == 1  # a service without a health check has no initiate
