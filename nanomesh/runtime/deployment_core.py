"""Deployments: is a new version of a service healthy, and if not, revert it.

Nomad's update model (``update`` stanza, ``auto_revert``), for nanoservices.
A put that changes a service's version starts a deployment
(`nanomesh.consensus.state`, which also files the version it replaces). The
Raft leader then watches the new version's instances, as every hosting peer
gossips them, and settles the deployment:

- ``successful`` once every instance the service should have runs the new
  spec, is ``running`` with a passing (or no) health check, continuously and
  without a restart for `UpdatePolicy.min_healthy_time`;
- otherwise ``failed`` at `UpdatePolicy.healthy_deadline`, or at once when an
  instance of the new version crash-loops (`CRASH_LIMIT` quick restarts: a
  failing health check also ends in restarts, as the runtime kills an
  unhealthy instance) or ended for good (restart policy ``never``);
- a failed deployment becomes ``reverted`` if `UpdatePolicy.auto_revert` is
  on and there is a previous good version: the leader commits the verdict
  and the replicated state machine puts the previous version back in the
  same command. A first deploy has nothing to revert to and just fails.

The decision is `judge`: pure, with the leader's clock passed in as ``now``.
The clock is the leader's own: what a leader remembers of a deployment
(`Watch`, when it first saw it and since when it has been healthy) is not
replicated, so a new leader starts the deadline again. That errs on the
side of waiting longer, never of reverting a version too soon.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nanomesh.checks import is_int, is_number
from nanomesh.ids import service_of
from nanomesh.runtime.reconcile_core import restart_policy, spec_digest

CRASH_LIMIT = 3
"""Quick restarts of one instance of the new version that fail the
deployment at once, before its deadline: with the runtime's back-off
(0.5, 1, 2 s) a version that dies at start-up is judged in about 4 s, while
a single crash of a version that then stays up is not fatal."""


@dataclass(frozen=True)
class UpdatePolicy:
    """A service's ``[update]`` manifest section (Nomad's ``update`` stanza)."""

    auto_revert: bool = True
    """Put the previous version back when a deployment fails. On by default
    (Nomad's default is off): a device in the field has no operator watching
    the rollout, and a working old version beats a broken new one. Off, a
    failed deployment is only reported, and the broken version stays."""
    min_healthy_time: float = 5.0
    """Seconds every instance of the new version must stay running and
    healthy before the deployment succeeds (Nomad: 10 s). Long enough to see
    a service that dies a moment after start; ``nanomesh deploy`` waits this
    much longer than the start itself."""
    healthy_deadline: float = 120.0
    """Seconds the new version has to become healthy before it fails (Nomad:
    5 min). Counts a bundle fetch and a Python start on a Pi, plus the health
    check's ``start_period``; crash loops fail much earlier (`CRASH_LIMIT`)."""

    def to_dict(self) -> dict[str, Any]:
        return {"auto_revert": self.auto_revert, "min_healthy_time": self.min_healthy_time,
                "healthy_deadline": self.healthy_deadline}


UPDATE_KEYS = ("auto_revert", "min_healthy_time", "healthy_deadline")


def update_policy_problem(raw: Any) -> str | None:
    """Why `raw` (a manifest's ``update`` table) is not valid, or None."""
    if not isinstance(raw, Mapping):
        return "update must be a table"
    unknown = sorted(set(raw) - set(UPDATE_KEYS))
    if unknown:
        return f"update: unknown key(s) {', '.join(unknown)}; known: {', '.join(UPDATE_KEYS)}"
    if "auto_revert" in raw and not isinstance(raw["auto_revert"], bool):
        return "update.auto_revert must be true or false"
    for key in ("min_healthy_time", "healthy_deadline"):
        value = raw.get(key)
        if value is not None and not (is_number(value) and value >= 0):
            return f"update.{key} must be a number of seconds >= 0"
    policy = update_policy(raw)
    if policy.healthy_deadline <= policy.min_healthy_time:
        return "update.healthy_deadline must be longer than update.min_healthy_time"
    return None


def update_policy(raw: Any) -> UpdatePolicy:
    """The policy of a service document's ``update`` section; defaults for
    what is missing or unreadable (the manifest validator refused bad values
    before they were committed)."""
    table = raw if isinstance(raw, Mapping) else {}
    default = UpdatePolicy()
    revert = table.get("auto_revert")
    return UpdatePolicy(
        auto_revert=revert if isinstance(revert, bool) else default.auto_revert,
        min_healthy_time=_seconds(table.get("min_healthy_time"), default.min_healthy_time),
        healthy_deadline=_seconds(table.get("healthy_deadline"), default.healthy_deadline))


def _seconds(value: Any, default: float) -> float:
    return float(value) if is_number(value) and value >= 0 else default


# -- the leader's memory and verdict -----------------------------------------------------


@dataclass(frozen=True)
class Watch:
    """What the leader remembers of one running deployment (not replicated)."""

    deployment: int
    """The deployment's id (the Raft revision that started it)."""
    started: float
    """When this leader first saw the deployment running (its clock)."""
    healthy_since: float | None = None
    """Since when every instance has been healthy, None while not."""
    restarts: int = 0
    """The new version's restarts summed over its instances, last seen: a
    rise means one crashed between two looks, and the healthy time restarts."""


@dataclass(frozen=True)
class Verdict:
    """Settle deployment ``deployment`` with ``status`` (``successful``,
    ``failed`` or ``reverted``) for ``reason``."""

    deployment: int
    status: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.deployment, "status": self.status, "reason": self.reason}


