"""``GET /v1/events`` on a real HTTP server (`nanomesh.daemon.api_events`,
`nanomesh.daemon.http.StreamBody`): the ring as JSON, the live stream,
resumption, and the limits: streams hold their own slots, a client that
goes is noticed at once, one that stops reading is dropped.

Real sockets on 127.0.14.60 (this suite's loopback range)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from nanomesh.cli.monitor import Follower, _stream, format_event
from nanomesh.daemon import http
from nanomesh.daemon.api_events import event_routes, follow_events
from nanomesh.daemon.events import EventHub
from nanomesh.daemon.http import serve_http
from nanomesh.daemon.http_limits import ServerLimits, ServerStats
from nanomesh.monitor.eventlog import Fact
from nanomesh.monitor.sse import SseParser

HOST = "127.0.14.60"


def left(i: int, pad: int = 0) -> Fact:
    return Fact("member.left", f"peer-{i}", "left the mesh" + "." * pad)


@asynccontextmanager
async def server(port: int, hub: EventHub, *, keepalive: float = 15.0,
                 limits: ServerLimits | None = None, stats: ServerStats | None = None
                 ) -> AsyncIterator[None]:
    listeners = await trio.open_tcp_listeners(port, host=HOST)
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: serve_http(
            event_routes(hub, keepalive), listeners, limits=limits, stats=stats,
            task_status=task_status))
        yield
        nursery.cancel_scope.cancel()


async def get(port: int, target: str, method: str = "GET", headers: str = "") -> bytes:
    stream = await trio.open_tcp_stream(HOST, port)
    async with stream:
        await stream.send_all(f"{method} {target} HTTP/1.1\r\nhost: h\r\n{headers}\r\n"
                              .encode())
        reply = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(65536):
                reply += chunk
    return reply


async def open_follow(port: int, headers: str = "") -> tuple[trio.SocketStream, bytes]:
    """A follower over HTTP/1.0 (no chunked coding: the body is the SSE bytes)."""
    stream = await trio.open_tcp_stream(HOST, port)
    await stream.send_all(f"GET /v1/events?follow=1 HTTP/1.0\r\n{headers}\r\n".encode())
    head = b""
    with trio.fail_after(5):
        while b"\r\n\r\n" not in head:
            head += await stream.receive_some(4096)
    head, _, rest = head.partition(b"\r\n\r\n")
    return stream, head + b"\r\n\r\n" + rest


async def messages(stream: trio.SocketStream, parser: SseParser, n: int,
                   already: bytes = b"") -> list[dict[str, Any]]:
    got = [json.loads(m.data) for m in parser.feed(already)]
    with trio.fail_after(5):
        while len(got) < n:
            got += [json.loads(m.data) for m in parser.feed(await stream.receive_some(4096))]
    return got


async def test_the_ring_as_json_with_since_and_bad_queries_refused() -> None:
    hub = EventHub("me")
    hub.record([left(i) for i in range(3)])
    async with server(18101, hub):
        reply = await get(18101, "/v1/events?since=1")
        assert reply.startswith(b"HTTP/1.1 200") and b"x-content-type-options: nosniff" in reply
        body = json.loads(reply.partition(b"\r\n\r\n")[2])
        assert [e["seq"] for e in body] == [2, 3] and body[0]["subject"] == "peer-1"
        for bad in ("since=-1", "since=x", "follow=maybe", "limit=3"):
            refused = await get(18101, f"/v1/events?{bad}")
            assert refused.startswith(b"HTTP/1.1 400"), bad
        head = await get(18101, "/v1/events?follow=1", method="HEAD")
        assert head.startswith(b"HTTP/1.1 200") and b"text/event-stream" in head
        assert head.endswith(b"\r\n\r\n")  # no body


async def test_a_follower_gets_the_ring_then_live_events_and_keepalives() -> None:
    hub = EventHub("me")
    hub.record([left(1)])
    async with server(18102, hub, keepalive=0.2):
        stream, first = await open_follow(18102)
        async with stream:
            assert b"content-type: text/event-stream" in first
            parser = SseParser()
            got = await messages(stream, parser, 1, first.partition(b"\r\n\r\n")[2])
            assert [e["seq"] for e in got] == [1] and parser.retry_ms == 2000
            hub.record([left(2), left(3)])
            got = await messages(stream, parser, 2)
            assert [e["subject"] for e in got] == ["peer-2", "peer-3"]
            assert parser.last_id == f"{hub.life}:3"
            with trio.fail_after(2):
                assert b": keepalive" in await stream.receive_some(4096)


async def test_last_event_id_resumes_and_another_life_starts_over() -> None:
    hub = EventHub("me")
    hub.record([left(i) for i in range(4)])
    async with server(18103, hub):
        for header, seqs in ((f"last-event-id: {hub.life}:2\r\n", [3, 4]),
                             ("last-event-id: 0badc0de:2\r\n", [1, 2, 3, 4])):
            stream, first = await open_follow(18103, header)
            async with stream:
                got = await messages(stream, SseParser(), len(seqs),
                                     first.partition(b"\r\n\r\n")[2])
                assert [e["seq"] for e in got] == seqs
        forged = await get(18103, "/v1/events?follow=1", headers="last-event-id: 7\r\n")
        assert forged.startswith(b"HTTP/1.1 400") and b"LIFE:SEQ" in forged


async def test_streams_have_their_own_slots_and_a_client_that_goes_frees_one_at_once(
        ) -> None:
    hub, stats = EventHub("me"), ServerStats()
    limits = ServerLimits(max_streams=2, max_requests=1)
    async with server(18104, hub, limits=limits, stats=stats):
        a, _ = await open_follow(18104)
        b, _ = await open_follow(18104)
        # Two streams and the only request slot is still free for a read.
        assert (await get(18104, "/v1/events")).startswith(b"HTTP/1.1 200")
        third = await get(18104, "/v1/events?follow=1")
        assert third.startswith(b"HTTP/1.1 503") and b"2 streams" in third
        assert stats.streams == 2
        await a.aclose()
        with trio.fail_after(2):  # noticed by the reader task, not at a keepalive
            while stats.streams != 1:
                await trio.sleep(0.01)
        c, _ = await open_follow(18104)
        await b.aclose()
        await c.aclose()


async def test_a_client_that_stops_reading_is_dropped(monkeypatch: pytest.MonkeyPatch
                                                      ) -> None:
    """Nothing buffers for a follower but the kernel: once the socket's
    buffers are full, the next chunk waits STREAM_SEND_TIMEOUT and the
    stream is cut."""
    monkeypatch.setattr(http, "STREAM_SEND_TIMEOUT", 0.3)
    hub, stats = EventHub("me", capacity=100_000), ServerStats()
    async with server(18105, hub, stats=stats):
        stream, _ = await open_follow(18105)
        async with stream:
            with trio.fail_after(10):
                while not stats.streams_dropped:
                    hub.record([left(i, pad=2000) for i in range(200)])
                    await trio.sleep(0.05)
            assert stats.streams_dropped == 1
            with trio.fail_after(2):
                while stats.streams:
                    await trio.sleep(0.01)


async def test_a_follower_lapped_by_the_ring_is_ended() -> None:
    hub = EventHub("me", capacity=3)
    hub.record([left(1)])
    frames = follow_events(hub, 0, keepalive=10.0)
    assert (await frames.__anext__()).startswith(b"retry:")
    assert b'"seq":1' in await frames.__anext__()
    hub.record([left(i) for i in range(2, 9)])  # 2-5 fall out before it reads again
    with pytest.raises(StopAsyncIteration):
        await frames.__anext__()


async def test_the_monitor_client_reads_the_chunked_stream() -> None:
    """`nanomesh monitor`'s HTTP/1.1 reader (chunked coding) and its
    restart and gap notes."""
    hub = EventHub("me")
    hub.record([left(1), left(2)])
    async with server(18106, hub):
        def read_two() -> list[str]:
            follower, lines = Follower(), []
            for message in _stream(f"{HOST}:18106", 0, None):
                if message is None:
                    continue  # connected
                event = follower.accept(message)
                assert event is not None
                lines.append(format_event(event))
                if len(lines) == 2:
                    break
            return lines
        lines = await trio.to_thread.run_sync(read_two)
        assert lines[1].endswith("Z  member.left        peer-2: left the mesh")
    follower = Follower()
    parser = SseParser()
    for m in parser.feed(b"id: aa:1\ndata: " + json.dumps(
            {"seq": 1, "time": 1, "type": "t", "subject": "s", "message": "m"}).encode()
            + b"\n\nid: aa:5\ndata: " + json.dumps(
            {"seq": 5, "time": 1, "type": "t", "subject": "s", "message": "m"}).encode()
            + b"\n\nid: bb:1\ndata: " + json.dumps(
            {"seq": 1, "time": 1, "type": "t", "subject": "s", "message": "m"}).encode()
            + b"\n\n"):
        follower.accept(m)
    assert follower.notes == ["3 event(s) missed (the peer no longer holds them)",
                              "the peer restarted; its event numbers start again"]


async def test_a_bug_in_deriving_events_never_reaches_the_caller(
        caplog: pytest.LogCaptureFixture) -> None:
    """The gossip shell and the control loop call the hub: a bug there must
    cost the events, not the peer."""
    hub = EventHub("me")

    def broken(*_: Any) -> list[Fact]:
        raise KeyError("surprise")
    hub.record_from(broken, 1, 2)
    assert hub.log.last_seq == 0 and "BUG: deriving mesh events failed" in caplog.text
    hub.record_from(lambda: [left(1), None])
    assert hub.log.last_seq == 1
