"""The membership table: one record per known peer, plus an indexed set that
lets the core pick random live peers in O(1) even in a 5,000-peer simulation."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from nanomesh.gossip.suspicion import Suspicion
from nanomesh.wire import Address, MemberDigest, MemberState


@dataclass(slots=True)
class Member:
    name: str
    addr: Address
    incarnation: int
    state: MemberState
    state_since: float
    profile_version: int = 0
    """The newest profile version we have heard of."""
    profile: dict[str, Any] | None = None
    held_version: int = 0
    """The version of `profile` we hold (< profile_version while a pull is due)."""
    suspicion: Suspicion | None = None

    @property
    def dead_or_left(self) -> bool:
        return self.state is MemberState.DEAD or self.state is MemberState.LEFT

    def digest(self) -> MemberDigest:
        return MemberDigest(self.name, self.addr, self.incarnation, self.state,
                            self.profile_version)


class IndexedSet:
    """A set of names with O(1) add, remove and uniform random choice."""

    __slots__ = ("_index", "_items")

    def __init__(self) -> None:
        self._items: list[str] = []
        self._index: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def add(self, name: str) -> None:
        if name not in self._index:
            self._index[name] = len(self._items)
            self._items.append(name)

    def discard(self, name: str) -> None:
        i = self._index.pop(name, None)
        if i is None:
            return
        last = self._items.pop()
        if i < len(self._items):
            self._items[i] = last
            self._index[last] = i

    def sample(self, rng: random.Random, k: int,
               exclude: frozenset[str] = frozenset()) -> list[str]:
        """Up to `k` distinct random names not in `exclude`."""
        available = len(self._items) - sum(1 for e in exclude if e in self._index)
        k = min(k, available)
        if k <= 0:
            return []
        if k * 3 > len(self._items):  # dense: filter then sample
            pool = [n for n in self._items if n not in exclude]
            return rng.sample(pool, k)
        chosen: set[str] = set()
        while len(chosen) < k:  # sparse: rejection sampling, expected O(k)
            name = self._items[rng.randrange(len(self._items))]
            if name not in exclude:
                chosen.add(name)
        return sorted(chosen, key=lambda n: self._index[n])
