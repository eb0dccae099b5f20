"""Reconciliation: from the committed plan and what runs here, to start/stop effects.

Every peer watches the committed placement plan and runs *its own* share of
it. This module is the decision half of that loop, in the style of the other
cores: pure, no I/O, no clock. The daemon (the trio shell) feeds it

* ``me``: this peer's name;
* ``plan_assignments``: the committed plan's ``assignments`` (instance id
  ``"svc/0"`` -> peer name);
* ``services``: the desired services, name -> service document (the
  replicated shape of :mod:`nanomesh.runtime.manifest`: the manifest's fields, its
  ``"run"`` section, the placement spec under ``"spec"``), or any dict with a
  ``"run"`` section: reconcile only digests it (:func:`spec_digest`) and hands
  it to the driver;
* ``instances``: what the local runtime driver reports
  (:meth:`nanomesh.runtime.ProcessDriver.status`);
* ``now``: the same clock the driver stamps statuses with (the daemon's
  ``trio.current_time()``);

and executes the returned :class:`StopInstance` / :class:`StartInstance`
effects in order (stops first, so resources are freed before they are
claimed), then calls :func:`reconcile` again whenever the plan, the services
or an instance status change, or at :func:`next_retry_at`.

The rules, one instance id at a time (each case is a row in
``tests/test_reconcile.py``):

* wanted here and the service's ``mode`` is ``idle``: an instance that runs
  is stopped (``"idle"``); one with no record, or ended, is prepared and
  recorded ``idle`` (:class:`IdleInstance`); an ``idle`` one is left alone;
* wanted here (assigned to ``me``, service still desired, mode ``active``):
  - unknown to the driver: start it;
  - ``idle``: start it now (``nanomesh activate``), back-off reset;
  - ``starting``/``running`` with the spec digest it was started with: nothing;
  - ``starting``/``running`` with an older digest: stop it (``"spec-changed"``);
    once it has stopped, the digest differs, so it is started again at once;
  - ``stopping``: nothing, wait for it to end;
  - ``exited``/``failed`` with an older digest: start it now, back-off reset
    (a new spec deserves a fresh try);
  - ``exited``/``failed`` with the current digest: start it once its back-off
    (:func:`restart_delay`) has elapsed since it ended, if the service's
    restart policy allows (``always``; ``on-failure`` only after ``failed``;
    ``never`` not at all: the record stays, so the operator sees the end);
* not wanted here (assigned elsewhere, unplaced, or its service deleted):
  ``starting``/``running`` ones are stopped (``"unassigned"`` or
  ``"service-deleted"``); everything else is left alone. Except a *move*
  (make before break): an instance that runs and passes its checks here and
  that the plan now assigns to another peer keeps running until that peer
  reports its copy ready (``"handed-over"``), or `HANDOVER_TIMEOUT` after
  the move, whichever comes first (then ``"unassigned"``). Without that a
  voluntary move, or a plan that moves every replica of a service at once,
  left the service without a listening instance for the new copy's start.
  The shell says which instances are ready elsewhere (gossip) and since when
  each move is pending; a shell that passes no `Handover` stops at once.

One effect per instance per round: a restart is a stop now and a start in a
later round, after the driver reports the stop. That keeps the shell free to
carry out effects concurrently without two effects on one instance racing.

Times in :class:`InstanceStatus` are readings of the local daemon's clock
(``trio.current_time()``), meaningful on this peer only: whoever gossips a
status to other peers should turn them into ages first.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from nanomesh.checks import is_int, is_number
from nanomesh.errors import ConfigError
from nanomesh.ids import is_instance_id, service_of
from nanomesh.runtime.lifecycle import ACTIVE as ACTIVE
from nanomesh.runtime.lifecycle import ENDED as ENDED
from nanomesh.runtime.lifecycle import RESTING as RESTING
from nanomesh.runtime.lifecycle import STATES as STATES
from nanomesh.runtime.lifecycle import TRANSITIONS as TRANSITIONS
from nanomesh.runtime.lifecycle import IllegalTransition as IllegalTransition
from nanomesh.runtime.lifecycle import State as State
from nanomesh.runtime.lifecycle import check_transition as check_transition

PLACEMENT_ONLY_KEYS = frozenset({"replicas", "placement", "description", "mode", "state",
                                 "update"})
"""Keys that do not shape a running instance: ``replicas`` and ``placement``
decide *where* instances run, and the plan carries that out (an instance moves
or is added/removed); ``description`` is for people; ``update`` says how a
new version is rolled out (:mod:`nanomesh.runtime.deployment_core`). They are left out of
:func:`spec_digest`, at the top level and inside a nested ``"spec"`` section
(the service document of :mod:`nanomesh.runtime.manifest` nests the placement spec
there), so changing them never restarts an instance. Every other key (``run``,
``kind``, ``version``, ``requires``, anything issue 4 adds) restarts it: a
needless restart is cheaper than an instance silently running an old spec."""


HEALTH_STATES = ("none", "starting", "healthy", "unhealthy")


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    """How fast a local instance that ended on its own is started again.

    An instance that keeps ending is restarted after ``initial``, then
    ``initial * factor``, ... seconds, at most ``maximum`` (Kubernetes'
    CrashLoopBackOff shape, with shorter steps because a nanoservice restart is
    cheap and an edge service should come back quickly). The formula is
    :func:`restart_delay`.
    """

    initial: float = 0.5
    """Seconds before the first restart. Long enough that a service dying at
    start-up does not spin a core; short enough to be unnoticed after a crash."""
    factor: float = 2.0
    """Multiplier per consecutive quick restart (>= 1)."""
    maximum: float = 30.0
    """Cap, seconds: a service that cannot start is retried twice a minute, so
    it comes back by itself once its cause (a missing device, a port) is gone."""
    reset_after: float = 60.0
    """A run that lasted at least this long (seconds) was healthy: the next
    restart starts the back-off over at ``initial``."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.initial) and self.initial >= 0):
            raise ConfigError(f"backoff.initial must be a number >= 0, got {self.initial!r}")
        if not (math.isfinite(self.factor) and self.factor >= 1):
            raise ConfigError(f"backoff.factor must be a number >= 1, got {self.factor!r}")
        if not (math.isfinite(self.maximum) and self.maximum >= self.initial):
            raise ConfigError(f"backoff.maximum must be >= backoff.initial ({self.initial}), "
                              f"got {self.maximum!r}")
        if not (math.isfinite(self.reset_after) and self.reset_after >= 0):
            raise ConfigError(f"backoff.reset_after must be a number >= 0, "
                              f"got {self.reset_after!r}")


