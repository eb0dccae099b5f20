"""The HTTP JSON API's read-only membership endpoints.

Shapes (a contract shared with the CLI's ``--json`` output):

- ``GET /v1/members``: array of member objects, sorted by name:
  ``{"name", "address": "IP:PORT", "state": "alive|suspect|dead|left",
  "incarnation", "profile_version", "profile": {...} | null, "nanomesh":
  VERSION | null, "incompatible": [why]}``: ``incompatible`` lists why
  the member cannot share this peer's mesh (`nanomesh.versions`), empty when
  it can or its profile has not arrived
- ``GET /v1/self``: this peer's member object, plus ``"api": "IP:PORT"``.
- ``GET /v1/health``: ``{"status": "ok|degraded|leaving", "problems": [str],
  "name", "members": {state: count}, "awareness", "uptime_s", "dropped":
  {reason: count}, "raft_dropped": {reason: count}, "bytes_in", "bytes_out",
  "counters": {...}, "profile": {"quiet", "live", "held", "static", "fell", "carried"},
  "api": {"open", "refused_per_client", "refused_full",
  "evicted", "head_timeouts", "body_timeouts", "busy", "streams",
  "streams_dropped"}}``. "degraded" (still
  200: the peer serves) when its data disk fails (`nanomesh.disk`), each
  problem one plain sentence in ``problems``; ``api``: what the HTTP server
  refused or cut off since start (`nanomesh.daemon.http_limits.ServerStats`).
  Served from reserved request slots, so it answers while other clients hold
  the API busy. ``profile``: what became of the live samples of our profile
  (`nanomesh.discovery.publish.PublishStats`); ``counters.profiles_published``
  counts every publication, whatever its reason.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nanomesh.consensus.role_manager import Replica
from nanomesh.daemon.http import Handler, Request
from nanomesh.daemon.http_limits import ServerStats
from nanomesh.daemon.views import Traffic
from nanomesh.discovery.publish import PublishStats
from nanomesh.gossip.machine import Membership
from nanomesh.gossip.members import Member
from nanomesh.versions import MalformedVersions, speaks_from_profile, verdict


@dataclass(frozen=True)
class HealthContext:
    """What the membership and health routes read."""

    core: Membership
    """The gossip view (members, our own entry, awareness, counters)."""
    api: str
    """This peer's API address, ``IP:PORT``."""
    started_wall: float
    """When the daemon started (seconds since the epoch)."""
    disk_problems: Callable[[], list[str]]
    stopping: Callable[[], bool]
    """True once a graceful leave began."""
    consensus: Callable[[], Replica | None]
    """For the Raft connections its node dropped."""
    traffic: Traffic
    api_stats: ServerStats
    profile_stats: PublishStats
    """What the profile publisher decided about our live samples."""


def member_json(m: Member) -> dict[str, Any]:
    return {
        "name": m.name,
        "address": f"{m.addr[0]}:{m.addr[1]}",
        "state": m.state.label,
        "incarnation": m.incarnation,
        "profile_version": m.held_version,
        "profile": m.profile,
        # The peer's nanomesh version and why it cannot share this peer's
        # mesh (`nanomesh.versions`; [] while compatible or not yet known).
        "nanomesh": _version_of(m.profile),
        "incompatible": verdict(m.profile),
    }


def _version_of(profile: dict[str, Any] | None) -> str | None:
    try:
        speaks = speaks_from_profile(profile)
    except MalformedVersions:
        return None
    return None if speaks is None else speaks.version


def api_routes(ctx: HealthContext) -> dict[tuple[str, str], Handler]:
    core = ctx.core

    async def members(_: Request) -> tuple[int, Any]:
        return 200, [member_json(m) for m in core.members()]

    async def self_(_: Request) -> tuple[int, Any]:
        body = member_json(core.me)
        body["api"] = ctx.api
        return 200, body

    async def health(_: Request) -> tuple[int, Any]:
        states = Counter(m.state.label for m in core.members())
        problems = ctx.disk_problems()
        return 200, {
            "status": "leaving" if ctx.stopping() else "degraded" if problems else "ok",
            "problems": problems,
            "name": core.name,
            "members": dict(sorted(states.items())),
            "awareness": core.awareness.score,
            "uptime_s": round(time.time() - ctx.started_wall, 3),
            "dropped": dict(ctx.traffic.dropped),
            "raft_dropped": _raft_dropped(ctx.consensus()),
            "bytes_in": ctx.traffic.bytes_in,
            "bytes_out": ctx.traffic.bytes_out,
            "counters": dataclasses.asdict(core.stats),
            "profile": dataclasses.asdict(ctx.profile_stats),
            "api": ctx.api_stats.to_dict(),
        }

    return {("GET", "/v1/members"): members, ("GET", "/v1/self"): self_,
            ("GET", "/v1/health"): health}


def _raft_dropped(node: Replica | None) -> dict[str, int]:
    """Raft connections this peer's current consensus node closed, by reason
    (`nanomesh.consensus._transport`; restarts with each role change)."""
    return dict(node.dropped) if node is not None else {}
