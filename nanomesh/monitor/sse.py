"""Server-Sent Events (the WHATWG HTML standard, "server-sent events"), both
ways: the frames a peer writes for ``GET /v1/events?follow=1`` and a parser
for ``nanomesh monitor``. Bytes in, values out; no sockets.

A frame carries one event as ``data:`` (its JSON, one line) with ``id:
LIFE:SEQ``. LIFE is a random word the daemon picks at each start, so a
client that comes back with ``Last-Event-ID`` (a browser's EventSource does
so by itself) resumes after SEQ if the peer is the same process, and from
the start of the ring if the peer restarted meanwhile (its numbers began
again at 1): `resume_after`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from nanomesh.monitor.eventlog import Event

KEEPALIVE = b": keepalive\n\n"
"""A comment frame: clients ignore it; it keeps proxies from closing an idle
stream and lets a client tell a quiet peer from a dead one."""
RETRY_MS = 2000
"""What the stream asks an EventSource to wait before it reconnects (the
browser's own default is ~3 s; a restarted peer is back in ~1-2 s)."""
MAX_LINE = 64 * 1024
"""Longest line the parser accepts, in bytes: an event is a few hundred; a
peer (or something posing as one) cannot make a client buffer without end."""
_LIFE = re.compile(r"[0-9a-f]{1,32}")


class SseError(ValueError):
    """The bytes are not an event stream we accept."""


def frame(event: Event, life: str) -> bytes:
    """One event as an SSE frame (``id``, then its JSON on one ``data`` line)."""
    data = json.dumps(event.to_dict(), sort_keys=True, separators=(",", ":"))
    return f"id: {life}:{event.seq}\ndata: {data}\n\n".encode()


def retry_frame(ms: int = RETRY_MS) -> bytes:
    return f"retry: {ms}\n\n".encode()


def resume_after(last_event_id: str | None, since: int | None, life: str) -> int:
    """The sequence number to stream after: ``Last-Event-ID`` (what the
    client last received) wins over ``since`` (what it asked for the first
    time); an id from another life of the peer means "from the start" (0).
    Raises SseError for an id that is not ``LIFE:SEQ``."""
    if last_event_id is None or not last_event_id.strip():
        return since or 0
    their_life, _, seq = last_event_id.strip().partition(":")
    if not _LIFE.fullmatch(their_life) or not seq.isdigit() or len(seq) > 18:
        raise SseError(f"Last-Event-ID must be LIFE:SEQ as this peer sent it, "
                       f"got {last_event_id[:80]!r}")
    return int(seq) if their_life == life else 0


def new_life(random_bytes: bytes) -> str:
    """The life word of a daemon start, from a few random bytes (hex)."""
    return random_bytes.hex()[:16]


@dataclass(frozen=True)
class Message:
    """One dispatched SSE message."""

    data: str
    event: str = "message"
    id: str | None = None
    """The ``id`` field in force for this message (the last one seen)."""


class SseParser:
    """Incremental parser: `feed` bytes as they arrive, get whole messages.
    Follows the standard's interpretation rules (``data`` lines joined with
    newlines; comments and unknown fields ignored; a message dispatched at a
    blank line), for LF, CRLF and CR line ends."""

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []
        self._event = ""
        self.last_id: str | None = None
        """The last ``id`` seen: what to send back as ``Last-Event-ID``."""
        self.retry_ms: int | None = None
        """The reconnection delay the server asked for, if it did."""

    def feed(self, data: bytes) -> list[Message]:
        """Messages completed by ``data``. Raises SseError on a line over
        MAX_LINE bytes or text that is not UTF-8."""
        self._buffer += data
        out: list[Message] = []
        while True:
            match = re.search(rb"\r\n|\n|\r", self._buffer)
            if match is None or (match.group() == b"\r" and match.end() == len(self._buffer)):
                # No whole line yet (a lone CR at the end may be half a CRLF).
                if len(self._buffer) > MAX_LINE:
                    raise SseError(f"an event stream line over {MAX_LINE} bytes")
                return out
            raw, self._buffer = self._buffer[:match.start()], self._buffer[match.end():]
            if len(raw) > MAX_LINE:
                raise SseError(f"an event stream line over {MAX_LINE} bytes")
            try:
                line = raw.decode()
            except UnicodeDecodeError:
                raise SseError("an event stream line is not UTF-8") from None
            message = self._line(line)
            if message is not None:
                out.append(message)

    def _line(self, line: str) -> Message | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment (keepalive)
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self.last_id = value
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None

    def _dispatch(self) -> Message | None:
        data, event = self._data, self._event or "message"
        self._data, self._event = [], ""
        if not data:
            return None
        return Message("\n".join(data), event, self.last_id)