@dataclass(frozen=True, slots=True)
class InstanceStatus:
    """What the local runtime knows about one instance (one value per run).

    Times are the local daemon's clock (see the module docstring).
    """

    iid: str
    """Instance id, ``"<service>/<index>"``."""
    service: str
    state: State
    since: float
    """When the instance entered ``state``."""
    restarts: int = 0
    """Consecutive quick restarts before this run (the back-off exponent): 0 for
    a first start, after a spec change, or after a run of at least
    :attr:`BackoffPolicy.reset_after` seconds."""
    spec_digest: str = ""
    """:func:`spec_digest` of the service spec this run was started from."""
    exit_code: int | None = None
    """How the last run ended, ``subprocess`` style: >= 0 an exit status, -N
    killed by signal N. ``None`` while running or if it never ran."""
    last_exit: int | None = None
    """How the run before this one ended (`exit_code` of the previous run),
    kept across a restart: a crash-looping instance is usually starting
    again when someone asks why it restarts."""
    pid: int | None = None
    """The instance's process-group id while it runs (see :mod:`nanomesh.runtime`)."""
    message: str = ""
    """Human-readable detail: why it failed, how it was stopped."""
    started_at: float | None = None
    """When the current (or last) run started; with ``since`` of an ended run it
    gives the run's length, which decides the back-off reset."""
    health: str = "none"
    """``none`` (no check, or not running), ``starting`` (running, first check
    not passed yet), ``healthy``, ``unhealthy`` (see :data:`HEALTH_STATES`)."""
    endpoints: tuple[tuple[str, str, int], ...] = ()
    """``(name, protocol, port)`` of the endpoints this run serves (ports
    chosen for ``"auto"`` included); empty when not running."""

    def to_dict(self) -> dict[str, Any]:
        """JSON/msgpack-friendly: str, int, float, None and lists only."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["endpoints"] = [list(e) for e in self.endpoints]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InstanceStatus:
        """Inverse of :meth:`to_dict`. Raises ValueError naming the bad field;
        ``restarts`` .. ``started_at`` may be left out (their defaults)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"instance status must be a mapping, got {type(data).__name__}")
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"instance status: unknown keys {sorted(unknown)}")
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                if f.name in ("iid", "service", "state", "since"):
                    raise ValueError(f"instance status: missing {f.name!r}")
                continue
            values[f.name] = _check_field(f.name, data[f.name])
        return cls(**values)


