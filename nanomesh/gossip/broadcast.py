"""Piggybacked dissemination (SWIM §4.1) with memberlist's transmit limit.

Membership updates are not sent on their own: they ride along on pings, acks
and gossip rounds, each update a bounded number of times
(`nanomesh.gossip.timing.retransmit_limit`). A newer update about a peer
replaces any queued older one, so the queue holds at most one entry per peer.
Updates sent the fewest times go first (newest first among equals), which is
what spreads fresh news fastest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nanomesh.wire import DatagramMessage


@dataclass(slots=True)
class _Entry:
    message: DatagramMessage
    size: int
    transmits: int
    order: int


class BroadcastQueue:
    def __init__(self, sizer: Callable[[DatagramMessage], int]) -> None:
        self._sizer = sizer
        self._entries: dict[str, _Entry] = {}
        self._order = 0

    def __len__(self) -> int:
        return len(self._entries)

    def queue(self, key: str, message: DatagramMessage) -> None:
        """Queue `message`, replacing any pending update with the same `key`."""
        self._order += 1
        self._entries[key] = _Entry(message, self._sizer(message), 0, self._order)

    def take(self, budget: int, limit: int,
             skip: Callable[[str, DatagramMessage], bool] | None = None) -> list[DatagramMessage]:
        """Messages that fit in `budget` bytes, counting each as transmitted once
        more and dropping those that reached `limit` transmissions. Entries for
        which `skip(key, message)` holds are left untouched for another send."""
        if not self._entries or budget <= 0:
            return []
        ranked = sorted(self._entries.items(), key=lambda kv: (kv[1].transmits, -kv[1].order))
        taken: list[DatagramMessage] = []
        for key, entry in ranked:
            if entry.size > budget or (skip is not None and skip(key, entry.message)):
                continue
            budget -= entry.size
            taken.append(entry.message)
            entry.transmits += 1
            if entry.transmits >= limit:
                del self._entries[key]
        return taken

    def prune(self, keep: int) -> None:
        """Drop the most-transmitted entries beyond `keep` (bounds memory when a
        mesh churns faster than updates drain)."""
        if len(self._entries) <= keep:
            return
        ranked = sorted(self._entries.items(), key=lambda kv: (kv[1].transmits, -kv[1].order))
        for key, _ in ranked[keep:]:
            del self._entries[key]
