"""The API's HTTP server under hostile clients: refusals come before work.

Real sockets on 127.0.57.x."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from nanomesh.auth import secret_matches
from nanomesh.daemon import http
from nanomesh.daemon.http import BodyLimit, Request, serve_http

HOST = "127.0.57.10"


async def _ok(request: Request) -> tuple[int, Any]:
    return 200, {"bytes": len(request.body)}


@asynccontextmanager
async def server(port: int, **kwargs: Any) -> AsyncIterator[None]:
    routes = {("PUT", "/v1/bundles/{name}"): _ok, ("POST", "/v1/bundles/{name}"): _ok,
              ("GET", "/v1/ping"): _ok}
    listeners = await trio.open_tcp_listeners(port, host=HOST)
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: serve_http(
            routes, listeners, task_status=task_status, **kwargs))
        yield
        nursery.cancel_scope.cancel()


async def exchange(port: int, head: bytes, body: bytes = b"") -> bytes:
    stream = await trio.open_tcp_stream(HOST, port)
    async with stream:
        await stream.send_all(head + body)
        reply = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(65536):
                reply += chunk
    return reply


async def test_an_unauthorised_upload_is_refused_before_its_body_is_read() -> None:
    """The head announces 100 MiB and no body follows: a server that read the
    body before checking would wait; this one answers 401 at once."""
    seen: list[dict[str, str]] = []

    def admit(headers: Any) -> bool:
        seen.append(dict(headers))
        return headers.get("authorization") == "Bearer good"

    rules = {"/v1/bundles/": BodyLimit(1 << 30, 60.0, admit=admit)}
    async with server(17001, large_bodies=rules):
        reply = await exchange(17001, b"PUT /v1/bundles/x HTTP/1.1\r\nhost: h\r\n"
                               b"content-length: 104857600\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 401") and b"management token" in reply
        good = await exchange(17001, b"PUT /v1/bundles/x HTTP/1.1\r\nhost: h\r\n"
                              b"authorization: Bearer good\r\ncontent-length: 3\r\n\r\n", b"abc")
        assert good.startswith(b"HTTP/1.1 200") and b'"bytes": 0' in good  # spooled
    assert len(seen) == 2


async def test_the_large_body_rule_is_for_its_methods_only() -> None:
    rules = {"/v1/bundles/": BodyLimit(1 << 30, 60.0)}
    async with server(17002, large_bodies=rules):
        too_big = http.MAX_REQUEST_BYTES + 1
        reply = await exchange(17002, b"POST /v1/bundles/x HTTP/1.1\r\nhost: h\r\n"
                               b"content-length: " + str(too_big).encode() + b"\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 413")


async def test_connections_beyond_the_cap_get_503_and_the_server_recovers(
        monkeypatch: Any) -> None:
    monkeypatch.setattr(http, "MAX_CONNECTIONS", 4)
    async with server(17003):
        idle = [await trio.open_tcp_stream(HOST, 17003) for _ in range(4)]
        await trio.sleep(0.1)  # let the server take them
        reply = await exchange(17003, b"GET /v1/ping HTTP/1.1\r\nhost: h\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 503")
        for stream in idle:
            await stream.aclose()
        await trio.sleep(0.1)
        reply = await exchange(17003, b"GET /v1/ping HTTP/1.1\r\nhost: h\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 200")


def test_secret_comparison_never_raises_on_odd_tokens() -> None:
    """hmac.compare_digest raises TypeError on non-ASCII str: a header with
    0xE9 in it made the API answer 500. Bytes compare instead."""
    assert secret_matches("s3cret", "s3cret")
    assert not secret_matches("\xe9\xe9", "s3cret")
    assert not secret_matches("\udce9", "s3cret")
    assert not secret_matches(None, "s3cret") and not secret_matches("", "")
