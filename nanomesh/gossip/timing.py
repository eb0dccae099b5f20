"""The formulas that scale SWIM's timers with the size of the mesh.

Each is one pure function, table-tested in tests/gossip/test_timing.py; the
config docstrings point here instead of restating them. They follow
hashicorp/memberlist's util.go so that our numbers are comparable with it.
"""

from __future__ import annotations

import math


def suspicion_timeout(suspicion_mult: int, n: int, probe_interval: float) -> float:
    """Minimum time a suspected peer gets to refute before it is declared dead.

    ``suspicion_mult * max(1, log10(n)) * probe_interval`` seconds: the time
    for a suspect message to reach everyone grows with log(n) (SWIM §4.2), so
    the grace period must too.
    """
    node_scale = max(1.0, math.log10(max(1, n)))
    return suspicion_mult * node_scale * probe_interval


def suspicion_deadline_offset(
    confirmations: int, expected: int, min_timeout: float, max_timeout: float
) -> float:
    """Lifeguard §4.3 dynamic suspicion: the timeout starts at `max_timeout` and
    falls logarithmically towards `min_timeout` as independent peers confirm
    the suspicion, reaching it at `expected` confirmations.

    ``max(min, max - (max - min) * log(C + 1) / log(K + 1))``
    """
    if expected < 1:
        return min_timeout
    frac = math.log(confirmations + 1) / math.log(expected + 1)
    return max(min_timeout, max_timeout - (max_timeout - min_timeout) * frac)


def retransmit_limit(retransmit_mult: int, n: int) -> int:
    """How many times each broadcast is piggybacked: ``mult * ceil(log10(n + 1))``.

    An epidemic reaches all n peers with high probability after O(log n)
    rounds (SWIM §4.1; Demers et al.), so the number of sends grows likewise.
    """
    return retransmit_mult * math.ceil(math.log10(n + 1))


def push_pull_scale(interval: float, n: int) -> float:
    """Anti-entropy interval for a mesh of n peers. Every push-pull moves the
    whole membership table, so beyond 32 peers the interval doubles each time
    the mesh does, keeping the total anti-entropy traffic roughly flat."""
    threshold = 32
    if n <= threshold:
        return interval
    multiplier = math.ceil(math.log2(n) - math.log2(threshold)) + 1
    return interval * multiplier


def expected_confirmations(suspicion_mult: int, n: int) -> int:
    """K in Lifeguard's formula: how many independent confirmations bring a
    suspicion down to its minimum timeout. ``suspicion_mult - 2`` as in
    memberlist, and 0 when too few other peers exist to confirm."""
    k = suspicion_mult - 2
    return 0 if n - 2 < k else k
