"""Candidacies that elect nobody space out the next ones (issue 9).

Raft elects a leader only while a candidate's vote requests and their answers
travel faster than the other voters' election timeouts run out (the Raft
paper's *broadcast time << election timeout*). On a host so loaded that a
round trip between two daemons takes longer than the shortest timeout
(0.35 s; measured with 100 daemons starting on 2 cores, load 60), every
voter's timeout fires while vote requests are still on their way: each
becomes the candidate of a newer term, and the cluster elected nobody for
20 s (terms 4 -> 34) before chance let one candidate through.

So a node that starts a candidacy while its previous one elected nobody
waits longer before the next: after k such candidacies in a row its election
timeout (drawn at random in [min, max]) is stretched by ``2**k``, k at
most `ElectionBackoff.max_doublings`, and back to x1 once it hears a leader
or leads. The first election after a leader is lost is unchanged, so failover
keeps its timing; only an election that already failed waits longer. Wider
windows also spread the candidacies, so one candidate's requests arrive
before another's timeout fires.

Raft's safety never depends on timing: this is a liveness choice. Pure: the
shell (`nanomesh.consensus._pysyncobj`) reports candidacies and leaders.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_DOUBLINGS = 3
"""At most x8: 2.8-5.6 s with the default 0.35-0.70 s timeout, longer than
any round trip measured on a loaded 2-core host (about 1 s at load 60)."""


@dataclass
class ElectionBackoff:
    """The stretch of one node's election timeout (module doc)."""

    max_doublings: int = MAX_DOUBLINGS
    streak: int = 0
    """Candidacies started in a row without a leader heard in between."""

    def __post_init__(self) -> None:
        if self.max_doublings < 0:
            raise ValueError(f"max_doublings must be >= 0, got {self.max_doublings}")

    def candidacy(self) -> int:
        """This node started a candidacy: the factor for its election
        timeout (1 for the first of a streak)."""
        factor = 1 << min(self.streak, self.max_doublings)
        self.streak += 1
        return factor

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
