"""Raft timing presets and the consensus node's configuration.

Every value of `RaftTiming` carries its unit, meaning and trade-off; the
presets say why they differ. `RaftTiming.problems()` is the one place that
rejects impossible combinations (pysyncobj's own checks are bare asserts).

The default preset ``lan()`` was first measured for ARCHITECTURE.md §3 (30 ms
heartbeats, election timeout 0.15-0.30 s). Issue 9 slowed the heartbeats to
100 ms, the largest cost of an idle voter, once a follower whose leader's
process dies campaigns at once (`nanomesh.consensus.leader_loss`); measured
2026-12-07 on loopback, 5 voters, 20 trials each (experiments/README.md):
leader SIGKILL → a write acknowledged through a survivor median 0.06 s, max
0.67 s (was 0.25 / 0.36 s); leader SIGSTOP (silent, found by the election
timeout only) median 0.43 s, max 0.78 s (was 0.26 / 0.40 s).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from nanomesh.config import DEFAULT_RAFT_PORT as DEFAULT_RAFT_PORT  # re-exported
from nanomesh.errors import ConfigError
from nanomesh.versions import RAFT_VERSION
from nanomesh.wire import Keyring

DEFAULT_COMMIT_TIMEOUT = 2.0
"""Seconds a write waits for its commit before `CommitTimeout` (outcome
unknown). Covers one election (≤ raft_max_timeout + a few heartbeats) plus
the retry of a forwarded command, with room for a loaded 2-core device."""


@dataclass(frozen=True)
class RaftTiming:
    """Raft timing, in seconds unless said otherwise. Field names are ours;
    `to_syncobj_kwargs` maps them to pysyncobj's ``SyncObjConf`` names."""

    raft_min_timeout: float = 0.35
    """Election timeout, lower bound (pysyncobj ``raftMinTimeout``). A
    follower that hears no leader for a random time in [min, max] starts an
    election. It is the failover time of a leader that goes silent (power
    loss: measured median 0.43 s); a leader whose process dies is replaced
    faster (`leader_loss_max_delay`). Lower is faster failover but more
    stray elections when a busy device delays a heartbeat; must exceed 3 x
    append_entries_period (3.5 x here)."""
    raft_max_timeout: float = 0.70
    """Election timeout, upper bound (``raftMaxTimeout``). The 0.35 s window is
    3.5 heartbeat periods wide, so two followers rarely time out together
    (split votes)."""
    append_entries_period: float = 0.1
    """Heartbeat and replication period (``appendEntriesPeriod``). Each
    period the leader sends every voter a heartbeat (~79 bytes on the wire),
    which answers (~78 bytes), and the leader's kernel acknowledges the
    answer (52 bytes: past its 40 ms delayed-ACK timer, the ACK no longer
    rides on the next heartbeat): ~2.1 kB/s per voter link at 0.1 s, 5.2
    kB/s at the former 0.03 s (measured, `experiments/raft_idle_bytes.py`).
    New entries and commit indexes do not wait for it: the leader sends
    them at its next tick (`_pysyncobj.RaftNode._send_news_now`). Longer
    needs a longer election timeout (above), which slows failover from a
    silent leader."""
    connection_timeout: float = 0.7
    """A TCP connection that received nothing for this long is dead
    (``connectionTimeout``); pysyncobj requires >= raft_max_timeout. A killed
    process is noticed at once (the kernel resets its connections); this
    bounds detection of a peer that lost power or network: a link is dead
    when something sent on it went unanswered for this long, checked before
    the next write (`_transport.GuardedConnection._timed_out`). A link
    nobody talks on (follower to follower) stays open without traffic; the
    kernel's TCP keepalive finds a dead peer behind it."""
    connection_retry_time: float = 0.2
    """Pause between reconnection attempts to an unreachable node
    (``connectionRetryTime``). Short, so a restarted node hears the leader
    before its own election timeout fires: pysyncobj has no PreVote, and a
    restarted node that campaigns deposes a healthy leader (avoided in 40 of
    40 trials at 0.2 s)."""
    leader_fallback_timeout: float = 0.6
    """A leader that heard from no majority for this long steps down
    (``leaderFallbackTimeout``). Until then a leader cut off from the majority
    still believes it leads: this is why only *committed* state may take
    effect. Must exceed append_entries_period."""
    leader_loss_max_delay: float = 0.1
    """Longest random delay, in seconds, before a follower campaigns when its
    leader's side closed their link (a killed process: the kernel closes its
    connections; `nanomesh.consensus.leader_loss`). Spreads the followers'
    candidacies so one's vote requests usually arrive before another
    campaigns (a split vote costs another election timeout); the first of 4
    followers waits max/5 on average. Must stay below raft_min_timeout, or
    the election timeout would usually come first anyway."""
    auto_tick_period: float = 0.5
    """Longest sleep of the Raft thread between ticks (``autoTickPeriod``).
    The thread wakes when a timer above is due, a message arrives or work is
    handed to it (`nanomesh.consensus._pysyncobj`), so this only bounds the
    lateness of pysyncobj's timers we do not compute (the one-second journal
    timer, log compaction, handshake deadlines) and the thread's exit after
    the main thread's. At the former 0.01 s an idle node woke 100 times a
    second."""
    append_entries_use_batch: bool = True
    """Send queued entries in batches (``appendEntriesUseBatch``): pysyncobj
    every period, and we at the tick after they were queued (one send per
    tick, whatever the number of writes in it). Off, pysyncobj sent each
    entry alone and logged "truncating already-applied log entries" under
    rapid writes."""
    dynamic_membership_change: bool = True
    """Allow adding/removing voters at run time (``dynamicMembershipChange``);
    needed by `add_voter`/`remove_voter`. All voters must agree on it."""

    @classmethod
    def lan(cls) -> RaftTiming:
        """The measured default (ARCHITECTURE.md §3): wired LAN or good Wi-Fi,
        sub-second failover."""
        return cls()

    @classmethod
    def slow(cls) -> RaftTiming:
        """For lossy Wi-Fi or heavily loaded devices, where the former
        ``lan()`` (election timeout 0.15-0.30 s) showed stray elections: the
        election timeout x4 of that (0.6-1.2 s) with heartbeats every 0.09 s
        (6.7 periods in the shortest timeout), connection and fallback
        timeouts 2.4 s. Failover from a silent leader becomes ~1-1.5 s."""
        return replace(cls(), raft_min_timeout=0.6, raft_max_timeout=1.2,
                       append_entries_period=0.09, connection_timeout=2.4,
                       connection_retry_time=0.4, leader_fallback_timeout=2.4)

    def problems(self) -> list[str]:
        """Every reason this timing is unusable (empty if none)."""
        out = [f"{f.name} must be > 0" for f in fields(self)
               if f.type == "float" and not getattr(self, f.name) > 0]
        if out:
            return out
        if self.raft_min_timeout <= 3 * self.append_entries_period:
            out.append("raft_min_timeout must exceed 3 x append_entries_period")
        if self.raft_max_timeout <= self.raft_min_timeout:
            out.append("raft_max_timeout must exceed raft_min_timeout")
        if self.connection_timeout < self.raft_max_timeout:
            out.append("connection_timeout must be >= raft_max_timeout")
        if self.leader_loss_max_delay >= self.raft_min_timeout:
            out.append("leader_loss_max_delay must be below raft_min_timeout")
        if self.leader_fallback_timeout <= self.append_entries_period:
            out.append("leader_fallback_timeout must exceed append_entries_period")
        return out

    def check(self) -> None:
        """ConfigError naming every problem, if any."""
        if problems := self.problems():
            raise ConfigError("raft timing: " + "; ".join(problems))

    def to_syncobj_kwargs(self) -> dict[str, Any]:
        return {
            "raftMinTimeout": self.raft_min_timeout,
            "raftMaxTimeout": self.raft_max_timeout,
            "appendEntriesPeriod": self.append_entries_period,
            "connectionTimeout": self.connection_timeout,
            "connectionRetryTime": self.connection_retry_time,
            "leaderFallbackTimeout": self.leader_fallback_timeout,
            "autoTickPeriod": self.auto_tick_period,
            "appendEntriesUseBatch": self.append_entries_use_batch,
            "dynamicMembershipChange": self.dynamic_membership_change,
        }


