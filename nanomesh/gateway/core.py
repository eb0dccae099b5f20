"""The gateway's request handling in trio, independent of aiocoap: route,
resolve, then try instances in turn with fail-over.

Fail-over (bounded by `GatewayConfig`): an instance that cannot be reached
(connection refused, ICMP unreachable, broken exchange) or that does not
answer within ``try_timeout`` is skipped for the next one, at most
``max_tries`` instances and ``deadline`` seconds in all. A request that timed
out may have reached its instance: for a non-idempotent request (POST) the
next instance may then do the work a second time, as with any retrying
client; an instance that *answers*, even with an error, is never retried.

Visibility (`nanomesh.runtime.manifest.VISIBILITIES`): a request from a client that
is not a member (plain CoAP) reaches only ``public`` services; a private one
is answered 4.01 and left out of ``/.well-known/core``. Members (the
authenticated gateway link, `nanomesh.gateway.link`) reach every service. A
private service is forwarded preferably to a ZeroMQ endpoint (CURVE,
`nanomesh.gateway.forward.PRIVATE_PROTOCOLS`); its CoAP or HTTP instances on
another peer are reached through that peer's gateway link, never by plain
CoAP or HTTP across the network.

Observe (RFC 7641) is by polling, `Gateway.watch`; the design and its
bounds are in `nanomesh.gateway.observe`.

Loops: every forwarded request carries a Hop-Limit (RFC 8768,
`nanomesh.gateway.forward.DEFAULT_HOP_LIMIT`); a gateway that gets one at its
last hop answers 5.08 without forwarding, so a request that resolves back to a
gateway (``/s/a/s/a/...``) ends after a few hops instead of fanning out.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Callable, Collection, Mapping

import trio

from nanomesh.durations import LATENCY_BUCKETS, Durations
from nanomesh.gateway.forward import (
    DEFAULT_GATEWAY,
    HOP_LIMIT_REACHED,
    INTERNAL_ERROR,
    NOT_FOUND,
    PRIVATE_PROTOCOLS,
    RETRY_AFTER,
    SERVICE_UNAVAILABLE,
    UNAUTHORIZED,
    Attempts,
    DescribeRoute,
    GatewayConfig,
    GatewayRequest,
    GatewayResponse,
    LeafRoute,
    NoRoute,
    ServiceRoute,
    WellKnownRoute,
    code_text,
    describe_service,
    error_response,
    negotiate,
    outgoing_hop_limit,
    pick_targets,
    route,
    well_known_core,
)
from nanomesh.gateway.leaf_core import LeafEndpoint
from nanomesh.gateway.observe import DEFAULT_OBSERVE, Observation, ObserveConfig, Step, refusal
from nanomesh.gateway.upstream import Upstream, UpstreamError
from nanomesh.naming import PROTOCOLS, Endpoint

log = logging.getLogger("nanomesh.gateway")

Resolver = Callable[[str], list[Endpoint]]
"""Service name -> endpoints, best first (`nanomesh.naming.resolve` bound to a view)."""
Services = Callable[[], Collection[str]]
"""The names of the services that exist (deployed), healthy or not."""
Visibility = Callable[[str], str]
"""Service name -> ``"public"`` or ``"private"``."""
LINK = "link"
"""Key in `Gateway.upstreams` of the upstream through another peer's gateway link."""
Emit = Callable[[GatewayResponse, bool], None]
"""Sends one response of an observation: (response, is it the last)."""