def _check_field(name: str, value: Any) -> Any:
    ok: bool
    match name:
        case "iid" | "service" | "spec_digest" | "message":
            ok = isinstance(value, str)
        case "state":
            ok = value in STATES
        case "since":
            ok = is_number(value)
        case "started_at":
            ok = value is None or is_number(value)
        case "restarts":
            ok = is_int(value) and value >= 0
        case "health":
            ok = value in HEALTH_STATES
        case "endpoints":
            ok = isinstance(value, list | tuple) and all(
                isinstance(e, list | tuple) and len(e) == 3 and isinstance(e[0], str)
                and isinstance(e[1], str) and is_int(e[2]) for e in value)
            if ok:
                value = tuple((e[0], e[1], e[2]) for e in value)
        case _:  # exit_code, pid
            ok = value is None or is_int(value)
    if not ok:
        raise ValueError(f"instance status: bad {name!r}: {value!r}")
    return float(value) if name in ("since", "started_at") and value is not None else value




def transition(status: InstanceStatus, state: State, now: float,
               **changes: Any) -> InstanceStatus:
    """``status`` moved to ``state`` at ``now`` (plus any field ``changes``).
    Raises :class:`IllegalTransition` if :data:`TRANSITIONS` forbids it."""
    check_transition(status.state, state, status.iid)
    return replace(status, state=state, since=now, **changes)


# -- effects -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartInstance:
    """Start one run of ``iid`` from ``spec`` (the service's spec dict)."""

    iid: str
    service: str
    spec: Mapping[str, Any] = field(compare=False, repr=False)
    spec_digest: str
    restarts: int
    """The value to record in the new run's :attr:`InstanceStatus.restarts`."""


@dataclass(frozen=True, slots=True)
class StopInstance:
    """Stop ``iid`` gracefully; ``reason`` is ``"unassigned"``,
    ``"handed-over"``, ``"service-deleted"``, ``"spec-changed"`` or ``"idle"``."""

    iid: str
    reason: str


@dataclass(frozen=True, slots=True)
class IdleInstance:
    """Prepare ``iid`` (fetch its bundle) without starting it, and record it
    ``idle``."""

    iid: str
    service: str
    spec: Mapping[str, Any] = field(compare=False, repr=False)
    spec_digest: str


Effect = StartInstance | StopInstance | IdleInstance

HANDOVER_TIMEOUT = 30.0
"""Seconds a moved instance keeps running here at most while its new peer
gets its copy ready (fetch the bundle, start, pass the first check: 1-3 s for
a small service on a Raspberry Pi, more when a container image is pulled).
Past it this copy stops anyway: a new peer that never gets there must not
keep the old copy alive for ever (the plan no longer counts its resources
here)."""


@dataclass(frozen=True, slots=True)
class Handover:
    """What the shell knows about moves in progress (make before break)."""

    ready_elsewhere: frozenset[str] = frozenset()
    """Instance ids whose copy on the peer the plan assigns them to is
    running and passes its checks, as that peer gossips it."""
    moved_at: Mapping[str, float] = field(default_factory=dict)
    """Instance id -> when this peer first saw it assigned elsewhere while it
    ran here (the shell's clock); a move not in here started now."""


def handing_over(iid: str, status: InstanceStatus, me: str,
                 plan_assignments: Mapping[str, str],
                 services: Mapping[str, Mapping[str, Any]]) -> bool:
    """Whether `iid`, which is not wanted here any more, is being moved to
    another peer while it serves here: its service is still desired, the
    plan assigns it to another peer, and it runs and passes its checks (or
    has none). An instance still starting or failing its checks serves
    nobody: it is stopped at once."""
    host = plan_assignments.get(iid)
    return (host is not None and host != me and status.service in services
            and status.state == "running" and status.health in ("healthy", "none"))


