"""What the gateway decides, in pure code: routes, target choice, and the
translation between CoAP and the HTTP-style status of zmq and http instances.

A request to the gateway is a protocol-neutral `GatewayRequest`; the answer a
`GatewayResponse` carrying a CoAP code (``class << 5 | detail``: 2.05 is 69).
The aiocoap adapter (`nanomesh.gateway.coap`) converts to and from messages;
upstream calls (`nanomesh.gateway.upstream`) speak each instance's protocol
(zmq and http answers are mapped by `nanomesh.wire.service_traffic.status_to_coap_code`).
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from nanomesh.naming import PROTOCOLS, Endpoint
from nanomesh.wire.service_traffic import CONTENT_JSON, MAX_BODY
from nanomesh.wire.service_traffic import METHODS as SERVICE_METHODS

SERVICE_PREFIX = "s"
"""First path segment of a forwarded request: ``/s/<service>/<path...>``."""
LEAF_PREFIX = "leaf"
"""``coap://<peer>/leaf/...``: microcontroller leaves (`nanomesh.gateway.leaf_core`)."""


def coap_code(cls: int, detail: int) -> int:
    """The CoAP code ``cls.detail`` as its one-byte value (RFC 7252 §3)."""
    return cls << 5 | detail


def code_text(code: int) -> str:
    """69 -> ``"2.05"``."""
    return f"{code >> 5}.{code & 31:02d}"


CONTENT, CREATED, DELETED, VALID, CHANGED = (coap_code(2, d) for d in (5, 1, 2, 3, 4))
BAD_REQUEST, NOT_FOUND, METHOD_NOT_ALLOWED = coap_code(4, 0), coap_code(4, 4), coap_code(4, 5)
BAD_OPTION, NOT_ACCEPTABLE = coap_code(4, 2), coap_code(4, 6)
NOT_IMPLEMENTED, PROXYING_NOT_SUPPORTED = coap_code(5, 1), coap_code(5, 5)
UNAUTHORIZED = coap_code(4, 1)
"""4.01: a private service asked for by a client that is not a mesh member."""
REQUEST_TOO_LARGE = coap_code(4, 13)
INTERNAL_ERROR, BAD_GATEWAY = coap_code(5, 0), coap_code(5, 2)
SERVICE_UNAVAILABLE, GATEWAY_TIMEOUT = coap_code(5, 3), coap_code(5, 4)
HOP_LIMIT_REACHED = coap_code(5, 8)
"""5.08, RFC 8768 §3: the request went through too many proxies (a loop)."""

METHODS = {1: "GET", 2: "POST", 3: "PUT", 4: "DELETE", 5: "FETCH", 6: "PATCH", 7: "iPATCH"}
"""CoAP request codes (RFC 7252, RFC 8132) by number."""
METHOD_CODES = {name: num for num, name in METHODS.items()}

TEXT_PLAIN, LINK_FORMAT, JSON = 0, 40, CONTENT_JSON
"""CoAP content-formats of the gateway's own answers (RFC 7252 §12.3)."""

UNDERSTOOD_CRITICAL = {3: "Uri-Host", 7: "Uri-Port", 11: "Uri-Path", 15: "Uri-Query",
                       17: "Accept", 23: "Block2", 27: "Block1"}
"""Critical options (odd numbers, RFC 7252 §5.4.1) the gateway acts on:
routing, content negotiation, and block-wise transfer (aiocoap's). Any
other critical option in a request is answered 4.02 Bad Option, naming it,
so a client never believes a condition or a security layer was applied
when it was not: If-Match / If-None-Match (1, 5: conditional requests are
not forwarded), OSCORE (9), Q-Block1/2 (19, 31), and unregistered numbers.
Elective options (even numbers) that are not understood are ignored, as
RFC 7252 allows. A non-confirmable request with such an option also gets
4.02 (RFC 7252 would have it rejected, i.e. an RST or silence): one rule
for both, and the client learns why."""
PROXY_OPTIONS = {35: "Proxy-Uri", 39: "Proxy-Scheme"}
"""Forward-proxy options: the gateway is a reverse proxy for the mesh's
services only, so these get 5.05 Proxying Not Supported (RFC 7252 §5.10.2)."""
OPTION_NAMES = {1: "If-Match", 5: "If-None-Match", 9: "OSCORE", 19: "Q-Block1",
                31: "Q-Block2", **UNDERSTOOD_CRITICAL, **PROXY_OPTIONS}
