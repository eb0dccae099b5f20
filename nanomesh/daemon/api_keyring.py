"""Live key rotation across the mesh, as ``serf keys`` does it.

``POST /v1/keyring/{install|use|remove}`` (management token; the body is a
`KeyOp` sealed under the cluster key, so a new key never crosses the LAN in
clear) applies the operation on this peer and on every alive member, and
answers with each member's outcome. ``GET /v1/keyring`` (management token)
lists, per member, the fingerprints of its keys and its primary. Peers reach
each other on ``/v1/internal/keyring`` with calls signed under a key derived
from the keyring (`nanomesh.security.auth.internal_token`).

Each operation carries a random op id and its issue time, sealed with it,
and a peer refuses one outside `nanomesh.security.keys.KEY_OP_WINDOW` of its clock,
one whose id it has already seen, and one sent to another action's URL: a
recorded body (HTTP is not encrypted) cannot be replayed, on either route.
Before ``use`` the receiving peer asks every alive member for its keys and
refuses (409) if one lacks the key; before ``remove``, every member that has
not left (alive, suspect or dead), refusing unless all answered with another
primary: a member down during ``use`` would otherwise come back sealing
with a removed key and never rejoin. A ``force`` sealed in the op skips
both checks.

The rotation order is the operator's (install, use, remove, each
everywhere before the next), as in Serf: gossip, Raft and the internal API
accept any installed key and seal with the primary, so at every step each
pair of peers shares a key. Each peer writes its keyring to its data
directory before it answers: a peer restarted after a rotation comes back
with the keys it had (`nanomesh.security.keys`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from nanomesh.config import api_address
from nanomesh.daemon.api_auth import Access
from nanomesh.daemon.http import Handler, HttpError, Request
from nanomesh.daemon.peer_calls import PeerCalls
from nanomesh.daemon.views import Members
from nanomesh.errors import ConfigError, RemoteProtocolError
from nanomesh.security.keys import (
    KEY_ACTIONS,
    KeyOp,
    KeyOpRefused,
    SeenKeyOps,
    apply_key_op,
    fingerprint,
    remove_blockers,
    use_blockers,
    write_key_file,
)
from nanomesh.transport.apiclient import ApiError
from nanomesh.wire import Keyring, MemberState

log = logging.getLogger("nanomesh.security.keys")

FAN_OUT_TIMEOUT = 10.0
"""Seconds a member may take to apply a key operation or list its keys."""


@dataclass(frozen=True)
class KeyringContext:
    """What the key-rotation routes use."""

    name: str
    """This peer's name."""
    keyring: Keyring
    """The live keyring, replaced in place by an operation."""
    key_path: Path | None
    """The key file, rewritten on a live key rotation (None: not kept)."""
    access: Access
    members: Members
    calls: PeerCalls


