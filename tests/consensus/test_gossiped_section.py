"""What a peer gossips under ``profile["raft"]`` (`role_core.gossiped_section`):
a voter its whole belief, a learner only its role, address and epoch, so an
election changes the voters' profiles and no learner's (issue 9); and the
readers of those sections (this version's and an older one's, which are the
same functions) answer the same whether learners gossip their belief or not."""

from __future__ import annotations

from typing import Any

import pytest

from nanomesh.consensus.follow_core import (
    announced_version,
    gossiped_leader,
    pull_sources,
)
from nanomesh.consensus.role_core import (
    epoch_from_profiles,
    gossiped_section,
    voters_from_profiles,
)

VOTERS = ["a:7948", "b:7948", "c:7948", "d:7948", "e:7948"]


def belief(role: str, addr: str, *, leader: str | None = "a:7948", term: int = 3,
           epoch: int = 0, **extra: Any) -> dict[str, Any]:
    return {"role": role, "addr": addr, "leader": leader, "term": term,
            "voters": list(VOTERS), "cluster_epoch": epoch, **extra}


@pytest.mark.parametrize(("given", "gossiped"), [
    pytest.param(belief("voter", "a:7948", revision=7), belief("voter", "a:7948", revision=7),
                 id="leader: all, revision included"),
    pytest.param(belief("voter", "b:7948"), belief("voter", "b:7948"), id="voter: all"),
    pytest.param(belief("joining", "f:7948"), belief("joining", "f:7948"),
                 id="joining voter: all"),
    pytest.param(belief("learner", "f:7948", epoch=2),
                 {"role": "learner", "addr": "f:7948", "cluster_epoch": 2},
                 id="learner: role, addr, epoch"),
    pytest.param({"role": "none", "addr": "f:7948", "leader": None, "term": 0, "voters": [],
                  "cluster_epoch": 0},
                 {"role": "none", "addr": "f:7948", "cluster_epoch": 0}, id="no role yet"),
    pytest.param({"role": "learner"}, {"role": "learner"}, id="missing keys stay missing"),
])
def test_gossiped_section(given: dict[str, Any], gossiped: dict[str, Any]) -> None:
    assert gossiped_section(given) == gossiped


@pytest.mark.parametrize(("role", "republishes"), [
    ("voter", True), ("joining", True), ("learner", False), ("none", False)])
def test_an_election_changes_only_a_voters_section(role: str, republishes: bool) -> None:
    """Before and after an election (a new leader at a higher term, the same
    voters): the profile changes, so the peer republishes, only for voters."""
    before = belief(role, "f:7948", leader="a:7948", term=3)
    after = belief(role, "f:7948", leader="b:7948", term=4)
    assert (gossiped_section(before) != gossiped_section(after)) is republishes
    lost = belief(role, "f:7948", leader=None, term=4)
    assert (gossiped_section(before) != gossiped_section(lost)) is republishes


def _mesh(*, lean: bool, leader_alive: bool = True) -> list[dict[str, Any]]:
    """Sections of 5 voters and 20 learners at term 4 (b leads and announces
    revision 9; with b dead the others still name it for a moment), the
    learners' in full (as before this change) or lean (now)."""
    voters = [belief("voter", v, leader="b:7948", term=4,
                     **({"revision": 9} if v == "b:7948" else {}))
              for v in VOTERS if leader_alive or v != "b:7948"]
    learners = [belief("learner", f"l{i}:7948", leader="b:7948", term=4)
                for i in range(20)]
    return voters + [gossiped_section(s) if lean else s for s in learners]


@pytest.mark.parametrize("leader_alive", [True, False])
def test_readers_answer_the_same_with_lean_learner_sections(leader_alive: bool) -> None:
    """Every reader of other peers' sections (the role manager's voters and
    epoch hints, a learner's pull sources, announced version and gossiped
    leader) gives the same answer whether learners gossip their belief or
    not: they read voters' sections; an old peer runs these same rules."""
    full, lean = _mesh(lean=False, leader_alive=leader_alive), \
        _mesh(lean=True, leader_alive=leader_alive)
    for read in (voters_from_profiles, epoch_from_profiles, announced_version,
                 pull_sources, gossiped_leader):
        assert read(full) == read(lean), read.__name__  # type: ignore[operator]
    assert voters_from_profiles(lean) == frozenset(VOTERS)
    if leader_alive:
        assert pull_sources(lean)[0] == "b:7948"
        assert announced_version(lean) == (0, 9)
        assert gossiped_leader(lean) == ("b:7948", 4, frozenset(VOTERS))


def test_lean_learner_sections_alone_name_no_voters() -> None:
    """With no voter alive, learners' lean sections name no voters (before,
    they named the last voters they had heard of, which no one could reach
    anyway); the epoch still counts."""
    sections = [gossiped_section(belief("learner", f"l{i}:7948", epoch=1)) for i in range(3)]
    assert voters_from_profiles(sections) == frozenset()
    assert epoch_from_profiles(sections) == 1
    assert pull_sources(sections) == [] and gossiped_leader(sections) is None
