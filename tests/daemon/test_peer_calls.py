"""The daemon's one peer-to-peer client (`nanomesh.daemon.peer_calls`)
against the daemon's own HTTP server and `Access`: a signed call is admitted
as a member call (once), and failures read as `nanomesh.transport.apiclient` words them."""

from __future__ import annotations

import os
from typing import Any

import pytest
import trio

from nanomesh.daemon.api_auth import Access
from nanomesh.daemon.http import HttpError, Request, serve_http
from nanomesh.daemon.peer_calls import PeerCalls
from nanomesh.security.auth import InternalCalls
from nanomesh.transport.apiclient import ApiError
from nanomesh.wire import Keyring


def _access(keyring: Keyring) -> Access:
    return Access(keyring, InternalCalls(), lambda: None, lambda iid: None)


async def _serve(nursery: trio.Nursery, keyring: Keyring) -> str:
    access = _access(keyring)

    async def internal(request: Request) -> tuple[int, Any]:
        access.require_member(request)
        return 200, {"ok": True, "echo": request.body.decode()}

    async def refuse(_: Request) -> tuple[int, Any]:
        raise HttpError(409, "not now")

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    await nursery.start(serve_http, {("POST", "/v1/internal/x"): internal,
                                     ("GET", "/v1/internal/refused"): refuse}, listeners)
    return f"127.0.0.1:{port}"


async def test_signed_call_is_admitted_as_a_member() -> None:
    keyring = Keyring([os.urandom(32)])
    async with trio.open_nursery() as nursery:
        api = await _serve(nursery, keyring)
        reply = await PeerCalls(keyring).call_json("POST", api, "/v1/internal/x", b"hi",
                                                   timeout=5.0)
        assert reply == {"ok": True, "echo": "hi"}
        nursery.cancel_scope.cancel()


async def test_a_call_signed_with_another_key_is_a_401_api_error() -> None:
    async with trio.open_nursery() as nursery:
        api = await _serve(nursery, Keyring([os.urandom(32)]))
        with pytest.raises(ApiError, match=r"/v1/internal/x: HTTP 401 internal calls need"):
            await PeerCalls(Keyring([os.urandom(32)])).call_json(
                "POST", api, "/v1/internal/x", b"", timeout=5.0)
        nursery.cancel_scope.cancel()


async def test_an_error_reply_carries_the_peers_message() -> None:
    keyring = Keyring([os.urandom(32)])
    async with trio.open_nursery() as nursery:
        api = await _serve(nursery, keyring)
        with pytest.raises(ApiError, match=rf"^http://{api}/v1/internal/refused: HTTP 409 "
                                           "not now$"):
            await PeerCalls(keyring).call("GET", api, "/v1/internal/refused", None,
                                          timeout=5.0)
        nursery.cancel_scope.cancel()


async def test_an_unreachable_peer_is_an_api_error() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    await listeners[0].aclose()  # nobody listens there now
    with pytest.raises(ApiError, match=r"cannot reach the peer API at http://127\.0\.0\.1"):
        await PeerCalls(Keyring([os.urandom(32)])).call("GET", f"127.0.0.1:{port}",
                                                         "/v1/x", None, timeout=5.0)


async def test_a_silent_peer_times_out() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")  # accepts, never answers
    port = listeners[0].socket.getsockname()[1]
    with pytest.raises(ApiError, match=r"cannot reach the peer API at .*: timed out"):
        await PeerCalls(Keyring([os.urandom(32)])).call("GET", f"127.0.0.1:{port}",
                                                         "/v1/x", None, timeout=0.3)
    await listeners[0].aclose()


async def test_calls_leave_from_the_peers_own_address() -> None:
    """On loopback every peer would otherwise call from 127.0.0.1, and the
    callee's per-client connection limit would count all peers as one."""
    seen: list[str] = []
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def record(stream: trio.SocketStream) -> None:
        seen.append(stream.socket.getpeername()[0])
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, record, listeners)
        for source in ("127.0.0.7", None):
            with pytest.raises(ApiError):
                await PeerCalls(Keyring([os.urandom(32)]), source).call(
                    "POST", f"127.0.0.1:{port}", "/v1/internal/x", b"", timeout=5.0)
        nursery.cancel_scope.cancel()
    assert seen == ["127.0.0.7", "127.0.0.1"]
