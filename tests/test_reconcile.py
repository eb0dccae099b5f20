"""The reconcile core: one table row per rule of ``nanomesh.runtime.reconcile_core``'s docstring."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import FrozenInstanceError
from typing import Any

import pytest

from nanomesh.errors import ConfigError
from nanomesh.runtime.reconcile_core import (
    HANDOVER_TIMEOUT,
    STATES,
    TRANSITIONS,
    BackoffPolicy,
    Handover,
    IdleInstance,
    IllegalTransition,
    InstanceStatus,
    StartInstance,
    StopInstance,
    handover_deadline,
    next_retry_at,
    reconcile,
    restart_delay,
    spec_digest,
    transition,
    wanted_here,
)

ME = "pi-a"
SVC: dict[str, Any] = {"name": "svc", "replicas": 2,
                       "run": {"command": ["python3", "-m", "svc"], "env": {}, "cwd": None}}
OTHER: dict[str, Any] = {"name": "other", "replicas": 1, "run": {"command": ["other"]}}
SERVICES = {"svc": SVC, "other": OTHER}
D = spec_digest(SVC)
OLD = spec_digest({**SVC, "run": {"command": ["python3", "-m", "svc", "--old"]}})
BO = BackoffPolicy()  # 0.5 s doubling to 30 s, reset after 60 s


def st(iid: str, state: str, since: float = 100.0, *, restarts: int = 0,
       digest: str | None = None, started_at: float | None = None) -> InstanceStatus:
    """A status stamped with the current digest of its service (unless given)."""
    service = iid.rpartition("/")[0]
    if digest is None:
        digest = spec_digest(SERVICES[service])
    if started_at is None and state != "starting":
        started_at = since - 1.0
    return InstanceStatus(iid, service, state, since, restarts=restarts,  # type: ignore[arg-type]
                          spec_digest=digest, started_at=started_at)


def start(iid: str, restarts: int = 0, spec: Mapping[str, Any] = SVC) -> StartInstance:
    return StartInstance(iid, iid.rpartition("/")[0], spec, spec_digest(spec), restarts)


MINE = {"svc/0": ME}
ELSEWHERE = {"svc/0": "pi-b"}
IDLE_SVC: dict[str, Any] = {**SVC, "mode": "idle"}
IDLE = {"svc": IDLE_SVC, "other": OTHER}
ON_FAILURE = {"svc": {**SVC, "restart": {"policy": "on-failure"}}, "other": OTHER}
NEVER = {"svc": {**SVC, "restart": {"policy": "never"}}, "other": OTHER}


def idle(iid: str) -> IdleInstance:
    return IdleInstance(iid, iid.rpartition("/")[0], IDLE_SVC, spec_digest(IDLE_SVC))

# id, plan assignments, services, local instances, now, expected effects
CASES: list[tuple[str, dict[str, str], Mapping[str, Any], list[InstanceStatus], float,
                  list[StartInstance | StopInstance]]] = [
    # -- wanted here
    ("new assignment is started", MINE, SERVICES, [], 100.0, [start("svc/0")]),
    ("running with current spec: nothing", MINE, SERVICES, [st("svc/0", "running")], 100.0, []),
    ("starting with current spec: nothing", MINE, SERVICES, [st("svc/0", "starting")], 100.0,
     []),
    ("stopping: wait for it to end", MINE, SERVICES, [st("svc/0", "stopping")], 100.0, []),
    ("running with an older spec is stopped", MINE, SERVICES,
     [st("svc/0", "running", digest=OLD)], 100.0, [StopInstance("svc/0", "spec-changed")]),
    ("starting with an older spec is stopped", MINE, SERVICES,
     [st("svc/0", "starting", digest=OLD)], 100.0, [StopInstance("svc/0", "spec-changed")]),
    ("stopping with an older spec: wait", MINE, SERVICES,
     [st("svc/0", "stopping", digest=OLD)], 100.0, []),
    ("ended with an older spec restarts at once, back-off reset", MINE, SERVICES,
     [st("svc/0", "exited", 100.0, restarts=4, digest=OLD)], 100.0, [start("svc/0", 0)]),
    ("failed with an older spec restarts at once, back-off reset", MINE, SERVICES,
     [st("svc/0", "failed", 100.0, restarts=9, digest=OLD)], 100.0, [start("svc/0", 0)]),
    ("exited just now: wait out the back-off", MINE, SERVICES, [st("svc/0", "exited", 100.0)],
     100.4, []),
    ("exited, first back-off (0.5 s) elapsed", MINE, SERVICES, [st("svc/0", "exited", 100.0)],
     100.5, [start("svc/0", 1)]),
    ("failed, first back-off elapsed", MINE, SERVICES, [st("svc/0", "failed", 100.0)], 101.0,
     [start("svc/0", 1)]),
    ("failed after 3 quick restarts: 4 s not yet over", MINE, SERVICES,
     [st("svc/0", "failed", 100.0, restarts=3)], 103.9, []),
    ("failed after 3 quick restarts: 4 s over", MINE, SERVICES,
     [st("svc/0", "failed", 100.0, restarts=3)], 104.0, [start("svc/0", 4)]),
    ("back-off is capped at 30 s: 29 s is too early", MINE, SERVICES,
     [st("svc/0", "failed", 100.0, restarts=20)], 129.0, []),
    ("back-off is capped at 30 s", MINE, SERVICES,
     [st("svc/0", "failed", 100.0, restarts=20)], 130.0, [start("svc/0", 21)]),
    ("a run of 60 s resets the back-off", MINE, SERVICES,
     [st("svc/0", "failed", 100.0, restarts=7, started_at=40.0)], 100.5, [start("svc/0", 1)]),
    ("a run of 59 s does not reset it", MINE, SERVICES,
     [st("svc/0", "failed", 100.0, restarts=7, started_at=41.0)], 100.5, []),
    ("a run that never started keeps backing off", MINE, SERVICES,
     [InstanceStatus("svc/0", "svc", "failed", 100.0, restarts=2, spec_digest=D)], 101.9, []),
    ("replicas and placement changes do not restart", MINE,
     {"svc": {**SVC, "replicas": 5, "placement": {"peer": ME}}},
     [st("svc/0", "running")], 100.0, []),
    ("only my assignments are started", {"svc/0": ME, "svc/1": "pi-b", "other/0": ME},
     SERVICES, [], 100.0, [start("other/0", spec=OTHER), start("svc/0")]),
    # -- idle mode and activation
    ("idle service, no record: prepared and recorded idle", MINE, IDLE, [], 100.0,
     [idle("svc/0")]),
    ("idle service, running: stopped", MINE, IDLE, [st("svc/0", "running")], 100.0,
     [StopInstance("svc/0", "idle")]),
    ("idle service, stopped (exited): recorded idle", MINE, IDLE, [st("svc/0", "exited")],
     100.0, [idle("svc/0")]),
    ("idle service, idle: nothing", MINE, IDLE, [st("svc/0", "idle")], 100.0, []),
    ("idle service, idle with an older spec: prepared again", MINE, IDLE,
     [st("svc/0", "idle", digest=OLD)], 100.0, [idle("svc/0")]),
    ("idle service, fetching: nothing", MINE, IDLE, [st("svc/0", "fetching")], 100.0, []),
    ("idle service whose preparation failed: wait out the back-off", MINE, IDLE,
     [st("svc/0", "failed", 100.0, restarts=2)], 101.9, []),
    ("idle service whose preparation failed: back-off over, prepare again", MINE, IDLE,
     [st("svc/0", "failed", 100.0, restarts=2)], 102.0, [idle("svc/0")]),
    ("activated: an idle instance starts at once, back-off reset", MINE, SERVICES,
     [st("svc/0", "idle", restarts=5)], 100.0, [start("svc/0", 0)]),
    ("fetching its bundle: nothing", MINE, SERVICES, [st("svc/0", "fetching")], 100.0, []),
    ("mode is not part of the digest: going idle is a stop, not a spec change", MINE, IDLE,
     [st("svc/0", "starting")], 100.0, [StopInstance("svc/0", "idle")]),
    # -- restart policies
    ("on-failure: a clean exit is final", MINE, ON_FAILURE,
     [st("svc/0", "exited", 100.0, digest=spec_digest(ON_FAILURE["svc"]))], 500.0, []),
    ("on-failure: a failure is restarted after the back-off", MINE, ON_FAILURE,
     [st("svc/0", "failed", 100.0, digest=spec_digest(ON_FAILURE["svc"]))], 100.5,
     [start("svc/0", 1, spec=ON_FAILURE["svc"])]),
    ("never: a failure is final", MINE, NEVER,
     [st("svc/0", "failed", 100.0, digest=spec_digest(NEVER["svc"]))], 500.0, []),
    ("never: a new spec still starts it", MINE, NEVER,
     [st("svc/0", "failed", 100.0, digest=OLD)], 100.0, [start("svc/0", 0, spec=NEVER["svc"])]),
    # -- not wanted here
    ("unwanted and idle: nothing", ELSEWHERE, SERVICES, [st("svc/0", "idle")], 500.0, []),
    ("assigned elsewhere and not running here: nothing", ELSEWHERE, SERVICES, [], 100.0, []),
    ("running but now assigned elsewhere: stop", ELSEWHERE, SERVICES,
     [st("svc/0", "running")], 100.0, [StopInstance("svc/0", "unassigned")]),
    ("starting but now assigned elsewhere: stop", ELSEWHERE, SERVICES,
     [st("svc/0", "starting")], 100.0, [StopInstance("svc/0", "unassigned")]),
    ("running but dropped from the plan (scaled down): stop", {}, SERVICES,
     [st("svc/1", "running")], 100.0, [StopInstance("svc/1", "unassigned")]),
    ("service deleted, plan not yet updated: stop", MINE, {"other": OTHER},
     [st("svc/0", "running")], 100.0, [StopInstance("svc/0", "service-deleted")]),
    ("service deleted and unplanned: stop", {}, {}, [st("svc/0", "running")], 100.0,
     [StopInstance("svc/0", "service-deleted")]),
    ("service deleted, never started here: nothing", MINE, {}, [], 100.0, []),
    ("unwanted and stopping: nothing", ELSEWHERE, SERVICES, [st("svc/0", "stopping")], 100.0,
     []),
    ("unwanted and exited: nothing", ELSEWHERE, SERVICES, [st("svc/0", "exited")], 500.0, []),
    ("unwanted and failed: nothing", {}, {}, [st("svc/0", "failed")], 500.0, []),
    # -- plumbing
    ("malformed instance ids in the plan are ignored", {"svc": ME, "svc/x": ME, "/0": ME},
     SERVICES, [], 100.0, []),
    ("stops come first, each group sorted by instance id",
     {"svc/0": ME, "svc/1": ME, "other/0": "pi-b"}, SERVICES,
     [st("other/0", "running"), st("svc/1", "running", digest=OLD)], 100.0,
     [StopInstance("other/0", "unassigned"), StopInstance("svc/1", "spec-changed"),
      start("svc/0")]),
]


@pytest.mark.parametrize(("plan", "services", "instances", "now", "expected"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_reconcile_table(plan: dict[str, str], services: Mapping[str, Any],
                         instances: list[InstanceStatus], now: float,
                         expected: list[StartInstance | StopInstance]) -> None:
    effects = reconcile(ME, plan, services, {s.iid: s for s in instances}, now, BO)
    assert effects == expected
    for effect in effects:  # the start carries the spec to run it from
        if isinstance(effect, StartInstance):
            assert effect.spec is services[effect.service]


def test_restart_is_a_stop_then_a_start_in_a_later_round() -> None:
    """A spec change: stop now; once the driver reports the end, start at once
    (no back-off), recording the new digest's first run."""
    running = {"svc/0": st("svc/0", "running", digest=OLD)}
    assert reconcile(ME, MINE, SERVICES, running, 100.0, BO) == [
        StopInstance("svc/0", "spec-changed")]
    stopping = {"svc/0": st("svc/0", "stopping", 100.0, digest=OLD)}
    assert reconcile(ME, MINE, SERVICES, stopping, 100.1, BO) == []
    ended = {"svc/0": st("svc/0", "exited", 100.2, digest=OLD)}
    assert reconcile(ME, MINE, SERVICES, ended, 100.2, BO) == [start("svc/0", 0)]


