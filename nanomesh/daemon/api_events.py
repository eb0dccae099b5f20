"""``GET /v1/events``: the peer's recent mesh events, read or followed.

- ``GET /v1/events``: JSON array of the events in the ring, oldest first;
  ``?since=SEQ`` only those numbered above SEQ. Each is ``{"seq", "time"
  (seconds since the epoch), "type", "subject", "message", "detail"}``
  (`nanomesh.monitor.eventlog`, which lists the types). Numbers start again
  at 1 when the peer restarts.
- ``GET /v1/events?follow=1``: the same as Server-Sent Events
  (``text/event-stream``): the ring first (after ``since``, or after the
  ``Last-Event-ID`` a reconnecting client sends), then each event as it
  happens, a keepalive comment every KEEPALIVE_INTERVAL seconds of quiet.
  A follower the ring laps (it read too slowly to keep up) is dropped, and
  sees the gap in the numbers when it comes back; so is one that stops
  reading (`nanomesh.daemon.http.STREAM_SEND_TIMEOUT`). At most
  `ServerLimits.max_streams` at once.

Open to anyone, as ``/v1/members`` and ``/v1/placement`` are: an event says
no more than those do.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncGenerator
from typing import Any

import trio

from nanomesh.daemon.events import EventHub
from nanomesh.daemon.http import HttpError, Request, StreamBody
from nanomesh.daemon.views import Routes
from nanomesh.monitor.sse import KEEPALIVE, SseError, frame, resume_after, retry_frame

KEEPALIVE_INTERVAL = 15.0
"""Seconds of quiet before a keepalive comment: under the 30-60 s idle
timeouts of common proxies, and what bounds how long a client waits to
learn that a silent peer is still there."""


def event_routes(hub: EventHub, keepalive: float = KEEPALIVE_INTERVAL) -> Routes:
    async def events(request: Request) -> tuple[int, Any]:
        since, follow = parse_query(request.query)
        if not follow:
            return 200, [e.to_dict() for e in hub.since(since).events]
        try:
            after = resume_after(request.headers.get("last-event-id"), since, hub.life)
        except SseError as exc:
            raise HttpError(400, str(exc)) from None
        return 200, StreamBody(follow_events(hub, after, keepalive), "text/event-stream",
                               (("x-accel-buffering", "no"),))

    return {("GET", "/v1/events"): events}


def parse_query(query: str) -> tuple[int, bool]:
    """``(since, follow)`` from the query string; HttpError 400 on anything
    else than ``since=`` a whole number and ``follow=`` 1/0/true/false."""
    try:
        fields = urllib.parse.parse_qs(query, keep_blank_values=True, strict_parsing=bool(query),
                                       max_num_fields=8)
    except ValueError as exc:
        raise HttpError(400, f"malformed query string: {exc}") from None
    unknown = set(fields) - {"since", "follow"}
    if unknown:
        raise HttpError(400, f"unknown query parameter(s) {', '.join(sorted(unknown))}; "
                        "expected since=SEQ and follow=1")
    since_text = fields.get("since", ["0"])[-1]
    if not since_text.isdigit() or len(since_text) > 18:
        raise HttpError(400, f"since must be an event number (a whole number >= 0), "
                        f"got {since_text[:40]!r}")
    follow_text = fields.get("follow", ["0"])[-1].lower()
    if follow_text not in ("1", "0", "true", "false", ""):
        raise HttpError(400, f"follow must be 1 or 0, got {follow_text[:40]!r}")
    return int(since_text), follow_text in ("1", "true", "")


async def follow_events(hub: EventHub, after: int, keepalive: float
                        ) -> AsyncGenerator[bytes, None]:
    """The SSE frames of a follower that has seen events up to `after`."""
    yield retry_frame()
    last, first = after, True
    while True:
        with trio.move_on_after(keepalive):
            await hub.wait_after(last)
        got = hub.since(last)
        if got.missed and not first:
            return  # lapped by the ring: too slow to follow; it may come back
        first = False
        if not got.events:
            yield KEEPALIVE
        for event in got.events:
            yield frame(event, hub.life)
            last = event.seq
