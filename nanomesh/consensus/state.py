"""The replicated desired state and its apply functions: pure, Raft-free.

What the Raft log replicates is small: the *desired* services (name → spec,
a JSON-shaped dict), the current placement plan (JSON-shaped dict) and the
plan's epoch. Every peer applies the same committed commands in the same
order, so every function here must be deterministic and **total**:

- deterministic: no clock, no randomness, no I/O, no iteration-order
  surprises (dicts are insertion-ordered and every replica inserts in log
  order);
- total: an apply function never raises. pysyncobj retries an entry whose
  apply raised on every tick, forever, so one bad command would wedge the
  replica. Bad input is therefore turned into a rejected `Outcome`; the
  caller-side `validate_*` functions raise early so bad input rarely reaches
  the log at all.

States are immutable values: an apply returns a new `DesiredState` that shares
the unchanged parts with the old one. The trio side can hold a snapshot while
the Raft thread applies the next command without any lock, because the Raft
thread only ever swaps one reference.

Plan epochs (compare-and-set). The leader computes a plan from the committed
state at epoch ``E`` and submits ``set_plan(plan, expected_epoch=E)``. It is
applied only if the committed epoch is still ``E``, and then the epoch becomes
``E + 1``. A leader that was deposed after reading ``E`` (it cannot know yet)
has its stale plan rejected instead of overwriting a newer one.

Versions, saved state and deployments (issue 8, items 10 and 13). A service
document has parts that belong to the *version* the operator deployed (the
manifest's fields, the bundle) and parts the mesh keeps across versions
(`VERSIONLESS_KEYS`): the state blob the service saved (and when it was last
reset) and the mode set by `activate`/`idle`. `apply_put_service` merges
``state`` as JSON merge-patch (RFC 7396) does:

- ``state`` absent from the new document: the saved state is kept (a spec
  update never loses it; ``nanomesh deploy`` sends no state);
- ``state`` null: the saved state is dropped (``deploy --reset-state``), and
  ``state_reset`` is set to the revision of the drop: it is part of what
  instances run (`nanomesh.runtime.reconcile_core.spec_digest`), so they restart and
  start from no state instead of saving their old one back;
- ``state`` a string: it replaces the saved state (a seed file restored).

A put that changes the version starts a *deployment*, recorded in
`DesiredState.deployments`: ``{"id": revision, "status": "running"}``
(`DEPLOYMENT_STATUSES`), and files the version it replaces in
`DesiredState.previous` (the last version known good, Nomad's "stable job
version"), so whichever peer leads can finish a revert. The leader watches
the new instances (`nanomesh.runtime.deployment_core.judge`) and settles the
deployment with `apply_settle_deployment`: ``successful``, ``failed``, or
``reverted``, which puts the previous version back in the same command.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nanomesh.checks import MAX_JSON_DEPTH as MAX_JSON_DEPTH
from nanomesh.checks import is_json as is_json
from nanomesh.checks import is_text as is_text

MAX_NAME_LEN = 128
"""Longest service name, in characters."""

JsonObject = Mapping[str, Any]
"""A JSON-shaped object: str keys; values None, bool, int, finite float, str,
lists and such objects. Snapshots hand these out shared: never mutate them."""


@dataclass(frozen=True)
class DesiredState:
    """One committed version of the replicated state.

    `revision` counts the commands that changed something; it is itself part
    of the replicated state, so every replica reports the same revision for
    the same state, and it never decreases.
    """

    services: Mapping[str, JsonObject] = field(default_factory=dict)
    plan: JsonObject = field(default_factory=dict)
    plan_epoch: int = 0
    revision: int = 0
    meta: JsonObject = field(default_factory=dict)
    """Mesh-wide settings written once, e.g. ``token_sha256`` (the hash of the
    management token, set by the peer that bootstrapped the mesh)."""
    registry: Mapping[str, JsonObject] = field(default_factory=dict)
    """The service bundles the mesh offers, ``"name@version"`` -> entry
    (see `nanomesh.bundles.registry_entry`); the bundles' bytes live on peers."""
    previous: Mapping[str, JsonObject] = field(default_factory=dict)
    """Service name -> the last good version before its current one (the
    document without `VERSIONLESS_KEYS`), what a failed deployment reverts
    to. Absent for a service deployed once."""
    deployments: Mapping[str, JsonObject] = field(default_factory=dict)
    """Service name -> its latest deployment: ``{"id", "status"}`` and, once
    settled, ``"reason"`` (and ``"reverted_from"``, the version given up).
    Absent for a service deployed before deployments existed."""

    def to_doc(self) -> dict[str, Any]:
        """The plain-dict form stored in pysyncobj's full dump (no classes of
        ours inside, so a dump survives renames of this module)."""
        return {"services": self.services, "plan": self.plan,
                "plan_epoch": self.plan_epoch, "revision": self.revision, "meta": self.meta,
                "registry": self.registry, "previous": self.previous,
                "deployments": self.deployments}

    @classmethod
    def from_doc(cls, doc: Any) -> DesiredState:
        """Inverse of `to_doc`; ValueError if `doc` is not one."""
        if not isinstance(doc, dict):
            raise ValueError("state document must be a dict")
        services, plan = doc.get("services"), doc.get("plan")
        epoch, revision = doc.get("plan_epoch"), doc.get("revision")
        if not (isinstance(services, dict) and all(
                isinstance(k, str) and isinstance(v, dict) for k, v in services.items())):
            raise ValueError("state document: bad services")
        if not isinstance(plan, dict):
            raise ValueError("state document: bad plan")
        if not (isinstance(epoch, int) and _is_count(epoch)
                and isinstance(revision, int) and _is_count(revision)):
            raise ValueError("state document: bad plan_epoch or revision")
        meta = doc.get("meta", {})  # absent in dumps written before meta existed
        if not isinstance(meta, dict):
            raise ValueError("state document: bad meta")
        registry = doc.get("registry", {})  # absent in dumps written before the registry
        if not (isinstance(registry, dict) and all(
                isinstance(k, str) and isinstance(v, dict) for k, v in registry.items())):
            raise ValueError("state document: bad registry")
        # previous, deployments: absent in dumps written before deployments
        previous, deployments = doc.get("previous", {}), doc.get("deployments", {})
        for what, value in (("previous", previous), ("deployments", deployments)):
            if not (isinstance(value, dict) and all(
                    isinstance(k, str) and isinstance(v, dict) for k, v in value.items())):
                raise ValueError(f"state document: bad {what}")
        return cls(services, plan, epoch, revision, meta, registry, previous, deployments)


