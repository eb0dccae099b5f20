"""The gateway's request handling in trio, independent of aiocoap: route,
resolve, then try instances in turn with fail-over.

Fail-over (bounded by `GatewayConfig`): an instance that cannot be reached
(connection refused, ICMP unreachable, broken exchange) or that does not
answer within ``try_timeout`` is skipped for the next one, at most
``max_tries`` instances and ``deadline`` seconds in all. A request that timed
out may have reached its instance: for a non-idempotent request (POST) the
next instance may then do the work a second time, as with any retrying
client; an instance that *answers*, even with an error, is never retried.

Loops: every forwarded request carries a Hop-Limit (RFC 8768,
`nanomesh.gateway.forward.DEFAULT_HOP_LIMIT`); a gateway that gets one at its
last hop answers 5.08 without forwarding, so a request that resolves back to a
gateway (``/s/a/s/a/...``) ends after a few hops instead of fanning out.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Collection, Mapping

import trio

from nanomesh.gateway.forward import (
    DEFAULT_GATEWAY,
    HOP_LIMIT_REACHED,
    INTERNAL_ERROR,
    NOT_FOUND,
    RETRY_AFTER,
    SERVICE_UNAVAILABLE,
    Attempts,
    GatewayConfig,
    GatewayRequest,
    GatewayResponse,
    NoRoute,
    ServiceRoute,
    WellKnownRoute,
    error_response,
    outgoing_hop_limit,
    pick_targets,
    route,
    well_known_core,
)
from nanomesh.gateway.upstream import Upstream, UpstreamError
from nanomesh.naming import Endpoint

log = logging.getLogger("nanomesh.gateway")

Resolver = Callable[[str], list[Endpoint]]
"""Service name -> endpoints, best first (`nanomesh.naming.resolve` bound to a view)."""
Services = Callable[[], Collection[str]]
"""The names of the services that exist (deployed), healthy or not."""


class Gateway:
    """Answers one `GatewayRequest` at a time (any number concurrently).

    `services` tells an unknown name (4.04) from a known one without a
    healthy instance (5.03); without it every name counts as known. It also
    feeds ``/.well-known/core``."""

    def __init__(self, resolver: Resolver, upstreams: Mapping[str, Upstream], *,
                 services: Services | None = None,
                 config: GatewayConfig = DEFAULT_GATEWAY) -> None:
        self.resolver = resolver
        self.upstreams = dict(upstreams)
        self.services = services
        self.config = config
        self.forwarded = 0
        """Requests an instance answered."""
        self.failed_over = 0
        """Tries past the first instance of a request."""
        self.dropped = 0
        """Inputs the CoAP layer failed on and dropped (garbage datagrams)."""
        self.hop_limited = 0
        """Requests answered 5.08: their Hop-Limit ran out (a forwarding loop)."""

    async def handle(self, request: GatewayRequest) -> GatewayResponse:
        """Never raises (but for cancellation): a bug becomes a logged 5.00."""
        try:
            match route(request):
                case WellKnownRoute():
                    return well_known_core(self.services() if self.services else ())
                case ServiceRoute(service, inner):
                    return await self.forward(service, inner)
                case NoRoute(response):
                    return response
        except Exception:
            log.exception("BUG: gateway failed on %s %s", request.method, request.path_text())
            return error_response(INTERNAL_ERROR, "internal gateway error; see the peer's log")
        raise AssertionError("unreachable")  # pragma: no cover

    async def forward(self, service: str, request: GatewayRequest) -> GatewayResponse:
        hops = outgoing_hop_limit(request.hop_limit, self.config.hop_limit)
        if hops is None:
            self.hop_limited += 1
            return error_response(HOP_LIMIT_REACHED, f"hop limit reached on the way to "
                                  f"{service}: a loop between gateways?")
        request = dataclasses.replace(request, hop_limit=hops)
        endpoints = self.resolver(service)
        if not endpoints:
            if self.services is not None and service not in self.services():
                return error_response(NOT_FOUND, f"no service named {service!r}")
            return error_response(SERVICE_UNAVAILABLE, f"no healthy instance of {service}",
                                  max_age=RETRY_AFTER)
        attempts = Attempts(service)
        cfg = self.config
        # One cancel scope per try, each ending by the overall deadline (an
        # outer scope for the deadline would swallow the last try's timeout
        # before it could be recorded).
        deadline = trio.current_time() + cfg.deadline
        for i, ep in enumerate(pick_targets(endpoints, cfg.max_tries)):
            remaining = deadline - trio.current_time()
            if remaining <= 0:
                break
            if i:
                self.failed_over += 1
            upstream = self.upstreams.get(ep.protocol)
            if upstream is None:
                attempts.failed(ep, f"this gateway does not forward {ep.protocol}")
                continue
            timeout = min(cfg.try_timeout, remaining)
            with trio.move_on_after(timeout):
                try:
                    response = await upstream(ep, request, timeout)
                except UpstreamError as exc:
                    attempts.failed(ep, str(exc), timeout=exc.timed_out)
                    continue
                self.forwarded += 1
                return response
            attempts.failed(ep, f"no answer within {timeout:.1f}s", timeout=True)
        log.info("gateway: %s", attempts.response().payload.decode())
        return attempts.response()
