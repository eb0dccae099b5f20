"""The rolling upgrade's decisions (``nanomesh upgrade``), pure: what the
upgrader does next, from what it has seen so far.

One peer at a time, the Raft leader last (upgrading it costs an election;
done last, there is one, and the new leader is an upgraded peer):

    ask the peer to upgrade ──refused──────────────────────────► stop (failed)
      │ accepted: it installed the new version beside the old and restarts
      ▼
    wait until it rejoins healthy ── with the new version ──► confirm it, next peer
      │                           └─ with the old version ──► stop (it rolled back)
      │ timed out
      ▼
    ask it to roll back to its old slot, wait for the old version ──► stop (failed)

"Rejoins healthy" is judged from outside, by another peer's gossip view and
the peer's own API (`PeerSeen`): alive in gossip, its profile says the new
version, its health is ``ok``, the Raft leader is known to it, its instances
run, and the mesh has as many voters as before it restarted. A failure
stops the run: the peers not reached yet keep the old version, the report
says which peer failed and why. Rollback of the failed peer is health-gated
too: the upgrader waits for it to come back healthy on the old version.

Inputs are the observations (`PeerSeen`, `Answer`, `now`); outputs are one
action at a time (`Ask`, `Wait`, `Confirm`, `RollBack`, `Finished`). The shell
(`nanomesh.cli.upgrade`) carries them out over the peer API.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from nanomesh.errors import IllegalTransition

REJOIN_TIMEOUT = 120.0
"""Seconds a peer may take from accepting the upgrade to being healthy on the
new version: a graceful leave (~1-5 s), a restart (2 s under systemd's
RestartSec), starting Python and the daemon on a small device (~5-15 s on a
Pi), rejoining gossip and the Raft role. Longer waits a failed peer out longer."""
ROLLBACK_TIMEOUT = 120.0
"""Seconds a peer asked to roll back may take to be healthy on its old version."""


def order(peers: Sequence[str], leader: str | None) -> list[str]:
    """Upgrade order: by name, the Raft leader last."""
    return sorted(peers, key=lambda name: (name == leader, name))


@dataclass(frozen=True, slots=True)
class PeerSeen:
    """What the upgrader sees of one peer at one moment."""

    alive: bool
    """Alive in another peer's gossip view and its API answers."""
    version: str | None
    """The nanomesh version it gossips (None: not known)."""
    healthy: bool
    """Its ``/v1/health`` says ``ok``, it knows the Raft leader, and the
    instances the plan gives it run and pass their health checks."""
    voters: int | None = None
    """How many Raft voters it reports (``/v1/status``)."""
    uptime: float | None = None
    """Seconds its daemon process has run (``/v1/health``): a peer still on
    its old version is told from one that restarted into it again by an
    uptime shorter than the wait. (Not the gossip incarnation: a graceful
    leave raises it while the old process still answers.)"""


class Phase(enum.Enum):
    ASK = "ask"
    REJOIN = "rejoin"
    CONFIRM = "confirm"
    ROLLBACK = "rollback"
    ROLLING_BACK = "rolling back"
    DONE = "done"
    FAILED = "failed"


# --------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class Ask:
    """Ask `peer` to install the bundle and restart into it."""

    peer: str


@dataclass(frozen=True, slots=True)
class Wait:
    """Look at `peer` again (`PeerSeen`) and report it with `seen`."""

    peer: str


@dataclass(frozen=True, slots=True)
class Confirm:
    """Tell `peer` its new version is good (its launcher then no longer rolls
    it back on a restart)."""

    peer: str


@dataclass(frozen=True, slots=True)
class RollBack:
    """Ask `peer` to switch back to its old slot and restart."""

    peer: str


@dataclass(frozen=True, slots=True)
class Finished:
    """The run ended; `Upgrade.report` says how."""


Action = Ask | Wait | Confirm | RollBack | Finished


@dataclass(frozen=True, slots=True)
class PeerResult:
    peer: str
    outcome: str
    """``upgraded``, ``failed``, ``rolled back`` or ``not reached``."""
    detail: str = ""
    seconds: float | None = None