def keyring_routes(ctx: KeyringContext) -> dict[tuple[str, str], Handler]:
    seen = SeenKeyOps()

    def open_op(body: bytes, url_action: str | None) -> KeyOp:
        """The sealed operation, if it is authentic, fresh and not a replay
        (`nanomesh.security.keys.SeenKeyOps`); HttpError otherwise."""
        try:
            op = KeyOp.open(ctx.keyring, body)
        except RemoteProtocolError as exc:
            raise HttpError(400, f"key operation refused: {exc} (seal it with a key this "
                            "mesh has: --key-file)") from None
        try:
            seen.admit(op, time.time(), url_action)
        except KeyOpRefused as exc:
            log.warning("keyring: refused a %s operation: %s", op.action, exc)
            status = 409 if exc.reason in ("replay", "busy") else 400
            raise HttpError(status, f"key operation refused: {exc}") from None
        return op

    def apply_here(op: KeyOp) -> dict[str, Any]:
        """Apply and persist one operation on this peer."""
        candidate = Keyring(ctx.keyring.keys)
        try:
            changed = apply_key_op(candidate, op)
            if changed and ctx.key_path is not None:
                write_key_file(ctx.key_path, candidate)  # durable before it takes effect
        except ConfigError as exc:
            raise HttpError(409, str(exc)) from None
        ctx.keyring.replace_keys(candidate)
        if changed:
            log.warning("keyring: %s %s; keys now %s (primary first)", op.action,
                        op.target, _fingerprints(ctx.keyring))
        return {"ok": True, "changed": changed, "keys": _fingerprints(ctx.keyring)}

    async def refuse_cut_offs(op: KeyOp) -> None:
        """409 if `op` would cut a member off (`use_blockers`,
        `remove_blockers`), unless it was sealed with force."""
        if op.force or op.action == "install":
            return
        states = ((MemberState.ALIVE,) if op.action == "use" else
                  (MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD))
        replies = await _fan_out(ctx, "GET", None, states)
        replies[ctx.name] = {"ok": True, "keys": _fingerprints(ctx.keyring)}
        blockers = (use_blockers if op.action == "use" else remove_blockers)(
            op.target, replies)
        if blockers:
            why = ("needs the key installed on every alive member first"
                   if op.action == "use" else
                   "needs every member that has not left to use another primary first")
            raise HttpError(409, f"{op.action} {op.target} refused: it {why}; not ready: "
                            f"{'; '.join(blockers)}. Bring them back (or install/use the "
                            "new key on them) and run the command again, or pass --force "
                            "to cut them off")

    async def operate(request: Request) -> tuple[int, Any]:
        ctx.access.require_management_token(request)
        action = request.params["action"]
        if action not in KEY_ACTIONS:
            raise HttpError(404, f"no key action {action!r}; one of {', '.join(KEY_ACTIONS)}")
        op = open_op(request.body, action)
        await refuse_cut_offs(op)
        results: dict[str, Any] = {ctx.name: apply_here(op)}
        results.update(await _fan_out(ctx, "POST", request.body))
        failed = sorted(n for n, r in results.items() if not r.get("ok"))
        return 200, {"action": action, "members": results, "failed": failed}

    async def list_keys(request: Request) -> tuple[int, Any]:
        ctx.access.require_management_token(request)
        results: dict[str, Any] = {ctx.name: {"ok": True, "keys": _fingerprints(ctx.keyring)}}
        results.update(await _fan_out(ctx, "GET", None))
        return 200, {"members": results, "summary": _summary(results)}

    async def internal(request: Request) -> tuple[int, Any]:
        ctx.access.require_member(request)
        if request.method == "GET":
            return 200, {"ok": True, "keys": _fingerprints(ctx.keyring)}
        return 200, apply_here(open_op(request.body, None))

    return {("POST", "/v1/keyring/{action}"): operate,
            ("GET", "/v1/keyring"): list_keys,
            ("POST", "/v1/internal/keyring"): internal,
            ("GET", "/v1/internal/keyring"): internal}


def _fingerprints(keyring: Keyring) -> list[str]:
    return [fingerprint(k) for k in keyring.keys]


def _summary(results: dict[str, Any]) -> dict[str, dict[str, int]]:
    """fingerprint -> how many members hold it and have it as primary."""
    out: dict[str, dict[str, int]] = {}
    for result in results.values():
        keys = result.get("keys") or []
        for i, fp in enumerate(keys):
            entry = out.setdefault(fp, {"installed": 0, "primary": 0})
            entry["installed"] += 1
            entry["primary"] += i == 0
    return out


async def _fan_out(ctx: KeyringContext, method: str, body: bytes | None,
                   states: tuple[MemberState, ...] = (MemberState.ALIVE,)
                   ) -> dict[str, Any]:
    """The same call on every other member in `states` (alive ones by
    default), concurrently: name -> reply (or ``{"ok": False, "error": ...}``)."""
    members = [m for m in ctx.members() if m.name != ctx.name and m.state in states]
    results: dict[str, Any] = {}
    path = "/v1/internal/keyring"

    async def one(name: str, api: str) -> None:
        try:
            results[name] = await ctx.calls.call_json(method, api, path, body,
                                                      timeout=FAN_OUT_TIMEOUT)
        except ApiError as exc:
            results[name] = {"ok": False, "error": str(exc)}

    with trio.move_on_after(FAN_OUT_TIMEOUT + 1):
        async with trio.open_nursery() as nursery:
            for m in members:
                nursery.start_soon(one, m.name, api_address(m.profile, m.addr[0]))
    for m in members:
        results.setdefault(m.name, {"ok": False, "error": "no answer in time"})
    return results