def judge(doc: Mapping[str, Any], deployment: Mapping[str, Any],
          instances: Mapping[str, Mapping[str, Any] | None], has_previous: bool,
          watch: Watch | None, now: float) -> tuple[Watch, Verdict | None]:
    """One look at a running deployment of service document ``doc``.

    ``deployment`` is its replicated record (``{"id", "status"}``);
    ``instances`` maps every instance id the service should have (by the
    committed plan; unplaced ones too) to what its host gossips about it
    (``state``, ``health``, ``digest``, ``restarts``), or None if nothing
    yet; ``has_previous``: whether a version to revert to is filed; ``watch``:
    the last look's memory (None, or one of another deployment, starts anew).
    Returns the new memory and a verdict, or None to look again later."""
    dep_id = int(deployment["id"])
    if watch is None or watch.deployment != dep_id:
        watch = Watch(dep_id, started=now)
    started = watch.started
    policy = update_policy(doc.get("update"))
    digest = spec_digest(doc)
    current = {iid: r for iid, r in instances.items()
               if r is not None and r.get("digest") == digest}
    restarts = sum(_count(r.get("restarts")) for r in current.values())

    def fail(reason: str) -> tuple[Watch, Verdict]:
        status = "reverted" if policy.auto_revert and has_previous else "failed"
        return Watch(dep_id, started, None, restarts), Verdict(dep_id, status, reason)

    broken = _broken(doc, current)
    if broken is not None:
        return fail(broken)
    healthy = len(instances) >= _replicas(doc) and len(current) == len(instances) and all(
        _healthy(doc, r) for r in current.values())
    since: float | None = None
    if healthy:
        kept = watch.healthy_since is not None and restarts == watch.restarts
        since = watch.healthy_since if kept else now
    watch = Watch(dep_id, started, since, restarts)
    if since is not None:
        if now - since < policy.min_healthy_time:
            return watch, None
        return watch, Verdict(dep_id, "successful", f"{len(instances)} instance(s) healthy "
                              f"for {policy.min_healthy_time:g} s")
    if now - started >= policy.healthy_deadline:
        return fail(f"not healthy within {policy.healthy_deadline:g} s: "
                    f"{_summary(instances, digest)}")
    return watch, None


def _broken(doc: Mapping[str, Any], current: Mapping[str, Mapping[str, Any]]) -> str | None:
    """Why the new version cannot become healthy, seen in one look, or None."""
    for iid, report in sorted(current.items()):
        restarts = _count(report.get("restarts"))
        if restarts >= CRASH_LIMIT:
            return (f"{iid} restarted {restarts} times in a row (it crashes, or fails its "
                    f"health check); last state {report.get('state')}{_exit_text(report)}")
        if report.get("state") == "failed" and restart_policy(doc) == "never":
            return f"{iid} failed and its restart policy is never"
    return None


def _exit_text(report: Mapping[str, Any]) -> str:
    """How the last run ended, as its peer reported it ("" if unknown)."""
    code = report.get("exit")
    if not isinstance(code, int) or isinstance(code, bool):
        return ""
    return f", last run exited with status {code}" if code >= 0 else \
        f", last run killed by signal {-code}"


def _healthy(doc: Mapping[str, Any], report: Mapping[str, Any]) -> bool:
    state = report.get("state")
    if doc.get("mode") == "idle":
        return state == "idle"
    if state == "exited" and restart_policy(doc) != "always":
        return True  # a run-to-completion service that completed
    # A restart is not unhealthy by itself (it raises the restart sum, which
    # restarts the healthy time); a crash loop is `_broken`.
    return state == "running" and report.get("health", "none") in ("healthy", "none")


def _replicas(doc: Mapping[str, Any]) -> int:
    spec = doc.get("spec")
    replicas = spec.get("replicas") if isinstance(spec, Mapping) else None
    return replicas if is_int(replicas) else 1


def _summary(instances: Mapping[str, Mapping[str, Any] | None], digest: str) -> str:
    """``svc/0 running/starting, svc/1 not started`` for a failure reason."""
    if not instances:
        return "no instance could be placed"
    parts = []
    for iid, report in sorted(instances.items()):
        if report is None:
            parts.append(f"{iid} not placed or not reported")
        elif report.get("digest") != digest:
            parts.append(f"{iid} still runs the previous version")
        else:
            parts.append(f"{iid} {report.get('state')}/{report.get('health', 'none')}")
    return ", ".join(parts)


def _count(value: Any) -> int:
    return value if is_int(value) and value > 0 else 0


def instance_reports(plan: Mapping[str, Any], service: str,
                     reported: Mapping[str, Mapping[str, Mapping[str, Any]]]
                     ) -> dict[str, Mapping[str, Any] | None]:
    """`judge`'s ``instances`` for ``service``: each of its instance ids in the
    committed ``plan`` (assigned or unplaced) -> what its host gossips about
    it (``reported``: peer -> instance id -> report), None if nothing."""
    assignments = plan.get("assignments")
    unplaced = plan.get("unplaced")
    out: dict[str, Mapping[str, Any] | None] = {}
    if isinstance(assignments, Mapping):
        for iid, host in assignments.items():
            if isinstance(iid, str) and service_of(iid) == service:
                out[iid] = reported.get(host, {}).get(iid) if isinstance(host, str) else None
    if isinstance(unplaced, list):
        out.update({iid: None for iid in unplaced
                    if isinstance(iid, str) and service_of(iid) == service})
    return out
