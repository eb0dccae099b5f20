"""Nanoservice manifests: ``services/<name>/nanoservice.toml`` into the service
document that is replicated by Raft and read by placement and the runtime.

```toml
name = "spo2"
version = "1.0.0"
description = "SpO2 and heart rate from the pulse oximeter"
kind = "process"                 # or "container"
replicas = 1
mode = "active"                  # "idle": placed and fetched, started by `nanomesh activate`
visibility = "private"           # "public": also answers anyone at the CoAP gateways

[run]                            # argv, no shell; cwd defaults to the service folder
command = ["python3", "-u", "spo2.py"]
env = { INTERVAL = "1" }

[container]                      # kind = "container" only: exactly one of
rootfs = "rootfs"                #   a root filesystem in the service folder (runc, podman)
# image = "docker.io/library/busybox:1.36"   an OCI image (podman or docker)

[[endpoints]]                    # what the service offers, reachable by name
name = "api"
protocol = "coap"                # coap | zmq | http
port = "auto"                    # or a fixed port; the instance reads NANOMESH_PORT_API

[health]                         # default: a coap ping / tcp connect on the first endpoint
check = "coap"                   # none | tcp | http | coap | zmq | exec
path = "health"
interval = 5.0
timeout = 1.0
retries = 3
start_period = 30.0

[restart]
policy = "always"                # always | on-failure | never

[update]                         # how an update (a new version) is rolled out
auto_revert = true               # back to the previous version if this one is not healthy
min_healthy_time = 5.0           # seconds every instance must stay healthy
healthy_deadline = 120.0         # seconds the new version has to get there

[limits]                         # cgroups where the machine has them (warns where not)
memory_mb = 64
cpu = 0.5
pids = 64

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

The document keeps the manifest's own fields, normalised (defaults filled in,
``port = "auto"`` kept), and adds ``spec``, the placement's `ServiceSpec`
dict, so placement never re-parses a manifest. The deploy path may add
``bundle = {sha256, size}`` (the service folder as a content-addressed
bundle, see :mod:`nanomesh.bundles`) and ``state`` (a state blob restored from
a seed file, base64).
Errors name the file and the field; nothing is deployed from a bad manifest.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nanomesh.checks import is_int, is_sha256_hex, is_text
from nanomesh.errors import NanomeshError
from nanomesh.placement import SpecError, service_spec_from_dict
from nanomesh.runtime.deployment_core import update_policy, update_policy_problem
from nanomesh.runtime.instance_spec import KINDS, MODES, runtime_sections

KNOWN_KEYS = {"name", "version", "description", "kind", "mode", "visibility", "replicas", "run",
              "container", "endpoints", "health", "restart", "limits", "requires", "placement",
              "bundle", "state", "update"}
VISIBILITIES = ("private", "public")
"""Who a service answers (the research's private and public local services).
``private`` (the default: secure unless said otherwise): mesh members only,
over authenticated traffic (ZeroMQ CURVE with keys derived from the cluster
key). ``public``: also anyone who reaches a peer's CoAP gateway, such as a
constrained device without the key. See `nanomesh.security.servicekeys`."""
DEFAULT_VISIBILITY = "private"
MAX_STATE_BYTES = 64 * 1024
"""Largest state blob a nanoservice may hand the runtime (and a seed file may
restore). It is replicated by Raft to every voter, so it is for a service's
small essentials (calibration, counters, a session), not its data."""
MAX_STATE_CHARS = 4 * ((MAX_STATE_BYTES + 2) // 3)
"""The same limit in base64 characters, as the service document carries it."""


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
    bad_text = _first_bad_text(raw)
    if bad_text is not None:
        raise ManifestError(f"{where}: {bad_text or '(top level)'}: not valid Unicode text "
                            "(a lone surrogate?)")
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
    mode = raw.get("mode", "active")
    if mode not in MODES:
        raise ManifestError(f"{where}: mode must be one of {', '.join(MODES)}, not {mode!r}")
    visibility = raw.get("visibility", DEFAULT_VISIBILITY)
    if visibility not in VISIBILITIES:
        raise ManifestError(f"{where}: visibility must be one of {', '.join(VISIBILITIES)}, "
                            f"not {visibility!r}")
    state = raw.get("state")
    if state is not None and not (isinstance(state, str) and len(state) <= MAX_STATE_CHARS):
        raise ManifestError(f"{where}: state must be a base64 string of at most "
                            f"{MAX_STATE_CHARS} characters")
    update_problem = update_policy_problem(raw["update"]) if "update" in raw else None
    if update_problem is not None:
        raise ManifestError(f"{where}: {update_problem}")
    try:
        # The runtime's own validator, so a manifest accepted here is one the
        # runtime can start (no NUL, no NANOMESH_* overrides, known endpoints).
        sections = runtime_sections(raw)
        spec = service_spec_from_dict({k: raw[k] for k in ("name", "replicas", "requires",
                                                           "placement") if k in raw})
    except SpecError as exc:
        raise ManifestError(f"{where}: {exc}") from None
    doc: dict[str, Any] = {"name": spec.name, "version": raw.get("version", ""),
                           "description": raw.get("description", ""), "kind": kind,
                           "visibility": visibility, **sections, "spec": spec.to_dict()}
    if mode != "active":
        doc["mode"] = mode
    if "update" in raw:
        doc["update"] = update_policy(raw["update"]).to_dict()
    if "bundle" in raw:
        doc["bundle"] = _bundle_ref(raw["bundle"], where)
    if state is not None:
        doc["state"] = state
    return doc


def visibility_of(doc: Mapping[str, Any] | None) -> str:
    """A service document's visibility; `DEFAULT_VISIBILITY` for a document
    without a valid one (deployed before the field existed, or unknown)."""
    value = doc.get("visibility") if isinstance(doc, Mapping) else None
    return value if value in VISIBILITIES else DEFAULT_VISIBILITY


def _bundle_ref(value: Any, where: str) -> dict[str, Any]:
    sha = value.get("sha256") if isinstance(value, Mapping) else None
    size = value.get("size") if isinstance(value, Mapping) else None
    if not is_sha256_hex(sha):
        raise ManifestError(f"{where}: bundle.sha256 must be 64 lowercase hex digits")
    if not (is_int(size) and size >= 0):
        raise ManifestError(f"{where}: bundle.size must be a byte count")
    return {"sha256": sha, "size": size}


def manifest_from_document(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest mapping a service document was made from (the inverse of
    :func:`service_document`, up to normalisation): the placement fields come
    back out of ``spec``. Used to re-deploy a document read from a seed file
    or another mesh; the result is validated again on deploy."""
    raw = {k: v for k, v in doc.items() if k not in ("spec", "state_reset")}
    spec = doc.get("spec")
    if isinstance(spec, Mapping):
        for key in ("replicas", "requires", "placement"):
            if key in spec:
                raw[key] = spec[key]
    return raw


def _first_bad_text(value: Any, path: str = "") -> str | None:
    """The dotted path of the first string (key or value) that is not valid
    Unicode, or None. JSON can carry ``"\ud800"``; no peer could run it."""
    if isinstance(value, str):
        return None if is_text(value) else path
    if isinstance(value, Mapping):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and not is_text(key):
                return where.encode("utf-8", "replace").decode()
            found = _first_bad_text(item, where)
            if found is not None:
                return found.encode("utf-8", "replace").decode()
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = _first_bad_text(item, f"{path}[{i}]")
            if found is not None:
                return found
    return None
