"""Versions in a mixed mesh (`nanomesh.versions`): what a profile says a peer
speaks, which peers are compatible, and which Raft command kinds may commit.
Tables, plus the checks that tie the tables to the code they describe."""

from __future__ import annotations

from typing import Any

import pytest

from nanomesh.consensus._pysyncobj import _DesiredStateMachine
from nanomesh.consensus.config import ConsensusConfig
from nanomesh.consensus.errors import VersionGateError
from nanomesh.consensus.node import ConsensusNode
from nanomesh.consensus.voters import VoterPolicy, peer_info
from nanomesh.gossip.members import Member
from nanomesh.placement.config import PlacementConfig
from nanomesh.placement.decide import decide
from nanomesh.versions import (
    COMMAND_KINDS,
    LEGACY,
    RAFT_VERSION,
    THIS,
    MalformedVersions,
    Range,
    Speaks,
    may_commit,
    mesh_raft_version,
    problems,
    speaks_from_profile,
    verdict,
)
from nanomesh.wire import Keyring, MemberState
from nanomesh.wire.codec import unpack_messages
from nanomesh.wire.envelope import PROTOCOL_MAX, PROTOCOL_MIN
from nanomesh.wire.messages import ProfileRecord, ProfileReply


def profile(protocols: Any = None, version: str = "0.2.0", **extra: Any) -> dict[str, Any]:
    peer: dict[str, Any] = {"name": "p", "nanomesh": version}
    if protocols is not None:
        peer["protocols"] = protocols
    return {"peer": peer, **extra}


NEW = {"gossip": [1, 1], "raft": [1, 2], "api": [1, 1]}
TOO_NEW = {"gossip": [1, 1], "raft": [2, 2], "api": [1, 1]}


@pytest.mark.parametrize(("prof", "want"), [
    (None, None),                                           # not pulled yet: unknown
    ({}, LEGACY),                                           # no peer section at all
    (profile(version="0.1.0"), LEGACY),                     # nanomesh 0.1.0: no protocols
    (profile(NEW), Speaks("0.2.0", Range(1, 1), Range(1, 2), Range(1, 1))),
    # a newer peer's extra protocol is ignored: only the ones we know are read
    (profile({**NEW, "events": [1, 4]}), Speaks("0.2.0", Range(1, 1), Range(1, 2), Range(1, 1))),
    ({"peer": {"protocols": NEW}}, Speaks("?", Range(1, 1), Range(1, 2), Range(1, 1))),
    ({"peer": {"nanomesh": "x" * 500}}, Speaks("x" * 64, *LEGACY.ranges().values())),
])
def test_speaks_from_profile(prof: dict[str, Any] | None, want: Speaks | None) -> None:
    assert speaks_from_profile(prof) == want


@pytest.mark.parametrize("protocols", [
    "1..2", [1, 2], {"gossip": [1, 1], "raft": [1, 1]},     # not a map / one missing
    {**NEW, "raft": [2, 1]}, {**NEW, "raft": [1]}, {**NEW, "raft": [-1, 1]},
    {**NEW, "raft": [1.0, 2]}, {**NEW, "raft": [True, 2]}, {**NEW, "api": None},
])
def test_a_malformed_section_is_an_error_and_makes_the_peer_incompatible(
        protocols: Any) -> None:
    with pytest.raises(MalformedVersions):
        speaks_from_profile(profile(protocols))
    assert verdict(profile(protocols))


@pytest.mark.parametrize(("mine", "theirs", "want"), [
    ((1, 1), (1, 1), []),
    ((1, 2), (2, 3), []),                                   # overlap at 2
    ((1, 1), (2, 2), ["raft 2..2 does not overlap ours 1..1"]),
    ((2, 3), (1, 1), ["raft 1..1 does not overlap ours 2..3"]),
])
def test_problems_is_the_overlap_of_each_range(mine: tuple[int, int], theirs: tuple[int, int],
                                                want: list[str]) -> None:
    one = Range(1, 1)
    assert problems(Speaks("a", one, Range(*mine), one),
                    Speaks("b", one, Range(*theirs), one)) == want


def test_this_build_speaks_what_the_envelope_accepts_and_reads_a_legacy_peer() -> None:
    assert THIS.gossip == Range(PROTOCOL_MIN, PROTOCOL_MAX)
    assert THIS.raft.high == RAFT_VERSION
    assert verdict(profile(version="0.1.0")) == []          # old main joins a new mesh
    assert verdict(profile(THIS.protocols_json())) == []
    assert verdict(profile(TOO_NEW)) == [f"raft 2..2 does not overlap ours {THIS.raft}"]


