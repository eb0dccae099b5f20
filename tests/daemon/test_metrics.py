"""``GET /v1/metrics``: the collectors read the daemon's own counters at
scrape time, the output parses as the Prometheus text format, the access
rule holds, and prometheus_client stays unimported until the first scrape.
(A scrape of a real daemon whose counters move: tests/integration/test_observability.py.)
"""

from __future__ import annotations

import dataclasses
import math
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nanomesh.config import build_config
from nanomesh.consensus.role_effects import RaftRole
from nanomesh.consensus.status import RaftStatus, Role
from nanomesh.daemon.api_auth import Access
from nanomesh.daemon.http import HttpError, RawBody, Request
from nanomesh.daemon.http_limits import ServerStats
from nanomesh.daemon.metrics import metrics_routes
from nanomesh.daemon.metrics_collector import GOSSIP_COUNTERS
from nanomesh.daemon.metrics_context import MetricsContext
from nanomesh.daemon.views import GOSSIP_TCP, GOSSIP_UDP, Traffic
from nanomesh.durations import Durations
from nanomesh.errors import ConfigError
from nanomesh.gateway.core import Gateway
from nanomesh.gateway.forward import GatewayRequest
from nanomesh.gossip.config import preset
from nanomesh.gossip.machine import Membership, Stats
from nanomesh.runtime.reconcile_core import InstanceStatus
from nanomesh.security.auth import TOKEN_META_KEY, InternalCalls, token_digest
from nanomesh.wire import Keyring

# ------------------------------------------------------------------ Durations


@pytest.mark.parametrize(("observed", "expected"), [
    ([], [0, 0, 0, 0]),
    ([0.1], [1, 1, 1, 1]),  # a value on a bound belongs to it (le is "<=")
    ([0.10001, 1.0, 5.0], [0, 2, 2, 3]),
    ([-3.0, 0.05, 2.0, 99.0], [2, 2, 3, 4]),  # a negative duration (clock step) counts as 0
])
def test_durations_are_cumulative_per_bound(observed: list[float], expected: list[int]
                                            ) -> None:
    d = Durations((0.1, 1.0, 2.0))
    for v in observed:
        d.observe(v)
    assert d.cumulative() == list(zip((0.1, 1.0, 2.0, math.inf), expected, strict=True))
    assert d.count == len(observed)
    assert d.total == pytest.approx(sum(max(0.0, v) for v in observed))


@pytest.mark.parametrize("bounds", [(1.0, 0.5), (0.1, 0.1), (0.1, math.inf), ()])
def test_durations_refuse_bounds_that_are_not_strictly_ascending(
        bounds: tuple[float, ...]) -> None:
    if not bounds:  # no bound at all is allowed: a single +Inf bucket
        assert Durations(bounds).cumulative() == [(math.inf, 0)]
        return
    with pytest.raises(ValueError, match="strictly ascending"):
        Durations(bounds)


# ------------------------------------------------------------------ the collectors


def test_every_gossip_counter_is_exported() -> None:
    assert set(GOSSIP_COUNTERS) == {f.name for f in dataclasses.fields(Stats)}


TOKEN = "s3cret-token"


def _node() -> Any:
    status = RaftStatus("127.0.0.9:7948", Role.LEADER, 7, "127.0.0.9:7948",
                        frozenset({"127.0.0.9:7948", "127.0.0.8:7948"}), 42, 41, True, True, 0,
                        True)
    state = SimpleNamespace(plan_epoch=5, services={"echo": {}, "temp": {}},
                            meta={TOKEN_META_KEY: token_digest(TOKEN)})
    return SimpleNamespace(status=status, state=state, dropped=Counter({"bad-frame": 2}),
                           running=True)


def _context(*, node: Any = None, gateway: Gateway | None = None,
             need_token: bool = False, gateway_configured: bool = False) -> MetricsContext:
    core = Membership("p1", ("127.0.0.9", 7946), preset("local"), random.Random(1), 0.0)
    core.stats.probes, core.stats.probe_acks, core.stats.suspicions = 12, 11, 1
    traffic = Traffic()
    traffic.received[GOSSIP_UDP] += 1000
    traffic.sent[GOSSIP_UDP] += 900
    traffic.sent[GOSSIP_TCP] += 50
    traffic.dropped["bad-mac"] += 3
    placement = Durations((0.001, 0.01))
    placement.observe(0.0004)
    placement.observe(0.004)
    statuses = {"echo/0": InstanceStatus("echo/0", "echo", "running", 0.0),
                "echo/1": InstanceStatus("echo/1", "echo", "failed", 0.0)}
    api = ServerStats(busy=2)
    api.requests["GET", "/v1/services/{name}", 200] += 4
    access = Access(Keyring([bytes(32)]), InternalCalls(), lambda: node, lambda _: None,
                    metrics_need_token=need_token)
    return dataclasses.replace(MetricsContext(
        core, traffic, lambda: node, lambda: RaftRole.VOTER, lambda: 2, placement, lambda: 3,
        lambda: statuses, Counter({"echo": 4}), lambda: gateway, api, access),
        gateway_configured=gateway_configured)


async def _scrape(ctx: MetricsContext, token: str | None = None) -> dict[str, float]:
    """``{sample name + labels: value}`` of one scrape, parsed by
    prometheus_client's own text parser."""
    headers = {"authorization": f"Bearer {token}"} if token else {}
    status, body = await metrics_routes(ctx)[("GET", "/v1/metrics")](
        Request("GET", "/v1/metrics", "", headers, b""))
    assert status == 200 and isinstance(body, RawBody)
    assert body.content_type.startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(body.data.decode()):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return samples


