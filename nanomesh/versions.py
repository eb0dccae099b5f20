"""Which nanomesh versions can share a mesh, and what a mixed mesh may do.

A rolling upgrade runs old and new daemons side by side for minutes, so every
peer says what it speaks and every peer checks what the others say. Three
protocols are versioned, each as a range ``[oldest accepted, newest spoken]``:

- ``gossip``: the envelope (`nanomesh.wire.envelope`, `PROTOCOL_MIN` ..
  `PROTOCOL_MAX`). It is enforced at the boundary already: a packet outside
  the range is never opened, so a peer that fails this check is never heard
  from at all. It is advertised so that ``nanomesh members`` can show it.
- ``raft``: the replicated state's command set (`COMMAND_KINDS`). pysyncobj
  numbers replicated methods by sorted ``(ver, name)`` and an old voter that
  receives a number it does not know fails inside its tick thread, so a new
  command kind is added with a higher pysyncobj ``ver`` (its number then
  follows the old ones) and the leader commits it only once every member can
  apply it (`may_commit`). The learners are counted too: they read the state
  the new command writes.
- ``api``: the peer API other peers call (bundle fetches, follower pulls,
  forwarded writes, ``nanomesh upgrade``).

Where it travels: the capability profile's ``peer`` section,
``{"nanomesh": VERSION, "protocols": {"gossip": [lo, hi], "raft": [lo, hi],
"api": [lo, hi]}}``. The profile is relayed verbatim by every peer, old ones
included (they check that it is JSON-shaped and keep it), whereas a field
appended to a gossip message would be dropped by an old peer that re-gossips
the message. A peer from before this section (nanomesh 0.1.0, which gossips
only ``peer.nanomesh``) reads as `LEGACY`: 1..1 for each, what it spoke.

Two peers are compatible when every range overlaps (`problems`). A peer that
is not is *incompatible*: it stays in the member list (shown by ``nanomesh
members``), is logged once, and gets no placements and no vote; nothing
crashes. Pure: profiles in, verdicts out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from nanomesh import __version__
from nanomesh.wire.envelope import PROTOCOL_MAX, PROTOCOL_MIN

PROTOCOL_NAMES = ("gossip", "raft", "api")

RAFT_VERSION = 1
"""The newest replicated command set this build applies (`COMMAND_KINDS`)."""
RAFT_MIN = 1
"""The oldest command set this build still applies; raise it only when an old
command kind is dropped."""
API_VERSION = 1
"""The peer API this build serves (``/v1/...``)."""
API_MIN = 1

COMMAND_KINDS: Mapping[str, int] = {
    "put_service": 1,
    "delete_service": 1,
    "set_plan": 1,
    "init_meta": 1,
    "patch_service": 1,
    "put_registry": 1,
}
"""Every replicated command kind and the ``raft`` protocol version that
introduced it. ONLY APPEND; a new kind gets ``RAFT_VERSION + 1`` and bumps
`RAFT_VERSION`."""

MAX_VERSION_TEXT = 64
"""Longest version string shown; a longer one from the network is cut."""


@dataclass(frozen=True, slots=True)
class Range:
    """Protocol versions ``low`` .. ``high`` inclusive."""

    low: int
    high: int

    def overlaps(self, other: Range) -> bool:
        return self.low <= other.high and other.low <= self.high

    def __str__(self) -> str:
        return f"{self.low}..{self.high}"


@dataclass(frozen=True, slots=True)
class Speaks:
    """One peer's nanomesh version and protocol ranges."""

    version: str
    gossip: Range
    raft: Range
    api: Range

    def ranges(self) -> dict[str, Range]:
        return {"gossip": self.gossip, "raft": self.raft, "api": self.api}

    def protocols_json(self) -> dict[str, list[int]]:
        """The profile's ``peer.protocols`` value."""
        return {name: [r.low, r.high] for name, r in self.ranges().items()}


