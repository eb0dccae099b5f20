"""A follower whose leader closed their link campaigns at once (issue 9).

A follower finds a dead leader by the election timeout: no heartbeat for a
random time in [raft_min_timeout, raft_max_timeout]. That timeout must span
several heartbeat periods (a busy device delays one now and then), so a fast
failover needs frequent heartbeats, and heartbeats and their answers were
most of a voter's idle traffic.

But a leader whose *process* dies (a crash, SIGKILL, the OOM killer, a
restart) does not go silent: its kernel closes its TCP connections at once
(FIN, or RST if data was unread), and every follower reads the end of its
link within a round trip. A live leader closes links too (it removed this
node from the cluster, it refused a frame), so the follower then tries to
connect to the leader's Raft port: only if its host refuses (nothing
listens: the process is gone) does it campaign, after a small random delay
instead of the rest of its election timeout. The delay, uniform in
[0, ``leader_loss_max_delay``), spreads the followers' candidacies, so the
first one's vote requests usually arrive before another starts (a split vote
costs one more election timeout). A leader that goes silent without closing
(power loss, a cut cable, SIGSTOP in the experiments) is still found by the
election timeout alone.

Raft's safety never depends on timing: campaigning early is a liveness
choice. Its worst case, a leader restarted so fast that it was gone when
probed, costs one election, like a stray election timeout (a restarted
leader has lost its leadership anyway).

Pure: the shell (`nanomesh.consensus._pysyncobj`) passes the facts, the
clock and a draw from its random generator.
"""

from __future__ import annotations


def campaigns_early(*, is_follower: bool, holding: bool, leader: str | None,
                    closed: str) -> bool:
    """Should this node campaign early because `closed` (an address) closed
    its link? Only a follower (a candidate already campaigns), not one that
    holds its elections until it first hears a leader (a joining node:
    `ConsensusConfig.join`), and only when `closed` is its leader."""
    return is_follower and not holding and leader is not None and leader == closed


def campaign_deadline(*, now: float, deadline: float, draw: float, max_delay: float) -> float:
    """The new election deadline: ``now + draw * max_delay``, or the current
    `deadline` if that comes first. `draw` is uniform in [0, 1) (ValueError
    outside it: a caller's bug, not a network input)."""
    if not 0.0 <= draw < 1.0:
        raise ValueError(f"draw must be in [0, 1), got {draw!r}")
    return min(deadline, now + draw * max_delay)
