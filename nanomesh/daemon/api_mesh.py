"""The HTTP API's desired-state endpoints (services, placement, status).

Writes (``POST /v1/services``, ``DELETE /v1/services/{name}``) need the mesh's
management token as ``Authorization: Bearer TOKEN`` and are accepted by any
peer: its consensus node forwards them to the Raft leader and the call
returns once the change is committed. Reads are answered from this peer's
committed state, which may trail the leader by a few milliseconds.

Shapes:
- ``GET /v1/services``: ``[service document, ...]`` sorted by name.
- ``GET /v1/placement``: ``{"epoch", "strategy", "instances": [{"instance",
  "service", "peer", "state", "health", "current"}], "unplaced": [instance
  ids], "unplaceable": {service: {peer: reason}}}``; ``state`` and ``health``
  are what the hosting peer gossips (``pending`` until it reports, and while
  its host is dead and the instance not yet re-placed); ``current`` is false
  while the instance still runs an older spec of its service.
- ``GET /v1/status``: ``{"leader", "term", "voters", "epoch", "revision",
  "role", "no_leader_since", "last_leader", "cluster_epoch", "peer"}``
  (`status_document`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from nanomesh.auth import TOKEN_META_KEY, token_matches
from nanomesh.consensus import (
    CommitTimeout,
    ConsensusError,
    ConsensusNode,
    NoLeaderError,
    NotRunningError,
)
from nanomesh.daemon.http import Handler, HttpError, Request
from nanomesh.lifecycle import PENDING
from nanomesh.manifest import ManifestError, service_document
from nanomesh.reconcile import spec_digest
from nanomesh.wire import MemberState

if TYPE_CHECKING:
    from nanomesh.daemon.peer import PeerDaemon

INSTANCES_KEY = "instances"
"""Where a peer's gossiped profile lists the state of the instances it runs."""


def running_node(peer: PeerDaemon) -> ConsensusNode:
    """This peer's consensus node, or 503."""
    n = peer.consensus
    if n is None or not n.running:
        raise HttpError(503, "this peer's consensus node is not running yet")
    return n


def has_management_token(node: ConsensusNode, request: Request) -> bool:
    """Whether ``request`` carries the mesh's management token (503 if the mesh
    has none committed yet)."""
    digest = node.state.meta.get(TOKEN_META_KEY)
    if not isinstance(digest, str):
        raise HttpError(503, "the mesh has no management token committed yet "
                        "(is a Raft leader elected?)")
    return token_matches(request.bearer_token(), digest)


def require_management_token(peer: PeerDaemon, request: Request) -> ConsensusNode:
    """The consensus node, if ``request`` carries the management token; else 401."""
    n = running_node(peer)
    if not has_management_token(n, request):
        raise HttpError(401, "this call changes the mesh and needs its management "
                        "token: --token, $NANOMESH_TOKEN or --token-file")
    return n


def mesh_routes(peer: PeerDaemon) -> dict[tuple[str, str], Handler]:
    def node() -> ConsensusNode:
        return running_node(peer)

    def require_token(request: Request) -> ConsensusNode:
        return require_management_token(peer, request)

    async def deploy(request: Request) -> tuple[int, Any]:
        n = require_token(request)
        body = request.json()
        if not isinstance(body, dict):
            raise HttpError(400, "the body must be a manifest object")
        try:
            doc = service_document(body, where="manifest")
        except ManifestError as exc:
            raise HttpError(400, str(exc)) from None
        outcome = await _consensus_call(lambda: n.put_service(doc["name"], doc))
        return 201 if outcome.changed else 200, {
            "name": doc["name"], "revision": outcome.revision, "changed": outcome.changed}

    async def undeploy(request: Request) -> tuple[int, Any]:
        n = require_token(request)
        name = request.params["name"]
        outcome = await _consensus_call(lambda: n.delete_service(name))
        if not outcome.applied:
            raise HttpError(404, f"no service named {name!r}")
        return 200, {"name": name, "revision": outcome.revision}

    async def services(_: Request) -> tuple[int, Any]:
        state = node().state
        return 200, [state.services[name] for name in sorted(state.services)]

    async def placement(_: Request) -> tuple[int, Any]:
        state = node().state
        plan = state.plan
        reported = _reported_instances(peer)
        digests = {name: spec_digest(doc) for name, doc in state.services.items()}
        instances = []
        for iid, host in sorted(plan.get("assignments", {}).items()):
            service = iid.rpartition("/")[0]
            seen = reported.get(host, {}).get(iid, {})
            instances.append({
                "instance": iid, "service": service, "peer": host,
                "state": seen.get("state", PENDING), "health": seen.get("health", "none"),
                "current": seen.get("digest") == digests.get(service)})
        return 200, {"epoch": state.plan_epoch, "strategy": plan.get("strategy", ""),
                     "instances": instances, "unplaced": plan.get("unplaced", []),
                     "unplaceable": plan.get("unplaceable", {})}

    async def status(_: Request) -> tuple[int, Any]:
        return 200, status_document(peer)

    return {("POST", "/v1/services"): deploy, ("DELETE", "/v1/services/{name}"): undeploy,
            ("GET", "/v1/services"): services, ("GET", "/v1/placement"): placement,
            ("GET", "/v1/status"): status}


def status_document(peer: PeerDaemon) -> dict[str, Any]:
    """``GET /v1/status``: this peer's view of the control plane. Answered
    even while its Raft node is down (role ``none``). ``leader`` is null
    when this peer has not heard a leader recently; ``no_leader_since``
    (seconds since the epoch, or null) says since when, ``last_leader``
    which one it last heard; ``cluster_epoch`` counts operator recoveries
    (`nanomesh.consensus.recovery`)."""
    assert peer.mesh is not None
    watch = peer.mesh.roles.leader_watch
    n = peer.consensus
    if n is None or not n.running:
        raft: dict[str, Any] = {"leader": None, "term": 0, "voters": [], "epoch": None,
                                "revision": None, "role": "none"}
    else:
        raft = {"leader": n.leader, "term": n.term, "voters": sorted(n.voters),
                "epoch": n.state.plan_epoch, "revision": n.state.revision,
                "role": n.status.role.value}
    return {**raft, "no_leader_since": watch.since, "last_leader": watch.last_leader,
            "cluster_epoch": peer.mesh.roles.epoch, "peer": peer.config.name}


def _reported_instances(peer: PeerDaemon) -> dict[str, dict[str, dict[str, Any]]]:
    """peer name -> instance id -> status, as each peer gossips it."""
    assert peer.core is not None
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for m in peer.core.members():
        if m.state not in (MemberState.ALIVE, MemberState.SUSPECT):
            continue  # its last report is stale: show "pending" until re-placed
        section = (m.profile or {}).get(INSTANCES_KEY)
        if isinstance(section, dict):
            out[m.name] = {k: v for k, v in section.items() if isinstance(v, dict)}
    return out


async def _consensus_call(call: Callable[[], Awaitable[Any]]) -> Any:
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
    except ConsensusError as exc:
        raise HttpError(503, f"consensus: {exc}") from None
