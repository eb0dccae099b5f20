"""The HTTP API's desired-state endpoints (services, placement, status).

Writes (``POST /v1/services``, ``DELETE /v1/services/{name}``) need the mesh's
management token as ``Authorization: Bearer TOKEN`` and are accepted by any
peer: its consensus node forwards them to the Raft leader and the call
returns once the change is committed. Reads are answered from this peer's
committed state, which may trail the leader by a few milliseconds.

Shapes:
- ``POST /v1/services``: body a manifest object, plus ``"reset_state": true``
  to drop the state the service saved (kept by default on an update); reply
  ``{"name", "revision", "changed"}`` and ``"deployment"`` (its id) when the
  deploy started one (a new version), which the leader settles as
  ``successful``, ``failed`` or ``reverted`` (`nanomesh.runtime.deployment_core`).
- ``GET /v1/services``: ``[service document, ...]`` sorted by name; with
  the management token in full, else redacted (no ``state``, ``run.env``
  values hidden, ``"redacted": [fields]``; see `nanomesh.security.auth`).
- ``GET /v1/deployments``: ``{service: its latest deployment}``, each
  ``{"id", "status"}`` plus, once settled, ``"reason"`` and, after a revert,
  ``"reverted_from"`` (the version given up). Apart from the documents, as
  Nomad keeps deployments apart from job versions: a settling deployment
  never makes a service document change under a reader.
- ``GET /v1/placement``: ``{"epoch", "strategy", "instances": [{"instance",
  "service", "peer", "state", "health", "current"}], "unplaced": [instance
  ids], "unplaceable": {service: {peer: reason}}}``; ``state`` and ``health``
  are what the hosting peer gossips (``pending`` until it reports, and while
  its host is dead and the instance not yet re-placed); ``current`` is false
  while the instance still runs an older spec of its service;
  ``"deployments"``: as ``GET /v1/deployments``.
- ``GET /v1/status``: ``{"leader", "term", "voters", "epoch", "revision",
  "role", "no_leader_since", "last_leader", "cluster_epoch", "peer"}``
  (`status_document`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from nanomesh.consensus import (
    CommitTimeout,
    ConsensusError,
    NoLeaderError,
    NotRunningError,
    StorageError,
    VersionGateError,
)
from nanomesh.consensus.role_manager import Replica
from nanomesh.consensus.status import LeaderWatch
from nanomesh.daemon.api_auth import Access, running_node
from nanomesh.daemon.http import Handler, HttpError, Request
from nanomesh.daemon.views import Members, NodeSource
from nanomesh.gossip.members import Member
from nanomesh.ids import service_of
from nanomesh.runtime.lifecycle import PENDING
from nanomesh.runtime.manifest import ManifestError, service_document
from nanomesh.runtime.reconcile_core import spec_digest
from nanomesh.security.auth import redact_service
from nanomesh.wire import MemberState

RESET_STATE = "reset_state"
"""Field of a deploy body (beside the manifest's own) that drops the
service's saved state: `true` for ``nanomesh deploy --reset-state``. Without
it a redeploy keeps the state (`nanomesh.consensus.state`)."""
INSTANCES_KEY = "instances"
"""Where a peer's gossiped profile lists the state of the instances it runs."""


class RoleStatus(Protocol):
    """What ``/v1/status`` reads of the Raft role manager."""

    @property
    def leader_watch(self) -> LeaderWatch: ...

    @property
    def epoch(self) -> int: ...


@dataclass(frozen=True)
class MeshContext:
    """What the desired-state routes use."""

    name: str
    """This peer's name."""
    access: Access
    consensus: NodeSource
    members: Members
    roles: RoleStatus


def mesh_routes(ctx: MeshContext) -> dict[tuple[str, str], Handler]:
    def node() -> Replica:
        return running_node(ctx.consensus())

    def require_token(request: Request) -> Replica:
        return ctx.access.require_management_token(request)

    async def deploy(request: Request) -> tuple[int, Any]:
        n = require_token(request)
        body = request.json()
        if not isinstance(body, dict):
            raise HttpError(400, "the body must be a manifest object")
        body = dict(body)
        reset_state = body.pop(RESET_STATE, False)
        if not isinstance(reset_state, bool):
            raise HttpError(400, f"{RESET_STATE} must be true or false")
        try:
            doc = service_document(body, where="manifest")
        except ManifestError as exc:
            raise HttpError(400, str(exc)) from None
        if reset_state and "state" not in doc:
            doc["state"] = None  # merge-patch null: drop the saved state
        outcome = await consensus_call(lambda: n.put_service(doc["name"], doc))
        reply = {"name": doc["name"], "revision": outcome.revision, "changed": outcome.changed}
        dep = n.state.deployments.get(doc["name"])
        if outcome.changed and dep is not None and dep.get("id") == outcome.revision:
            reply["deployment"] = outcome.revision  # this put started a deployment
        return 201 if outcome.changed else 200, reply

    async def undeploy(request: Request) -> tuple[int, Any]:
        n = require_token(request)
        name = request.params["name"]
        outcome = await consensus_call(lambda: n.delete_service(name))
        if not outcome.applied:
            raise HttpError(404, f"no service named {name!r}")
        return 200, {"name": name, "revision": outcome.revision}

    async def services(request: Request) -> tuple[int, Any]:
        state = node().state
        docs = [state.services[name] for name in sorted(state.services)]
        if ctx.access.reader_sees_secrets(request):
            return 200, docs
        return 200, [redact_service(doc) for doc in docs]

    async def deployments(_: Request) -> tuple[int, Any]:
        state = node().state
        return 200, {name: state.deployments[name] for name in sorted(state.deployments)}

    async def placement(_: Request) -> tuple[int, Any]:
        state = node().state
        plan = state.plan
        reported = reported_instances(ctx.members())
        digests = {name: spec_digest(doc) for name, doc in state.services.items()}
        instances = []
        for iid, host in sorted(plan.get("assignments", {}).items()):
            service = service_of(iid)
            seen = reported.get(host, {}).get(iid, {})
            instances.append({
                "instance": iid, "service": service, "peer": host,
                "state": seen.get("state", PENDING), "health": seen.get("health", "none"),
                "current": seen.get("digest") == digests.get(service)})
        return 200, {"epoch": state.plan_epoch, "strategy": plan.get("strategy", ""),
                     "instances": instances, "unplaced": plan.get("unplaced", []),
                     "unplaceable": plan.get("unplaceable", {}),
                     "deployments": dict(state.deployments)}

    async def status(_: Request) -> tuple[int, Any]:
        return 200, status_document(ctx)

    return {("POST", "/v1/services"): deploy, ("DELETE", "/v1/services/{name}"): undeploy,
            ("GET", "/v1/services"): services, ("GET", "/v1/placement"): placement,
            ("GET", "/v1/deployments"): deployments,
            ("GET", "/v1/status"): status}


def status_document(ctx: MeshContext) -> dict[str, Any]:
    """``GET /v1/status``: this peer's view of the control plane. Answered
    even while its Raft node is down (role ``none``). ``leader`` is null
    when this peer has not heard a leader recently; ``no_leader_since``
    (seconds since the epoch, or null) says since when, ``last_leader``
    which one it last heard; ``cluster_epoch`` counts operator recoveries
    (`nanomesh.consensus.recovery`)."""
    watch = ctx.roles.leader_watch
    n = ctx.consensus()
    if n is None or not n.running:
        raft: dict[str, Any] = {"leader": None, "term": 0, "voters": [], "epoch": None,
                                "revision": None, "role": "none"}
    else:
        raft = {"leader": n.leader, "term": n.term, "voters": sorted(n.voters),
                "epoch": n.state.plan_epoch, "revision": n.state.revision,
                "role": n.status.role.value}
    return {**raft, "no_leader_since": watch.since, "last_leader": watch.last_leader,
            "cluster_epoch": ctx.roles.epoch, "peer": ctx.name}


def reported_instances(members: list[Member]) -> dict[str, dict[str, dict[str, Any]]]:
    """peer name -> instance id -> status, as each of `members` gossips it."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for m in members:
        if m.state not in (MemberState.ALIVE, MemberState.SUSPECT):
            continue  # its last report is stale: show "pending" until re-placed
        section = (m.profile or {}).get(INSTANCES_KEY)
        if isinstance(section, dict):
            out[m.name] = {k: v for k, v in section.items() if isinstance(v, dict)}
    return out


async def consensus_call(call: Callable[[], Awaitable[Any]]) -> Any:
    """``await call()``, its consensus errors turned into HTTP answers."""
    try:
        return await call()
    except NoLeaderError:
        raise HttpError(503, "no Raft leader right now (an election is under way, or the "
                        "voters lost their majority); retry shortly") from None
    except CommitTimeout:
        raise HttpError(504, "the write was not confirmed in time; it may still be "
                        "committed: check `nanomesh services`") from None
    except NotRunningError:
        raise HttpError(503, "this peer's consensus node is not running") from None
    except StorageError as exc:  # its data disk is full: 507 Insufficient Storage
        raise HttpError(507, str(exc)) from None
    except VersionGateError as exc:  # not before every peer is upgraded: no retry loop
        raise HttpError(409, str(exc)) from None
    except ConsensusError as exc:
        raise HttpError(503, f"consensus: {exc}") from None
