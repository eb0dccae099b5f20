"""When a learner pulls the committed state: a pure core, no I/O, no clock.

A learner (a peer that is not a Raft voter) runs no Raft node: a pysyncobj
learner is fed by the leader's heartbeats (``append_entries_period``, then 30 ms),
which at 20 peers was 94 % of an idle peer's traffic and made the leader's
work linear in the mesh (issue 9). Instead the leader gossips the committed
*version* of the state in its profile (``profile["raft"]``: ``cluster_epoch``
and ``revision``, see `announced_version`), and a learner pulls the whole
committed state from a voter when that version is newer than the one it
holds. The state is small (desired services, the plan, the registry), and
writes are rare, so a snapshot per change costs less than a log stream.

`FollowCore` decides when to pull and from whom; its shell
(`nanomesh.consensus.follower.FollowerNode`) feeds it

- ``announce(version)`` whenever gossip reports a version;
- ``poll(now, sources)`` whenever it wakes (an announcement, a pull ended,
  or `next_wakeup` came), with the voters to pull from, leader first;
- ``pulled(now, source, version)`` when a pull ended: the version received,
  or None for a failure,

and carries out the `Pull` that ``poll`` returns. Rules:

- pull when gossip announces a version newer than the one held, or nothing
  is held, and at least every `FollowConfig.recheck_period` anyway (gossip
  may have lost the announcement, or the leader died before gossiping it);
- one pull at a time;
- a pull for an announced version asks the leader first (the likeliest to
  be up to date); a recheck asks the voter at this learner's `spread`
  offset in the list, so the learners' rechecks spread over the voters
  instead of all landing on the leader;
- after a failure, wait `retry_delay` (0.5 s doubling to 10 s) and try the
  next voter in the list (a dead one must not stall the learner);
- a voter that answers with an older version than announced (it lags the
  leader by a heartbeat) is not a failure: the next voter is asked after
  the shortest delay;
- the held version never decreases: an answer older than the held version
  (a voter of a superseded control plane) counts as a failure.

Versions are ``(cluster_epoch, revision)`` pairs compared in that order: an
operator's recovery starts a new epoch whose revisions count from its own
restored state (`nanomesh.consensus.recovery`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

from nanomesh.errors import ConfigError

Version = tuple[int, int]
"""``(cluster_epoch, revision)`` of a committed state; compared as a tuple."""


@dataclass(frozen=True)
class FollowConfig:
    """How a learner follows the committed state. Seconds."""

    recheck_period: float = 10.0
    """A learner asks a voter for news at least this often, even if gossip
    announced nothing (a lost announcement, a leader that died between its
    commit and its gossip). The ask is cheap when nothing changed (the
    voter answers "unchanged"); shorter costs idle traffic, longer delays
    the rare missed change."""
    backoff_min: float = 0.5
    """First wait after a failed pull (then doubled per failure in a row,
    `retry_delay`): long enough not to hammer a voter that is restarting,
    short against a failover (< 1 s)."""
    backoff_max: float = 10.0
    """Longest wait between two failed pulls: no longer than
    `recheck_period`, so a learner cut off for long still notices its
    return within one recheck."""
    pull_timeout: float = 5.0
    """Bound on one pull (or one forwarded write's wait for the state it
    produced): a voter that accepts the connection but never answers."""

    def problems(self) -> list[str]:
        out = [f"{name} must be > 0" for name in
               ("recheck_period", "backoff_min", "backoff_max", "pull_timeout")
               if not getattr(self, name) > 0]
        if not out and self.backoff_max < self.backoff_min:
            out.append("backoff_max must be >= backoff_min")
        return out

    def check(self) -> None:
        if problems := self.problems():
            raise ConfigError("raft follow: " + "; ".join(problems))


def retry_delay(failures: int, config: FollowConfig) -> float:
    """Seconds to wait after `failures` (>= 1) failed pulls in a row:
    `FollowConfig.backoff_min` doubled per further failure, at most
    `FollowConfig.backoff_max`."""
    return min(config.backoff_max, config.backoff_min * 2.0 ** min(failures - 1, 32))


@dataclass(frozen=True, slots=True)
class Pull:
    """Ask voter `source` for the committed state; `have` is the version
    held (the voter answers "unchanged" if it has nothing newer)."""

    source: str
    have: Version | None


class FollowCore:
    """When and from whom a learner pulls (module doc). `held`: the version
    of the state it already holds (from its state file), if any. `spread`:
    where in the voter list this learner's rechecks start (any integer; the
    shell derives it from the peer, so learners differ)."""

    def __init__(self, config: FollowConfig, held: Version | None = None, *,
                 spread: int = 0) -> None:
        config.check()
        self.config = config
        self._held = held
        self._spread = spread
        self._announced: Version | None = None
        self._in_flight = False
        self._failures = 0
        self._rotation = 0
        """How far down the source list the next pull starts (a failed or
        lagging voter moves it on; a good answer resets it)."""
        self._not_before = -float("inf")
        self._last_answer: float | None = None

    # ------------------------------------------------------------ reads

    @property
    def held(self) -> Version | None:
        return self._held

    @property
    def failures(self) -> int:
        """Failed pulls in a row."""
        return self._failures

    @property
    def behind(self) -> bool:
        """Gossip announced a newer version than the one held (or none is held)."""
        return self._held is None or (self._announced is not None
                                      and self._announced > self._held)

    # ------------------------------------------------------------ inputs

    def announce(self, version: Version | None) -> None:
        """Gossip reports `version` (None: nothing reported): remember the newest."""
        if version is not None and (self._announced is None or version > self._announced):
            self._announced = version

    def poll(self, now: float, sources: Sequence[str]) -> Pull | None:
        """The pull to start now, if one is due (module doc)."""
        if self._in_flight or not sources or now < self._not_before:
            return None
        recheck_due = self._last_answer is None or \
            now >= self._last_answer + self.config.recheck_period
        if not (self.behind or recheck_due):
            return None
        self._in_flight = True
        start = self._rotation + (0 if self.behind else self._spread)
        return Pull(sources[start % len(sources)], self._held)

    def pulled(self, now: float, version: Version | None) -> None:
        """The pull in flight ended: `version` received, None if it failed."""
        self._in_flight = False
        if version is None or (self._held is not None and version < self._held):
            self._failures += 1
            self._rotation += 1
            self._not_before = now + retry_delay(self._failures, self.config)
            return
        self._held = version
        self._failures = 0
        self._last_answer = now
        if self.behind:  # this voter lags the announcement: ask the next one soon
            self._rotation += 1
            self._not_before = now + self.config.backoff_min
        else:
            self._rotation = 0
            self._not_before = now

    def next_wakeup(self) -> float:
        """When `poll` may next have something to do without an input
        (the shell also wakes on `announce` and when a pull ends)."""
        if self._in_flight:
            return float("inf")
        if self.behind or self._last_answer is None:
            return self._not_before
        return max(self._not_before, self._last_answer + self.config.recheck_period)


# --------------------------------------------------------------------------- gossip


def announced_version(sections: Sequence[Any]) -> Version | None:
    """The newest committed version that voters announce in their
    ``profile["raft"]`` sections (``cluster_epoch``, ``revision``); None if
    none does. Sections come from the network: malformed ones are skipped.
    Only voters' announcements count (a learner repeats what it pulled)."""
    best: Version | None = None
    for s in sections:
        if not isinstance(s, Mapping) or s.get("role") != "voter":
            continue
        epoch, revision = s.get("cluster_epoch", 0), s.get("revision")
        if not (_is_count(epoch) and _is_count(revision)):
            continue
        if best is None or (epoch, revision) > best:
            best = (epoch, revision)
    return best


