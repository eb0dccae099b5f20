"""The plan: which instance runs on which peer, what could not be placed, and why.

A plan is replicated through Raft (msgpack or JSON), so it is a frozen value
made of str / int / bool / list / dict only, and
``Plan.from_dict(plan.to_dict()) == plan`` exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True, slots=True)
class PlanStats:
    """How this plan differs from the previous one (all counts are instances)."""

    placed: int = 0
    """Instances with a peer in this plan."""
    unplaced: int = 0
    """Desired instances without a peer (their services are in ``unplaceable``)."""
    kept: int = 0
    """On the same peer as in the previous plan."""
    new: int = 0
    """Placed now, without a peer in the previous plan."""
    moved: int = 0
    """Forced moves: their previous peer died or no longer satisfies them."""
    rebalanced: int = 0
    """Voluntary moves onto joining or returning peers (at most ``max_moves``)."""
    lost: int = 0
    """Had a peer in the previous plan and have none now."""
    removed: int = 0
    """In the previous plan but no longer desired (service removed or scaled down)."""
    rebalance_pending: bool = False
    """True when the move budget ran out with moves left: plan again to continue."""

    @property
    def moves(self) -> int:
        """Instances that change peer: forced plus voluntary moves."""
        return self.moved + self.rebalanced

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PlanStats:
        return cls(**{f.name: data[f.name] for f in fields(cls)})


def _frozen_map() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Plan:
    """The output of :func:`nanomesh.placement.place`."""

    assignments: Mapping[str, str] = field(default_factory=_frozen_map)
    """Instance id (``"spo2/0"``) -> peer name, sorted by instance id."""

    unplaceable: Mapping[str, Mapping[str, str]] = field(default_factory=_frozen_map)
    """Service name -> peer name -> why that peer cannot take one more
    instance, for every peer given (dead ones included) and every service with
    an instance left unplaced."""

    unplaced: tuple[str, ...] = ()
    """Desired instance ids without a peer, sorted."""

    settled_peers: tuple[str, ...] = ()
    """Alive peers that need no rebalancing; an alive peer missing from the
    previous plan's list has joined or returned, and receives voluntary moves."""

    strategy: str = ""
    """``"balanced/spread"``, ``"balanced/binpack"`` or ``"first-fit"``."""

    stats: PlanStats = field(default_factory=PlanStats)

    def __post_init__(self) -> None:
        object.__setattr__(self, "assignments",
                           MappingProxyType(dict(sorted(self.assignments.items()))))
        object.__setattr__(self, "unplaceable", MappingProxyType({
            svc: MappingProxyType(dict(sorted(reasons.items())))
            for svc, reasons in sorted(self.unplaceable.items())}))
        object.__setattr__(self, "unplaced", tuple(sorted(self.unplaced)))
        object.__setattr__(self, "settled_peers", tuple(sorted(self.settled_peers)))

    def on_peer(self, peer: str) -> list[str]:
        """Instance ids assigned to ``peer``, sorted."""
        return [iid for iid, p in self.assignments.items() if p == peer]

    def to_dict(self) -> dict[str, Any]:
        return {
            "assignments": dict(self.assignments),
            "unplaceable": {svc: dict(r) for svc, r in self.unplaceable.items()},
            "unplaced": list(self.unplaced),
            "settled_peers": list(self.settled_peers),
            "strategy": self.strategy,
            "stats": self.stats.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        """Inverse of :meth:`to_dict`. Raises ValueError on a malformed dict (a
        plan read back from the Raft log is trusted data, but a corrupt entry
        must fail loudly rather than be half-applied)."""
        try:
            return cls(
                assignments=_str_map(data["assignments"]),
                unplaceable={str(svc): _str_map(r) for svc, r in data["unplaceable"].items()},
                unplaced=_str_list(data["unplaced"]),
                settled_peers=_str_list(data["settled_peers"]),
                strategy=str(data["strategy"]),
                stats=PlanStats.from_dict(data["stats"]),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed plan: {exc!r}") from exc


def _str_map(data: Mapping[str, Any]) -> dict[str, str]:
    out = dict(data.items())
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in out.items()):
        raise TypeError("expected a mapping of strings")
    return out


def _str_list(data: Sequence[Any]) -> tuple[str, ...]:
    if not isinstance(data, list | tuple) or not all(isinstance(x, str) for x in data):
        raise TypeError("expected a list of strings")
    return tuple(data)
