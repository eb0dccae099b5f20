"""The peer-to-peer routes of the Raft promotion protocol
(`nanomesh.consensus.role_manager`), called by other peers' control loops
(`nanomesh.daemon.control_loop.RoleCalls`), never by people:

- ``POST /v1/internal/raft/promote`` ``{"voters": [raft address, ...]}``:
  become a joining voter of that configuration; ``{"ok": bool}``.
- ``POST /v1/internal/raft/remove`` ``{"addr": raft address}``: (as the
  leader, or a voter) remove that voter; ``{"ok": bool}``.

Both need a token signed under a key derived from the cluster key
(`nanomesh.daemon.api_auth.Access.require_member`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from nanomesh.daemon.api_auth import Access
from nanomesh.daemon.http import Handler, HttpError, Request


class PromotionTarget(Protocol):
    """What the routes ask of this peer's Raft role manager."""

    async def become_joining_voter(self, voters: Iterable[str]) -> bool: ...

    async def handle_remove(self, raft_addr: str) -> bool: ...


def raft_routes(roles: PromotionTarget, access: Access) -> dict[tuple[str, str], Handler]:
    async def promote(request: Request) -> tuple[int, Any]:
        access.require_member(request)
        body = request.json()
        voters = body.get("voters") if isinstance(body, dict) else None
        if not isinstance(voters, list) or not all(isinstance(v, str) for v in voters):
            raise HttpError(400, "voters must be a list of raft addresses")
        return 200, {"ok": await roles.become_joining_voter(voters)}

    async def remove(request: Request) -> tuple[int, Any]:
        access.require_member(request)
        body = request.json()
        addr = body.get("addr") if isinstance(body, dict) else None
        if not isinstance(addr, str):
            raise HttpError(400, "addr must be a raft address")
        return 200, {"ok": await roles.handle_remove(addr)}

    return {("POST", "/v1/internal/raft/promote"): promote,
            ("POST", "/v1/internal/raft/remove"): remove}
