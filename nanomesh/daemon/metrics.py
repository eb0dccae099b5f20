"""``GET /v1/metrics``: the peer's counters in the Prometheus text format.

What a scrape reads is what the daemon counts anyway: the gossip core's
`nanomesh.gossip.machine.Stats` and view, the bytes of `views.Traffic`, the
Raft node's status, the control loop's placement timings, the runtime's
instances, the CoAP gateway's counters and the HTTP server's
`ServerStats`. Nothing is incremented for the metrics' sake: custom
collectors (`nanomesh.daemon.metrics_collector`) read those at scrape time,
so a peer nobody scrapes pays nothing.

prometheus_client is imported on the first scrape, not at start: an idle
peer's memory is a tracked goal (issue 9; the first scrape adds 2.9 MiB of
RSS and PSS, measured on a one-peer mesh, README "Metrics"). Each peer has its
own ``CollectorRegistry`` (never
the global one: two peers in one process, as in tests, must not mix).

Access: open, or the management token if the peer is configured so
(`nanomesh.daemon.api_auth.Access.authorize_metrics` decides, and says why).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nanomesh.daemon.http import Handler, RawBody, Request
from nanomesh.daemon.metrics_context import MetricsContext

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry


def metrics_routes(ctx: MetricsContext) -> dict[tuple[str, str], Handler]:
    registry: list[CollectorRegistry] = []
    """Built on the first scrape (see the module docstring)."""

    async def metrics(request: Request) -> tuple[int, Any]:
        ctx.access.authorize_metrics(request)
        from prometheus_client.exposition import choose_encoder

        from nanomesh.daemon.metrics_collector import build_registry
        if not registry:
            registry.append(build_registry(ctx))
        # The format the scraper asks for in Accept: OpenMetrics for a
        # Prometheus server, the classic text format (0.0.4) for curl.
        encode, content_type = choose_encoder(request.headers.get("accept", ""))
        # A scrape only reads counters already in memory: a few ms, no await
        # needed (the request slot bounds how many run at once).
        return 200, RawBody(encode(registry[0]), content_type)

    return {("GET", "/v1/metrics"): metrics}