async def test_a_scrape_reads_the_daemons_counters() -> None:
    gateway = Gateway(lambda service: [], {}, services=lambda: ["echo"])
    await gateway.handle(GatewayRequest("GET", ("s", "nope", "x")))
    got = await _scrape(_context(node=_node(), gateway=gateway))
    expected = {
        "nanomesh_gossip_probes_total": 12, "nanomesh_gossip_probe_acks_total": 11,
        "nanomesh_gossip_suspicions_total": 1, "nanomesh_members{state=alive}": 1,
        "nanomesh_members{state=dead}": 0,
        "nanomesh_network_received_bytes_total{channel=gossip_udp}": 1000,
        "nanomesh_network_sent_bytes_total{channel=gossip_tcp}": 50,
        "nanomesh_gossip_dropped_total{reason=bad-mac}": 3,
        "nanomesh_raft_role{role=voter}": 1, "nanomesh_raft_role{role=learner}": 0,
        "nanomesh_raft_state{state=leader}": 1, "nanomesh_raft_term": 7,
        "nanomesh_raft_commit_index": 42, "nanomesh_raft_last_applied": 41,
        "nanomesh_raft_voters": 2, "nanomesh_raft_has_quorum": 1,
        "nanomesh_raft_leader{leader=127.0.0.9:7948}": 1,
        "nanomesh_raft_dropped_connections_total{reason=bad-frame}": 2,
        "nanomesh_control_epoch": 2, "nanomesh_placement_plan_epoch": 5,
        "nanomesh_services": 2, "nanomesh_placement_plans_committed_total": 3,
        "nanomesh_placement_duration_seconds_bucket{le=0.001}": 1,
        "nanomesh_placement_duration_seconds_bucket{le=+Inf}": 2,
        "nanomesh_placement_duration_seconds_count": 2,
        "nanomesh_instances{state=running}": 1, "nanomesh_instances{state=failed}": 1,
        "nanomesh_instances{state=idle}": 0,
        "nanomesh_instance_restarts_total{service=echo}": 4,
        "nanomesh_gateway_requests_total{code=4.04}": 1,
        "nanomesh_gateway_request_duration_seconds_count": 1,
        "nanomesh_http_requests_total{method=GET,route=/v1/services/{name},status=200}": 4,
        "nanomesh_http_refused_total{reason=busy}": 2,
        "nanomesh_peer_info{name=p1,version=0.1.0}": 1,
    }
    assert {k: got.get(k) for k in expected} == expected
    assert got["nanomesh_placement_duration_seconds_sum"] == pytest.approx(0.0044)
    assert got["process_resident_memory_bytes"] > 1e6  # the process collector is there


async def test_a_peer_without_a_node_or_a_gateway_still_answers() -> None:
    got = await _scrape(_context())
    assert got["nanomesh_raft_term"] == 0 and got["nanomesh_raft_has_quorum"] == 0
    assert not any(k.startswith("nanomesh_raft_leader{") for k in got)
    assert not any(k.startswith("nanomesh_gateway_") for k in got)
    assert all(v == 0 for k, v in got.items() if k.startswith("nanomesh_raft_state{"))


async def test_a_gateway_waiting_for_its_first_use_exports_zeros() -> None:
    """The gateway starts on its first datagram (`nanomesh.daemon.on_demand`);
    its series exist before, at 0, so a rate over the start is right."""
    got = await _scrape(_context(gateway_configured=True))
    assert got["nanomesh_gateway_request_duration_seconds_count"] == 0
    assert got["nanomesh_gateway_forwarded_total"] == 0
    assert got["nanomesh_gateway_observers"] == 0


async def test_the_metrics_need_the_token_only_when_configured() -> None:
    node = _node()
    assert "nanomesh_raft_term" in await _scrape(_context(node=node))  # default: open
    guarded = _context(node=node, need_token=True)
    for token in (None, "wrong"):
        with pytest.raises(HttpError) as refused:
            await _scrape(guarded, token)
        assert refused.value.status == 401 and "reading the metrics needs" in \
            refused.value.message
    assert (await _scrape(guarded, TOKEN))["nanomesh_raft_term"] == 7
    with pytest.raises(HttpError) as unchecked:  # nobody can be checked without a node
        await _scrape(_context(need_token=True), TOKEN)
    assert unchecked.value.status == 503


def test_the_daemon_does_not_import_prometheus_client_before_a_scrape() -> None:
    """An idle peer's memory is a goal (issue 9): building the daemon and its
    routes must not load prometheus_client (it loads on the first scrape)."""
    code = ("import sys, nanomesh.daemon.assemble, nanomesh.daemon.metrics, nanomesh.cli.peer; "
            "print('prometheus_client' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "False", out


async def test_a_prometheus_server_asking_for_openmetrics_gets_it() -> None:
    handler = metrics_routes(_context())[("GET", "/v1/metrics")]
    status, body = await handler(Request("GET", "/v1/metrics", "", {
        "accept": "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"}, b""))
    assert status == 200 and isinstance(body, RawBody)
    assert body.content_type.startswith("application/openmetrics-text")
    assert body.data.endswith(b"# EOF\n")


@pytest.mark.parametrize(("value", "expected"), [("true", True), ("false", False), (None, False)])
def test_the_peer_config_says_whether_metrics_need_the_token(
        tmp_path: Path, value: str | None, expected: bool) -> None:
    path = tmp_path / "peer.toml"
    path.write_text("[peer]\n" + (f"metrics_need_token = {value}\n" if value else ""))
    assert build_config(config_file=path, name="p").metrics_need_token is expected


def test_a_metrics_setting_that_is_not_a_boolean_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "peer.toml"
    path.write_text('[peer]\nmetrics_need_token = "yes"\n')
    with pytest.raises(ConfigError, match="metrics_need_token must be true or false"):
        build_config(config_file=path, name="p")