@pytest.mark.parametrize(("profiles", "want"), [
    ([], RAFT_VERSION),
    ([profile(NEW)], RAFT_VERSION),                         # capped by ours
    ([profile(version="0.1.0"), profile(NEW)], 1),          # a legacy peer holds it at 1
    ([None], 1),                                            # not yet pulled: may be old
    ([profile(TOO_NEW)], RAFT_VERSION),                     # incompatible: not counted
])
def test_mesh_raft_version_is_what_every_compatible_member_applies(
        profiles: list[dict[str, Any] | None], want: int) -> None:
    assert mesh_raft_version(profiles) == want


def test_mesh_raft_version_when_we_are_newer() -> None:
    mine = Speaks("0.3.0", Range(1, 1), Range(1, 3), Range(1, 1))
    assert mesh_raft_version([profile(NEW)], mine) == 2
    assert mesh_raft_version([profile(NEW), profile(version="0.1.0")], mine) == 1


@pytest.mark.parametrize(("kind", "mesh", "refused"), [
    ("put_service", 1, False),
    ("set_plan", 1, False),
    ("put_service", 0, True),
    ("no_such_kind", 5, True),
])
def test_may_commit(kind: str, mesh: int, refused: bool) -> None:
    assert (may_commit(kind, mesh) is not None) is refused


def test_command_kinds_are_exactly_the_replicated_methods_and_their_pysyncobj_ver() -> None:
    """pysyncobj numbers replicated methods by sorted (ver, name): a kind
    added at version N must carry ``ver=N-1`` so its number follows every
    older kind's and an old voter's numbers do not shift."""
    found = {}
    for attr in dir(_DesiredStateMachine):
        method = getattr(_DesiredStateMachine, attr)
        if getattr(method, "replicated", False) and attr == method.origName:
            found[attr] = method.ver + 1
    assert found == dict(COMMAND_KINDS)


async def test_the_node_refuses_a_kind_the_mesh_cannot_apply_before_the_log() -> None:
    node = ConsensusNode(ConsensusConfig(address=("127.0.17.1", 7000),
                                         keyring=Keyring([b"k" * 16]),
                                         mesh_raft_version=lambda: 0))
    with pytest.raises(VersionGateError, match="needs raft protocol 1"):
        await node.put_service("echo", {"replicas": 1})


def test_an_incompatible_peer_gets_no_vote() -> None:
    prof = {"raft": {"role": "learner"}, "power": {"source": "ac"}, "peer": {"protocols": NEW}}
    ok = peer_info("a", "127.0.17.2", MemberState.ALIVE, 0.0, prof)
    bad = peer_info("b", "127.0.17.3", MemberState.ALIVE, 0.0,
                    {**prof, "peer": {"protocols": TOO_NEW}})
    assert (ok.compatible, bad.compatible) == (True, False)
    policy = VoterPolicy()
    assert policy.eligible(ok, 100.0) and not policy.eligible(bad, 100.0)


def _member(name: str, prof: dict[str, Any]) -> Member:
    return Member(name=name, addr=("127.0.17.2", 7946), incarnation=1,
                  state=MemberState.ALIVE, state_since=0.0, profile=prof)


def test_an_incompatible_peer_gets_no_placement() -> None:
    big = {"cpu": {"cores": 4}, "memory": {"available_mb": 4096}, "storage": {"free_mb": 4096},
           "power": {"source": "ac"}, "load": {"cpu_percent": 0}}
    members = [_member("new", {**big, "peer": {"protocols": TOO_NEW}}),
               _member("old", {**big, "peer": {"nanomesh": "0.1.0"}})]
    services = {"echo": {"spec": {"name": "echo", "replicas": 2}}}
    plan = decide(services, {}, members, PlacementConfig()).plan
    assert set(plan.assignments.values()) == {"old"}


def test_an_old_peer_decodes_a_new_profile_and_a_new_peer_an_old_one() -> None:
    """The wire side of compatibility: the profile travels as an opaque
    JSON-shaped map, so the new ``peer.protocols`` key passes the codec of
    any version (0.1.0's codec is this one: `_check_json_like`), and a
    profile without it reads as LEGACY."""
    from nanomesh.wire.codec import pack_messages
    for prof in (profile(THIS.protocols_json()), profile(version="0.1.0")):
        [reply] = unpack_messages(pack_messages([ProfileReply((ProfileRecord("p", 3, prof),))]))
        assert isinstance(reply, ProfileReply)
        assert reply.profiles[0].profile == prof
        assert verdict(reply.profiles[0].profile) == []


async def test_a_refused_kind_is_a_409_for_the_operator_not_a_503_to_retry() -> None:
    from nanomesh.daemon.api_mesh import consensus_call
    from nanomesh.daemon.http import HttpError

    async def refused() -> None:
        raise VersionGateError("put_service: refused: upgrade every peer first")

    with pytest.raises(HttpError) as caught:
        await consensus_call(refused)
    assert caught.value.status == 409