SERVICE_RESOURCE_TYPE = "nanomesh.service"
"""``rt`` of a service's link in ``/.well-known/core`` (RFC 6690 §3.1)."""

RETRY_AFTER = 2
"""Max-Age, in seconds, on a 5.03 the gateway makes itself: how soon a client
may try again (RFC 7252 §5.9.3.4). About a health-check round, after which a
restarted or re-placed instance may be resolvable."""

DEFAULT_HOP_LIMIT = 8
"""Hop-Limit (CoAP option 16, RFC 8768) a gateway puts on a request it
forwards when the request carried none; a request that arrives with one is
forwarded with one less, and one arriving with 1 (or 0) is answered 5.08
instead. It stops forwarding loops: a CoAP endpoint that resolves to another
gateway (say a fixed port equal to the gateway's) would otherwise bounce
``/s/a/s/a/...`` between gateways, one nested exchange (and fail-over) per
segment. Lower than RFC 8768's 16: a mesh request needs one gateway hop, and
a few more only when services chain calls through gateways."""


@dataclass(frozen=True)
class GatewayConfig:
    """Timing and limits of forwarding. Defaults suit a LAN of small devices."""

    try_timeout: float = 4.0
    """Seconds one instance gets to answer before the next is tried. Long
    enough for one CoAP retransmission (ACK_TIMEOUT 2-3 s); a service that
    computes for longer needs a larger value, or it is tried again elsewhere."""
    deadline: float = 10.0
    """Seconds for the whole request, all tries included (the client's own
    CoAP exchange waits longer than this, so it gets our answer)."""
    max_tries: int = 3
    """Instances tried per request (one endpoint each): fail-over is bounded so
    that a broken service costs a client seconds, not minutes."""
    max_payload: int = MAX_BODY
    """Largest request body, in bytes, a client may send (block-wise): the
    limit of a call body (`nanomesh.wire.service_traffic.MAX_BODY`, 1 MiB). A larger one
    gets 4.13 at its first block past the limit, before it is buffered."""

    hop_limit: int = DEFAULT_HOP_LIMIT
    """Hop-Limit put on a forwarded request that carried none (`DEFAULT_HOP_LIMIT`)."""

    def __post_init__(self) -> None:
        if not (0 < self.try_timeout <= self.deadline):
            raise ValueError("gateway: need 0 < try_timeout <= deadline")
        if self.max_tries < 1 or self.max_payload < 1:
            raise ValueError("gateway: max_tries and max_payload must be positive")
        if not 1 <= self.hop_limit <= 255:
            raise ValueError("gateway: hop_limit must be 1-255 (RFC 8768)")


DEFAULT_GATEWAY = GatewayConfig()


@dataclass(frozen=True)
class GatewayRequest:
    """A request as the gateway received it (block-wise already reassembled)."""

    method: str
    """``GET``, ``POST``, ... (`METHODS`)."""
    path: tuple[str, ...]
    """Uri-Path segments, decoded."""
    query: tuple[str, ...] = ()
    """Uri-Query items, each ``k=v`` or ``k``."""
    payload: bytes = b""
    content_format: int | None = None
    accept: int | None = None
    hop_limit: int | None = None
    """The Hop-Limit option (RFC 8768) as received, None if absent; on a
    request to an instance, the value to send (`outgoing_hop_limit`)."""
    options: tuple[int, ...] = ()
    """Numbers of every option the request carried, for the check of
    critical options (`option_problem`); empty for a request that did not
    come as a CoAP message (the gateway link)."""

    def path_text(self) -> str:
        """``/a/b``, for messages and logs."""
        return "/" + "/".join(self.path)


@dataclass(frozen=True)
class GatewayResponse:
    code: int
    payload: bytes = b""
    content_format: int | None = None
    max_age: int | None = None


def error_response(code: int, message: str, **kwargs: int) -> GatewayResponse:
    """A diagnostic answer made by the gateway itself (text/plain, RFC 7252 §5.5.2)."""
    return GatewayResponse(code, message.encode(), TEXT_PLAIN, **kwargs)


# ------------------------------------------------------------ routes


@dataclass(frozen=True)
class ServiceRoute:
    service: str
    request: GatewayRequest
    """The request as the instance gets it: path without ``/s/<service>``."""


@dataclass(frozen=True)
class WellKnownRoute:
    pass


@dataclass(frozen=True)
class DescribeRoute:
    """``GET /s/<service>``, the link ``/.well-known/core`` lists: answered by
    the gateway itself (`describe_service`), since the service's own paths
    are below it (its root is ``/s/<service>/``, with an empty segment)."""

    service: str


