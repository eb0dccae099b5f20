"""The collectors behind ``GET /v1/metrics`` (`nanomesh.daemon.metrics`).

The only module that imports prometheus_client, and only when the first
scrape imports it. Each ``collect`` reads the daemon's own counters at that
moment and yields metric families; names follow Prometheus' conventions:
``nanomesh_`` first, the unit in the name (``_seconds``, ``_bytes``), counters
ending ``_total``. Gauges of a state (members, instances) list every state,
zeros included, so a dashboard's series do not vanish when a count drops to 0.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import get_args

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from nanomesh import __version__
from nanomesh.consensus.role_effects import RaftRole
from nanomesh.consensus.status import Role
from nanomesh.daemon.metrics_context import MetricsContext
from nanomesh.durations import LATENCY_BUCKETS, Durations
from nanomesh.runtime.lifecycle import State
from nanomesh.wire import MemberState

GOSSIP_COUNTERS = {
    "probes": "SWIM probes started (one per probe period)",
    "probe_acks": "probes answered in time, directly, through a relay or over TCP",
    "probe_failures": "probes no ack answered: the target became suspect",
    "indirect_probes": "ping-req relays asked for (SWIM section 4.3)",
    "tcp_pings": "TCP fallback pings sent after a UDP probe went unanswered",
    "tcp_ping_acks": "probes only the TCP fallback answered in time",
    "suspicions": "members this peer started suspecting",
    "refutations": "suspicions of this peer it refuted",
    "deaths_declared": "suspects this peer declared dead (their timeout ran out)",
    "datagrams_out": "gossip datagrams sent",
    "stream_calls": "gossip TCP calls made (join, push-pull, profile pull, TCP ping)",
    "stream_failures": "gossip TCP calls that failed",
    "profiles_pulled": "capability profiles fetched from other peers",
    "profiles_published": "versions of this peer's own profile published",
    "stale_acks": "acks that came too late for their probe",
    "misdirected_pings": "pings for a peer that no longer lives at this address",
}
"""`nanomesh.gossip.machine.Stats` fields exported, with their help text; a
test checks that every field is here."""


def build_registry(ctx: MetricsContext) -> CollectorRegistry:
    """A registry of its own for one peer: the daemon's collectors plus the
    process' (CPU, RSS, open files: ``process_*``)."""
    registry = CollectorRegistry(auto_describe=False)
    for collector in (GossipCollector(ctx), RaftCollector(ctx), RuntimeCollector(ctx),
                      GatewayCollector(ctx), ApiCollector(ctx)):
        registry.register(collector)
    ProcessCollector(registry=registry)
    return registry


def histogram(name: str, documentation: str, durations: Durations) -> HistogramMetricFamily:
    return HistogramMetricFamily(
        name, documentation, sum_value=durations.total,
        buckets=[("+Inf" if b == float("inf") else repr(b), n)
                 for b, n in durations.cumulative()])


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _by_label(family: CounterMetricFamily | GaugeMetricFamily, counts: Iterable[tuple[str, float]]
              ) -> CounterMetricFamily | GaugeMetricFamily:
    for label, value in counts:
        family.add_metric([label], value)
    return family


class GossipCollector(Collector):
    """Membership: SWIM counters, members by state, bytes per channel, drops."""

    def __init__(self, ctx: MetricsContext) -> None:
        self.ctx = ctx

    def collect(self) -> Iterator[Metric]:
        core, traffic = self.ctx.core, self.ctx.traffic
        stats = dataclasses.asdict(core.stats)
        for field, text in GOSSIP_COUNTERS.items():
            yield _counter(f"nanomesh_gossip_{field}", _sentence(text), stats[field])
        states = Counter(m.state.label for m in core.members())
        yield _by_label(GaugeMetricFamily(
            "nanomesh_members", "Members this peer knows, itself included, by state.",
            labels=["state"]), ((s.label, states[s.label]) for s in MemberState))
        yield _gauge("nanomesh_gossip_awareness", "Lifeguard local health multiplier: 0 "
                     "healthy; higher means this peer doubts its own timeliness.",
                     core.awareness.score)
        yield _by_label(CounterMetricFamily(
            "nanomesh_network_received_bytes", "Gossip bytes received, by channel.",
            labels=["channel"]), sorted(traffic.received.items()))
        yield _by_label(CounterMetricFamily(
            "nanomesh_network_sent_bytes", "Gossip bytes sent, by channel.",
            labels=["channel"]), sorted(traffic.sent.items()))
        yield _by_label(CounterMetricFamily(
            "nanomesh_gossip_dropped", "Gossip packets and streams dropped, by reason.",
            labels=["reason"]), sorted(traffic.dropped.items()))


