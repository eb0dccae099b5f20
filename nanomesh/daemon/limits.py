"""Admission of inbound gossip streams before their sender is authenticated.

A push-pull or profile pull on the gossip TCP port is one sealed envelope:
it can only be authenticated once all of it is read, and a frame may be up
to `nanomesh.wire.MAX_FRAME` (8 MiB). `StreamAdmission` bounds what
outsiders can hold, so that no one source can starve the others:

- a few concurrent streams per source IP, and a cap in all;
- body bytes are charged as they arrive, chunk by chunk, never for a frame's
  announced length: a slow sender holds only what it has actually sent;
- each source may hold at most `MAX_BYTES_PER_SOURCE` unauthenticated bytes
  over all its streams, and a frame announced larger than that is refused
  outright (it could never be read);
- all sources together hold at most `MAX_BUFFERED_BYTES`, which takes
  `MAX_BUFFERED_BYTES // MAX_BYTES_PER_SOURCE` (8) attacking sources to
  fill, each as fast as it can send.

What that means for legitimate traffic: a push-pull is about 60 bytes a
member (about 300 KB at 5,000 members), so the per-source quota admits
push-pulls from meshes of up to about 17,000 members. Beyond that, periodic
push-pulls are refused as "oversized" (members still converge by UDP
gossip, without the anti-entropy sync); a join still works, as the joiner's
push-pull is small and the large answer is a reply to its own call. A
profile request is a list of names. A stream refused under attack is
retried by its sender at its next push-pull or profile pull.

Replies to our own calls (`GossipShell._stream_call`) are not charged: we
chose the member we dialled, each reply is bounded by `MAX_FRAME`, and a
large profile reply must not fail because outsiders fill the budget.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

MAX_STREAMS_PER_SOURCE = 4
"""Concurrent inbound gossip streams from one IP. A member opens at most one
push-pull and a few profile pulls at a time."""
MAX_STREAMS = 64
"""Concurrent inbound gossip streams in all."""
MAX_BYTES_PER_SOURCE = 1024 * 1024
"""Not-yet-authenticated body bytes one IP may hold at once over all its
streams, and so the largest frame accepted from it: over 3 times a
5,000-member push-pull (~300 KB)."""
MAX_BUFFERED_BYTES = 8 * 1024 * 1024
"""Not-yet-authenticated body bytes held at once over all sources: eight
sources at their quota, and no more than one `MAX_FRAME` held before."""


@dataclass
class StreamAdmission:
    """Counts open streams per source and buffered bytes per source and in
    all (pure bookkeeping: the shell asks before it accepts or keeps a
    chunk, and releases after)."""

    max_per_source: int = MAX_STREAMS_PER_SOURCE
    max_streams: int = MAX_STREAMS
    max_bytes_per_source: int = MAX_BYTES_PER_SOURCE
    max_bytes: int = MAX_BUFFERED_BYTES
    _by_source: collections.Counter[str] = field(default_factory=collections.Counter)
    _bytes_by_source: collections.Counter[str] = field(default_factory=collections.Counter)
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

    def fits(self, length: int) -> bool:
        """Whether a frame of `length` bytes could ever be read from one
        source (False: refuse it before reading any of it)."""
        return length <= min(self.max_bytes_per_source, self.max_bytes)

    def reserve(self, source: str, n: int) -> bool:
        """Charge `n` bytes just received from `source`; False (nothing
        charged) if that would exceed its quota or the total."""
        if (self._bytes_by_source[source] + n > self.max_bytes_per_source
                or self._bytes + n > self.max_bytes):
            return False
        self._bytes_by_source[source] += n
        self._bytes += n
        return True

    def free(self, source: str, n: int) -> None:
        """Return `n` bytes charged to `source` (its frame was read or dropped)."""
        self._bytes_by_source[source] -= n
        if self._bytes_by_source[source] <= 0:
            del self._bytes_by_source[source]
        self._bytes -= n

    def held(self, source: str | None = None) -> int:
        """Bytes charged to `source`, or to all sources."""
        return self._bytes if source is None else self._bytes_by_source[source]