def test_reconcile_does_not_mutate_its_inputs() -> None:
    plan = dict(MINE)
    services = {"svc": dict(SVC)}
    instances = {"svc/1": st("svc/1", "running")}
    snapshot = json.dumps([plan, services, {k: v.to_dict() for k, v in instances.items()}])
    reconcile(ME, plan, services, instances, 100.0, BO)
    assert json.dumps([plan, services, {k: v.to_dict() for k, v in instances.items()}]) \
        == snapshot


def test_wanted_here() -> None:
    plan = {"svc/0": ME, "svc/1": "pi-b", "other/0": ME, "gone/0": ME, "bad": ME}
    assert wanted_here(ME, plan, SERVICES) == {"svc/0": "svc", "other/0": "other"}


# -- back-off ---------------------------------------------------------------------------


@pytest.mark.parametrize(("restarts", "delay"), [
    (0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (6, 30.0), (10, 30.0), (10_000, 30.0)])
def test_restart_delay_doubles_to_the_cap(restarts: int, delay: float) -> None:
    assert restart_delay(restarts, BO) == delay


def test_restart_delay_with_factor_one_is_constant() -> None:
    policy = BackoffPolicy(initial=2.0, factor=1.0, maximum=2.0)
    assert {restart_delay(n, policy) for n in range(100)} == {2.0}


@pytest.mark.parametrize("kwargs", [
    {"initial": -1.0}, {"initial": float("nan")}, {"factor": 0.5}, {"maximum": 0.1},
    {"maximum": float("inf")}, {"reset_after": -5.0}])
def test_backoff_policy_rejects_impossible_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        BackoffPolicy(**kwargs)


def test_next_retry_at_is_the_earliest_backed_off_start() -> None:
    instances = {
        "svc/0": st("svc/0", "failed", 100.0, restarts=3),   # 104
        "svc/1": st("svc/1", "exited", 101.0),                # 101.5
        "other/0": st("other/0", "running"),                  # not waiting
    }
    plan = {"svc/0": ME, "svc/1": ME, "other/0": ME}
    assert next_retry_at(ME, plan, SERVICES, instances, BO) == 101.5
    # at that time, reconcile starts it
    assert reconcile(ME, plan, SERVICES, instances, 101.5, BO) == [start("svc/1", 1)]


def test_next_retry_at_ignores_unwanted_and_respecced_instances() -> None:
    instances = {"svc/0": st("svc/0", "failed", 100.0), "svc/1": st("svc/1", "failed", 100.0,
                                                                    digest=OLD)}
    assert next_retry_at(ME, {"svc/0": "pi-b", "svc/1": ME}, SERVICES, instances, BO) is None
    assert next_retry_at(ME, {}, SERVICES, {}, BO) is None


def test_next_retry_at_ignores_idle_services_and_final_ends() -> None:
    """No wake-up is scheduled for a run the restart policy or idle mode will
    not follow up (the shell would otherwise spin on a deadline in the past)."""
    never = st("svc/0", "failed", 100.0, digest=spec_digest(NEVER["svc"]))
    assert next_retry_at(ME, MINE, NEVER, {"svc/0": never}, BO) is None
    clean = st("svc/0", "exited", 100.0, digest=spec_digest(ON_FAILURE["svc"]))
    assert next_retry_at(ME, MINE, ON_FAILURE, {"svc/0": clean}, BO) is None
    assert next_retry_at(ME, MINE, IDLE, {"svc/0": st("svc/0", "exited", 100.0)}, BO) is None
    assert next_retry_at(ME, MINE, IDLE, {"svc/0": st("svc/0", "failed", 100.0)}, BO) == 100.5
    assert next_retry_at(ME, MINE, SERVICES, {"svc/0": st("svc/0", "failed", 100.0)},
                         BO) == 100.5


# -- spec digest ------------------------------------------------------------------------


def test_spec_digest_ignores_key_order_and_list_vs_tuple() -> None:
    a = {"name": "svc", "run": {"command": ["a", "b"], "env": {"X": "1", "Y": "2"}}}
    b = {"run": {"env": {"Y": "2", "X": "1"}, "command": ("a", "b")}, "name": "svc"}
    assert spec_digest(a) == spec_digest(b)
    assert spec_digest(json.loads(json.dumps(a))) == spec_digest(a)


def test_spec_digest_ignores_placement_only_keys() -> None:
    assert spec_digest({**SVC, "replicas": 9, "placement": {"spread": False},
                        "description": "new words"}) == D


DOC: dict[str, Any] = {  # the service document of nanomesh.runtime.manifest
    "name": "spo2", "version": "1.0.0", "description": "SpO2", "kind": "process",
    "run": {"command": ["python3", "spo2.py"], "env": {}, "cwd": None},
    "spec": {"name": "spo2", "replicas": 1, "requires": {"cpu": 0.5},
             "placement": {"peer": None, "labels": {}, "spread": True, "max_per_peer": 0}}}


def test_spec_digest_of_a_service_document_ignores_its_nested_placement() -> None:
    scaled = {**DOC, "spec": {**DOC["spec"], "replicas": 3,
                              "placement": {**DOC["spec"]["placement"], "spread": False}}}
    assert spec_digest(scaled) == spec_digest(DOC)
    for changed in ({**DOC, "version": "1.0.1"},
                    {**DOC, "run": {**DOC["run"], "env": {"X": "1"}}},
                    {**DOC, "spec": {**DOC["spec"], "requires": {"cpu": 1.0}}}):
        assert spec_digest(changed) != spec_digest(DOC)


@pytest.mark.parametrize("change", [
    {"run": {"command": ["python3", "-m", "svc", "-v"]}},
    {"run": {**SVC["run"], "env": {"A": "1"}}},
    {"requires": {"memory_mb": 64}},
    {"image": "svc:2"},  # keys added later (issue 4) restart by default
])
def test_spec_digest_changes_with_what_shapes_the_process(change: dict[str, Any]) -> None:
    assert spec_digest({**SVC, **change}) != D


def test_spec_digest_is_short_hex() -> None:
    assert len(D) == 16
    int(D, 16)


# -- instance status --------------------------------------------------------------------


def full_status() -> InstanceStatus:
    return InstanceStatus("svc/0", "svc", "failed", 12.5, restarts=3, spec_digest=D,
                          exit_code=-9, pid=None, message="killed by SIGKILL", started_at=10.0)


def test_status_round_trips_through_json() -> None:
    for status in (full_status(), st("svc/1", "running"),
                   InstanceStatus("a/0", "a", "starting", 1.0)):
        assert InstanceStatus.from_dict(json.loads(json.dumps(status.to_dict()))) == status


def test_status_is_frozen() -> None:
    with pytest.raises(FrozenInstanceError):
        full_status().state = "running"  # type: ignore[misc]


def test_status_from_dict_defaults_the_optional_fields() -> None:
    assert InstanceStatus.from_dict({"iid": "a/0", "service": "a", "state": "running",
                                     "since": 3}) == InstanceStatus("a/0", "a", "running", 3.0)


@pytest.mark.parametrize(("change", "field"), [
    ({"state": "crashed"}, "state"), ({"since": "soon"}, "since"), ({"restarts": -1}, "restarts"),
    ({"restarts": True}, "restarts"), ({"pid": 1.5}, "pid"), ({"exit_code": "9"}, "exit_code"),
    ({"iid": 7}, "iid"), ({"since": float("nan")}, "since"), ({"colour": "red"}, "colour"),
])
def test_status_from_dict_rejects_garbage_naming_the_field(change: dict[str, Any],
                                                           field: str) -> None:
    with pytest.raises(ValueError, match=field):
        InstanceStatus.from_dict({**full_status().to_dict(), **change})


def test_status_from_dict_requires_the_identity_fields() -> None:
    data = full_status().to_dict()
    del data["state"]
    with pytest.raises(ValueError, match="missing 'state'"):
        InstanceStatus.from_dict(data)
    with pytest.raises(ValueError, match="mapping"):
        InstanceStatus.from_dict(["svc/0"])  # type: ignore[arg-type]


# -- transitions ------------------------------------------------------------------------

LEGAL = [(a, b) for a, targets in TRANSITIONS.items() for b in sorted(targets)]
ILLEGAL = [(a, b) for a in STATES for b in STATES if b not in TRANSITIONS[a]]


@pytest.mark.parametrize(("old", "new"), [p for p in LEGAL if p[0] is not None])
def test_legal_transitions(old: Any, new: Any) -> None:
    before = st("svc/0", old)
    after = transition(before, new, 200.0, message="m")
    assert (after.state, after.since, after.message) == (new, 200.0, "m")


@pytest.mark.parametrize(("old", "new"), ILLEGAL)
def test_illegal_transition_raises_and_leaves_the_status_unchanged(old: Any, new: Any) -> None:
    before = st("svc/0", old)
    copy = InstanceStatus.from_dict(before.to_dict())
    with pytest.raises(IllegalTransition, match=f"{old} -> {new}"):
        transition(before, new, 200.0)
    assert before == copy


def test_the_table_covers_every_state() -> None:
    assert set(TRANSITIONS) == {None, *STATES}
    assert ("exited", "running") in ILLEGAL and ("running", "starting") in ILLEGAL


# -- make before break: a moved instance runs here until its new copy is ready

def healthy(iid: str, health: str = "healthy", state: str = "running") -> InstanceStatus:
    from dataclasses import replace
    return replace(st(iid, state), health=health)


MOVING = Handover(moved_at={"svc/0": 100.0})
HANDOVER_CASES = [
    ("moved and serving, new copy not ready: keeps running", ELSEWHERE, SERVICES,
     healthy("svc/0"), MOVING, 110.0, []),
    ("moved, no health check (health none): keeps running", ELSEWHERE, SERVICES,
     healthy("svc/0", "none"), MOVING, 110.0, []),
    ("moved, new copy ready: handed over", ELSEWHERE, SERVICES, healthy("svc/0"),
     Handover(frozenset({"svc/0"}), {"svc/0": 100.0}), 101.0,
     [StopInstance("svc/0", "handed-over")]),
    ("moved, the new copy never gets ready: stop at the timeout", ELSEWHERE, SERVICES,
     healthy("svc/0"), MOVING, 100.0 + HANDOVER_TIMEOUT, [StopInstance("svc/0", "unassigned")]),
    ("a move first seen now: keeps running", ELSEWHERE, SERVICES, healthy("svc/0"),
     Handover(), 500.0, []),
    ("moved but failing its checks here: serves nobody, stop", ELSEWHERE, SERVICES,
     healthy("svc/0", "unhealthy"), MOVING, 101.0, [StopInstance("svc/0", "unassigned")]),
    ("moved while still starting: stop", ELSEWHERE, SERVICES,
     healthy("svc/0", "starting", state="starting"), MOVING, 101.0,
     [StopInstance("svc/0", "unassigned")]),
    ("dropped from the plan (scaled down), not a move: stop", {}, SERVICES, healthy("svc/1"),
     Handover(), 101.0, [StopInstance("svc/1", "unassigned")]),
    ("service deleted: stop, no hand-over", ELSEWHERE, {"other": OTHER}, healthy("svc/0"),
     MOVING, 101.0, [StopInstance("svc/0", "service-deleted")]),
    ("no gossip view (handover None): stop at once", ELSEWHERE, SERVICES, healthy("svc/0"),
     None, 101.0, [StopInstance("svc/0", "unassigned")]),
]


@pytest.mark.parametrize(("plan", "services", "status", "handover", "now", "expected"),
                         [c[1:] for c in HANDOVER_CASES], ids=[c[0] for c in HANDOVER_CASES])
def test_a_moved_instance_is_handed_over(plan: dict[str, str], services: Mapping[str, Any],
                                         status: InstanceStatus, handover: Handover | None,
                                         now: float, expected: list[StopInstance]) -> None:
    effects = reconcile(ME, plan, services, {status.iid: status}, now, BO, handover)
    assert effects == expected


def test_the_handover_deadline_is_the_earliest_kept_moves_timeout() -> None:
    instances = {"svc/0": healthy("svc/0"), "svc/1": healthy("svc/1"),
                 "other/0": healthy("other/0")}
    plan = {"svc/0": "pi-b", "svc/1": "pi-c", "other/0": ME}
    handover = Handover(frozenset({"svc/1"}), {"svc/0": 120.0, "svc/1": 100.0})
    assert handover_deadline(ME, plan, SERVICES, instances, 121.0, handover) == \
        120.0 + HANDOVER_TIMEOUT  # svc/1 is ready elsewhere: not kept, not a deadline
    assert handover_deadline(ME, plan, SERVICES, instances, 121.0, Handover(frozenset(
        {"svc/0", "svc/1"}))) is None