def keep_for_handover(iid: str, status: InstanceStatus, me: str,
                      plan_assignments: Mapping[str, str],
                      services: Mapping[str, Mapping[str, Any]], now: float,
                      handover: Handover | None) -> bool:
    """Whether a moved instance keeps running here for now (module docstring)."""
    if handover is None or iid in handover.ready_elsewhere:
        return False
    if not handing_over(iid, status, me, plan_assignments, services):
        return False
    return now < handover.moved_at.get(iid, now) + HANDOVER_TIMEOUT


# -- the formulas ------------------------------------------------------------------------


def spec_digest(spec: Mapping[str, Any]) -> str:
    """A short stable digest of what in ``spec`` (a service spec dict or a
    service document) shapes a running instance: every key but
    :data:`PLACEMENT_ONLY_KEYS`. Key order does not matter; lists and tuples
    digest alike (a spec read back from msgpack or JSON gives the same digest).
    Raises TypeError for values JSON cannot carry."""
    relevant = _runtime_view(spec)
    nested = relevant.get("spec")
    if isinstance(nested, Mapping):
        relevant["spec"] = _runtime_view(nested)
    canonical = json.dumps(relevant, sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _runtime_view(spec: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k not in PLACEMENT_ONLY_KEYS}


def restart_delay(restarts: int, backoff: BackoffPolicy) -> float:
    """Seconds to wait before restarting an instance whose run ended after
    ``restarts`` consecutive quick restarts: ``min(initial * factor**restarts,
    maximum)``."""
    if restarts >= 64:  # factor**restarts would overflow long after the cap
        return backoff.maximum
    return min(backoff.initial * backoff.factor ** restarts, backoff.maximum)


def ran_stably(status: InstanceStatus, backoff: BackoffPolicy) -> bool:
    """Whether the run that ended in ``status`` lasted ``reset_after`` or more."""
    return (status.started_at is not None
            and status.since - status.started_at >= backoff.reset_after)


def retry_at(status: InstanceStatus, backoff: BackoffPolicy) -> tuple[float, int]:
    """For an ended run with the current spec: when it may start again, and the
    ``restarts`` value the next run records."""
    previous = 0 if ran_stably(status, backoff) else status.restarts
    return status.since + restart_delay(previous, backoff), previous + 1


# -- reconcile ---------------------------------------------------------------------------


def wanted_here(me: str, plan_assignments: Mapping[str, str],
                services: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Instance id -> service name of the instances this peer should run.
    Malformed instance ids in the plan are skipped."""
    out: dict[str, str] = {}
    for iid, peer in plan_assignments.items():
        if peer != me or not is_instance_id(iid):
            continue
        service = service_of(iid)
        if service in services:
            out[iid] = service
    return out


def reconcile(me: str, plan_assignments: Mapping[str, str],
              services: Mapping[str, Mapping[str, Any]],
              instances: Mapping[str, InstanceStatus], now: float,
              backoff: BackoffPolicy, handover: Handover | None = None) -> list[Effect]:
    """The effects that move this peer's instances toward the plan (rules in the
    module docstring): stops first, then starts and idles, each sorted by
    instance id. `handover` None: moved instances stop at once."""
    wanted = wanted_here(me, plan_assignments, services)
    digests = {name: spec_digest(services[name]) for name in set(wanted.values())}
    stops: list[StopInstance] = []
    starts: list[StartInstance | IdleInstance] = []
    for iid in sorted(set(wanted) | set(instances)):
        status = instances.get(iid)
        if iid not in wanted:
            if status is not None and status.state in ("starting", "running"):
                stop = _unwanted(iid, status, me, plan_assignments, services, now, handover)
                if stop is not None:
                    stops.append(stop)
            continue
        service = wanted[iid]
        effect = _for_wanted(iid, service, services[service], digests[service], status,
                             now, backoff)
        if isinstance(effect, StopInstance):
            stops.append(effect)
        elif effect is not None:
            starts.append(effect)
    return [*stops, *starts]


def _unwanted(iid: str, status: InstanceStatus, me: str, plan_assignments: Mapping[str, str],
              services: Mapping[str, Mapping[str, Any]], now: float,
              handover: Handover | None) -> StopInstance | None:
    """The stop of an active instance no longer wanted here, or None while a
    move keeps it running (`keep_for_handover`)."""
    if status.service not in services:
        return StopInstance(iid, "service-deleted")
    if keep_for_handover(iid, status, me, plan_assignments, services, now, handover):
        return None
    ready = handover is not None and iid in handover.ready_elsewhere and handing_over(
        iid, status, me, plan_assignments, services)
    return StopInstance(iid, "handed-over" if ready else "unassigned")


def handover_deadline(me: str, plan_assignments: Mapping[str, str],
                      services: Mapping[str, Mapping[str, Any]],
                      instances: Mapping[str, InstanceStatus], now: float,
                      handover: Handover) -> float | None:
    """When the earliest move kept running here times out, None if none is kept."""
    times = [handover.moved_at.get(iid, now) + HANDOVER_TIMEOUT
             for iid, status in instances.items()
             if keep_for_handover(iid, status, me, plan_assignments, services, now, handover)]
    return min(times, default=None)


def _for_wanted(iid: str, service: str, spec: Mapping[str, Any], digest: str,
                status: InstanceStatus | None, now: float, backoff: BackoffPolicy) -> Effect | None:
    if spec.get("mode") == "idle":
        return _for_idle(iid, service, spec, digest, status, now, backoff)
    if status is None or status.state == "idle":
        return StartInstance(iid, service, spec, digest, restarts=0)
    if status.state in ("starting", "running"):
        return None if status.spec_digest == digest else StopInstance(iid, "spec-changed")
    if status.state in ("stopping", "fetching"):
        return None
    if status.spec_digest != digest:
        return StartInstance(iid, service, spec, digest, restarts=0)
    if not restart_allowed(status, spec):
        return None
    at, restarts = retry_at(status, backoff)
    if now < at:
        return None
    return StartInstance(iid, service, spec, digest, restarts=restarts)


def _for_idle(iid: str, service: str, spec: Mapping[str, Any], digest: str,
              status: InstanceStatus | None, now: float, backoff: BackoffPolicy
              ) -> Effect | None:
    if status is None:
        return IdleInstance(iid, service, spec, digest)
    if status.state in ("starting", "running"):
        return StopInstance(iid, "idle")
    if status.state == "failed" and status.spec_digest == digest:
        # Preparing it failed (no bundle holder yet, a bad spec): retry with
        # the same back-off as a start, never in a tight loop.
        return IdleInstance(iid, service, spec, digest) if now >= retry_at(
            status, backoff)[0] else None
    if status.state in RESTING and (status.state != "idle" or status.spec_digest != digest):
        return IdleInstance(iid, service, spec, digest)
    return None


def restart_policy(spec: Mapping[str, Any]) -> str:
    """The service's restart policy (``always`` when unset or unreadable; the
    manifest validator has already refused bad values)."""
    restart = spec.get("restart")
    policy = restart.get("policy") if isinstance(restart, Mapping) else None
    return policy if policy in ("on-failure", "never") else "always"


def restart_allowed(status: InstanceStatus, spec: Mapping[str, Any]) -> bool:
    """Whether the restart policy lets the run that ended in ``status`` be followed
    by another one (with the current spec)."""
    policy = restart_policy(spec)
    return policy == "always" or (policy == "on-failure" and status.state == "failed")


def next_retry_at(me: str, plan_assignments: Mapping[str, str],
                  services: Mapping[str, Mapping[str, Any]],
                  instances: Mapping[str, InstanceStatus],
                  backoff: BackoffPolicy) -> float | None:
    """The earliest time at which :func:`reconcile` would start an instance that
    is now waiting out its back-off, or None if none is waiting. The shell
    sleeps until then (or until the plan, the services or a status change)."""
    wanted = wanted_here(me, plan_assignments, services)
    times = [retry_at(status, backoff)[0] for iid, status in instances.items()
             if iid in wanted and status.state in ENDED
             and (restart_allowed(status, services[wanted[iid]])
                  if services[wanted[iid]].get("mode") != "idle" else status.state == "failed")
             and status.spec_digest == spec_digest(services[wanted[iid]])]
    return min(times, default=None)