class RaftCollector(Collector):
    """Consensus: role, term, commit index, leader; placement on the leader."""

    def __init__(self, ctx: MetricsContext) -> None:
        self.ctx = ctx

    def collect(self) -> Iterator[Metric]:
        ctx = self.ctx
        node = ctx.consensus()
        status = node.status if node is not None else None
        role = ctx.raft_role()
        yield _by_label(GaugeMetricFamily(
            "nanomesh_raft_role", "This peer's place in Raft (1 for the current one).",
            labels=["role"]), ((r.value, float(r is role)) for r in RaftRole))
        state = status.role if status is not None else None
        yield _by_label(GaugeMetricFamily(
            "nanomesh_raft_state", "This peer's Raft node state (1 for the current one; "
            "all 0 while it runs no node).", labels=["state"]),
            ((s.value, float(s is state)) for s in Role))
        yield _gauge("nanomesh_raft_term", "Current Raft term as this peer's node believes it.",
                     status.term if status else 0)
        yield _gauge("nanomesh_raft_commit_index", "Raft log index known committed.",
                     status.commit_index if status else 0)
        yield _gauge("nanomesh_raft_last_applied", "Raft log index applied to the state.",
                     status.last_applied if status else 0)
        yield _gauge("nanomesh_raft_voters", "Voters in the configuration this node uses.",
                     len(status.voters) if status else 0)
        yield _gauge("nanomesh_raft_has_quorum", "1 if this node sees a quorum of voters.",
                     float(bool(status and status.has_quorum)))
        leader = GaugeMetricFamily("nanomesh_raft_leader", "1, labelled with the Raft "
                                   "address of the leader this peer last heard from (no "
                                   "series during an election).", labels=["leader"])
        if status is not None and status.leader:
            leader.add_metric([status.leader], 1)
        yield leader
        yield _by_label(CounterMetricFamily(
            "nanomesh_raft_dropped_connections", "Raft connections this peer's node closed, "
            "by reason (restarts with each role change).", labels=["reason"]),
            sorted(node.dropped.items()) if node is not None else ())
        yield _gauge("nanomesh_control_epoch", "Control-plane epoch (one per operator "
                     "recovery).", ctx.control_epoch())
        yield _gauge("nanomesh_placement_plan_epoch", "Epoch of the committed placement plan.",
                     node.state.plan_epoch if node is not None else 0)
        yield _gauge("nanomesh_services", "Services in the committed desired state.",
                     len(node.state.services) if node is not None else 0)
        yield histogram("nanomesh_placement_duration_seconds", "Time one placement run "
                        "took on this peer as leader.", ctx.placement_durations)
        yield _counter("nanomesh_placement_plans_committed", "Plans this peer committed as "
                       "leader.", ctx.plans_committed())


class RuntimeCollector(Collector):
    """This peer's instances by state, and their restarts."""

    def __init__(self, ctx: MetricsContext) -> None:
        self.ctx = ctx

    def collect(self) -> Iterator[Metric]:
        states = Counter(s.state for s in self.ctx.instances().values())
        yield _by_label(GaugeMetricFamily(
            "nanomesh_instances", "Instances on this peer, by lifecycle state.",
            labels=["state"]), ((s, states[s]) for s in get_args(State)))
        yield _by_label(CounterMetricFamily(
            "nanomesh_instance_restarts", "Starts of an instance whose previous run on this "
            "peer had ended, by service.", labels=["service"]),
            sorted(self.ctx.restarts.items()))


class GatewayCollector(Collector):
    """The CoAP gateway: requests by response code, latency, refusals."""

    def __init__(self, ctx: MetricsContext) -> None:
        self.ctx = ctx

    def collect(self) -> Iterator[Metric]:
        gateway = self.ctx.gateway()
        if gateway is None and not self.ctx.gateway_configured:
            return
        # A configured gateway waits for its first datagram
        # (`nanomesh.daemon.on_demand`): until then every series reads 0.
        answered = sorted(gateway.answered.items()) if gateway is not None else []
        latency = gateway.latency if gateway is not None else Durations(LATENCY_BUCKETS)
        yield _by_label(CounterMetricFamily(
            "nanomesh_gateway_requests", "CoAP gateway requests answered, by response code.",
            labels=["code"]), answered)
        yield histogram("nanomesh_gateway_request_duration_seconds", "Time from a CoAP "
                        "request to its answer.", latency)
        for name, text in (
                ("forwarded", "requests an instance answered"),
                ("failed_over", "tries past a request's first instance"),
                ("refused", "private-service requests from non-members"),
                ("hop_limited", "requests whose Hop-Limit ran out"),
                ("dropped", "inputs the CoAP layer failed on")):
            yield _counter(f"nanomesh_gateway_{name}", _sentence(text),
                           getattr(gateway, name) if gateway is not None else 0)
        yield _gauge("nanomesh_gateway_observers", "CoAP observations running.",
                     gateway.observers if gateway is not None else 0)


class ApiCollector(Collector):
    """The HTTP API: requests by route, method and status; refusals."""

    def __init__(self, ctx: MetricsContext) -> None:
        self.ctx = ctx

    def collect(self) -> Iterator[Metric]:
        stats = self.ctx.api_stats
        requests = CounterMetricFamily(
            "nanomesh_http_requests", "HTTP API requests answered, by route pattern "
            "(\"(unmatched)\" for unknown paths), method and status.",
            labels=["route", "method", "status"])
        for (method, route, status), n in sorted(stats.requests.items()):
            requests.add_metric([route, method, str(status)], n)
        yield requests
        yield _gauge("nanomesh_http_open_connections", "HTTP API connections open.",
                     stats.open)
        refusals = stats.to_dict()
        refusals.pop("open")
        yield _by_label(CounterMetricFamily(
            "nanomesh_http_refused", "HTTP API connections refused or cut off, by reason.",
            labels=["reason"]), sorted(refusals.items()))
        info = GaugeMetricFamily("nanomesh_peer_info", "1, labelled with this peer's name "
                                 "and nanomesh version.", labels=["name", "version"])
        info.add_metric([self.ctx.core.name, __version__], 1)
        yield info


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "."
