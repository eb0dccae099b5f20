"""The HTTP JSON API's read-only membership endpoints.

Shapes (a contract shared with the CLI's ``--json`` output):

- ``GET /v1/members``: array of member objects, sorted by name:
  ``{"name", "address": "IP:PORT", "state": "alive|suspect|dead|left",
  "incarnation", "profile_version", "profile": {...} | null}``
- ``GET /v1/self``: this peer's member object, plus ``"api": "IP:PORT"``.
- ``GET /v1/health``: ``{"status": "ok|degraded|leaving", "problems": [str],
  "name", "members": {state: count}, "awareness", "uptime_s", "dropped":
  {reason: count}, "raft_dropped": {reason: count}, "bytes_in", "bytes_out",
  "counters": {...}, "api": {"open", "refused_per_client", "refused_full",
  "evicted", "head_timeouts", "body_timeouts", "busy"}}``. "degraded" (still
  200: the peer serves) when its data disk fails (`nanomesh.disk`), each
  problem one plain sentence in ``problems``; ``api``: what the HTTP server
  refused or cut off since start (`nanomesh.daemon.http_limits.ServerStats`).
  Served from reserved request slots, so it answers while other clients hold
  the API busy.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from nanomesh.daemon.http import Handler, Request
from nanomesh.gossip.members import Member

if TYPE_CHECKING:
    from nanomesh.daemon.peer import PeerDaemon


def member_json(m: Member) -> dict[str, Any]:
    return {
        "name": m.name,
        "address": f"{m.addr[0]}:{m.addr[1]}",
        "state": m.state.label,
        "incarnation": m.incarnation,
        "profile_version": m.held_version,
        "profile": m.profile,
    }


def api_routes(peer: PeerDaemon) -> dict[tuple[str, str], Handler]:
    def core() -> Any:
        assert peer.core is not None
        return peer.core

    async def members(_: Request) -> tuple[int, Any]:
        return 200, [member_json(m) for m in core().members()]

    async def self_(_: Request) -> tuple[int, Any]:
        body = member_json(core().me)
        body["api"] = f"{peer.config.bind[0]}:{peer.config.api_port}"
        return 200, body

    async def health(_: Request) -> tuple[int, Any]:
        c = core()
        states = Counter(m.state.label for m in c.members())
        problems = peer.disk_problems()
        return 200, {
            "status": "leaving" if peer._stopping else "degraded" if problems else "ok",
            "problems": problems,
            "name": c.name,
            "members": dict(sorted(states.items())),
            "awareness": c.awareness.score,
            "uptime_s": round(time.time() - peer.started_wall, 3),
            "dropped": dict(peer.dropped),
            "raft_dropped": _raft_dropped(peer),
            "bytes_in": peer.bytes_in,
            "bytes_out": peer.bytes_out,
            "counters": dataclasses.asdict(c.stats),
            "api": peer.api_stats.to_dict(),
        }

    return {("GET", "/v1/members"): members, ("GET", "/v1/self"): self_,
            ("GET", "/v1/health"): health}


def _raft_dropped(peer: PeerDaemon) -> dict[str, int]:
    """Raft connections this peer's current consensus node closed, by reason
    (`nanomesh.consensus._transport`; restarts with each role change)."""
    node = peer.mesh.consensus if peer.mesh is not None else None
    return dict(node.dropped) if node is not None else {}
