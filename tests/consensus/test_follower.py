"""The learner's shell (`nanomesh.consensus.follower.FollowerNode`) against
fake voters: it pulls on an announcement, keeps the state in its state file
across a restart, tries the next voter when one fails, forwards writes and
reads its own write. Trio's autojump clock drives the timers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from nanomesh.consensus import ConsensusError, NoLeaderError
from nanomesh.consensus.follow_core import FollowConfig, Version
from nanomesh.consensus.follower import (
    STATE_FILE,
    FollowerNode,
    outcome_of,
    parse_state_reply,
    run_command,
    state_reply,
)
from nanomesh.consensus.state import DesiredState, Outcome, apply_put_service
from nanomesh.consensus.status import RaftStatus, Role

CONFIG = FollowConfig(recheck_period=10.0, backoff_min=0.5, backoff_max=10.0, pull_timeout=2.0)
VOTERS = frozenset({"a:7948", "b:7948"})


class FakeVoter:
    """A voter's committed state and the writes a learner forwards to it."""

    def __init__(self) -> None:
        self.state = DesiredState()
        self.status = RaftStatus("a:7948", Role.LEADER, 3, "a:7948", VOTERS, 0, 0, True,
                                 True, 0, True)

    async def put_service(self, name: str, spec: Mapping[str, Any], *, timeout: float
                          ) -> Outcome:
        self.state, outcome = apply_put_service(self.state, name, dict(spec))
        return outcome

    def write(self, name: str) -> None:
        self.state = apply_put_service(self.state, name, {"image": name})[0]


class FakeVoters:
    """A `FollowTransport` over in-memory voters, with a switch to make one fail."""

    def __init__(self) -> None:
        self.voters = {"a": FakeVoter(), "b": FakeVoter()}
        self.down: set[str] = set()
        self.announce: Version | None = None
        self.asked: list[str] = []
        self.gossip_leader: tuple[str, int, frozenset[str]] | None = None

    def sources(self) -> list[str]:
        return ["a", "b"]

    def announced(self) -> Version | None:
        return self.announce

    def leader(self) -> tuple[str, int, frozenset[str]] | None:
        return self.gossip_leader

    async def pull(self, source: str, have: Version | None) -> Any:
        self.asked.append(source)
        await trio.sleep(0.01)
        if source in self.down:
            raise ConsensusError(f"cannot reach {source}")
        v = self.voters[source]
        return json.loads(json.dumps(state_reply(v.state, v.status, 0,
                                                 None if have is None else list(have))))

    async def command(self, source: str, request: Mapping[str, Any]) -> Any:
        if source in self.down:
            raise ConsensusError(f"cannot reach {source}")
        reply = await run_command(self.voters[source], 0, dict(request))
        for other in self.voters.values():  # replication, as Raft would do it
            other.state = self.voters[source].state
        return json.loads(json.dumps(reply))


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    # Not 0: the state file is written in a thread, which the clock must not jump over.
    return trio.testing.MockClock(autojump_threshold=0.05)


async def _running(nursery: trio.Nursery, voters: FakeVoters, data: Path) -> FollowerNode:
    node = FollowerNode(voters, data, config=CONFIG)
    await nursery.start(node.run)
    return node


async def _follower(voters: FakeVoters, data: Path) -> AsyncIterator[FollowerNode]:
    async with trio.open_nursery() as nursery:
        yield await _running(nursery, voters, data)
        nursery.cancel_scope.cancel()


async def test_pulls_on_announcement_and_persists(tmp_path: Path,
                                                  autojump_clock: trio.testing.MockClock
                                                  ) -> None:
    voters = FakeVoters()
    voters.voters["a"].write("cam")
    async with trio.open_nursery() as nursery:
        node = await _running(nursery, voters, tmp_path)
        await node.wait_state(lambda s: "cam" in s.services, timeout=1.0)
        assert node.leader == "a:7948" and node.voters == VOTERS and not node.is_leader
        # A commit is announced by gossip: pulled at once, not at the recheck.
        for v in voters.voters.values():
            v.write("door")
        voters.announce = (0, 2)
        node.notify()
        start = trio.current_time()
        await node.wait_state(lambda s: "door" in s.services, timeout=1.0)
        assert trio.current_time() - start < 0.1
        saved = json.loads((tmp_path / STATE_FILE).read_text())
        assert set(saved["state"]["services"]) == {"cam", "door"}
        nursery.cancel_scope.cancel()


async def test_recheck_finds_a_lost_announcement(tmp_path: Path,
                                                 autojump_clock: trio.testing.MockClock
                                                 ) -> None:
    voters = FakeVoters()
    async with trio.open_nursery() as nursery:
        node = await _running(nursery, voters, tmp_path)
        await node.wait_leader(timeout=1.0)
        voters.voters["a"].write("cam")  # no announcement
        start = trio.current_time()
        await node.wait_state(lambda s: "cam" in s.services, timeout=11.0)
        assert 9.9 <= trio.current_time() - start <= 10.1, "at the recheck period"
        nursery.cancel_scope.cancel()


