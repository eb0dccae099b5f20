"""Admission of inbound gossip streams before their sender is authenticated.

A push-pull or profile pull on the gossip TCP port is one sealed envelope:
it can only be authenticated once all of it is read, and a frame may be up
to `nanomesh.wire.MAX_FRAME` (8 MiB). Without limits, an outsider opening
a hundred connections that each announce 8 MiB would make the peer buffer
800 MiB. `StreamAdmission` bounds what outsiders can hold at once: a few
connections per source, a cap in all, and a budget of body bytes buffered
before authentication. A legitimate push-pull (about 300 KB at 5,000
members) fits many times over; one refused under attack is retried by the
sender at its next push-pull interval.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

MAX_STREAMS_PER_SOURCE = 4
"""Concurrent inbound gossip streams from one IP. A member opens at most one
push-pull and a few profile pulls at a time."""
MAX_STREAMS = 64
"""Concurrent inbound gossip streams in all."""
MAX_BUFFERED_BYTES = 4 * 1024 * 1024
"""Bytes of not-yet-authenticated stream bodies held at once, over all
connections (one frame alone may exceed it: `StreamAdmission.reserve`)."""


@dataclass
class StreamAdmission:
    """Counts open streams per source and buffered bytes (pure bookkeeping:
    the shell asks before it accepts or reads, and releases after)."""

    max_per_source: int = MAX_STREAMS_PER_SOURCE
    max_streams: int = MAX_STREAMS
    max_bytes: int = MAX_BUFFERED_BYTES
    _by_source: collections.Counter[str] = field(default_factory=collections.Counter)
    _streams: int = 0
    _bytes: int = 0

    def admit(self, source: str) -> bool:
        """Take a stream slot for `source`; False if over a limit."""
        if self._streams >= self.max_streams or self._by_source[source] >= self.max_per_source:
            return False
        self._by_source[source] += 1
        self._streams += 1
        return True

    def release(self, source: str) -> None:
        self._by_source[source] -= 1
        if self._by_source[source] <= 0:
            del self._by_source[source]
        self._streams -= 1

    def reserve(self, n: int) -> bool:
        """Take `n` bytes of the buffering budget; False if it would overflow.
        A frame larger than the whole budget (up to MAX_FRAME) is admitted
        when nothing else is buffered, so a legitimate large push-pull still
        gets through: at most max(budget, one frame) is ever held."""
        if self._bytes and self._bytes + n > self.max_bytes:
            return False
        self._bytes += n
        return True

    def free(self, n: int) -> None:
        self._bytes -= n