@dataclass(frozen=True)
class Outcome:
    """What applying one command did. ``applied`` is False for a command the
    state machine refused (``reason`` says why: ``"stale-epoch"``,
    ``"not-found"``, ``"invalid"``); ``changed`` is False for an applied
    command that left the state as it was (same spec put twice).
    `revision` and `plan_epoch` are the state's after the command."""

    applied: bool
    changed: bool
    revision: int
    plan_epoch: int
    reason: str = ""


# --------------------------------------------------------------------------- validation


def service_name_problem(name: Any) -> str | None:
    """Why `name` is not a valid service name, or None if it is."""
    if not isinstance(name, str) or not name:
        return "a service name must be a non-empty string"
    if len(name) > MAX_NAME_LEN:
        return f"a service name is at most {MAX_NAME_LEN} characters"
    if not name.isprintable() or name != name.strip():
        return "a service name must be printable, without surrounding blanks"
    return None


def validate_put_service(name: Any, spec: Any) -> None:
    """Raise ValueError if `put_service(name, spec)` would be rejected."""
    problem = service_name_problem(name)
    if problem is None and not (isinstance(spec, dict) and is_json(spec)):
        problem = "a service spec must be a JSON-shaped dict"
    if problem is not None:
        raise ValueError(problem)


def validate_set_plan(plan: Any, expected_epoch: Any) -> None:
    """Raise ValueError if `set_plan(plan, expected_epoch)` is malformed."""
    if not (isinstance(plan, dict) and is_json(plan)):
        raise ValueError("a plan must be a JSON-shaped dict")
    if not _is_count(expected_epoch):
        raise ValueError("expected_epoch must be a non-negative int")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# --------------------------------------------------------------------------- apply


VERSIONLESS_KEYS = frozenset({"state", "state_reset", "mode"})
"""Keys of a service document that are not part of the deployed version: a
put that differs only in them starts no deployment, and a revert keeps the
current values (see the module docstring)."""
DEPLOYMENT_KEY = "deployment"
"""The `apply_patch_service` key that settles a deployment."""
RUNNING = "running"
DEPLOYMENT_STATUSES = (RUNNING, "successful", "failed", "reverted")
"""``running`` until the leader settles it; ``successful`` (every instance
healthy long enough), ``failed`` (not healthy in time, nothing to revert to or
auto-revert off), ``reverted`` (the previous version was put back)."""
MAX_REASON_LEN = 1024
"""Longest reason text a settled deployment keeps, in characters."""


