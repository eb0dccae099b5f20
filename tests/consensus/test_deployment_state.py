"""Versions, saved state and deployments in the replicated state machine
(issue 8, items 10 and 13): pure apply functions, no Raft."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanomesh.consensus.state import (
    DesiredState,
    apply_delete_service,
    apply_patch_service,
    apply_put_service,
    apply_settle_deployment,
    version_of,
)
from nanomesh.runtime.manifest import manifest_from_document
from nanomesh.runtime.reconcile_core import spec_digest

V1 = {"name": "counter", "version": "1", "run": {"command": ["python3", "counter.py"]}}
V2 = {**V1, "version": "2", "run": {"command": ["python3", "counter2.py"]}}
V3 = {**V1, "version": "3"}


def put(state: DesiredState, doc: dict[str, Any]) -> DesiredState:
    new, outcome = apply_put_service(state, doc["name"], doc)
    assert outcome.applied
    return new


def saved(state: DesiredState, blob: str = "eyJjb3VudCI6IDN9") -> DesiredState:
    """The service saved its state (what the SDK's save_state commits)."""
    new, outcome = apply_patch_service(state, "counter", "state", blob)
    assert outcome.applied and outcome.changed
    return new


def settle(state: DesiredState, status: str, reason: str = "why") -> DesiredState:
    dep = state.deployments["counter"]
    new, outcome = apply_settle_deployment(state, "counter",
                                           {"id": dep["id"], "status": status,
                                            "reason": reason})
    assert outcome.applied, outcome
    return new


# --------------------------------------------------------------------------- item 10


@pytest.mark.parametrize("again", [V1, V2], ids=["same-bundle", "new-version"])
def test_redeploy_keeps_the_saved_state(again: dict[str, Any]) -> None:
    """Issue 8 item 10: deploy, the service saves its count, deploy again (the
    same manifest or a new version, neither carrying a state): the state is
    still there (it used to be replaced with the state-less document)."""
    s = saved(put(DesiredState(), V1))
    s = put(s, again)
    assert s.services["counter"]["state"] == "eyJjb3VudCI6IDN9"
    assert s.services["counter"]["version"] == again["version"]


def test_redeploy_of_the_same_document_changes_nothing() -> None:
    s = saved(put(DesiredState(), V1))
    after, outcome = apply_put_service(s, "counter", V1)
    assert outcome.applied and not outcome.changed and after is s


def test_state_null_drops_the_saved_state_and_restarts_the_instances() -> None:
    """``deploy --reset-state`` sends ``"state": null`` (merge-patch). The
    reset is recorded in a key the runtime digests, so running instances
    restart from no state (else the next save_state would write the old
    count back); it starts no deployment, and is kept by later deploys."""
    s = saved(put(DesiredState(), V1))
    before = spec_digest(s.services["counter"])
    s = put(s, {**V1, "state": None})
    assert s.services["counter"] == {**V1, "state_reset": s.revision}
    assert spec_digest(s.services["counter"]) != before
    assert s.deployments["counter"]["id"] == 1
    again = put(saved(s), V1)
    assert again.services["counter"]["state_reset"] == s.revision
    _, outcome = apply_put_service(s, "counter", {**V1, "state": None})
    assert not outcome.changed  # nothing saved since: nothing to drop


def test_a_seed_files_state_replaces_the_saved_one() -> None:
    s = saved(put(DesiredState(), V1))
    s = put(s, {**V1, "state": "c2VlZA=="})
    assert s.services["counter"]["state"] == "c2VlZA=="


def test_a_seed_of_a_reset_service_deploys_again() -> None:
    s = put(saved(put(DesiredState(), V1)), {**V1, "state": None})
    raw = manifest_from_document(s.services["counter"])
    assert "state_reset" not in raw


def test_mode_is_the_manifests_on_redeploy() -> None:
    """An idled service redeployed from its manifest (no mode) is active again,
    as before: the manifest is the truth for the mode."""
    s = put(DesiredState(), V1)
    s, _ = apply_patch_service(s, "counter", "mode", "idle")
    s = put(s, V1)
    assert "mode" not in s.services["counter"]


# --------------------------------------------------------------------------- item 13


def test_first_deploy_starts_a_deployment_with_nothing_to_revert_to() -> None:
    s = put(DesiredState(), V1)
    assert s.deployments == {"counter": {"id": s.revision, "status": "running"}}
    assert "counter" not in s.previous
    refused, outcome = apply_settle_deployment(
        s, "counter", {"id": s.revision, "status": "reverted", "reason": "x"})
    assert not outcome.applied and outcome.reason == "no-previous" and refused is s


def test_state_and_mode_changes_start_no_deployment() -> None:
    s = settle(put(DesiredState(), V1), "successful")
    dep = s.deployments["counter"]
    s = saved(s)
    s, _ = apply_patch_service(s, "counter", "mode", "idle")
    assert s.deployments["counter"] == dep


def test_update_files_the_previous_version_and_revert_puts_it_back() -> None:
    """v1 succeeded; v2 is deployed; the leader's verdict ``reverted`` puts
    v1 back in the same command, keeping the state v2 saved meanwhile and
    the current mode, and records the reason and the version undone."""
    s = settle(put(DesiredState(), V1), "successful")
    s = put(s, V2)
    assert s.previous["counter"] == V1
    assert s.deployments["counter"]["status"] == "running"
    s = saved(s)
    s = settle(s, "reverted", "counter/0 restarted 3 times")
    assert s.services["counter"] == {**V1, "state": "eyJjb3VudCI6IDN9"}
    dep = s.deployments["counter"]
    assert (dep["status"], dep["reason"], dep["reverted_from"]) == (
        "reverted", "counter/0 restarted 3 times", "2")


def test_a_version_still_deploying_or_failed_is_not_filed_as_previous() -> None:
    """v1 good, v2 deploying, v3 deployed over it: a revert of v3 goes back
    to v1 (the last good version, Nomad's stable version), not to v2."""
    s = settle(put(DesiredState(), V1), "successful")
    s = put(put(s, V2), V3)
    assert s.previous["counter"] == V1
    s = settle(s, "failed")
    s = put(s, V2)
    assert s.previous["counter"] == V1


def test_a_verdict_on_a_replaced_deployment_is_refused() -> None:
    """Compare-and-set on the deployment id: a leader judging v2 while v3 is
    committed must not revert v3."""
    s = settle(put(DesiredState(), V1), "successful")
    s = put(s, V2)
    old_id = s.deployments["counter"]["id"]
    s = put(s, V3)
    after, outcome = apply_settle_deployment(
        s, "counter", {"id": old_id, "status": "reverted", "reason": "late"})
    assert not outcome.applied and outcome.reason == "stale-deployment" and after is s
    # and a settled deployment is not settled twice
    s = settle(s, "successful")
    again, outcome = apply_settle_deployment(
        s, "counter", {"id": s.deployments["counter"]["id"], "status": "reverted",
                       "reason": "x"})
    assert not outcome.applied and again is s


@pytest.mark.parametrize("verdict", [
    None, {}, {"id": 1, "status": "running", "reason": ""},
    {"id": 1, "status": "bogus", "reason": ""}, {"id": -1, "status": "failed", "reason": ""},
    {"id": 1, "status": "failed", "reason": 3}, {"id": 1, "status": "failed"},
    {"id": 1, "status": "failed", "reason": "x" * 5000},
    {"id": True, "status": "failed", "reason": ""},
])
def test_malformed_verdicts_are_refused_not_raised(verdict: Any) -> None:
    s = put(DesiredState(), V1)
    after, outcome = apply_patch_service(s, "counter", "deployment", verdict)
    assert not outcome.applied and outcome.reason == "invalid" and after is s


def test_settling_an_unknown_service_is_not_found() -> None:
    _, outcome = apply_settle_deployment(DesiredState(), "nope",
                                         {"id": 1, "status": "failed", "reason": ""})
    assert outcome.reason == "not-found"


def test_delete_forgets_previous_and_deployment() -> None:
    s = put(settle(put(DesiredState(), V1), "successful"), V2)
    s, _ = apply_delete_service(s, "counter")
    assert not s.previous and not s.deployments


def test_dump_round_trip_and_old_dumps() -> None:
    s = put(settle(put(DesiredState(), V1), "successful"), V2)
    assert DesiredState.from_doc(s.to_doc()) == s
    old = {k: v for k, v in s.to_doc().items() if k not in ("previous", "deployments")}
    restored = DesiredState.from_doc(old)
    assert restored.previous == {} and restored.deployments == {}
    with pytest.raises(ValueError, match="previous"):
        DesiredState.from_doc({**s.to_doc(), "previous": []})


VERSIONS = [V1, V2, V3]
OPS = st.lists(st.one_of(
    st.tuples(st.just("put"), st.sampled_from(range(3)), st.sampled_from(["keep", "reset",
                                                                           "seed"])),
    st.tuples(st.just("save"), st.sampled_from(["YQ==", "Yg=="]), st.just("")),
    st.tuples(st.just("settle"), st.sampled_from(["successful", "failed", "reverted"]),
              st.just(""))), max_size=25)


@settings(max_examples=300, deadline=None)
@given(OPS)
def test_only_a_reset_or_a_seed_changes_the_saved_state(ops: list[tuple[Any, ...]]) -> None:
    """Invariants over any sequence of deploys (keeping, resetting or seeding
    the state), saves and verdicts: the saved state is what the last save or
    seed wrote, unless a reset came after; the current version is always one
    that was deployed; a revert puts back exactly the filed previous version."""
    s, expected = DesiredState(), None
    for op, arg, how in ops:
        if op == "put":
            doc = dict(VERSIONS[arg])
            if how == "reset":
                doc["state"] = None
                expected = None
            elif how == "seed":
                doc["state"] = expected = "c2VlZA=="
            s, _ = apply_put_service(s, "counter", doc)
        elif op == "save" and "counter" in s.services:
            s, _ = apply_patch_service(s, "counter", "state", arg)
            expected = arg
        elif op == "settle" and "counter" in s.deployments:
            filed = s.previous.get("counter")
            dep = s.deployments["counter"]
            s, outcome = apply_settle_deployment(
                s, "counter", {"id": dep["id"], "status": arg, "reason": ""})
            if outcome.applied and arg == "reverted":
                assert filed is not None and version_of(s.services["counter"]) == filed
        if "counter" in s.services:
            assert s.services["counter"].get("state") == expected
            assert version_of(s.services["counter"]) in VERSIONS