def _is_count(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def pull_sources(sections: Sequence[Any]) -> list[str]:
    """The Raft addresses of the voters to pull from, the leader first, from
    the ``profile["raft"]`` sections of the live peers: the voters that
    gossip themselves as such, the one that leads (by its own word, at the
    highest term) first, the rest in address order."""
    voters: dict[str, int] = {}
    for s in sections:
        if isinstance(s, Mapping) and s.get("role") == "voter" and \
                isinstance(s.get("addr"), str):
            term = s.get("term")
            leads = s.get("leader") == s["addr"]
            voters[s["addr"]] = term + 1 if leads and _is_count(term) else 0
    return sorted(voters, key=lambda a: (-voters[a], a))


def gossiped_leader(sections: Sequence[Any]) -> tuple[str, int, frozenset[str]] | None:
    """``(raft address, term, voters)`` of the voter that gossips itself as
    the leader at the highest term; None if none does. A learner shows this
    as its leader between pulls: a failover or a voter change commits no
    revision, so no pull would tell it."""
    best: tuple[int, str, frozenset[str]] | None = None
    for s in sections:
        if not (isinstance(s, Mapping) and s.get("role") == "voter"):
            continue
        addr, term, voters = s.get("addr"), s.get("term"), s.get("voters")
        if not (isinstance(addr, str) and s.get("leader") == addr and _is_count(term)
                and isinstance(voters, list) and all(isinstance(v, str) for v in voters)):
            continue
        if best is None or (term, addr) > best[:2]:
            best = (term, addr, frozenset(voters))
    return None if best is None else (best[1], best[0], best[2])
