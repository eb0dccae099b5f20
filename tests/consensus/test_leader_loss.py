"""`nanomesh.consensus.leader_loss`: when a follower whose leader closed
their link campaigns (issue 9). Pure: tables, no clock."""

from __future__ import annotations

import pytest

from nanomesh.consensus.leader_loss import campaign_deadline, campaigns_early

LEADER = "127.0.0.1:7948"
OTHER = "127.0.0.2:7948"


@pytest.mark.parametrize(("is_follower", "holding", "leader", "closed", "expected"), [
    (True, False, LEADER, LEADER, True),     # the follower's leader died: campaign now
    (True, False, LEADER, OTHER, False),     # another follower's link: nothing to do
    (True, False, None, LEADER, False),      # no leader known: the timeout runs already
    (False, False, LEADER, LEADER, False),   # a candidate or leader campaigns already
    (True, True, LEADER, LEADER, False),     # a joining node never campaigns first
])
def test_only_a_follower_that_lost_its_own_leader_campaigns_early(
        is_follower: bool, holding: bool, leader: str | None, closed: str,
        expected: bool) -> None:
    assert campaigns_early(is_follower=is_follower, holding=holding, leader=leader,
                           closed=closed) is expected


@pytest.mark.parametrize(("now", "deadline", "draw", "max_delay", "expected"), [
    (10.0, 10.3, 0.0, 0.1, 10.0),    # the smallest draw: at once
    (10.0, 10.3, 0.5, 0.1, 10.05),   # spread over [now, now + max_delay)
    (10.0, 10.02, 0.5, 0.1, 10.02),  # the election timeout comes first: kept
    (10.0, 9.0, 0.9, 0.1, 9.0),      # already due: kept
])
def test_the_deadline_moves_only_earlier(now: float, deadline: float, draw: float,
                                         max_delay: float, expected: float) -> None:
    assert campaign_deadline(now=now, deadline=deadline, draw=draw,
                             max_delay=max_delay) == pytest.approx(expected)


@pytest.mark.parametrize("draw", [-0.1, 1.0, 2.0])
def test_a_draw_outside_the_unit_interval_is_a_bug(draw: float) -> None:
    with pytest.raises(ValueError, match="draw"):
        campaign_deadline(now=0.0, deadline=1.0, draw=draw, max_delay=0.1)
