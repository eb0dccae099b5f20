"""Feasibility filters: can this peer run one more instance of this service?

One small function per requirement, as in nomad's ``scheduler/feasible``:
each takes the service spec, the peer and what the plan already put on that
peer (:class:`Usage`), and returns ``None`` when the peer passes or a short
human-readable reason when it does not ("needs device pulse-oximeter",
"needs 512 MB memory, 120 MB free"). The reasons end up in
``Plan.unplaceable`` so an operator sees, per peer, why a service is pending.

Static filters depend only on the spec and the peer's profile; capacity
filters also on what the plan has already assigned there. The balanced
strategy evaluates the static ones through indexes for speed
(:mod:`nanomesh.placement.index`); these functions stay the reference that
the tests hold both strategies to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from nanomesh.placement.peers import PeerView
from nanomesh.placement.requirements import COMPUTE, ServiceSpec

EPSILON = 1e-9
"""Slack for comparing sums of fractional CPU cores (0.1 + 0.2 cores fit 0.3)."""


@dataclass(slots=True)
class Usage:
    """What a plan has assigned to one peer: reserved amounts and instance counts.
    Mutable working state of one planning run."""

    cpu: float = 0.0
    memory_mb: int = 0
    storage_mb: int = 0
    instances: int = 0
    per_service: dict[str, int] = field(default_factory=dict)

    def add(self, spec: ServiceSpec) -> None:
        r = spec.requires
        self.cpu += r.cpu
        self.memory_mb += r.memory_mb
        self.storage_mb += r.storage_mb
        self.instances += 1
        self.per_service[spec.name] = self.per_service.get(spec.name, 0) + 1

    def remove(self, spec: ServiceSpec) -> None:
        r = spec.requires
        self.cpu -= r.cpu
        self.memory_mb -= r.memory_mb
        self.storage_mb -= r.storage_mb
        self.instances -= 1
        left = self.per_service[spec.name] - 1
        if left:
            self.per_service[spec.name] = left
        else:
            del self.per_service[spec.name]


Filter = Callable[[ServiceSpec, PeerView, Usage], "str | None"]


def check_alive(spec: ServiceSpec, peer: PeerView, usage: Usage) -> str | None:
    return None if peer.alive else "peer is down"


def check_pinned_peer(spec: ServiceSpec, peer: PeerView, usage: Usage) -> str | None:
    pin = spec.placement.peer
    return None if pin is None or pin == peer.name else f"pinned to peer {pin}"


def check_labels(spec: ServiceSpec, peer: PeerView, usage: Usage) -> str | None:
    for key, want in sorted(spec.placement.labels.items()):
        have = peer.labels.get(key)
        if have != want:
            found = "missing" if have is None else f"has {key}={have}"
            return f"needs label {key}={want} ({found})"
    return None


def check_capabilities(spec: ServiceSpec, peer: PeerView, usage: Usage) -> str | None:
    missing = sorted(spec.requires.capabilities - peer.capabilities)
    if not missing:
        return None
    devices = [m for m in missing if m != COMPUTE]
    parts = ["needs compute (no CPU cores)"] if COMPUTE in missing else []
    if devices:
        noun = "device" if len(devices) == 1 else "devices"
        parts.append(f"needs {noun} {', '.join(devices)}")
    return "; ".join(parts)


def check_power(spec: ServiceSpec, peer: PeerView, usage: Usage) -> str | None:
    r = spec.requires
    has = {"ac": "on AC", "battery": "on battery", None: "power source unknown"}[peer.power]
    if r.power is not None and peer.power != r.power:
        want = "AC" if r.power == "ac" else "battery"
        return f"needs {want} power ({has})"
    low = peer.power != "ac" and peer.battery_percent < r.min_battery_percent
    if r.min_battery_percent > 0 and low:
        return f"needs battery >= {r.min_battery_percent:g} % ({peer.battery_percent:g} %)"
    return None


def check_network(spec: ServiceSpec, peer: PeerView, usage: Usage) -> str | None:
    want = spec.requires.network
    if want is None or want in peer.networks:
        return None
    has = ", ".join(sorted(peer.networks)) or "none"
    return f"needs network {want} (has {has})"


def check_cpu(spec: ServiceSpec, peer: PeerView, usage: Usage) -> str | None:
    need = spec.requires.cpu
    free = peer.cpu_cores - usage.cpu
    if need <= 0 or need <= free + EPSILON:
        return None
    return f"needs {need:g} CPU cores, {max(free, 0.0):.3g} free"


def check_memory(spec: ServiceSpec, peer: PeerView, usage: Usage) -> str | None:
    need = spec.requires.memory_mb
    free = peer.memory_mb - usage.memory_mb
    if need <= 0 or need <= free:
        return None
    return f"needs {need} MB memory, {max(free, 0)} MB free"


def check_storage(spec: ServiceSpec, peer: PeerView, usage: Usage) -> str | None:
    need = spec.requires.storage_mb
    free = peer.storage_mb - usage.storage_mb
    if need <= 0 or need <= free:
        return None
    return f"needs {need} MB storage, {max(free, 0)} MB free"


def check_per_peer_limit(spec: ServiceSpec, peer: PeerView, usage: Usage) -> str | None:
    limit = spec.placement.per_peer_limit()
    running = usage.per_service.get(spec.name, 0)
    if not limit or running < limit:
        return None
    if spec.placement.spread:
        return f"already runs an instance of {spec.name} (spread)"
    return f"already runs {running} instances of {spec.name} (max_per_peer {limit})"


STATIC_FILTERS: tuple[Filter, ...] = (
    check_alive, check_pinned_peer, check_labels, check_capabilities, check_power,
    check_network,
)
"""Filters that depend on the spec and the peer's profile only."""

CAPACITY_FILTERS: tuple[Filter, ...] = (
    check_cpu, check_memory, check_storage, check_per_peer_limit,
)
"""Filters that depend on what the plan already assigned to the peer."""

FILTERS = STATIC_FILTERS + CAPACITY_FILTERS
"""Every filter, in the order reasons are reported."""


def first_failure(spec: ServiceSpec, peer: PeerView, usage: Usage) -> str | None:
    """The first failing filter's reason, or ``None`` when the peer can take
    one more instance of ``spec``."""
    for check in FILTERS:
        reason = check(spec, peer, usage)
        if reason is not None:
            return reason
    return None


def why_not(spec: ServiceSpec, peer: PeerView, usage: Usage) -> str | None:
    """Every failing filter's reason joined with ``"; "`` (a peer that is down
    reports only that), or ``None`` when the peer is feasible."""
    if not peer.alive:
        return check_alive(spec, peer, usage)
    reasons = [r for check in FILTERS if (r := check(spec, peer, usage)) is not None]
    return "; ".join(reasons) if reasons else None
