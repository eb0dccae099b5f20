"""Membership configuration: every knob with its unit, meaning and trade-off.

Names follow hashicorp/memberlist where the concept is the same, so that
operators who know memberlist can read our numbers. Presets are built as
deltas from the base values, each with its reason.

The base values are memberlist's ``DefaultLANConfig`` (detection in 6.6-9 s
on 20 of our peers: one failed 1 s probe, then a minimum suspicion timeout of
4 x log10(20) x 1 s = 5.2 s). Our ``lan()`` preset is tuned for small local meshes on a
switched LAN or Wi-Fi where sub-2-second failure detection is the point of
the product; see README for what it was measured to do.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from nanomesh.errors import ConfigError


@dataclass(frozen=True, slots=True)
class GossipConfig:
    probe_interval: float = 1.0
    """Seconds between failure-detector probes (SWIM protocol period T').
    Each probe sends one ping (plus `indirect_checks` ping-reqs when it fails).
    Lower detects failures sooner and costs proportionally more packets."""

    probe_timeout: float = 0.5
    """Seconds to wait for a direct ack before asking `indirect_checks` peers to
    probe for us. Must exceed the network's round-trip time at its 99th
    percentile, or healthy peers get indirect probes for nothing."""

    indirect_checks: int = 3
    """k in SWIM §3.1: peers asked to probe a target that missed its direct ack.
    More relays tolerate more independent packet loss, at k x 4 packets each."""

    suspicion_mult: int = 4
    """Scales the minimum suspicion timeout, see
    `nanomesh.gossip.timing.suspicion_timeout`. Higher gives a suspected peer
    longer to refute (fewer false positives, slower detection)."""

    suspicion_max_timeout_mult: int = 6
    """The suspicion timeout starts at this multiple of the minimum and shrinks
    with independent confirmations (Lifeguard §4.3, see
    `nanomesh.gossip.timing.suspicion_deadline_offset`)."""

    awareness_max_multiplier: int = 8
    """Largest stretch of probe timing for a locally unhealthy peer (Lifeguard
    §4.1, see `nanomesh.gossip.awareness`). 1 turns local health awareness off."""

    retransmit_mult: int = 4
    """Each membership update is piggybacked ``retransmit_mult * ceil(log10(n+1))``
    times (`nanomesh.gossip.timing.retransmit_limit`). Higher spreads more
    reliably under loss, at more bytes per packet."""

    gossip_interval: float = 0.2
    """Seconds between gossip rounds that send pending updates to
    `gossip_nodes` random peers. Sets how fast updates spread (about
    log_{gossip_nodes+1}(n) rounds to reach everyone)."""

    gossip_nodes: int = 3
    """Fan-out of each gossip round."""

    gossip_to_the_dead_time: float = 30.0
    """Seconds during which a peer declared dead still receives gossip, so a
    peer wrongly declared dead learns it and refutes quickly."""

    push_pull_interval: float = 30.0
    """Seconds between full-state TCP exchanges with one random peer
    (anti-entropy; scaled beyond 32 peers by
    `nanomesh.gossip.timing.push_pull_scale`). Repairs whatever gossip lost.
    0 disables periodic push-pull (joins still use it)."""

    reconnect_interval: float = 10.0
    """Seconds between attempts to push-pull with one random dead peer. This is
    how two sides of a healed partition find each other again without an
    operator (Serf's reconnect)."""

    reap_interval: float = 3600.0
    """Seconds a dead or departed peer stays in the table (and is retried by
    reconnect) before it is forgotten."""

    stream_timeout: float = 5.0
    """Seconds a TCP push-pull or profile pull may take before it is abandoned."""

    tcp_ping: bool = True
    """When a direct probe goes unanswered, also ping the target over TCP
    (alongside the indirect probes); an ack over TCP before the probe period
    ends counts as alive. A peer whose datagrams are lost or filtered while
    TCP gets through (lossy Wi-Fi retransmits TCP; some firewalls pass only
    TCP) is then not suspected. Costs one TCP connection per failed direct
    probe. memberlist does the same unless ``DisableTcpPings``."""

    def validate(self) -> GossipConfig:
        """Reject impossible combinations in one place, with a plain message."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool):
                continue  # a switch, not a quantity
            if value < 0 or (value == 0 and f.name not in _MAY_BE_ZERO):
                raise ConfigError(f"gossip.{f.name} must be positive, got {value}")
        if self.probe_timeout >= self.probe_interval:
            raise ConfigError(
                f"gossip.probe_timeout ({self.probe_timeout}s) must be shorter than "
                f"gossip.probe_interval ({self.probe_interval}s): the indirect probe "
                "needs the rest of the interval")
        if self.suspicion_max_timeout_mult < 1:
            raise ConfigError("gossip.suspicion_max_timeout_mult must be at least 1")
        return self


_MAY_BE_ZERO = {"indirect_checks", "push_pull_interval", "gossip_to_the_dead_time"}


def lan() -> GossipConfig:
    """The default: local meshes on Ethernet or Wi-Fi, tuned for fast detection.

    - probe_interval 0.2 s, probe_timeout 0.1 s: a LAN round trip is well
      under 10 ms, Wi-Fi under 50 ms; 5 probes a second cost about 1 KB/s.
    - suspicion_mult 3: with 20 peers the minimum suspicion timeout is
      3 x 1.3 x 0.2 = 0.78 s, reached after one independent confirmation.
    - push_pull_interval 15 s: small meshes can afford a full sync more often.
    - gossip_to_the_dead_time 15 s and reconnect_interval 5 s: a peer wrongly
      declared dead, or cut off by a partition, is back within seconds.
    """
    return replace(
        GossipConfig(),
        probe_interval=0.2,
        probe_timeout=0.1,
        suspicion_mult=3,
        push_pull_interval=15.0,
        gossip_to_the_dead_time=15.0,
        reconnect_interval=5.0,
    )


def local() -> GossipConfig:
    """Peers on one machine (loopback): memberlist's DefaultLocalConfig deltas.
    Loopback never loses packets, so fewer relays and retransmits suffice."""
    return replace(
        lan(),
        indirect_checks=1,
        retransmit_mult=2,
        push_pull_interval=15.0,
        gossip_interval=0.1,
        gossip_to_the_dead_time=15.0,
    )


def memberlist_lan() -> GossipConfig:
    """memberlist's DefaultLANConfig values, for comparison experiments."""
    return GossipConfig()


PRESETS = {"lan": lan, "local": local, "memberlist-lan": memberlist_lan}
"""Named presets for config files and `--preset`."""


def preset(name: str) -> GossipConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ConfigError(
            f"unknown gossip preset {name!r}; choose one of {', '.join(PRESETS)}") from None