@dataclass(frozen=True)
class LeafRoute:
    """``/leaf/...``: microcontroller leaves register and report there, and
    their latest values are read there (`nanomesh.gateway.leaf_core`)."""


@dataclass(frozen=True)
class NoRoute:
    response: GatewayResponse


Route = ServiceRoute | WellKnownRoute | DescribeRoute | LeafRoute | NoRoute


def route(request: GatewayRequest) -> Route:
    """Where a request to the gateway goes. Checked in this order: critical
    options (`option_problem`), the path, the method (4.05 for a method
    the path does not have), then Accept for the gateway's own resources
    (`negotiate`; a service's answer is checked after forwarding)."""
    problem = option_problem(request.options)
    if problem is not None:
        return NoRoute(problem)
    path = request.path
    if path == (".well-known", "core"):
        if request.method != "GET":
            return NoRoute(error_response(METHOD_NOT_ALLOWED, "/.well-known/core is GET only"))
        return _own(WellKnownRoute(), request.accept, LINK_FORMAT)
    if len(path) == 2 and path[0] == SERVICE_PREFIX and path[1]:
        if request.method != "GET":
            return NoRoute(error_response(METHOD_NOT_ALLOWED, f"/s/{path[1]} describes the "
                                          f"service and is GET only; its paths are "
                                          f"/s/{path[1]}/<path>"))
        return _own(DescribeRoute(path[1]), request.accept, JSON)
    if path and path[0] == LEAF_PREFIX:
        return _own(LeafRoute(), request.accept, JSON) if request.method == "GET" \
            else LeafRoute()
    if len(path) >= 3 and path[0] == SERVICE_PREFIX and path[1]:
        if request.method not in SERVICE_METHODS:
            return NoRoute(error_response(METHOD_NOT_ALLOWED, f"{request.method} cannot reach a "
                                          f"service: nanoservices answer "
                                          f"{', '.join(SERVICE_METHODS)}"))
        inner = GatewayRequest(request.method, path[2:], request.query, request.payload,
                               request.content_format, request.accept, request.hop_limit)
        return ServiceRoute(path[1], inner)
    return NoRoute(error_response(NOT_FOUND, "nothing here: services are at "
                                  "/s/<service>/<path>, listed at /.well-known/core"))


def _own(target: Route, accept: int | None, content_format: int) -> Route:
    """`target`, a resource the gateway answers itself in `content_format`
    only, unless `accept` asks for another (4.06)."""
    if accept is None or accept == content_format:
        return target
    return NoRoute(error_response(NOT_ACCEPTABLE, f"this resource is only available as "
                                  f"content-format {content_format}, not {accept}"))


def option_problem(options: Iterable[int]) -> GatewayResponse | None:
    """The answer to a request carrying a critical option the gateway does
    not act on (`UNDERSTOOD_CRITICAL`, `PROXY_OPTIONS`), else None."""
    unknown = sorted({n for n in options if n % 2 == 1 and n not in UNDERSTOOD_CRITICAL})
    if not unknown:
        return None
    names = ", ".join(f"{OPTION_NAMES[n]} ({n})" if n in OPTION_NAMES else str(n)
                      for n in unknown)
    if all(n in PROXY_OPTIONS for n in unknown):
        return error_response(PROXYING_NOT_SUPPORTED, f"not a forward proxy ({names}): "
                              "services are at /s/<service>/<path>")
    return error_response(BAD_OPTION, f"critical option not supported: {names}")


def negotiate(accept: int | None, response: GatewayResponse) -> GatewayResponse:
    """`response`, a service's answer, or 4.06 when the client's Accept asked
    for a content-format it does not have (RFC 7252 §5.10.4): a success
    with a payload in another format, or with no format said. An error or
    an empty success (2.01, 2.04, ...) carries no representation and passes."""
    if accept is None or response.code >> 5 != 2 or not response.payload:
        return response
    if response.content_format == accept:
        return response
    got = "none" if response.content_format is None else str(response.content_format)
    return error_response(NOT_ACCEPTABLE, f"the service answered in content-format {got}, "
                          f"not the {accept} asked for by Accept")


def outgoing_hop_limit(received: int | None, initial: int) -> int | None:
    """The Hop-Limit to forward a request with (RFC 8768 §3): `initial` if it
    carried none, else one less than `received`; None when that leaves 0 (or
    the received value was an invalid 0): answer `HOP_LIMIT_REACHED` instead."""
    if received is None:
        return initial
    return received - 1 if received > 1 else None