class Gateway:
    """Answers one `GatewayRequest` at a time (any number concurrently).

    `services` tells an unknown name (4.04) from a known one without a
    healthy instance (5.03); without it every name counts as known. It also
    feeds ``/.well-known/core``."""

    def __init__(self, resolver: Resolver, upstreams: Mapping[str, Upstream], *,
                 services: Services | None = None,
                 config: GatewayConfig = DEFAULT_GATEWAY,
                 visibility: Visibility | None = None, me: str | None = None,
                 observe: ObserveConfig = DEFAULT_OBSERVE,
                 leaves: LeafEndpoint | None = None,
                 leaves_changed: Callable[[], None] = lambda: None) -> None:
        self.resolver = resolver
        self.upstreams = dict(upstreams)
        self.services = services
        self.config = config
        self.visibility = visibility
        """None: every service is public (a mesh without a key: nothing can
        be authenticated, see the module docstring)."""
        self.me = me
        """This peer's name: its own instances are called directly."""
        self.refused = 0
        """Requests for a private service from a client that is not a member."""
        self.forwarded = 0
        """Requests an instance answered."""
        self.failed_over = 0
        """Tries past the first instance of a request."""
        self.dropped = 0
        """Inputs the CoAP layer failed on and dropped (garbage datagrams)."""
        self.hop_limited = 0
        """Requests answered 5.08: their Hop-Limit ran out (a forwarding loop)."""
        self.observe = observe
        self.observers = 0
        """Observations running (`admit_observer` .. `observer_gone`)."""
        self.leaves = leaves
        """Microcontroller leaves at ``/leaf/...`` (None: this peer takes none)."""
        self.leaves_changed = leaves_changed
        """Called when the devices of the leaves that are up change (the
        daemon republishes its profile)."""
        self.answered: Counter[str] = Counter()
        """Requests answered, by response code (``"2.05"``); an observation's
        polls are not requests and are not counted."""
        self.latency = Durations(LATENCY_BUCKETS)
        """Seconds from a request to its answer (``GET /v1/metrics``)."""

    def _known(self, service: str) -> bool:
        return self.services is None or service in set(self.services())

    def is_public(self, service: str) -> bool:
        return self.visibility is None or self.visibility(service) == "public"

    async def handle(self, request: GatewayRequest, *, member: bool = False
                     ) -> GatewayResponse:
        """Answer `request` from a `member` of the mesh or (False) anyone,
        counted in `answered` and `latency`. Never raises (but for
        cancellation): a bug becomes a logged 5.00."""
        start = trio.current_time()
        answer = await self._answer(request, member)
        self.latency.observe(trio.current_time() - start)
        self.answered[code_text(answer.code)] += 1
        return answer

    async def _answer(self, request: GatewayRequest, member: bool) -> GatewayResponse:
        try:
            match route(request):
                case LeafRoute():
                    return self._leaf(request, member)
                case WellKnownRoute():
                    names = self.services() if self.services else ()
                    return well_known_core((n for n in names if member or self.is_public(n)),
                                           request.query)
                case DescribeRoute(service):
                    refused = self._refuse(service, member)
                    if refused is not None:
                        return refused
                    if not self._known(service):
                        return error_response(NOT_FOUND, f"no service named {service!r}")
                    return describe_service(service, self._visibility(service),
                                            self.resolver(service))
                case ServiceRoute(service, inner):
                    refused = self._refuse(service, member)
                    if refused is not None:
                        return refused
                    answer = await self.forward(service, inner, private=not self.is_public(service))
                    return negotiate(inner.accept, answer)
                case NoRoute(response):
                    return response
        except Exception:
            log.exception("BUG: gateway failed on %s %s", request.method, request.path_text())
            return error_response(INTERNAL_ERROR, "internal gateway error; see the peer's log")
        raise AssertionError("unreachable")  # pragma: no cover

    def _leaf(self, request: GatewayRequest, member: bool) -> GatewayResponse:
        if self.leaves is None:
            return error_response(NOT_FOUND, "this peer takes no leaves (no peer.leaf_keys)")
        before = self.leaves.registry.devices() if request.method == "POST" else None
        response = self.leaves.handle(request, trio.current_time(), member=member)
        if before is not None and self.leaves.registry.devices() != before:
            self.leaves_changed()
        return response

    async def expire_leaves(self) -> None:
        """Mark silent leaves gone, at the time the registry says, forever
        (a task of the CoAP gateway when it has leaves)."""
        assert self.leaves is not None
        registry = self.leaves.registry
        while True:
            due = registry.next_expiry()
            # At least every second: a new registration may be due sooner.
            wake = trio.current_time() + 1.0 if due is None else min(
                due + 0.01, trio.current_time() + 1.0)
            await trio.sleep_until(wake)
            if registry.expire(trio.current_time()):
                self.leaves_changed()

    def _refuse(self, service: str, member: bool) -> GatewayResponse | None:
        """4.01 for a private service asked for by a non-member, else None.
        An unknown name is 4.04 for everyone (decided later): 4.01 for it
        would claim a private service that is not there."""
        if member or self.is_public(service) or not self._known(service):
            return None
        self.refused += 1
        return error_response(UNAUTHORIZED, f"{service} is a private service: only mesh "
                              "members reach it, with the cluster key (nanomesh call "
                              "--key-file FILE, nanomesh.sdk.client.connect(key_file=...))")

    def _visibility(self, service: str) -> str:
        return "public" if self.visibility is None else self.visibility(service)

    # ------------------------------------------------------------ observe

    def admit_observer(self, first: GatewayResponse) -> str | None:
        """Count a new observation whose first answer is `first`, or say why
        it is answered as a plain GET instead (`nanomesh.gateway.observe.refusal`).
        Every admitted observation must end with `observer_gone`."""
        why = refusal(first, self.observers, self.observe)
        if why is None:
            self.observers += 1
        return why

    def observer_gone(self) -> None:
        self.observers -= 1

    async def watch(self, request: GatewayRequest, first: GatewayResponse, emit: Emit) -> None:
        """Run one admitted observation of `request` (a non-member's GET,
        first answered `first`): send the first response, then poll every
        period and send what `Observation.step` says, until it ends or the
        caller cancels (the client deregistered or went away)."""
        observation, out = Observation.begin(self.observe, first, trio.current_time())
        emit(out, False)
        while True:
            await trio.sleep(self.observe.period)
            answer = await self._answer(request, False)
            step, out = observation.step(trio.current_time(), answer)
            if step is not Step.SKIP:
                emit(out, step is Step.END)
            if step is Step.END:
                return

    async def forward(self, service: str, request: GatewayRequest, *, private: bool = False,
                      local_only: bool = False) -> GatewayResponse:
        """Forward to an instance of `service` (only this peer's with
        `local_only`: a request that came through another peer's gateway)."""
        hops = outgoing_hop_limit(request.hop_limit, self.config.hop_limit)
        if hops is None:
            self.hop_limited += 1
            return error_response(HOP_LIMIT_REACHED, f"hop limit reached on the way to "
                                  f"{service}: a loop between gateways?")
        request = dataclasses.replace(request, hop_limit=hops)
        endpoints = self.resolver(service)
        if local_only:
            endpoints = [ep for ep in endpoints if ep.peer == self.me]
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
        protocols = PRIVATE_PROTOCOLS if private else PROTOCOLS
        for i, ep in enumerate(pick_targets(endpoints, cfg.max_tries, protocols)):
            remaining = deadline - trio.current_time()
            if remaining <= 0:
                break
            if i:
                self.failed_over += 1
            upstream = self.upstreams.get(self._way(ep, private))
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

    def _way(self, ep: Endpoint, private: bool) -> str:
        """The upstream for `ep`: its protocol, or `LINK` for a private
        service's coap/http instance on another peer (see the module docstring)."""
        if private and ep.protocol != "zmq" and self.me is not None and ep.peer != self.me:
            return LINK
        return ep.protocol
