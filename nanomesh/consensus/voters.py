"""Which peers are Raft voters: a pure policy, run by the leader.

Every peer is identical and runs a Raft node; a few of them vote, the others
are learners (read-only replicas). The leader calls `decide` about once a
second with a snapshot of the gossip view and the current configuration and
executes what it returns (`nanomesh.consensus.role_core`). This module does no
I/O and reads no clock: ``now`` is passed in, on the same clock as the
view's timestamps.

**One change at a time.** pysyncobj, like Raft §6's single-server changes,
refuses a membership change while the previous one is uncommitted, so
`decide` returns at most one action; the shell executes it to completion
(committed or failed) before it asks again. A sequence of decisions over an
unchanging view converges (tested as a property).

**The rules, in order.**

1. *Remove failed voters.* A voter whose peer has LEFT (a graceful leave,
   final) is removed at once; one that the membership protocol declared DEAD
   is removed once it has been dead for `VoterPolicy.stabilization` seconds,
   so a peer that reboots or is falsely declared dead does not cause two
   membership changes. It is only removed if that is useful: there is a
   healthy replacement ready, or the removal raises the number of failures
   the cluster tolerates (`removal_gains_tolerance`). From an odd count it
   does not: 3 voters with 1 dead need 2 of 3, 2 voters need 2 of 2 — both
   tolerate no further failure — and the dead voter may come back with its
   journal, which is the cheapest recovery of all.
2. *Grow* to `voter_goal`: the target (default 5), capped by how many voters
   the mesh can supply, rounded *down to an odd number*. An even count
   tolerates no more failures than the odd count below it (4 voters need 3,
   tolerating 1, like 3 voters), but it has more members that can fail: so the
   policy passes through 2 and 4 only on its way to 3 and 5, one change at a
   time. It promotes only while every voter is ALIVE: a promotion to n+1 voters
   needs a majority of n+1 acks, and with a voter already down the new voter
   itself becomes indispensable.
3. *Shrink* when there are more voters than the goal (the target was lowered,
   or a voter left and nobody can replace it, leaving 2 or 4) and every voter
   is ALIVE: remove the lowest-ranked voter that is not the leader. Peers
   that will soon be promotable (too young, or not running a learner yet)
   count as candidates here, so a short gap does not cause a shrink followed
   by a regrowth.

**Quorum reasoning.** The leader only runs this while it leads, so a majority
of the current n voters is alive (`has_quorum`). Removing a failed voter
keeps the alive count and lowers the majority (or keeps it), so the change
commits and the new configuration still has a quorum. Shrinking removes an
alive voter only when all voters are alive: n-1 alive out of n-1. Growing
adds a running peer: a alive of n becomes a+1 of n+1, and a >= maj(n)
implies a+1 >= maj(n+1). The one fragile step is 1 -> 2 voters (both must
ack), unavoidable with single-server changes; the shell makes the new voter
run before it is added and the joining role durable across a restart.

**Ranking** (`candidate_key`): mains power first (a voter that runs out of
battery is a failure we can predict), then stability (how long the peer has
been continuously alive, capped, in steps, so long-lived peers tie), then
cores, then memory, then name (deterministic). Eligibility
(`VoterPolicy.eligible`): ALIVE for at least `min_alive`, running a Raft node
that can be promoted (advertises role ``learner`` or ``joining``), enough
memory, and on battery only above `min_battery_percent`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nanomesh.consensus.config import DEFAULT_RAFT_PORT, format_address
from nanomesh.errors import ConfigError
from nanomesh.versions import compatible
from nanomesh.wire import MemberState

PROMOTABLE_ROLES = frozenset({"learner", "joining"})
"""Advertised Raft roles of a peer that can be asked to become a voter: it
runs a learner (or is already restarting as a joining voter)."""
SOON_PROMOTABLE_ROLES = PROMOTABLE_ROLES | {"none", "voter"}
"""Roles of a non-voter that will be promotable shortly: ``none`` waits to
learn the voters, ``voter`` was removed and will notice and become a learner.
They hold off a shrink (`decide`, rule 3)."""


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """One peer as the voter policy sees it (a snapshot).

    `raft_addr` is ``ip:port`` of its Raft node (the gossip IP, port 7948).
    `state`/`state_since` come from the membership view (`state_since` on the
    same clock as ``now``). `alive_since` is when it last became ALIVE (None
    if unknown: then `state_since` is used when ALIVE). `raft_role` is the
    role it advertises (``"voter"``, ``"learner"``, ``"joining"``,
    ``"none"``), None if its profile has not arrived. Resources missing from
    the profile read as "has nothing" (0, not mains powered)."""

    name: str
    raft_addr: str
    state: MemberState
    state_since: float
    mains_powered: bool = False
    battery_percent: float | None = None
    cores: int = 0
    memory_mb: int = 0
    alive_since: float | None = None
    raft_role: str | None = None
    compatible: bool = True
    """Its protocol ranges overlap ours (`nanomesh.versions`); an
    incompatible peer is never promoted."""

    def alive_for(self, now: float) -> float:
        """Seconds this peer has been continuously ALIVE (0 if it is not)."""
        if self.state is not MemberState.ALIVE:
            return 0.0
        since = self.state_since if self.alive_since is None else self.alive_since
        return max(0.0, now - since)


@dataclass(frozen=True, slots=True)
class Promote:
    """Make `name` (Raft node `raft_addr`) a voter: it restarts as a joining
    voter, then the leader adds it."""

    name: str
    raft_addr: str


@dataclass(frozen=True, slots=True)
class Remove:
    """Remove the voter `raft_addr` from the configuration. `reason` is
    ``"left"``, ``"dead"`` or ``"surplus"`` (shrinking to the goal)."""

    raft_addr: str
    reason: str


VoterAction = Promote | Remove


@dataclass(frozen=True, slots=True)
class VoterPolicy:
    """What the leader waits for and whom it trusts with a vote."""

    stabilization: float = 10.0
    """Seconds a voter must have been DEAD before it is removed. Longer than a
    reboot of a small device's daemon would be safer against churn, shorter
    restores fault tolerance sooner; 10 s is ~2 suspicion timeouts of the LAN
    gossip preset, so a falsely suspected peer has long refuted."""
    min_alive: float = 5.0
    """Seconds a peer must have been continuously ALIVE before it is promoted:
    a peer that just joined (or keeps flapping) is not trusted with a vote."""
    stability_cap: float = 600.0
    """Seconds of uptime beyond which peers count as equally stable."""
    stability_step: float = 30.0
    """Stability is compared in steps of this many seconds, so that peers
    alive for similar times tie and their resources decide."""
    min_battery_percent: float = 50.0
    """A battery-powered peer is eligible only above this charge (percent);
    mains-powered peers always rank first anyway."""
    min_memory_mb: int = 0
    """Total memory a peer needs to be eligible (MB; 0: no minimum). A
    voter holds the whole desired state in memory and on disk."""

    def eligible(self, peer: PeerInfo, now: float) -> bool:
        """May `peer` be promoted now (ignoring whether it is a voter)?"""
        return (peer.state is MemberState.ALIVE
                and peer.alive_for(now) >= self.min_alive
                and peer.raft_role in PROMOTABLE_ROLES
                and peer.compatible
                and self.capable(peer))

    def capable(self, peer: PeerInfo) -> bool:
        """The resource filters only: memory, and power or battery charge."""
        if peer.memory_mb < self.min_memory_mb:
            return False
        return peer.mains_powered or (peer.battery_percent or 0.0) >= self.min_battery_percent

    def problems(self) -> list[str]:
        out = [f"{n} must be >= 0" for n in ("stabilization", "min_alive",
                                               "min_battery_percent", "min_memory_mb")
               if not getattr(self, n) >= 0]
        if not self.stability_step > 0 or not self.stability_cap >= 0:
            out.append("stability_step must be > 0 and stability_cap >= 0")
        return out

    def check(self) -> None:
        if problems := self.problems():
            raise ConfigError("voter policy: " + "; ".join(problems))


# --------------------------------------------------------------------------- formulas


def odd_floor(n: int) -> int:
    """The largest odd number <= `n`, at least 1."""
    return max(1, n if n % 2 else n - 1)


def majority(n: int) -> int:
    """Votes needed among `n` voters."""
    return n // 2 + 1


def voter_goal(target: int, possible: int) -> int:
    """How many voters to aim for: `target` capped by the `possible` ones
    (current voters + ready candidates), rounded down to odd (module doc)."""
    return odd_floor(min(target, possible))


def removal_gains_tolerance(voters: int, failed: int) -> bool:
    """Would removing all `failed` voters out of `voters` let the cluster
    survive more further failures? Tolerance is alive - majority, the alive
    count does not change, so: is the majority of the smaller set smaller?"""
    return majority(voters - failed) < majority(voters)


def candidate_key(peer: PeerInfo, now: float, policy: VoterPolicy) -> tuple[Any, ...]:
    """Sort key, best first: mains power, stability (capped, in steps),
    cores, memory, then name."""
    stable = min(peer.alive_for(now), policy.stability_cap)
    return (not peer.mains_powered, -math.floor(stable / policy.stability_step),
            -peer.cores, -peer.memory_mb, peer.name)


# --------------------------------------------------------------------------- decide


def decide(view: Sequence[PeerInfo], voters: frozenset[str], target: int, now: float,
           policy: VoterPolicy, *, leader: str | None = None) -> VoterAction | None:
    """The next membership change, or None if the configuration is as wanted.

    `view`: every known peer (one entry per Raft address; a voter missing
    from it is never removed, see `with_absent_voters`). `voters`: the
    current configuration's Raft addresses. `target`: wanted voters (rounded
    down to odd). `leader`: the caller's own address, never removed.
    """
    by_addr = {p.raft_addr: p for p in view}
    members = [by_addr[v] for v in sorted(voters) if v in by_addr]
    failed = sorted((p for p in members if p.raft_addr != leader and _failed(p, now, policy)),
                    key=lambda p: (p.state is not MemberState.LEFT, p.state_since, p.raft_addr))
    ready = sorted((p for p in view if p.raft_addr not in voters and policy.eligible(p, now)),
                   key=lambda p: candidate_key(p, now, policy))
    if failed:
        first = failed[0]
        if (first.state is MemberState.LEFT or ready
                or removal_gains_tolerance(len(voters), len(failed))):
            return Remove(first.raft_addr, "left" if first.state is MemberState.LEFT else "dead")
    all_alive = len(members) == len(voters) and all(
        p.state is MemberState.ALIVE for p in members)
    if not all_alive:
        return None
    if ready and len(voters) < voter_goal(target, len(voters) + len(ready)):
        return Promote(ready[0].name, ready[0].raft_addr)
    # Candidates that are merely too young, or not running a learner yet,
    # still count against shrinking: they will be ready soon, and shrinking
    # then growing again is two changes for nothing.
    coming = sum(1 for p in view if p.raft_addr not in voters
                 and p.state is MemberState.ALIVE and p.raft_role in SOON_PROMOTABLE_ROLES
                 and policy.capable(p))
    if len(voters) > voter_goal(target, len(voters) + coming):
        surplus = [p for p in members if p.raft_addr != leader]
        if surplus:
            worst = max(surplus, key=lambda p: candidate_key(p, now, policy))
            return Remove(worst.raft_addr, "surplus")
    return None


def _failed(peer: PeerInfo, now: float, policy: VoterPolicy) -> bool:
    if peer.state is MemberState.LEFT:
        return True
    return peer.state is MemberState.DEAD and now - peer.state_since >= policy.stabilization


def with_absent_voters(view: Sequence[PeerInfo], voters: Iterable[str],
                       absent_since: Mapping[str, float]) -> list[PeerInfo]:
    """`view` plus a DEAD stand-in for every voter the view does not know but
    `absent_since` (kept by the shell: when it first noticed) does, dead since
    then. A freshly elected leader's view may still be filling in, and gossip
    keeps dead peers for an hour, so a voter is only treated as gone once it
    has been absent for the whole stabilization time."""
    known = {p.raft_addr for p in view}
    extra = [PeerInfo(f"(unknown {v})", v, MemberState.DEAD, absent_since[v])
             for v in sorted(voters) if v not in known and v in absent_since]
    return [*view, *extra]


# --------------------------------------------------------------------------- from gossip


def peer_info(name: str, gossip_ip: str, state: MemberState, state_since: float,
              profile: Mapping[str, Any] | None, *,
              raft_port: int = DEFAULT_RAFT_PORT) -> PeerInfo:
    """A `PeerInfo` from one gossip member (``Member.name``, ``Member.addr[0]``,
    ``state``, ``state_since``, ``profile``). Never raises on a malformed
    profile (it came from the network): bad fields read as "has nothing".
    The Raft address is the one the profile advertises under ``raft.addr``,
    else the gossip IP with `raft_port`."""
    prof = profile if isinstance(profile, Mapping) else {}
    power, cpu = _section(prof, "power"), _section(prof, "cpu")
    memory, raft = _section(prof, "memory"), _section(prof, "raft")
    battery, cores, total = (power.get("battery_percent"), cpu.get("cores"),
                             memory.get("total_mb"))
    role, addr = raft.get("role"), raft.get("addr")
    return PeerInfo(
        name=name,
        raft_addr=addr if isinstance(addr, str) and addr else format_address(gossip_ip,
                                                                             raft_port),
        state=state,
        state_since=state_since,
        mains_powered=power.get("source") == "ac",
        battery_percent=_number(battery),
        cores=int(_number(cores) or 0),
        memory_mb=int(_number(total) or 0),
        raft_role=role if isinstance(role, str) else None,
        compatible=compatible(profile),
    )


def _section(profile: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = profile.get(key)
    return value if isinstance(value, Mapping) else {}


def _number(value: object) -> float | None:
    """A finite non-negative number, or None for anything else."""
    if isinstance(value, int | float) and not isinstance(value, bool) \
            and math.isfinite(value) and value >= 0:
        return float(value)
    return None
