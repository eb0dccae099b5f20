"""Table tests of the timing formulas (memberlist util.go is the reference)."""

import pytest

from nanomesh.gossip.timing import (
    expected_confirmations,
    push_pull_scale,
    retransmit_limit,
    suspicion_deadline_offset,
    suspicion_timeout,
)


@pytest.mark.parametrize(("mult", "n", "interval", "expected"), [
    (4, 1, 1.0, 4.0),       # log10 floor of 1 for tiny meshes
    (4, 10, 1.0, 4.0),
    (4, 100, 1.0, 8.0),
    (4, 1000, 1.0, 12.0),
    (3, 20, 0.2, 3 * 1.3010299956639813 * 0.2),
    (4, 0, 1.0, 4.0),       # an empty view must not take log10(0)
])
def test_suspicion_timeout(mult: int, n: int, interval: float, expected: float) -> None:
    assert suspicion_timeout(mult, n, interval) == pytest.approx(expected)


@pytest.mark.parametrize(("c", "k", "expected"), [
    (0, 3, 30.0),           # no confirmation: the maximum
    (1, 3, 30.0 - 25.0 * 0.5),  # log(2)/log(4) = 0.5
    (3, 3, 5.0),            # K confirmations: the minimum
    (5, 3, 5.0),            # never below the minimum
    (0, 0, 5.0),            # nobody could confirm: the minimum at once
])
def test_lifeguard_dynamic_suspicion_timeout(c: int, k: int, expected: float) -> None:
    """Lifeguard §4.3: max - (max - min) * log(C + 1) / log(K + 1), floored at min."""
    assert suspicion_deadline_offset(c, k, 5.0, 30.0) == pytest.approx(expected)


@pytest.mark.parametrize(("mult", "n", "expected"), [
    (4, 1, 4), (4, 9, 4), (4, 10, 8), (4, 99, 8), (4, 100, 12), (4, 1000, 16), (2, 20, 4),
])
def test_retransmit_limit_grows_with_log_n(mult: int, n: int, expected: int) -> None:
    assert retransmit_limit(mult, n) == expected


@pytest.mark.parametrize(("n", "expected"), [(1, 30.0), (32, 30.0), (33, 60.0), (64, 60.0),
                                             (65, 90.0), (1000, 180.0)])
def test_push_pull_interval_scales_beyond_32_peers(n: int, expected: float) -> None:
    assert push_pull_scale(30.0, n) == expected


@pytest.mark.parametrize(("mult", "n", "expected"), [(4, 20, 2), (4, 3, 0), (4, 4, 2),
                                                     (3, 20, 1), (2, 20, 0)])
def test_expected_confirmations(mult: int, n: int, expected: int) -> None:
    assert expected_confirmations(mult, n) == expected