@dataclass(frozen=True)
class ConsensusConfig:
    """One consensus node.

    `address` is ``(ip, port)`` for a voter, or None for a read-only replica
    (a learner: it connects out to the voters, receives the committed log,
    never votes and never counts for a quorum). `peers` are the voters to
    contact, ``"ip:port"`` strings; empty with an address bootstraps a
    one-voter cluster. A voter that restarts prefers the voter list it saved
    in `data_dir` (see `ConsensusNode`). `data_dir` holds the journal and full
    dump (None keeps the log in memory only: tests of pure behaviour).
    `join`: this node joins an existing cluster (it is about to be added
    with `add_voter`): it starts no election before it has heard from a
    leader. Without it, a node started before being added campaigns with ever
    higher terms, and when added, its term deposes the leader (an election,
    ~0.3 s without writes). Never set it on a bootstrap node or on the nodes
    of a static cluster's first start: they would wait for a leader forever.
    `keyring`: the cluster keys, required. Raft links are authenticated and
    encrypted with keys derived from them (`nanomesh.consensus._transport`);
    pysyncobj unpickles what it receives, so a node without a key would be
    remote code execution for anyone who reaches its port: `check` refuses it.
    The keyring is read live: keys installed or removed later apply to new
    frames at once.
    """

    address: tuple[str, int] | None
    peers: tuple[str, ...] = ()
    data_dir: Path | None = None
    keyring: Keyring | None = None
    join: bool = False
    epoch: int = 0
    """The control plane's incarnation: 0, raised by each operator recovery
    (`nanomesh.consensus.recovery`). Links authenticate with keys derived for
    their epoch (`_transport.raft_key_purpose`), so nodes of a superseded
    control plane (a learner still connected to the recovered peer's address,
    a lost voter back with its old journal) cannot exchange a single entry
    with the new one; they follow it once gossip shows its epoch."""
    source_ip: str | None = None
    """The IP this node's Raft links leave from (default: `address`'s). A
    learner has no address: give it the peer's IP, so voters count its
    links against the peer and not against the whole machine."""
    timing: RaftTiming = field(default_factory=RaftTiming.lan)
    commit_timeout: float = DEFAULT_COMMIT_TIMEOUT
    mesh_raft_version: Callable[[], int] = field(default=lambda: RAFT_VERSION, compare=False)
    """The newest replicated command set every member of the mesh applies
    (`nanomesh.versions.mesh_raft_version` over the gossip view, given by the
    daemon); the node refuses a command kind newer than that. Default: this
    build's own (a node without a mesh around it: tests, the harness)."""

    @property
    def self_address(self) -> str | None:
        return None if self.address is None else format_address(*self.address)

    def check(self) -> None:
        """ConfigError if the configuration is impossible."""
        self.timing.check()
        if self.keyring is None or not self.keyring.enabled:
            raise ConfigError("the Raft control plane needs the cluster key (--key-file): "
                              "it never runs unauthenticated")
        for p in self.peers:
            parse_raft_address(p)
        if self.address is None and not self.peers:
            raise ConfigError("a read-only replica needs the voters' addresses in peers")
        if self.join and not self.peers:
            raise ConfigError("a joining node needs the current voters in peers")
        if self.commit_timeout <= 0:
            raise ConfigError("commit_timeout must be > 0")


def format_address(ip: str, port: int) -> str:
    """``ip:port`` as pysyncobj names nodes (it splits on the last colon, so
    IPv6 goes without brackets)."""
    return f"{ip}:{port}"


def parse_raft_address(text: str, default_port: int = DEFAULT_RAFT_PORT) -> str:
    """Normalize ``IP`` or ``IP:PORT`` into pysyncobj's ``ip:port``; ConfigError
    if it is not an IP address (pysyncobj would resolve names by DNS, which a
    cluster without network must not depend on)."""
    text = text.strip()
    try:
        ipaddress.ip_address(text)
        return format_address(text, default_port)
    except ValueError:
        pass
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"raft address {text!r}: not IP or IP:PORT") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"raft address {text!r}: port must be 1-65535")
    return format_address(host, int(port))
