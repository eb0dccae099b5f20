"""The HTTP API's name-resolution endpoint.

``GET /v1/resolve/{name}[?protocol=coap|zmq|http][&all=1]`` ->
``{"service": name, "endpoints": [Endpoint.to_dict(), ...]}``, best first
(`nanomesh.naming.resolve`'s order, this peer's own instances first among
equals). ``all=1`` also lists instances whose health checks fail.

A name that is not in the committed desired state is a 404, even if some
peer still gossips a stopping instance of it. While this peer may be behind
the committed state (its consensus node is not running, or knows no leader
yet: a peer that just started or restarted, a learner before its first
pull), names that live peers gossip instances of count too, and a name
known to neither is a 503 ("catching up": ask again or ask another peer),
never a 404 that a client would take for "undeployed".
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from nanomesh.consensus.role_manager import Replica
from nanomesh.daemon.http import Handler, HttpError, Request
from nanomesh.daemon.views import Members, NodeSource
from nanomesh.gossip.members import Member
from nanomesh.naming import PROTOCOLS, known_services, resolve

_TRUE = ("1", "true", "yes")


@dataclass(frozen=True)
class NamingContext:
    """What name resolution reads: the gossip view and the committed state."""

    name: str
    """This peer's name (its own instances come first among equals)."""
    members: Members
    consensus: NodeSource


def naming_routes(ctx: NamingContext) -> dict[tuple[str, str], Handler]:
    async def resolve_(request: Request) -> tuple[int, Any]:
        name = request.params["name"]
        query = urllib.parse.parse_qs(request.query)
        protocol = _one(query, "protocol")
        if protocol is not None and protocol not in PROTOCOLS:
            raise HttpError(400, f"protocol must be one of {', '.join(PROTOCOLS)}, "
                            f"not {protocol!r}")
        include_unhealthy = (_one(query, "all") or "0").lower() in _TRUE
        members = ctx.members()
        node = ctx.consensus()
        if name not in service_names(node, members):
            if catching_up(node):
                raise HttpError(503, f"this peer is catching up with the mesh's committed "
                                f"state and does not know {name!r} yet; try again shortly "
                                "or ask another peer")
            raise HttpError(404, f"no service named {name!r} is deployed "
                            "(see `nanomesh services`)")
        endpoints = resolve(members, name, protocol=protocol, me=ctx.name,
                            include_unhealthy=include_unhealthy)
        return 200, {"service": name, "endpoints": [e.to_dict() for e in endpoints]}

    return {("GET", "/v1/resolve/{name}"): resolve_}


def service_names(node: Replica | None, members: list[Member]) -> Collection[str]:
    """The services this peer knows to exist: those in its committed desired
    state; while it may be behind (`catching_up`), also those that some live
    peer gossips an instance of. Used by the resolve endpoint and the CoAP
    gateway to tell "no such service" (404) from "no healthy instance" (503)."""
    if not catching_up(node):
        assert node is not None
        return node.state.services.keys()
    known = set(known_services(members))
    if node is not None and node.running:
        known |= node.state.services.keys()
    return known


def catching_up(node: Replica | None) -> bool:
    """Whether this peer's committed state may be behind the mesh's: no
    running consensus node, or one that knows no leader yet."""
    return node is None or not node.running or node.leader is None


def service_visibility(node: Replica | None, service: str) -> str:
    """``public`` or ``private`` (`nanomesh.runtime.manifest.VISIBILITIES`) from the
    committed desired state; ``private`` while it is unknown (the secure default)."""
    from nanomesh.runtime.manifest import visibility_of
    doc = node.state.services.get(service) if node is not None and node.running else None
    return visibility_of(doc)


def _one(query: dict[str, list[str]], key: str) -> str | None:
    values = query.get(key)
    if not values:
        return None
    if len(values) > 1:
        raise HttpError(400, f"query parameter {key!r} given {len(values)} times")
    return values[0]
