"""Candidacies that elect nobody space out the next ones (issue 9).

Raft elects a leader only while a candidate's vote requests and their answers
travel faster than the other voters' election timeouts run out (the Raft
paper's *broadcast time << election timeout*). On a host so loaded that a
round trip between two daemons takes longer than the shortest timeout
(0.35 s; measured with 100 daemons starting on 2 cores, load 60), every
voter's timeout fires while vote requests are still on their way: each
becomes the candidate of a newer term, and the cluster elected nobody for
20 s (terms 4 -> 34) before chance let one candidate through.

So a node whose candidacies keep electing nobody waits longer before the
next: the first `ElectionBackoff.free_retries` + 1 candidacies of a streak
use the normal election timeout (drawn at random in [min, max]), each later
one doubles it, up to ``2**max_doublings``; back to x1 once it hears a leader
or leads. A failover keeps its timing, a split vote (about 1 failover in 20
on this machine) included: its retry is the streak's second candidacy. Only
elections that keep failing wait longer, and the wider windows spread the
candidacies, so one candidate's requests arrive before another's timeout
fires.

Raft's safety never depends on timing: this is a liveness choice. Pure: the
shell (`nanomesh.consensus._pysyncobj`) reports candidacies and leaders.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_DOUBLINGS = 3
"""At most x8: 2.8-5.6 s with the default 0.35-0.70 s timeout, longer than
any round trip measured on a loaded 2-core host (about 1 s at load 60)."""
FREE_RETRIES = 1
"""Failed candidacies in a row retried at the normal timeout: one, so the
retry after a split vote does not push a failover past 1 s."""


@dataclass
class ElectionBackoff:
    """The stretch of one node's election timeout (module doc)."""

    max_doublings: int = MAX_DOUBLINGS
    free_retries: int = FREE_RETRIES
    streak: int = 0
    """Candidacies started in a row without a leader heard in between."""

    def __post_init__(self) -> None:
        for name in ("max_doublings", "free_retries"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def candidacy(self) -> int:
        """This node started a candidacy: the factor for its election timeout
        (1 for the first `free_retries` + 1 of a streak)."""
        factor = 1 << min(max(0, self.streak - self.free_retries), self.max_doublings)
        self.streak += 1
        return factor

    @property
    def at_cap(self) -> bool:
        """Did the last candidacy reach the longest stretch for the first time
        in this streak? (Worth one warning.)"""
        return self.streak == self.free_retries + self.max_doublings + 1

    def leader_known(self) -> None:
        """This node hears a leader, or leads: elections work again."""
        self.streak = 0


def stretched_deadline(*, now: float, draw: float, low: float, high: float,
                       factor: int) -> float:
    """The election deadline of a candidacy seen at `now`: a timeout drawn
    in [`low`, `high`) (`draw` uniform in [0, 1)) stretched by `factor`.
    Drawn afresh rather than scaling pysyncobj's deadline: on a loaded host
    that deadline may already have passed when the shell first sees the
    candidacy. ValueError for a draw outside [0, 1) (a caller's bug)."""
    if not 0.0 <= draw < 1.0:
        raise ValueError(f"draw must be in [0, 1), got {draw!r}")
    return now + (low + draw * (high - low)) * factor
