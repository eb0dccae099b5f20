"""A suspicion timer with Lifeguard §4.3 confirmations."""

from __future__ import annotations

from nanomesh.gossip.timing import suspicion_deadline_offset


class Suspicion:
    """One suspected peer: when it started, who confirmed it, when it expires.

    The peer whose message started the suspicion is remembered but not counted
    (it is not independent evidence); every other distinct accuser is a
    confirmation and pulls the deadline in, down to `min_timeout` at
    `expected` confirmations.
    """

    __slots__ = ("_accusers", "confirmations", "deadline", "expected", "max_timeout",
                 "min_timeout", "recheck_at", "start")

    def __init__(self, first_accuser: str, start: float, expected: int,
                 min_timeout: float, max_timeout: float) -> None:
        self._accusers = {first_accuser}
        self.start = start
        self.expected = expected
        self.min_timeout = min_timeout
        self.max_timeout = max_timeout
        self.confirmations = 0
        self.deadline = start + self._offset()
        self.recheck_at: float | None = start + min_timeout / 2
        """When we ask the suspect ourselves (see Membership._recheck_suspects);
        None once done."""

    def _offset(self) -> float:
        return suspicion_deadline_offset(
            self.confirmations, self.expected, self.min_timeout, self.max_timeout)

    def confirm(self, accuser: str) -> bool:
        """Count an independent accuser; True if it was new (worth re-gossiping,
        so that other peers' timers shrink too)."""
        if self.confirmations >= self.expected or accuser in self._accusers:
            return False
        self._accusers.add(accuser)
        self.confirmations += 1
        self.deadline = self.start + self._offset()
        return True