def well_known_core(services: Iterable[str], query: Sequence[str] = ()) -> GatewayResponse:
    """RFC 6690 link-format listing ``</s/NAME>`` per service, sorted, with
    what is known of it: ``rt`` (`SERVICE_RESOURCE_TYPE`), ``ct`` (the
    JSON of `describe_service`) and ``obs`` (the gateway lets it be
    observed). No ``if``: the gateway does not know a service's interface
    (its paths are the author's, not declared in the manifest). A `query`
    filters the links (`link_matches`)."""
    links = []
    for name in sorted(set(services)):
        href = f"/{SERVICE_PREFIX}/{urllib.parse.quote(name, safe='')}"
        attrs = {"rt": SERVICE_RESOURCE_TYPE, "ct": str(JSON), "obs": None}
        if all(link_matches(href, attrs, item) for item in query):
            links.append(f'<{href}>;rt="{SERVICE_RESOURCE_TYPE}";ct={JSON};obs')
    return GatewayResponse(CONTENT, ",".join(links).encode(), LINK_FORMAT)


def link_matches(href: str, attrs: dict[str, str | None], item: str) -> bool:
    """RFC 6690 §4.1 query filtering: ``href=V`` or ``ATTR=V`` (a trailing
    ``*`` matches a prefix; a space-separated value such as ``rt`` matches
    if one of its words does), ``ATTR`` alone if the link has it."""
    name, eq, want = item.partition("=")
    if name == "href":
        values = [href]
    elif name not in attrs:
        return False
    elif not eq:
        return True
    else:
        values = (attrs[name] or "").split()
    if want.endswith("*"):
        return any(v.startswith(want[:-1]) for v in values)
    return want in values


def describe_service(service: str, visibility: str, endpoints: Iterable[Endpoint]
                     ) -> GatewayResponse:
    """``GET /s/<service>``: what this gateway knows of a service, as JSON:
    its visibility, its healthy instances (sorted) and their protocols, and
    where its paths are."""
    eps = list(endpoints)
    doc = {"service": service, "visibility": visibility,
           "instances": sorted({ep.instance for ep in eps}),
           "protocols": sorted({ep.protocol for ep in eps}),
           "paths": f"/{SERVICE_PREFIX}/{service}/<path>"}
    return GatewayResponse(CONTENT, json.dumps(doc, sort_keys=True).encode(), JSON)


# ------------------------------------------------------------ targets


PRIVATE_PROTOCOLS = ("zmq", "coap", "http")
"""Protocol preference for a private service: ZeroMQ first, since it reaches
an instance on any peer authenticated (CURVE); coap and http instances on
another peer are reached through that peer's gateway link."""


def pick_targets(endpoints: Sequence[Endpoint], max_tries: int,
                 protocols: Sequence[str] = PROTOCOLS) -> list[Endpoint]:
    """Up to `max_tries` endpoints to try in turn: one per instance (fail-over
    goes to another instance, not to another port of the same one), keeping
    resolve's order of instances, and per instance the protocol earliest in
    `protocols` (default `nanomesh.naming.PROTOCOLS`, coap first: no
    translation needed; `PRIVATE_PROTOCOLS` for private services)."""
    best: dict[str, Endpoint] = {}
    for ep in endpoints:
        if ep.protocol not in protocols:
            continue
        held = best.get(ep.instance)
        if held is None or protocols.index(ep.protocol) < protocols.index(held.protocol):
            best[ep.instance] = ep
    return list(best.values())[:max_tries]


@dataclass
class Attempts:
    """What went wrong with each instance tried, for the diagnostic payload."""

    service: str
    failures: list[str] = field(default_factory=list)
    timed_out: bool = False

    def failed(self, ep: Endpoint, why: str, *, timeout: bool = False) -> None:
        self.failures.append(f"{ep.instance} on {ep.peer} ({ep.protocol}://{ep.address}): {why}")
        self.timed_out = self.timed_out or timeout

    def response(self) -> GatewayResponse:
        """5.04 if some instance did not answer in time (RFC 7252 §5.9.3.5),
        else 5.03: none of the instances we found could be reached."""
        detail = "; ".join(self.failures) or "deadline reached before any instance was tried"
        if self.timed_out or not self.failures:
            return error_response(GATEWAY_TIMEOUT, f"no instance of {self.service} answered "
                                  f"in time: {detail}")
        return error_response(SERVICE_UNAVAILABLE, f"no instance of {self.service} could be "
                              f"reached: {detail}", max_age=RETRY_AFTER)
