"""The ``run`` section of a nanoservice spec: what to execute for one instance.

The service document is a plain dict, validated upstream
(:mod:`nanomesh.manifest`, :mod:`nanomesh.placement.spec`); its ``run``
section is read again here, on the peer that runs it, just as strictly: the
document may come from the API or an older peer, and a bad field would
otherwise surface as a puzzling crash loop on some far-away peer::

    "run": {"command": ["python3", "-m", "sensor_reader", "--hz", "2"],
            "env": {"SENSOR": "pir"},
            "cwd": "/opt/nanomesh/services/sensor-reader"}

``command`` is an argv list (no shell), ``env`` is added to the daemon's
environment, ``cwd`` is an absolute directory (``null``: the daemon's).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from nanomesh.placement.spec import SpecError

RESERVED_ENV = frozenset({"NANOMESH_INSTANCE", "NANOMESH_SERVICE"})
"""Variables the runtime sets for every instance (its id and its service);
a spec may not override them."""

RUN_KEYS = ("command", "env", "cwd")


class RunSpecError(SpecError):
    """The ``run`` section is invalid; ``field`` is its dotted path
    (``"run.command[0]"``)."""


def _frozen_env() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class RunSpec:
    """A validated ``run`` section."""

    command: tuple[str, ...]
    """argv; ``command[0]`` is looked up on ``PATH`` unless it contains a ``/``
    (a relative path is relative to ``cwd``)."""
    env: Mapping[str, str] = field(default_factory=_frozen_env)
    """Added to the daemon's environment (overriding it)."""
    cwd: str | None = None
    """Absolute working directory; ``None``: the daemon's."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "command", tuple(self.command))
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))

    def to_dict(self) -> dict[str, Any]:
        return {"command": list(self.command), "env": dict(self.env), "cwd": self.cwd}


def run_spec_from(spec: Mapping[str, Any]) -> RunSpec:
    """Read and check the ``run`` section of ``spec``: a service document
    (:mod:`nanomesh.manifest`) or any service dict with a ``run`` key.

    Raises :class:`RunSpecError` naming the field (``run``, ``run.command``,
    ``run.command[2]``, ``run.env.PORT``, ``run.cwd``, or an unknown
    ``run.<key>``) and the service when ``spec["name"]`` is a string.
    """
    name = spec.get("name") if isinstance(spec, Mapping) else None
    service = name if isinstance(name, str) else None
    if not isinstance(spec, Mapping):
        raise RunSpecError("spec", f"must be a mapping, got {_kind(spec)}")
    run = spec.get("run")
    if run is None:
        raise RunSpecError("run", "missing: a nanoservice needs a run section with a command",
                           service)
    if not isinstance(run, Mapping):
        raise RunSpecError("run", f"must be a mapping, got {_kind(run)}", service)
    for key in run:
        if key not in RUN_KEYS:
            raise RunSpecError(f"run.{key}", f"unknown key; expected one of {', '.join(RUN_KEYS)}",
                               service)
    return RunSpec(command=_command(run.get("command"), service),
                   env=_env(run.get("env"), service),
                   cwd=_cwd(run.get("cwd"), service))


def _command(value: Any, service: str | None) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise RunSpecError("run.command", "must be a non-empty list of strings (argv, no shell), "
                                          f"got {_kind(value)}", service)
    if not value:
        raise RunSpecError("run.command", "must not be empty", service)
    for i, arg in enumerate(value):
        if not isinstance(arg, str):
            raise RunSpecError(f"run.command[{i}]", f"must be a string, got {_kind(arg)}", service)
        if "\0" in arg:
            raise RunSpecError(f"run.command[{i}]", "must not contain NUL characters", service)
    if not value[0]:
        raise RunSpecError("run.command[0]", "the program must not be an empty string", service)
    return tuple(value)


def _env(value: Any, service: str | None) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise RunSpecError("run.env", f"must be a mapping of strings, got {_kind(value)}",
                           service)
    for key, val in value.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise RunSpecError(f"run.env[{key!r}]",
                               "names must be non-empty strings without '=' or NUL", service)
        if key in RESERVED_ENV:
            raise RunSpecError(f"run.env.{key}", "is set by the runtime and cannot be overridden",
                               service)
        if not isinstance(val, str):
            raise RunSpecError(f"run.env.{key}", f"must be a string, got {_kind(val)}", service)
        if "\0" in val:
            raise RunSpecError(f"run.env.{key}", "must not contain NUL characters", service)
    return dict(value)


def _cwd(value: Any, service: str | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise RunSpecError("run.cwd", f"must be an absolute path or null, got {value!r}", service)
    if not os.path.isabs(value) or "\0" in value:
        raise RunSpecError("run.cwd", f"must be an absolute path, got {value!r}", service)
    return value


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__
