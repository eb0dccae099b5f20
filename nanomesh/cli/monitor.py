"""``nanomesh monitor``: follow a peer's mesh events, one line each, as
``consul monitor`` and ``nomad event stream`` do.

It reads ``GET /v1/events?follow=1`` (Server-Sent Events,
`nanomesh.daemon.api_events`) with a plain blocking HTTP client. When the
stream ends (the peer restarted, or dropped us for reading too slowly) or
goes silent for longer than READ_TIMEOUT (the peer sends a keepalive every
15 s), it reconnects with ``Last-Event-ID``, so nothing the peer still holds
is printed twice or skipped; a gap the peer could not fill is reported on
stderr, as is a restart of the peer. Only the first connection must
succeed: a wrong ``--peer`` is an error at once, a peer that goes away later
is waited for.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from nanomesh.cli.common import PEER_HELP, peer_api
from nanomesh.monitor.eventlog import Event, EventError
from nanomesh.monitor.sse import Message, SseError, SseParser
from nanomesh.transport.apiclient import ApiError, get_json

READ_TIMEOUT = 35.0
"""Seconds without a byte from the peer before the stream counts as dead:
two keepalive intervals (15 s each) and some slack for a busy peer."""
RECONNECT_DELAYS = (0.5, 1.0, 2.0, 5.0)
"""Seconds between reconnection attempts, the last repeated: a restarting
peer is back within a second or two; a dead one is not hammered."""


def register(subparsers: Any) -> None:
    """Add ``monitor`` to the top-level ``subparsers``."""
    cmd = subparsers.add_parser(
        "monitor", help="follow a peer's mesh events (membership, leadership, placement, "
        "instances)",
        description="Print a peer's recent mesh events, then each new one as it happens, one "
        "line each: time (UTC), type, subject, message. Reconnects when the peer restarts. "
        "Event types: member.* (gossip), leader.*/raft.* (control plane), placement.* "
        "(the committed plan), instance.* (this peer's instances).")
    cmd.add_argument("--peer", metavar="IP[:PORT]", help=PEER_HELP)
    cmd.add_argument("--json", action="store_true",
                     help="print each event as one JSON object per line")
    cmd.add_argument("--since", type=int, default=0, metavar="SEQ",
                     help="start after event number SEQ (default: all the peer holds)")
    cmd.add_argument("--type", action="append", metavar="PREFIX", dest="types",
                     help="only events whose type starts with PREFIX (member, leader, "
                     "placement.moved, ...); repeatable")
    cmd.add_argument("--no-follow", action="store_true",
                     help="print the events the peer holds and exit")
    cmd.set_defaults(func=_monitor)


def format_event(event: Event) -> str:
    """One line: ``2026-12-06T21:45:19.267Z  leader.elected     p1: leads term 1``."""
    when = datetime.fromtimestamp(event.time, UTC).isoformat(timespec="milliseconds")
    f = event.fact
    return f"{when.replace('+00:00', 'Z')}  {f.type:<18} {f.subject}: {f.message}"


@dataclass
class Follower:
    """Where a follower is: the last id received, the peer's life and number."""

    last_id: str | None = None
    life: str | None = None
    seq: int = 0
    notes: list[str] = field(default_factory=list)
    """What to tell the user on stderr (restarts, gaps)."""

    def accept(self, message: Message) -> Event | None:
        """The event of one SSE message (None: not an event). Raises
        EventError or ValueError on a message that is not one."""
        event = Event.from_dict(json.loads(message.data))
        life = (message.id or "").partition(":")[0]
        if self.life is not None and life != self.life:
            self.notes.append("the peer restarted; its event numbers start again")
        elif self.life is not None and event.seq > self.seq + 1:
            self.notes.append(f"{event.seq - self.seq - 1} event(s) missed (the peer no "
                              "longer holds them)")
        self.life, self.seq, self.last_id = life, event.seq, message.id
        return event


def _monitor(args: argparse.Namespace) -> int:
    api = peer_api(args.peer)
    if args.no_follow:
        for doc in get_json(api, f"/v1/events?since={max(args.since, 0)}"):
            _print(Event.from_dict(doc), args)
        return 0
    follower = Follower()
    attempt = 0
    connected_once = False
    while True:
        try:
            for message in _stream(api, args.since, follower.last_id):
                if message is None:  # connected
                    if connected_once and attempt:
                        print(f"nanomesh: reconnected to {api}", file=sys.stderr)
                    connected_once, attempt = True, 0
                    continue
                try:
                    event = follower.accept(message)
                except (ValueError, EventError) as exc:
                    print(f"nanomesh: ignored a malformed event: {exc}", file=sys.stderr)
                    continue
                for note in follower.notes:
                    print(f"nanomesh: {note}", file=sys.stderr)
                follower.notes.clear()
                if event is not None:
                    _print(event, args)
            reason = "the peer ended the stream"
        except ApiError as exc:
            if not connected_once or exc.status not in (None, 503):
                raise
            reason = exc.operator_message()
        except (OSError, http.client.HTTPException, SseError) as exc:
            if not connected_once:
                raise ApiError(f"cannot follow the events of {api}: {exc}", peer=api,
                               reason=str(exc)) from None
            reason = f"connection lost ({exc})"
        delay = RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)]
        if attempt == 0:
            print(f"nanomesh: {reason}; reconnecting to {api}", file=sys.stderr)
        attempt += 1
        time.sleep(delay)


def _print(event: Event, args: argparse.Namespace) -> None:
    if args.types and not event.fact.type.startswith(tuple(args.types)):
        return
    print(json.dumps(event.to_dict(), sort_keys=True) if args.json else format_event(event),
          flush=True)


def _stream(api: str, since: int, last_id: str | None) -> Iterator[Message | None]:
    """None once connected, then the messages of one connection to the peer's
    event stream, until it ends. ApiError for an error reply; OSError or
    HTTPException when the connection fails or stays silent for READ_TIMEOUT."""
    host, _, port = api.rpartition(":")
    conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=READ_TIMEOUT)
    try:
        headers = {"accept": "text/event-stream"}
        if last_id:
            headers["last-event-id"] = last_id
        conn.request("GET", f"/v1/events?follow=1&since={max(since, 0)}", headers=headers)
        reply = conn.getresponse()
        if reply.status != 200:
            try:
                detail = str(json.loads(reply.read(65536)).get("error", ""))
            except (ValueError, AttributeError):
                detail = ""
            raise ApiError(f"http://{api}/v1/events: HTTP {reply.status} {detail}".rstrip(),
                           peer=api, status=reply.status, detail=detail)
        yield None
        parser = SseParser()
        while chunk := reply.read1(65536):
            yield from parser.feed(chunk)
    finally:
        conn.close()