@dataclass(frozen=True)
class Upgrade:
    """The whole run's state: which peer is current and in which phase."""

    target: str
    """The version being installed."""
    peers: tuple[str, ...]
    """In upgrade order (`order`)."""
    index: int = 0
    phase: Phase = Phase.ASK
    since: float = 0.0
    """When the current phase began (seconds, the shell's clock)."""
    results: tuple[PeerResult, ...] = ()
    failure: str | None = None
    old_version: str | None = None
    """The current peer's version before it was asked (for the rollback)."""
    voters_before: int | None = None
    """The voters it reported before it was asked. A voter that restarts
    leaves the Raft configuration and is promoted again ~5 s after it is back
    (`VoterPolicy.min_alive`); the next peer waits for that, so the mesh never
    goes through the upgrade with less fault tolerance than it had."""
    timeouts: tuple[float, float] = field(default=(REJOIN_TIMEOUT, ROLLBACK_TIMEOUT))

    @property
    def current(self) -> str | None:
        return self.peers[self.index] if self.index < len(self.peers) else None

    def next_action(self) -> Action:
        peer = self.current
        if self.phase in (Phase.DONE, Phase.FAILED) or peer is None:
            return Finished()
        action: type[Ask | Wait | Confirm | RollBack] = _ACTIONS[self.phase]
        return action(peer)

    # ----------------------------------------------------------------- events

    def answered(self, accepted: bool, detail: str, now: float, *,
                 old_version: str | None = None, voters: int | None = None,
                 already: bool = False) -> Upgrade:
        """The current peer's answer to `Ask` (accepted: it is restarting
        into the new version from `old_version`; `already`: it runs the
        target, nothing to do), or to `RollBack`."""
        if self.phase is Phase.ASK:
            if not accepted:
                return self._fail(f"refused the upgrade: {detail}", "failed")
            if already:
                return self._advance(PeerResult(self.current or "", "upgraded",
                                                "already at the target version", 0.0), now)
            return replace(self, phase=Phase.REJOIN, since=now, old_version=old_version,
                           voters_before=voters)
        if self.phase is Phase.ROLLBACK:
            # Refused or unreachable, it may still come back on its old
            # version: its launcher rolls back a version that keeps failing
            # to start. So wait either way.
            failure = self.failure if accepted else (
                f"{self.failure}; the rollback request failed ({detail})")
            return replace(self, phase=Phase.ROLLING_BACK, since=now, failure=failure)
        raise IllegalTransition(f"an answer in phase {self.phase.value}")

    def leader_now(self, leader: str | None) -> Upgrade:
        """Before an `Ask`: the Raft leader may have moved since the order
        was made (each upgrade restarts a voter, elections happen). If the
        current leader is still to be upgraded, it goes to the end of the
        peers not reached yet, so it stays last."""
        rest = self.peers[self.index:]
        if self.phase is not Phase.ASK or leader not in rest or len(rest) < 2:
            return self
        moved = (*(p for p in rest if p != leader), leader)
        return replace(self, peers=self.peers[:self.index] + moved)

    def seen(self, peer: PeerSeen, now: float) -> Upgrade:
        """What `Wait` saw of the current peer."""
        waited = now - self.since
        if self.phase is Phase.REJOIN:
            if (peer.alive and peer.healthy and peer.version == self.target
                    and self._voters_back(peer)):
                return replace(self, phase=Phase.CONFIRM, since=now,
                               results=(*self.results, PeerResult(
                                   self.current or "", "upgraded", "", waited)))
            if (peer.alive and peer.healthy and self.old_version is not None
                    and peer.version == self.old_version and peer.uptime is not None
                    and peer.uptime < waited):
                # Its launcher rolled it back (the new version did not start).
                return self._fail(f"came back on {peer.version}, not {self.target}: the "
                                  "new version did not start and was rolled back",
                                  "rolled back", waited)
            if waited >= self.timeouts[0]:
                return replace(self, phase=Phase.ROLLBACK, since=now, failure=(
                    f"not healthy on {self.target} within {self.timeouts[0]:g} s "
                    f"(last seen: {_describe(peer)})"))
            return self
        if self.phase is Phase.ROLLING_BACK:
            if peer.alive and peer.healthy and peer.version == self.old_version:
                return self._fail(f"{self.failure}; rolled back to {peer.version}",
                                  "rolled back", waited)
            if waited >= self.timeouts[1]:
                return self._fail(f"{self.failure}; not healthy on its old version "
                                  f"{self.old_version} either within {self.timeouts[1]:g} s "
                                  f"(last seen: {_describe(peer)})", "failed", waited)
            return self
        raise IllegalTransition(f"an observation in phase {self.phase.value}")

    def confirmed(self, now: float) -> Upgrade:
        if self.phase is not Phase.CONFIRM:
            raise IllegalTransition(f"a confirmation in phase {self.phase.value}")
        return self._advance(None, now)

    # ----------------------------------------------------------------- helpers

    def _voters_back(self, peer: PeerSeen) -> bool:
        return self.voters_before is None or (peer.voters or 0) >= self.voters_before


    def _advance(self, result: PeerResult | None, now: float) -> Upgrade:
        results = self.results if result is None else (*self.results, result)
        index = self.index + 1
        phase = Phase.DONE if index >= len(self.peers) else Phase.ASK
        return replace(self, index=index, phase=phase, since=now, results=results,
                       old_version=None, voters_before=None)

    def _fail(self, why: str, outcome: str, seconds: float | None = None) -> Upgrade:
        peer = self.current or ""
        rest = tuple(PeerResult(p, "not reached", "keeps its version")
                     for p in self.peers[self.index + 1:])
        return replace(self, phase=Phase.FAILED, failure=f"{peer}: {why}",
                       results=(*self.results, PeerResult(peer, outcome, why, seconds), *rest))

    def report(self) -> list[str]:
        """One line per peer, then the verdict."""
        lines = [f"{r.peer}: {r.outcome}"
                 + (f" in {r.seconds:.1f} s" if r.seconds is not None else "")
                 + (f" ({r.detail})" if r.detail else "") for r in self.results]
        if self.phase is Phase.DONE:
            lines.append(f"all {len(self.peers)} peers run {self.target}")
        elif self.phase is Phase.FAILED:
            lines.append(f"stopped: {self.failure}")
        return lines


_ACTIONS: dict[Phase, type[Ask | Wait | Confirm | RollBack]] = {
    Phase.ASK: Ask, Phase.REJOIN: Wait, Phase.CONFIRM: Confirm, Phase.ROLLBACK: RollBack,
    Phase.ROLLING_BACK: Wait}
"""The action of each phase that is not final."""


def _describe(peer: PeerSeen) -> str:
    if not peer.alive:
        return "not alive"
    return f"version {peer.version or '?'}, {'healthy' if peer.healthy else 'not healthy'}"
