"""The API's HTTP server under hostile clients: refusals come before work.

Real sockets on 127.0.57.x."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from nanomesh.daemon import http
from nanomesh.daemon.http import BodyLimit, Request, serve_http
from nanomesh.daemon.http_limits import ServerLimits, ServerStats
from nanomesh.security.auth import secret_matches

HOST = "127.0.57.10"


async def _ok(request: Request) -> tuple[int, Any]:
    return 200, {"bytes": len(request.body)}


@asynccontextmanager
async def server(port: int, extra: dict[tuple[str, str], Any] | None = None, **kwargs: Any
                 ) -> AsyncIterator[None]:
    routes = {("PUT", "/v1/bundles/{name}"): _ok, ("POST", "/v1/bundles/{name}"): _ok,
              ("GET", "/v1/ping"): _ok, ("GET", "/v1/health"): _ok, **(extra or {})}
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
        assert b'www-authenticate: Bearer realm="nanomesh"' in reply
        good = await exchange(17001, b"PUT /v1/bundles/x HTTP/1.1\r\nhost: h\r\n"
                              b"authorization: Bearer good\r\ncontent-length: 3\r\n\r\n", b"abc")
        assert good.startswith(b"HTTP/1.1 200") and b'"bytes": 0' in good  # spooled
    assert len(seen) == 2


async def test_an_upload_before_any_credential_exists_is_a_503_to_retry() -> None:
    """`admit` may raise HttpError: a mesh electing its first leader has no
    token to check yet, and the client retries a 503 (a 401 it would not)."""
    def admit(headers: Any) -> bool:
        raise http.HttpError(503, "the mesh has no management token committed yet")

    rules = {"/v1/bundles/": BodyLimit(1 << 30, 60.0, admit=admit)}
    async with server(17030, large_bodies=rules):
        reply = await exchange(17030, b"PUT /v1/bundles/x HTTP/1.1\r\nhost: h\r\n"
                               b"content-length: 104857600\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 503") and b"no management token" in reply


async def test_the_large_body_rule_is_for_its_methods_only() -> None:
    rules = {"/v1/bundles/": BodyLimit(1 << 30, 60.0)}
    async with server(17002, large_bodies=rules):
        too_big = http.MAX_REQUEST_BYTES + 1
        reply = await exchange(17002, b"POST /v1/bundles/x HTTP/1.1\r\nhost: h\r\n"
                               b"content-length: " + str(too_big).encode() + b"\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 413")


async def read_all(stream: trio.SocketStream, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes (b"" if it resets)."""
    reply = b""
    with trio.fail_after(timeout):
        try:
            while chunk := await stream.receive_some(65536):
                reply += chunk
        except trio.BrokenResourceError:
            pass
    return reply


async def connect(port: int, source: str = "127.0.57.20") -> trio.SocketStream:
    """A connection from ``source`` (distinct loopback addresses are distinct
    clients to the per-client limit)."""
    sock = trio.socket.socket()
    await sock.bind((source, 0))
    await sock.connect((HOST, port))
    return trio.SocketStream(sock)


async def wait_open(stats: ServerStats, n: int) -> None:
    """Until the server holds ``n`` connections (it accepts asynchronously)."""
    with trio.fail_after(5):
        while stats.open < n:
            await trio.sleep(0.01)


GET_PING = b"GET /v1/ping HTTP/1.1\r\nhost: h\r\n\r\n"
GET_HEALTH = b"GET /v1/health HTTP/1.1\r\nhost: h\r\n\r\n"


async def test_idle_connections_hold_no_request_slot() -> None:
    """Before: every accepted socket took one of the request slots, so as many
    idle sockets as slots answered everyone else 503."""
    limits, stats = ServerLimits(max_requests=4, reserved_requests=1), ServerStats()
    async with server(17003, limits=limits, stats=stats):
        idle = [await connect(17003, f"127.0.57.{30 + i // 8}") for i in range(20)]
        await wait_open(stats, 20)
        assert (await exchange(17003, GET_PING)).startswith(b"HTTP/1.1 200")
        for stream in idle:
            await stream.aclose()


async def test_an_oversized_head_is_refused_431() -> None:
    async with server(17009, limits=ServerLimits(max_head_bytes=1024)):
        reply = await exchange(17009, b"GET /v1/ping HTTP/1.1\r\nhost: h\r\nx-big: "
                               + b"a" * 4096 + b"\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 431"), reply


async def test_a_trickling_head_is_cut_off_at_the_deadline_with_408() -> None:
    stats = ServerStats()
    async with server(17004, limits=ServerLimits(head_timeout=0.3), stats=stats):
        slow = await connect(17004)
        await slow.send_all(b"GET /v1/ping HTTP/1.1\r\n")
        reply = await read_all(slow)
        assert reply.startswith(b"HTTP/1.1 408"), reply
        assert stats.head_timeouts == 1 and stats.open == 0


async def test_a_trickling_body_is_cut_off_and_frees_its_slot() -> None:
    """A complete head takes a request slot; a body that never finishes must
    give it back at the body deadline."""
    stats = ServerStats()
    limits = ServerLimits(body_timeout=0.3, max_requests=1)
    async with server(17010, limits=limits, stats=stats):
        slow = await connect(17010)
        await slow.send_all(b"POST /v1/bundles/x HTTP/1.1\r\nhost: h\r\n"
                            b"content-length: 100\r\n\r\nabc")
        assert await read_all(slow) == b""  # closed, nothing served
        assert stats.body_timeouts == 1
        assert (await exchange(17010, GET_PING)).startswith(b"HTTP/1.1 200")