def version_of(doc: JsonObject) -> dict[str, Any]:
    """The deployed version in a service document: all but `VERSIONLESS_KEYS`."""
    return {k: v for k, v in doc.items() if k not in VERSIONLESS_KEYS}


def apply_put_service(state: DesiredState, name: Any, spec: Any
                      ) -> tuple[DesiredState, Outcome]:
    """Create or update the desired service `name`. Its saved ``state`` is
    kept unless `spec` sets it (null drops it); a new version starts a
    deployment and files the replaced version in `DesiredState.previous`
    (module docstring)."""
    if service_name_problem(name) is not None or not (isinstance(spec, dict) and is_json(spec)):
        return state, _refused(state, "invalid")
    old = state.services.get(name)
    new = _merged(old, spec, state.revision + 1)
    if old == new:
        return state, _unchanged(state)
    services = {**state.services, name: new}
    if old is not None and version_of(old) == version_of(new):
        return _changed(state, services=services)
    deployments = {**state.deployments, name: {"id": state.revision + 1, "status": RUNNING}}
    previous = state.previous
    if old is not None and _known_good(state.deployments.get(name)):
        previous = {**state.previous, name: version_of(old)}
    return _changed(state, services=services, previous=previous, deployments=deployments)


def _merged(old: JsonObject | None, spec: JsonObject, revision: int) -> dict[str, Any]:
    """`spec` as stored: the saved state (and its last reset) kept if `spec`
    has no ``state`` key; dropped if it is null, recording the reset at
    `revision` when there was a state to drop."""
    new = {k: v for k, v in spec.items() if k not in ("state", "state_reset")}
    kept = {k: old[k] for k in ("state", "state_reset") if k in old} if old is not None else {}
    if "state" not in spec:
        new.update(kept)
    elif spec["state"] is not None:
        new["state"] = spec["state"]
        new.update({k: v for k, v in kept.items() if k == "state_reset"})
    elif "state" in kept:
        new["state_reset"] = revision
    elif "state_reset" in kept:
        new["state_reset"] = kept["state_reset"]
    return new


def _known_good(record: JsonObject | None) -> bool:
    """Whether the version whose latest deployment is `record` is one to
    revert to: its deployment succeeded or was itself a revert, or it
    predates deployments (None). One still deploying or that failed is not:
    the previous good version stays filed."""
    status = record.get("status") if record is not None else None
    return status not in (RUNNING, "failed")


def apply_settle_deployment(state: DesiredState, name: Any, verdict: Any
                            ) -> tuple[DesiredState, Outcome]:
    """Settle the running deployment of `name`: `verdict` is ``{"id",
    "status", "reason"}`` with the deployment's id (compare-and-set: a
    verdict on a deployment a newer put has replaced is refused,
    ``"stale-deployment"``) and a final status. ``reverted`` puts
    ``previous[name]`` back as the service's version, keeping its saved state
    and mode; refused (``"no-previous"``) if there is none."""
    old = state.services.get(name) if isinstance(name, str) else None
    if old is None:
        return state, _refused(state, "not-found")
    if not _is_verdict(verdict):
        return state, _refused(state, "invalid")
    record = state.deployments.get(name)
    if not (record is not None and record.get("id") == verdict["id"]
            and record.get("status") == RUNNING):
        return state, _refused(state, "stale-deployment")
    settled = {**record, "status": verdict["status"], "reason": verdict["reason"]}
    deployments = {**state.deployments, name: settled}
    if verdict["status"] != "reverted":
        return _changed(state, deployments=deployments)
    previous = state.previous.get(name)
    if previous is None:
        return state, _refused(state, "no-previous")
    settled["reverted_from"] = old.get("version", "")
    new = {**previous, **{k: old[k] for k in VERSIONLESS_KEYS if k in old}}
    return _changed(state, services={**state.services, name: new}, deployments=deployments)


def _is_verdict(value: Any) -> bool:
    return (isinstance(value, dict) and set(value) == {"id", "status", "reason"}
            and _is_count(value["id"]) and value["status"] in DEPLOYMENT_STATUSES
            and value["status"] != RUNNING and isinstance(value["reason"], str)
            and len(value["reason"]) <= MAX_REASON_LEN and is_text(value["reason"]))


