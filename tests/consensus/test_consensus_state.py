"""The replicated state machine, without Raft: pure apply functions."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanomesh.consensus.state import (
    DesiredState,
    apply_delete_service,
    apply_patch_service,
    apply_put_registry,
    apply_put_service,
    apply_set_plan,
    is_json,
    validate_put_service,
    validate_set_plan,
)

EMPTY = DesiredState()


def test_put_service_creates_then_replaces_and_counts_revisions() -> None:
    s1, o1 = apply_put_service(EMPTY, "cam", {"image": "cam:1"})
    s2, o2 = apply_put_service(s1, "cam", {"image": "cam:2"})
    assert s2.services == {"cam": {"image": "cam:2"}}
    assert (o1.applied, o1.changed, o1.revision) == (True, True, 1)
    assert (o2.applied, o2.changed, o2.revision) == (True, True, 2)
    assert EMPTY.services == {} and s1.services == {"cam": {"image": "cam:1"}}, \
        "earlier states are values: never mutated by a later apply"


def test_put_of_the_same_spec_changes_nothing() -> None:
    s1, _ = apply_put_service(EMPTY, "cam", {"image": "cam:1"})
    s2, o = apply_put_service(s1, "cam", {"image": "cam:1"})
    assert s2 is s1
    assert (o.applied, o.changed, o.revision) == (True, False, 1)


def test_delete_service_and_delete_of_absent_is_refused() -> None:
    s1, _ = apply_put_service(EMPTY, "cam", {})
    s2, o = apply_delete_service(s1, "cam")
    assert s2.services == {} and o.applied and s2.revision == 2
    s3, o = apply_delete_service(s2, "cam")
    assert s3 is s2 and not o.applied and o.reason == "not-found"


def test_set_plan_is_compare_and_set_on_the_epoch() -> None:
    s1, o1 = apply_set_plan(EMPTY, {"cam": ["pi-1"]}, 0)
    assert o1.applied and s1.plan_epoch == 1 and s1.plan == {"cam": ["pi-1"]}
    # A deposed leader computed its plan at epoch 0 too: refused, nothing changes.
    s2, o2 = apply_set_plan(s1, {"cam": ["pi-2"]}, 0)
    assert s2 is s1 and not o2.applied and o2.reason == "stale-epoch"
    assert o2.plan_epoch == 1, "the refusal reports the committed epoch"
    s3, o3 = apply_set_plan(s1, {"cam": ["pi-2"]}, 1)
    assert o3.applied and s3.plan_epoch == 2


def test_identical_plan_still_takes_a_new_epoch() -> None:
    s1, _ = apply_set_plan(EMPTY, {}, 0)
    s2, o = apply_set_plan(s1, {}, 1)
    assert o.changed and s2.plan_epoch == 2


@pytest.mark.parametrize(("name", "spec"), [
    ("", {}), (" cam", {}), ("x" * 129, {}), (3, {}), ("cam\n", {}),
    ("cam", []), ("cam", {"a": math.nan}), ("cam", {"a": {1: 2}}), ("cam", {"a": object()}),
    ("cam", {"a": (1, 2)}),
])
def test_invalid_put_is_refused_by_apply_and_raises_at_validation(name: Any, spec: Any) -> None:
    state, outcome = apply_put_service(EMPTY, name, spec)
    assert state is EMPTY and not outcome.applied and outcome.reason == "invalid"
    with pytest.raises(ValueError):
        validate_put_service(name, spec)


@pytest.mark.parametrize(("plan", "epoch"), [([], 0), ({}, -1), ({}, True), ({}, 1.0),
                                             ({"a": math.inf}, 0)])
def test_invalid_plan_is_refused(plan: Any, epoch: Any) -> None:
    state, outcome = apply_set_plan(EMPTY, plan, epoch)
    assert state is EMPTY and outcome.reason == "invalid"
    with pytest.raises(ValueError):
        validate_set_plan(plan, epoch)


def test_json_depth_is_bounded() -> None:
    deep: Any = 1
    for _ in range(40):
        deep = [deep]
    assert not is_json(deep)


def test_doc_round_trip_and_garbage_rejected() -> None:
    s, _ = apply_put_service(EMPTY, "cam", {"a": [1, 2.5, None, True, "x"]})
    s, _ = apply_set_plan(s, {"cam": ["pi"]}, 0)
    assert DesiredState.from_doc(s.to_doc()) == s
    for bad in (None, [], {"services": [], "plan": {}, "plan_epoch": 0, "revision": 0},
                {"services": {}, "plan": {}, "plan_epoch": -1, "revision": 0}):
        with pytest.raises(ValueError):
            DesiredState.from_doc(bad)


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5)
                     | st.floats(), lambda c: st.lists(c, max_size=3)
                     | st.dictionaries(st.text(max_size=3), c, max_size=3), max_leaves=8)
_names = st.sampled_from(["a", "b", "", 7, None])
_commands = st.one_of(
    st.tuples(st.just("put"), _names, _json),
    st.tuples(st.just("delete"), _names),
    st.tuples(st.just("plan"), _json, st.integers(-1, 4) | st.just(True)),
    st.tuples(st.just("patch"), _names, st.sampled_from(["mode", "state", "name", 3]), _json),
    st.tuples(st.just("registry"), _names, st.none() | _json),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_commands, max_size=20))
def test_apply_is_total_and_revision_and_epoch_are_monotonic(commands: list[Any]) -> None:
    """Invariants: no apply raises, whatever the input (pysyncobj would retry a
    raising entry forever); revision and plan epoch never decrease; the epoch
    moves exactly when a plan is accepted; replaying gives the same state."""
    def run() -> DesiredState:
        state = EMPTY
        for cmd in commands:
            before = state
            match cmd:
                case ("put", name, spec):
                    state, out = apply_put_service(state, name, spec)
                case ("delete", name):
                    state, out = apply_delete_service(state, name)
                case ("plan", plan, epoch):
                    state, out = apply_set_plan(state, plan, epoch)
                case ("patch", name, key, value):
                    state, out = apply_patch_service(state, name, key, value)
                case ("registry", key, entry):
                    state, out = apply_put_registry(state, key, entry)
            assert state.revision >= before.revision and state.plan_epoch >= before.plan_epoch
            assert (state.plan_epoch == before.plan_epoch + 1) == (cmd[0] == "plan"
                                                                  and out.applied)
            assert out.revision == state.revision and out.changed == (state is not before)
        return state
    assert run() == run()
def test_init_meta_sets_once_and_refuses_overwrite() -> None:
    """The management token's hash is written once by the bootstrapping peer;
    a second bootstrap racing it is refused, not silently overwriting it."""
    from nanomesh.consensus.state import DesiredState, apply_init_meta

    s0 = DesiredState()
    s1, out = apply_init_meta(s0, "token_sha256", "ab" * 32)
    assert out.applied and out.changed and s1.meta == {"token_sha256": "ab" * 32}
    s2, out2 = apply_init_meta(s1, "token_sha256", "cd" * 32)
    assert not out2.applied and out2.reason == "exists" and s2 is s1
    assert apply_init_meta(s1, "", 1)[1].reason == "invalid"
    assert DesiredState.from_doc(s1.to_doc()) == s1
    legacy = {k: v for k, v in s1.to_doc().items() if k != "meta"}
    assert DesiredState.from_doc(legacy).meta == {}


def test_patch_service_sets_and_removes_only_patchable_keys_of_existing_services() -> None:
    """``nanomesh idle`` / ``activate`` and a nanoservice's state blob patch one
    key; a patch never creates a service, and ``name``/``run`` are not patchable
    (they come only with a whole manifest)."""
    s1, _ = apply_put_service(EMPTY, "a", {"name": "a", "run": {"command": ["x"]}})
    s2, out = apply_patch_service(s1, "a", "mode", "idle")
    assert out.applied and out.changed and s2.services["a"]["mode"] == "idle"
    s3, out = apply_patch_service(s2, "a", "mode", "idle")
    assert out.applied and not out.changed and s3 is s2
    s4, out = apply_patch_service(s3, "a", "mode", None)
    assert out.changed and "mode" not in s4.services["a"] and s4.services["a"] == s1.services["a"]
    assert apply_patch_service(s1, "ghost", "mode", "idle")[1].reason == "not-found"
    assert apply_patch_service(s1, "a", "run", {})[1].reason == "invalid"
    assert apply_patch_service(s1, "a", "state", math.nan)[1].reason == "invalid"


def test_registry_entries_put_replace_delete_and_survive_the_doc_round_trip() -> None:
    s1, out = apply_put_registry(EMPTY, "hello@1.0", {"sha256": "ab", "size": 3})
    assert out.changed and s1.registry == {"hello@1.0": {"sha256": "ab", "size": 3}}
    assert DesiredState.from_doc(s1.to_doc()) == s1
    assert apply_put_registry(s1, "hello@1.0", {"sha256": "ab", "size": 3})[1].changed is False
    s2, out = apply_put_registry(s1, "hello@1.0", None)
    assert out.changed and s2.registry == {}
    assert apply_put_registry(s2, "hello@1.0", None)[1].reason == "not-found"
    assert apply_put_registry(s2, "", {"a": 1})[1].reason == "invalid"
    assert apply_put_registry(s2, "x@1", [1])[1].reason == "invalid"
    old_doc = {k: v for k, v in EMPTY.to_doc().items() if k != "registry"}
    assert DesiredState.from_doc(old_doc).registry == {}


def test_strings_that_are_not_unicode_are_not_json() -> None:
    """A lone surrogate survives json.loads but not .encode(): every peer
    would fail to digest or run such a spec, so Raft refuses it."""
    assert is_json({"a": "caf\u00e9", "b": ["\u2603"]})
    assert not is_json({"a": "\ud800"}) and not is_json({"\udcff": 1})
    assert apply_put_service(EMPTY, "s", {"run": {"env": {"X": "\ud800"}}})[1].reason == "invalid"
