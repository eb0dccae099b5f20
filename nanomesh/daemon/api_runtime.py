"""The HTTP API of the nanoservice runtime: idle/activate, state blobs, logs.

- ``POST /v1/services/{name}/activate`` and ``POST /v1/services/{name}/idle``
  (management token): commit the service's ``mode``. Every hosting peer then
  starts its instances, or stops them and keeps them prepared (``idle``).
  ``{"name", "mode", "revision", "changed"}``.
- ``PUT /v1/instances/{service}/{index}/state`` (raw bytes, at most
  :data:`MAX_STATE_BYTES`): a nanoservice hands the runtime its state blob
  (``nanomesh.sdk.service.NanoService.save_state``). Authorised by the
  instance's own token (``NANOMESH_INSTANCE_TOKEN``, known only to the peer
  that runs it) or the management token. The blob is committed with the
  service (Raft), so it survives the instance, its peer and a leader change,
  and goes into a seed file (``nanomesh undeploy --save``).
- ``GET /v1/instances/{service}/{index}/state``: the blob (404 if none), for
  the same callers; a restored instance reads it at start.
- ``GET /v1/instances/{service}/{index}/logs?lines=N`` (management token; the
  logs may hold anything the service printed): the last ``N`` lines (default
  200, at most 10,000) of the instance's log on *this* peer, rotated files
  included, up to its last whole line: ``{"instance", "peer", "lines",
  "cursor"}``. ``nanomesh logs`` asks the peer that hosts the instance.
  With ``?after=CURSOR`` (a ``cursor`` from an earlier reply): the whole
  lines written since, at most 256 KiB of them, and the next ``cursor``
  (``nanomesh logs -f`` polls this), plus ``"gap": true`` if the cursor's
  file was rotated away meanwhile and some lines are lost
  (`nanomesh.runtime.logs.read_log_after`).

Each ``/v1/instances/{service}/{index}/...`` route is also served with the
instance id as one escaped path segment (``/v1/instances/counter%2F0/state``).
"""

from __future__ import annotations

import base64
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from nanomesh.daemon.api_auth import Access
from nanomesh.daemon.api_mesh import consensus_call
from nanomesh.daemon.http import Handler, HttpError, RawBody, Request
from nanomesh.ids import service_of, split_instance_id
from nanomesh.runtime.logs import LogCursor, log_files, log_tail, read_log_after
from nanomesh.runtime.manifest import MAX_STATE_BYTES

DEFAULT_LOG_LINES = 200
MAX_LOG_LINES = 10_000


@dataclass(frozen=True)
class RuntimeContext:
    """What the runtime routes use."""

    name: str
    """This peer's name."""
    log_dir: Path
    """Where this peer's instances log (`nanomesh.runtime.logs`)."""
    access: Access


def runtime_routes(ctx: RuntimeContext) -> dict[tuple[str, str], Handler]:
    def mode_route(mode: str) -> Handler:
        async def handler(request: Request) -> tuple[int, Any]:
            node = ctx.access.require_management_token(request)
            name = request.params["name"]
            value = None if mode == "active" else mode
            outcome = await consensus_call(lambda: node.patch_service(name, "mode", value))
            if not outcome.applied:
                raise HttpError(404, f"no service named {name!r}")
            return 200, {"name": name, "mode": mode, "revision": outcome.revision,
                         "changed": outcome.changed}
        return handler

    def instance_of(request: Request) -> str:
        params = request.params
        iid = params["iid"] if "iid" in params else f"{params['service']}/{params['index']}"
        try:
            split_instance_id(iid)
        except ValueError as exc:
            raise HttpError(400, str(exc)) from None
        return iid

    async def put_state(request: Request) -> tuple[int, Any]:
        iid = instance_of(request)
        node = ctx.access.authorize_instance(request, iid)
        blob = request.body
        if len(blob) > MAX_STATE_BYTES:
            raise HttpError(413, f"a state blob is at most {MAX_STATE_BYTES} bytes, "
                            f"got {len(blob)}")
        service = service_of(iid)
        encoded = base64.b64encode(blob).decode("ascii")
        outcome = await consensus_call(lambda: node.patch_service(service, "state", encoded))
        if not outcome.applied:
            raise HttpError(404, f"no service named {service!r}")
        return 200, {"instance": iid, "bytes": len(blob), "revision": outcome.revision}

    async def get_state(request: Request) -> tuple[int, Any]:
        iid = instance_of(request)
        node = ctx.access.authorize_instance(request, iid)
        service = node.state.services.get(service_of(iid))
        encoded = service.get("state") if service is not None else None
        if not isinstance(encoded, str):
            raise HttpError(404, f"no state saved for {service_of(iid)!r}")
        return 200, RawBody(base64.b64decode(encoded), "application/octet-stream")

    async def logs(request: Request) -> tuple[int, Any]:
        iid = instance_of(request)
        ctx.access.require_management_token(request, f"the log of {iid}")
        service, index = split_instance_id(iid)
        reply: dict[str, Any] = {"instance": iid, "peer": ctx.name}
        after = _after_param(request.query)
        if after is not None:
            text, cursor, gap = await trio.to_thread.run_sync(
                read_log_after, ctx.log_dir, service, index, after)
            if cursor == after and not log_files(ctx.log_dir, service, index):
                raise HttpError(404, f"no log of {iid} on peer {ctx.name}")
            return 200, {**reply, "lines": text, "cursor": str(cursor), "gap": gap}
        lines = _lines_param(request.query)
        text, tail_cursor = await trio.to_thread.run_sync(log_tail, ctx.log_dir, service,
                                                          index, lines)
        if not text and tail_cursor is None:
            raise HttpError(404, f"no log of {iid} on peer {ctx.name}")
        return 200, {**reply, "lines": text,
                     "cursor": None if tail_cursor is None else str(tail_cursor)}

    return {("POST", "/v1/services/{name}/activate"): mode_route("active"),
            ("POST", "/v1/services/{name}/idle"): mode_route("idle"),
            ("PUT", "/v1/instances/{service}/{index}/state"): put_state,
            ("GET", "/v1/instances/{service}/{index}/state"): get_state,
            ("GET", "/v1/instances/{service}/{index}/logs"): logs,
            # The same with the instance id as one escaped segment (counter%2F0).
            ("PUT", "/v1/instances/{iid}/state"): put_state,
            ("GET", "/v1/instances/{iid}/state"): get_state,
            ("GET", "/v1/instances/{iid}/logs"): logs}


def _after_param(query: str) -> LogCursor | None:
    values = urllib.parse.parse_qs(query).get("after")
    if not values:
        return None
    try:
        return LogCursor.parse(values[-1])
    except ValueError as exc:
        raise HttpError(400, str(exc)) from None


def _lines_param(query: str) -> int:
    values = urllib.parse.parse_qs(query).get("lines", [str(DEFAULT_LOG_LINES)])
    try:
        lines = int(values[-1])
    except ValueError:
        raise HttpError(400, f"lines must be an integer, got {values[-1]!r}") from None
    if not 1 <= lines <= MAX_LOG_LINES:
        raise HttpError(400, f"lines must be 1-{MAX_LOG_LINES}")
    return lines
