"""The leader's verdict on a deployment (`nanomesh.runtime.deployment_core.judge`): pure,
time passed in as ``now`` (issue 8 item 13, Nomad's auto-revert)."""

from __future__ import annotations

from typing import Any

import pytest

from nanomesh.runtime.deployment_core import (
    CRASH_LIMIT,
    UpdatePolicy,
    Watch,
    instance_reports,
    judge,
    update_policy,
    update_policy_problem,
)
from nanomesh.runtime.reconcile_core import spec_digest

DOC: dict[str, Any] = {"name": "web", "version": "2", "run": {"command": ["web"]},
                       "spec": {"name": "web", "replicas": 2},
                       "update": {"min_healthy_time": 5.0, "healthy_deadline": 60.0}}
NEW = spec_digest(DOC)
DEP = {"id": 7, "status": "running"}


def report(state: str = "running", health: str = "healthy", restarts: int = 0,
           digest: str = NEW) -> dict[str, Any]:
    return {"state": state, "health": health, "restarts": restarts, "digest": digest}


def both(**kw: Any) -> dict[str, Any]:
    return {"web/0": report(**kw), "web/1": report(**kw)}


def run(looks: list[tuple[float, dict[str, Any]]], doc: dict[str, Any] = DOC,
        has_previous: bool = True) -> list[tuple[float, str]]:
    """Feed `judge` a series of looks; the (time, status) of each verdict."""
    watch: Watch | None = None
    out = []
    for now, instances in looks:
        watch, verdict = judge(doc, DEP, instances, has_previous, watch, now)
        if verdict is not None:
            out.append((now, verdict.status))
    return out


def test_healthy_for_min_healthy_time_succeeds() -> None:
    looks = [(0.0, {"web/0": None, "web/1": None}), (1.0, both(health="starting")),
             (2.0, both()), (6.9, both()), (7.0, both())]
    assert run(looks) == [(7.0, "successful")]


def test_a_restart_starts_the_healthy_time_again() -> None:
    looks = [(0.0, both()), (4.0, {"web/0": report(), "web/1": report(restarts=1)}),
             (8.9, {"web/0": report(), "web/1": report(restarts=1)}),
             (9.0, {"web/0": report(), "web/1": report(restarts=1)})]
    assert run(looks) == [(9.0, "successful")]


def test_instances_still_on_the_old_version_are_not_healthy() -> None:
    old = {"web/0": report(), "web/1": report(digest="olddigest")}
    assert run([(0.0, old), (10.0, old)]) == []


def test_crash_loop_reverts_before_the_deadline() -> None:
    looks = [(0.0, both(state="starting", health="starting")),
             (1.0, {"web/0": report(), "web/1": report(state="failed", health="none",
                                                        restarts=CRASH_LIMIT)})]
    assert run(looks) == [(1.0, "reverted")]


def test_failing_health_checks_revert_through_restarts() -> None:
    """The runtime kills an instance that fails its checks: restarts climb."""
    looks = [(0.0, both(health="starting"))] + [
        (float(i), both(state="failed", health="none", restarts=i)) for i in
        range(1, CRASH_LIMIT + 1)]
    assert run(looks) == [(float(CRASH_LIMIT), "reverted")]


def test_not_healthy_by_the_deadline_reverts() -> None:
    starting = both(health="starting")
    assert run([(0.0, starting), (59.9, starting), (60.0, starting)]) == [(60.0, "reverted")]


def test_unplaced_instances_fail_at_the_deadline() -> None:
    looks = [(0.0, {"web/0": report(), "web/1": None}), (60.0, {"web/0": report(),
                                                                 "web/1": None})]
    assert run(looks) == [(60.0, "reverted")]


def test_fewer_instances_than_replicas_is_not_healthy() -> None:
    assert run([(0.0, {"web/0": report()}), (30.0, {"web/0": report()})]) == []


def test_first_deploy_or_auto_revert_off_just_fails() -> None:
    crash = both(state="failed", restarts=CRASH_LIMIT)
    assert run([(0.0, crash)], has_previous=False) == [(0.0, "failed")]
    off = {**DOC, "update": {**DOC["update"], "auto_revert": False}}
    assert run([(0.0, crash)], doc=off) == [(0.0, "failed")]


def test_restart_policy_never_failing_once_is_final() -> None:
    doc = {**DOC, "restart": {"policy": "never"}}
    digest = spec_digest(doc)
    looks = [(0.0, {"web/0": report(digest=digest),
                    "web/1": report(state="failed", health="none", digest=digest)})]
    assert run(looks, doc=doc) == [(0.0, "reverted")]


def test_idle_service_is_healthy_when_its_instances_are_idle() -> None:
    doc = {**DOC, "mode": "idle"}
    idle = both(state="idle", health="none")
    assert run([(0.0, idle), (5.0, idle)], doc=doc) == [(5.0, "successful")]


def test_a_new_leader_starts_the_deadline_again() -> None:
    """The memory is not replicated: a watch of another deployment (or none)
    starts at `now`, so a failover never shortens a deadline."""
    starting = both(health="starting")
    watch, verdict = judge(DOC, DEP, starting, True, Watch(6, started=0.0), 100.0)
    assert verdict is None and watch.started == 100.0


def test_reason_names_the_instances() -> None:
    _, verdict = judge(DOC, DEP, {"web/0": None, "web/1": report(health="starting")},
                       True, Watch(7, started=0.0), 60.0)
    assert verdict is not None and "web/0 not placed" in verdict.reason
    assert "web/1 running/starting" in verdict.reason


def test_instance_reports_from_plan_and_gossip() -> None:
    plan = {"assignments": {"web/0": "a", "web/1": "b", "db/0": "a"}, "unplaced": ["web/2"]}
    reported = {"a": {"web/0": report()}}
    assert instance_reports(plan, "web", reported) == {
        "web/0": report(), "web/1": None, "web/2": None}


@pytest.mark.parametrize(("raw", "problem"), [
    ({"auto_revert": "yes"}, "auto_revert"),
    ({"min_healthy_time": -1}, "min_healthy_time"),
    ({"healthy_deadline": float("inf")}, "healthy_deadline"),
    ({"healthy_deadline": 5, "min_healthy_time": 5}, "longer"),
    ({"bogus": 1}, "unknown"),
    ([], "table"),
])
def test_bad_update_sections_are_named(raw: Any, problem: str) -> None:
    found = update_policy_problem(raw)
    assert found is not None and problem in found


def test_update_policy_defaults() -> None:
    assert update_policy(None) == UpdatePolicy()
    assert update_policy({"auto_revert": False}).auto_revert is False
    assert update_policy_problem({}) is None


@pytest.mark.parametrize(("exit_code", "said"), [
    (3, ", last run exited with status 3"),
    (-9, ", last run killed by signal 9"),
    (None, "; last state failed"),        # an older peer reports no exit: nothing invented
    ("3", "; last state failed"),         # garbage from the network: ignored
])
def test_a_crash_loop_says_how_the_last_run_ended(exit_code: Any, said: str) -> None:
    crashed = {**report(state="failed", health="none", restarts=CRASH_LIMIT),
               **({"exit": exit_code} if exit_code is not None else {})}
    _, verdict = judge(DOC, DEP, {"web/0": report(), "web/1": crashed}, True,
                       Watch(7, started=0.0), 1.0)
    assert verdict is not None and verdict.reason.endswith(said), verdict.reason
