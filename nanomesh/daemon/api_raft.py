"""The peer-to-peer routes of the Raft promotion protocol
(`nanomesh.consensus.role_manager`), called by other peers' control loops
(`nanomesh.daemon.control_loop.RoleCalls`), never by people:

- ``POST /v1/internal/raft/promote`` ``{"voters": [raft address, ...]}``:
  become a joining voter of that configuration; ``{"ok": bool}``.
- ``POST /v1/internal/raft/remove`` ``{"addr": raft address}``: (as the
  leader, or a voter) remove that voter; ``{"ok": bool}``.

and of learners following the committed state without a Raft node
(`nanomesh.consensus.follower`, which owns both formats):

- ``POST /v1/internal/raft/state`` ``{"have": [cluster_epoch, revision] | null}``:
  this voter's committed state (`state_reply`; ``"state": null`` when the
  asker holds that version already); 503 on a peer that is no voter or
  hears no leader;
- ``POST /v1/internal/raft/command`` ``{"op", "args", "timeout"}``: a write
  a learner forwards, run on this voter's node (`run_command`).

`FollowCalls` is the learners' side: the daemon's `FollowTransport`.

All need a token signed under a key derived from the cluster key
(`nanomesh.daemon.api_auth.Access.require_member`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from nanomesh.config import api_address
from nanomesh.consensus import ConsensusError, ConsensusNode
from nanomesh.consensus.follow_core import (
    Version,
    announced_version,
    gossiped_leader,
    pull_sources,
)
from nanomesh.consensus.follower import run_command, state_reply
from nanomesh.consensus.role_manager import Replica
from nanomesh.daemon.api_auth import Access
from nanomesh.daemon.http import Handler, HttpError, Request
from nanomesh.daemon.peer_calls import PeerCalls
from nanomesh.daemon.views import Members
from nanomesh.transport.apiclient import ApiError
from nanomesh.transport.httpio import MAX_HTTP_MESSAGE
from nanomesh.wire import MemberState

MAX_STATE_REPLY = 64 << 20
"""Largest committed state a learner accepts in one pull, in bytes (64 MiB):
far above a real mesh's (services with 64 KiB state blobs each, the plan);
the peer API's usual 1 MiB reply limit would cut a state with a few
dozen saved states."""
PULL_TIMEOUT = 5.0
"""Seconds one state pull or forwarded write may wait for the voter's
answer beyond the write's own timeout (a voter that accepts and never answers)."""


class PromotionTarget(Protocol):
    """What the routes ask of this peer's Raft role manager."""

    async def become_joining_voter(self, voters: Iterable[str]) -> bool: ...

    async def handle_remove(self, raft_addr: str) -> bool: ...

    @property
    def node(self) -> Replica | None: ...

    @property
    def epoch(self) -> int: ...


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

    def voter() -> ConsensusNode:
        node = roles.node
        if not isinstance(node, ConsensusNode) or not node.running:
            raise HttpError(503, "this peer is no Raft voter")
        return node

    async def state(request: Request) -> tuple[int, Any]:
        access.require_member(request)
        body = request.json()
        have = body.get("have") if isinstance(body, dict) else None
        node = voter()
        try:
            return 200, state_reply(node.state, node.status, roles.epoch, have)
        except ConsensusError as exc:
            raise HttpError(503, str(exc)) from None

    async def command(request: Request) -> tuple[int, Any]:
        access.require_member(request)
        body = request.json()
        node = voter()
        try:
            return 200, await run_command(node, roles.epoch, body)
        except ValueError as exc:
            raise HttpError(400, str(exc)) from None

    return {("POST", "/v1/internal/raft/promote"): promote,
            ("POST", "/v1/internal/raft/remove"): remove,
            ("POST", "/v1/internal/raft/state"): state,
            ("POST", "/v1/internal/raft/command"): command}


class FollowCalls:
    """A learner's way to the voters (`nanomesh.consensus.follower.FollowTransport`):
    whom to ask from gossip (the voters' profiles), the asks as signed
    peer-to-peer calls. Sources are the voters' API addresses."""

    def __init__(self, members: Members, calls: PeerCalls) -> None:
        self._members = members
        self._calls = calls

    def _sections(self) -> list[Any]:
        return [(m.profile or {}).get("raft") for m in self._members()
                if m.state in (MemberState.ALIVE, MemberState.SUSPECT)]

    def sources(self) -> list[str]:
        apis = {}
        for m in self._members():
            raft = (m.profile or {}).get("raft")
            if m.state in (MemberState.ALIVE, MemberState.SUSPECT) and isinstance(raft, dict):
                apis[raft.get("addr")] = api_address(m.profile, m.addr[0])
        return [apis[a] for a in pull_sources(self._sections()) if a in apis]

    def announced(self) -> Version | None:
        return announced_version(self._sections())

    def leader(self) -> tuple[str, int, frozenset[str]] | None:
        return gossiped_leader(self._sections())

    async def pull(self, source: str, have: Version | None) -> Any:
        return await self._post(source, "/v1/internal/raft/state",
                                {"have": None if have is None else list(have)}, PULL_TIMEOUT,
                                max_reply=MAX_STATE_REPLY)

    async def command(self, source: str, request: Mapping[str, Any]) -> Any:
        return await self._post(source, "/v1/internal/raft/command", request,
                                float(request.get("timeout", 0)) + PULL_TIMEOUT)

    async def _post(self, api: str, path: str, body: Any, timeout: float,
                    max_reply: int = MAX_HTTP_MESSAGE) -> Any:
        try:
            return await self._calls.call_json("POST", api, path, json.dumps(body).encode(),
                                               timeout=timeout, content_type="application/json",
                                               max_reply=max_reply)
        except ApiError as exc:
            raise ConsensusError(str(exc)) from None