async def test_leader_and_voters_follow_gossip_between_pulls(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    """A failover or a voter change commits no revision: the learner shows
    the leader that gossips itself as such at a higher term without a pull."""
    voters = FakeVoters()
    async with trio.open_nursery() as nursery:
        node = await _running(nursery, voters, tmp_path)
        await node.wait_leader(timeout=1.0)
        pulls = len(voters.asked)
        # A voter change at the pull's term: gossip's word (newer) wins.
        grown = frozenset({"a:7948", "b:7948", "c:7948"})
        voters.gossip_leader = ("a:7948", 3, grown)
        node.notify()
        await node.wait_status(lambda s: s.voters == grown, timeout=0.1)
        voters.gossip_leader = ("b:7948", 2, VOTERS)
        node.notify()
        await trio.sleep(0.1)
        assert node.leader == "a:7948", "an older term than the pull's: ignored"
        new_voters = frozenset({"b:7948", "c:7948"})
        voters.gossip_leader = ("b:7948", 4, new_voters)
        node.notify()
        await node.wait_status(lambda s: s.leader == "b:7948", timeout=0.1)
        assert node.voters == new_voters and node.term == 4
        assert len(voters.asked) == pulls, "no pull needed"
        nursery.cancel_scope.cancel()


async def test_restart_starts_from_the_state_file(tmp_path: Path,
                                                  autojump_clock: trio.testing.MockClock
                                                  ) -> None:
    voters = FakeVoters()
    voters.voters["a"].write("cam")
    async with trio.open_nursery() as nursery:
        node = await _running(nursery, voters, tmp_path)
        await node.wait_state(lambda s: "cam" in s.services, timeout=1.0)
        nursery.cancel_scope.cancel()
    voters.down = {"a", "b"}  # every voter unreachable after the restart
    async with trio.open_nursery() as nursery:
        again = await _running(nursery, voters, tmp_path)
        assert "cam" in again.state.services, "the committed state, before any pull"
        assert again.leader == "a:7948", "ready for the control loop"
        await trio.sleep(5.0)
        assert again.leader is None, "pulls keep failing: no leader known"
        assert "cam" in again.state.services, "the state stays"
        nursery.cancel_scope.cancel()


async def test_a_failed_save_is_reported_and_retried(tmp_path: Path,
                                                     autojump_clock: trio.testing.MockClock
                                                     ) -> None:
    (tmp_path / STATE_FILE).mkdir()  # the rename onto it fails like a broken disk
    voters = FakeVoters()
    voters.voters["a"].write("cam")
    async with trio.open_nursery() as nursery:
        node = await _running(nursery, voters, tmp_path)
        await node.wait_state(lambda s: "cam" in s.services, timeout=1.0)
        assert node.storage_problems, "reported"
        (tmp_path / STATE_FILE).rmdir()
        await trio.sleep(CONFIG.recheck_period + 1)
        assert not node.storage_problems, "saved at the next pull, though nothing changed"
        assert "cam" in json.loads((tmp_path / STATE_FILE).read_text())["state"]["services"]
        nursery.cancel_scope.cancel()


async def test_failed_voter_backs_off_and_tries_the_next(tmp_path: Path,
                                                         autojump_clock: trio.testing.MockClock
                                                         ) -> None:
    voters = FakeVoters()
    voters.down = {"a"}
    voters.voters["b"].write("cam")
    async with trio.open_nursery() as nursery:
        node = await _running(nursery, voters, tmp_path)
        start = trio.current_time()
        await node.wait_state(lambda s: "cam" in s.services, timeout=2.0)
        assert voters.asked == ["a", "b"]
        assert 0.5 <= trio.current_time() - start < 0.6, "after one back-off"
        nursery.cancel_scope.cancel()


async def test_forwards_writes_and_reads_its_own(tmp_path: Path,
                                                 autojump_clock: trio.testing.MockClock
                                                 ) -> None:
    voters = FakeVoters()
    voters.down = {"a"}  # the first voter is unreachable: the write goes to the next
    async with trio.open_nursery() as nursery:
        node = await _running(nursery, voters, tmp_path)
        outcome = await node.put_service("cam", {"image": "cam"}, timeout=3.0)
        assert outcome.applied and outcome.revision == 1
        assert "cam" in node.state.services, "the state of its own write, at once"
        with pytest.raises(ValueError):
            await node.put_service("cam", {"image": float("nan")}, timeout=3.0)
        nursery.cancel_scope.cancel()


async def test_no_voter_known_is_no_leader(tmp_path: Path) -> None:
    voters = FakeVoters()
    voters.sources = lambda: []  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        node = await _running(nursery, voters, tmp_path)
        with pytest.raises(NoLeaderError):
            await node.put_service("cam", {"image": "cam"}, timeout=1.0)
        nursery.cancel_scope.cancel()


def test_state_reply_round_trip_and_unchanged() -> None:
    v = FakeVoter()
    v.write("cam")
    full = parse_state_reply(json.loads(json.dumps(state_reply(v.state, v.status, 2, None))))
    assert full.version == (2, 1) and full.state == v.state and full.leader == "a:7948"
    same = parse_state_reply(state_reply(v.state, v.status, 2, [2, 1]))
    assert same.state is None, "the asker holds it: no state sent"
    with pytest.raises(NoLeaderError):
        state_reply(v.state, RaftStatus(None, Role.FOLLOWER, 3, None, VOTERS, 0, 0, False,
                                        True, 0, True), 0, None)
    bad: Any
    for bad in ([], {"cluster_epoch": -1}, {**state_reply(v.state, v.status, 0, None),
                                            "revision": 9}):
        with pytest.raises(ValueError):
            parse_state_reply(bad)


async def test_command_errors_cross_the_wire() -> None:
    class Refusing:
        async def put_service(self, **_: Any) -> Outcome:
            raise NoLeaderError("election under way")

    reply = await run_command(Refusing(), 0, {"op": "put_service", "timeout": 1,
                                              "args": {"name": "x", "spec": {}}})
    with pytest.raises(NoLeaderError, match="election"):
        outcome_of(json.loads(json.dumps(reply)))

    for bad in ({"op": "add_voter", "args": {"address": "x"}, "timeout": 1},
                {"op": "put_service", "args": {"name": "x"}, "timeout": 1},
                {"op": "barrier", "args": {}, "timeout": 1000}, "x"):
        with pytest.raises(ValueError):
            await run_command(Refusing(), 0, bad)