THIS = Speaks(__version__, Range(PROTOCOL_MIN, PROTOCOL_MAX), Range(RAFT_MIN, RAFT_VERSION),
              Range(API_MIN, API_VERSION))
"""What this build speaks."""

_ONE = Range(1, 1)
LEGACY = Speaks("0.1.0", _ONE, _ONE, _ONE)
"""What a peer that gossips no ``peer.protocols`` speaks (nanomesh 0.1.0)."""


class MalformedVersions(ValueError):
    """A ``peer`` section whose versions cannot be read (it came from the
    network: the peer is then treated as incompatible, never trusted)."""


def speaks_from_profile(profile: Mapping[str, Any] | None) -> Speaks | None:
    """What the peer with this gossiped profile speaks; None while its
    profile has not arrived. `LEGACY` ranges when it advertises none.
    MalformedVersions for a section that is there but unreadable."""
    if profile is None:
        return None
    peer = profile.get("peer")
    if not isinstance(peer, Mapping):
        return LEGACY
    version = peer.get("nanomesh")
    text = version[:MAX_VERSION_TEXT] if isinstance(version, str) and version else "?"
    if "protocols" not in peer:
        return Speaks(text, LEGACY.gossip, LEGACY.raft, LEGACY.api)
    protocols = peer["protocols"]
    if not isinstance(protocols, Mapping):
        raise MalformedVersions("peer.protocols must be a map")
    ranges = [_range(protocols.get(name), name) for name in PROTOCOL_NAMES]
    return Speaks(text, *ranges)


def _range(value: object, name: str) -> Range:
    """A ``[low, high]`` pair. An unknown protocol name a newer peer adds is
    ignored by the caller (only `PROTOCOL_NAMES` are read)."""
    if (not isinstance(value, list) or len(value) != 2
            or not all(type(v) is int and v >= 0 for v in value) or value[0] > value[1]):
        raise MalformedVersions(f"peer.protocols.{name} must be [low, high] with "
                                f"0 <= low <= high, got {str(value)[:40]}")
    return Range(value[0], value[1])


def problems(mine: Speaks, theirs: Speaks) -> list[str]:
    """Why the two cannot share a mesh, one sentence per protocol; empty if
    they can."""
    return [f"{name} {theirs_r} does not overlap ours {mine_r}"
            for (name, mine_r), theirs_r in zip(mine.ranges().items(),
                                                theirs.ranges().values(), strict=True)
            if not mine_r.overlaps(theirs_r)]


def verdict(profile: Mapping[str, Any] | None, mine: Speaks = THIS) -> list[str]:
    """`problems` of a gossiped profile against ours; a malformed section is
    one problem. A profile not yet pulled has none (nothing is known)."""
    try:
        theirs = speaks_from_profile(profile)
    except MalformedVersions as exc:
        return [str(exc)]
    return [] if theirs is None else problems(mine, theirs)


def compatible(profile: Mapping[str, Any] | None, mine: Speaks = THIS) -> bool:
    return not verdict(profile, mine)


def mesh_raft_version(profiles: Iterable[Mapping[str, Any] | None],
                      mine: Speaks = THIS) -> int:
    """The newest command set every compatible member can apply: the lowest
    ``raft.high`` among them and us. Incompatible members are not counted
    (they get no vote and no state); members whose profile has not arrived
    count as `LEGACY` (the safe side: they may be old)."""
    newest = mine.raft.high
    for profile in profiles:
        if not compatible(profile, mine):
            continue
        theirs = speaks_from_profile(profile) or LEGACY
        newest = min(newest, theirs.raft.high)
    return newest


def may_commit(kind: str, mesh_version: int) -> str | None:
    """None if a command of `kind` may be committed in a mesh whose members
    all apply `mesh_version`; else why not."""
    needs = COMMAND_KINDS.get(kind)
    if needs is None:
        return f"unknown command kind {kind!r}"
    if needs > mesh_version:
        return (f"{kind} needs raft protocol {needs}; some peer in the mesh applies only "
                f"up to {mesh_version}: upgrade every peer first")
    return None