def apply_delete_service(state: DesiredState, name: Any) -> tuple[DesiredState, Outcome]:
    """Remove the desired service `name`; refused with ``"not-found"`` if absent."""
    if not isinstance(name, str) or name not in state.services:
        return state, _refused(state, "not-found")
    services = {k: v for k, v in state.services.items() if k != name}
    previous = {k: v for k, v in state.previous.items() if k != name}
    deployments = {k: v for k, v in state.deployments.items() if k != name}
    return _changed(state, services=services, previous=previous, deployments=deployments)


def apply_set_plan(state: DesiredState, plan: Any, expected_epoch: Any
                   ) -> tuple[DesiredState, Outcome]:
    """Compare-and-set the plan: applied only if `expected_epoch` is the
    current epoch, which then increments (even for an identical plan: the
    epoch numbers plans, not plan contents)."""
    if not (isinstance(plan, dict) and is_json(plan)) or not _is_count(expected_epoch):
        return state, _refused(state, "invalid")
    if expected_epoch != state.plan_epoch:
        return state, _refused(state, "stale-epoch")
    return _changed(state, plan=plan, plan_epoch=state.plan_epoch + 1)


def apply_init_meta(state: DesiredState, key: Any, value: Any) -> tuple[DesiredState, Outcome]:
    """Set mesh setting `key` once: refused with ``"exists"`` if it is set
    (two peers racing to bootstrap cannot overwrite each other's token)."""
    if not isinstance(key, str) or not key or not is_json(value):
        return state, _refused(state, "invalid")
    if key in state.meta:
        return state, _refused(state, "exists")
    return _changed(state, meta={**state.meta, key: value})


PATCHABLE_KEYS = frozenset({"mode", "state", DEPLOYMENT_KEY})
"""Top-level keys of a service document that `apply_patch_service` may set
without a whole new manifest: ``mode`` (``"active"`` / ``"idle"``, by
``nanomesh activate`` / ``idle``), ``state`` (the state blob a nanoservice
hands the runtime, for seed files); neither restarts a running instance
(`nanomesh.runtime.reconcile_core.spec_digest` leaves them out). The key ``deployment``
carries the leader's verdict on a deployment to `apply_settle_deployment`
(a revert does restart instances: it changes the version)."""
MAX_REGISTRY_KEY_LEN = 2 * MAX_NAME_LEN + 1
"""``name@version``: a service name, ``@``, a version of the same length at most."""


def apply_patch_service(state: DesiredState, name: Any, key: Any, value: Any
                        ) -> tuple[DesiredState, Outcome]:
    """Set one `PATCHABLE_KEYS` key of the existing service `name` (None
    removes it); refused with ``"not-found"`` if the service is gone (a patch
    never resurrects an undeployed service). Key ``deployment`` is a verdict
    for `apply_settle_deployment` (it shares the replicated command, so
    settling a deployment adds no command type to the Raft log)."""
    if key == DEPLOYMENT_KEY:
        return apply_settle_deployment(state, name, value)
    if key not in PATCHABLE_KEYS or not is_json(value):
        return state, _refused(state, "invalid")
    old = state.services.get(name) if isinstance(name, str) else None
    if old is None:
        return state, _refused(state, "not-found")
    new = {k: v for k, v in old.items() if k != key}
    if value is not None:
        new[key] = value
    if new == old:
        return state, _unchanged(state)
    return _changed(state, services={**state.services, name: new})


def apply_put_registry(state: DesiredState, key: Any, entry: Any
                       ) -> tuple[DesiredState, Outcome]:
    """Add or replace registry entry `key` (``"name@version"``); `entry` None
    removes it (refused with ``"not-found"`` if absent)."""
    if not (isinstance(key, str) and 0 < len(key) <= MAX_REGISTRY_KEY_LEN):
        return state, _refused(state, "invalid")
    if entry is None:
        if key not in state.registry:
            return state, _refused(state, "not-found")
        return _changed(state, registry={k: v for k, v in state.registry.items() if k != key})
    if not (isinstance(entry, dict) and is_json(entry)):
        return state, _refused(state, "invalid")
    if state.registry.get(key) == entry:
        return state, _unchanged(state)
    return _changed(state, registry={**state.registry, key: entry})


def _changed(state: DesiredState, **fields: Any) -> tuple[DesiredState, Outcome]:
    values = {**state.to_doc(), **fields, "revision": state.revision + 1}
    new = DesiredState(**values)
    return new, Outcome(True, True, new.revision, new.plan_epoch)


def _unchanged(state: DesiredState) -> Outcome:
    return Outcome(True, False, state.revision, state.plan_epoch)


def _refused(state: DesiredState, reason: str) -> Outcome:
    return Outcome(False, False, state.revision, state.plan_epoch, reason)
