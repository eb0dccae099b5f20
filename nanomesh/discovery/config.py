"""What discovery needs to know that the machine cannot tell it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from nanomesh.discovery.devices import validate_devices
from nanomesh.discovery.errors import DiscoveryConfigError


def _empty_labels() -> Mapping[str, str]:
    return MappingProxyType({})


def validate_labels(labels: Mapping[Any, object]) -> None:
    """Labels are free-form but must be str -> str (placement matches them as text)."""
    for key, value in labels.items():
        if not isinstance(key, str) or not key:
            raise DiscoveryConfigError(None, f"labels[{key!r}]", "keys must be non-empty strings")
        if not isinstance(value, str):
            raise DiscoveryConfigError(
                None, f"labels.{key}", f"must be a string, got {type(value).__name__}")


@dataclass(frozen=True)
class DiscoveryConfig:
    """Inputs of :func:`nanomesh.discovery.discover`.

    Invalid ``devices`` or ``labels`` raise
    :class:`~nanomesh.discovery.errors.DiscoveryConfigError` here, at
    construction, so a bad peer config stops the daemon at startup instead of
    at the first discovery.
    """

    data_dir: Path
    """Directory the peer keeps its state in; ``storage`` reports the
    filesystem holding it (or its nearest existing parent, before first start)."""

    devices: tuple[Mapping[str, Any], ...] = ()
    """``[[devices]]`` entries from the peer config (rules in
    :mod:`nanomesh.discovery.devices`). A list is accepted and stored as a tuple."""

    labels: Mapping[str, str] = field(default_factory=_empty_labels)
    """Operator labels (``room = "meeting-1"``) copied into the profile; stored
    read-only."""

    proc_root: Path = Path("/proc")
    """Where procfs is mounted; tests point it at a fixture tree. Only file
    parsers honour it: psutil always measures the running machine."""

    sys_root: Path = Path("/sys")
    """Where sysfs is mounted; tests point it at a fixture tree (same caveat)."""

    def __post_init__(self) -> None:
        validate_devices(self.devices)
        validate_labels(self.labels)
        object.__setattr__(self, "devices", tuple(self.devices))
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))
