"""Nanoservice manifests: ``services/<name>/nanoservice.toml`` into the service
document that is replicated by Raft and read by placement and the runtime.

```toml
name = "spo2"
version = "1.0.0"
description = "SpO2 and heart rate from the pulse oximeter"
kind = "process"                 # issue 4 adds "container"
replicas = 1

[run]
command = ["python3", "-u", "spo2.py"]
env = { INTERVAL = "1" }

[requires]                       # the research's P_k; 0 / empty = no requirement
capabilities = ["pulse-oximeter"]
cpu = 0.5
memory_mb = 64
power = "battery"
min_battery_percent = 20
network = "bluetooth"
storage_mb = 10

[placement]
peer = "ward-pi-4"               # optional pin
labels = { ward = "3" }
spread = true
max_per_peer = 0
```

The document keeps the manifest's own fields and adds ``spec``, the
placement's `ServiceSpec` dict, so placement never re-parses a manifest.
Errors name the file and the field; nothing is deployed from a bad manifest.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nanomesh.errors import NanomeshError
from nanomesh.placement import SpecError, service_spec_from_dict
from nanomesh.runtime.spec import run_spec_from

KNOWN_KEYS = {"name", "version", "description", "kind", "replicas", "run", "requires",
              "placement"}
KINDS = ("process",)


class ManifestError(NanomeshError, ValueError):
    """A manifest is invalid; the message names the file and the field."""


def load_manifest(path: Path) -> dict[str, Any]:
    """Read and validate a manifest file (or a service folder holding
    ``nanoservice.toml``) into a service document."""
    if path.is_dir():
        path = path / "nanoservice.toml"
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"{path}: invalid TOML: {exc}") from None
    return service_document(raw, where=str(path))


def service_document(raw: Mapping[str, Any], where: str = "manifest") -> dict[str, Any]:
    """Validate a manifest mapping into the replicated service document."""
    unknown = sorted(set(raw) - KNOWN_KEYS)
    if unknown:
        raise ManifestError(f"{where}: unknown field(s) {', '.join(unknown)}; "
                            f"known: {', '.join(sorted(KNOWN_KEYS))}")
    kind = raw.get("kind", "process")
    if kind not in KINDS:
        raise ManifestError(f"{where}: kind must be one of {', '.join(KINDS)}, not {kind!r}")
    for key in ("version", "description"):
        if key in raw and not isinstance(raw[key], str):
            raise ManifestError(f"{where}: {key} must be a string")
    run = _run_section(raw, where)
    try:
        spec = service_spec_from_dict({k: raw[k] for k in ("name", "replicas", "requires",
                                                           "placement") if k in raw})
    except SpecError as exc:
        raise ManifestError(f"{where}: {exc}") from None
    return {"name": spec.name, "version": raw.get("version", ""),
            "description": raw.get("description", ""), "kind": kind, "run": run,
            "spec": spec.to_dict()}


def _run_section(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The runtime's own validator, so a manifest accepted here is one the
    runtime can start (absolute cwd, no NUL, no NANOMESH_* overrides)."""
    try:
        return run_spec_from(raw).to_dict()
    except SpecError as exc:
        raise ManifestError(f"{where}: {exc}") from None