async def test_a_client_over_its_limit_gets_429_and_others_are_served() -> None:
    stats = ServerStats()
    async with server(17005, limits=ServerLimits(max_per_client=2), stats=stats):
        held = [await connect(17005, "127.0.57.21") for _ in range(2)]
        await wait_open(stats, 2)
        third = await connect(17005, "127.0.57.21")
        await third.send_all(GET_PING)
        reply = await read_all(third)
        assert reply.startswith(b"HTTP/1.1 429") and b"retry-after: 1" in reply.lower()
        other = await connect(17005, "127.0.57.22")
        await other.send_all(GET_PING)
        assert (await read_all(other)).startswith(b"HTTP/1.1 200")
        assert stats.refused_per_client == 1
        for stream in held:
            await stream.aclose()


async def test_when_full_the_oldest_idle_connection_makes_room() -> None:
    stats = ServerStats()
    async with server(17006, limits=ServerLimits(max_open=4, max_per_client=4), stats=stats):
        idle = [await connect(17006, "127.0.57.23") for _ in range(4)]
        await wait_open(stats, 4)
        fresh = await connect(17006, "127.0.57.24")
        await fresh.send_all(GET_PING)
        assert (await read_all(fresh)).startswith(b"HTTP/1.1 200")
        assert await read_all(idle[0]) == b""  # closed by the server
        assert stats.evicted == 1
        for stream in idle:
            await stream.aclose()


async def test_health_answers_while_every_shared_slot_is_busy() -> None:
    release = trio.Event()
    started = 0

    async def stuck(_: Request) -> tuple[int, Any]:
        nonlocal started
        started += 1
        await release.wait()
        return 200, {}

    stats = ServerStats()
    async with server(17007, limits=ServerLimits(max_requests=2), stats=stats,
                      extra={("GET", "/v1/stuck"): stuck}):
        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(exchange, 17007, b"GET /v1/stuck HTTP/1.1\r\nhost: h\r\n\r\n")
            with trio.fail_after(5):
                while started < 2:
                    await trio.sleep(0.01)
            busy = await exchange(17007, GET_PING)
            assert busy.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in busy.lower()
            assert (await exchange(17007, GET_HEALTH)).startswith(b"HTTP/1.1 200")
            release.set()
        assert stats.busy == 1


async def test_every_401_names_the_bearer_scheme() -> None:
    async def needs_token(_: Request) -> tuple[int, Any]:
        raise http.HttpError(401, "this read needs the management token")

    async with server(17008, extra={("GET", "/v1/secret"): needs_token}):
        reply = await exchange(17008, b"GET /v1/secret HTTP/1.1\r\nhost: h\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 401")
        assert b'www-authenticate: Bearer realm="nanomesh"' in reply


async def test_a_405_lists_the_methods_the_path_has() -> None:
    """RFC 9110 section 15.5.6: a 405 must carry Allow."""
    async with server(17009):
        reply = await exchange(17009, b"DELETE /v1/bundles/x HTTP/1.1\r\nhost: h\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 405")
        assert b"\r\nallow: POST, PUT\r\n" in reply
        ping = await exchange(17009, b"POST /v1/ping HTTP/1.1\r\nhost: h\r\n"
                                     b"content-length: 0\r\n\r\n")
        assert b"\r\nallow: GET, HEAD\r\n" in ping
        missing = await exchange(17009, b"DELETE /v1/nothing HTTP/1.1\r\nhost: h\r\n\r\n")
        assert missing.startswith(b"HTTP/1.1 404") and b"allow:" not in missing.lower()


async def test_head_is_the_get_without_its_body() -> None:
    async with server(17010):
        got = await exchange(17010, b"GET /v1/ping HTTP/1.1\r\nhost: h\r\n\r\n")
        head = await exchange(17010, b"HEAD /v1/ping HTTP/1.1\r\nhost: h\r\n\r\n")
    get_head, _, get_body = got.partition(b"\r\n\r\n")
    head_head, _, head_body = head.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and head_body == b""
    assert get_body and head_head == get_head  # same status, length and type


def test_secret_comparison_never_raises_on_odd_tokens() -> None:
    """hmac.compare_digest raises TypeError on non-ASCII str: a header with
    0xE9 in it made the API answer 500. Bytes compare instead."""
    assert secret_matches("s3cret", "s3cret")
    assert not secret_matches("\xe9\xe9", "s3cret")
    assert not secret_matches("\udce9", "s3cret")
    assert not secret_matches(None, "s3cret") and not secret_matches("", "")


async def test_requests_are_counted_by_route_pattern_method_and_status() -> None:
    """``ServerStats.requests`` (``nanomesh_http_requests_total``) names the
    route's pattern, never the path: a scanner's random paths all count as
    one "(unmatched)" row, so the table cannot grow without bound."""
    stats = ServerStats()
    async with server(17011, stats=stats):
        for target in (b"/v1/bundles/a", b"/v1/bundles/b"):
            await exchange(17011, b"PUT " + target + b" HTTP/1.1\r\nhost: h\r\n"
                           b"content-length: 0\r\n\r\n")
        await exchange(17011, b"HEAD /v1/ping HTTP/1.1\r\nhost: h\r\n\r\n")
        for i in range(3):
            await exchange(17011, b"GET /scan/%d HTTP/1.1\r\nhost: h\r\n\r\n" % i)
        await exchange(17011, b"DELETE /v1/ping HTTP/1.1\r\nhost: h\r\n\r\n")
    assert stats.requests == {("PUT", "/v1/bundles/{name}", 200): 2,
                              ("HEAD", "/v1/ping", 200): 1,
                              ("GET", "(unmatched)", 404): 3,
                              ("DELETE", "(unmatched)", 405): 1}
    assert "requests" not in stats.to_dict()  # /v1/health shows only the refusals
