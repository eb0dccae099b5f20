"""How an instance is turned into a command line: the launcher interface.

The :class:`~nanomesh.runtime.process.ProcessDriver` owns the lifecycle of
every instance (supervisor shim, process group, cgroup, logs, health checks,
graceful stop); a :class:`Launcher` only says *what to execute* for one run.
That keeps containers on the same lifecycle as processes: a container engine
run in the foreground (``runc run``, ``podman run``, ``docker run``) is one
supervised process whose end is the container's end.

Launchers:

* ``host`` (:class:`HostLauncher`, here): ``kind = "process"``, the ``run``
  command itself, in the bundle's folder;
* ``runc`` / ``podman`` / ``docker`` (:mod:`nanomesh.runtime.container`):
  ``kind = "container"``, chosen by what the device has, overridable in the
  peer config.

A launcher is asked to :meth:`~Launcher.prepare` each run and may name a
``cleanup`` command that the driver runs (bounded, best effort) after the
run ended, however it ended (``runc delete --force ID``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol

from nanomesh.errors import NanomeshError
from nanomesh.runtime.instance_spec import InstanceSpec

if TYPE_CHECKING:
    from nanomesh.runtime.cgroups import InstanceCgroup


class LaunchError(NanomeshError):
    """This run cannot be launched, for a reason the operator can act on (no
    such image, no rootfs in the bundle, engine missing). The driver records a
    ``failed`` run with this message; the back-off retries it."""


@dataclass(frozen=True, slots=True)
class LaunchContext:
    """What the driver knows about one run before it starts."""

    iid: str
    env: Mapping[str, str]
    """The instance's environment: the daemon's, the spec's ``run.env`` and the
    runtime's contract (``nanomesh.runtime.instance_spec.ENV_CONTRACT``)."""
    workdir: Path | None
    """The service's extracted bundle, None if it was deployed without one."""
    state_dir: Path
    """A private per-instance directory for the launcher (an OCI bundle's
    config.json, a container's state); kept across runs, removed when the
    instance is forgotten."""
    host_ip: str
    """The peer's IP: endpoints are served there."""
    cgroup: InstanceCgroup | None = None
    """The instance's cgroup, created by the driver (None where the machine
    offers none). The shim runs inside it, so the launched command starts in
    it; a launcher whose engine moves processes elsewhere must put them back
    under it (or kill them in ``cleanup``)."""


@dataclass(frozen=True, slots=True)
class Launch:
    """One run's command line."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    cwd: str | None = None
    cleanup: tuple[str, ...] = ()
    """argv run after the run ended (at most ``CLEANUP_TIMEOUT`` seconds);
    empty: nothing to clean."""
    description: str = ""
    """For logs and ``nanomesh logs``: ``"runc container nm-hello-0"``."""
    enforces_limits: bool = False
    """True if the engine applies ``spec.limits`` itself (runc's config.json,
    ``podman --memory``), so the driver need not."""
    exec_prefix: tuple[str, ...] | None = None
    """How to run a command inside this run (``exec`` health checks): the
    engine's argv the command is appended to (``runc --root R exec ID``,
    ``podman exec ID``). None: the run is on the host; the driver runs the
    command in the instance's cgroup, folder and environment."""


class Launcher(Protocol):
    """Turns an instance spec into a :class:`Launch` for one run."""

    @property
    def engine(self) -> str:
        """``host``, ``runc``, ``podman`` or ``docker``: shown in statuses and logs."""

    async def prepare(self, spec: InstanceSpec, ctx: LaunchContext) -> Launch:
        """Build the command for one run. :class:`LaunchError` for an expected
        failure."""


class HostLauncher:
    """``kind = "process"``: the service's ``run`` command on the host."""

    engine = "host"

    async def prepare(self, spec: InstanceSpec, ctx: LaunchContext) -> Launch:
        if not spec.run.command:
            raise LaunchError(f"{ctx.iid}: a process service needs run.command")
        return Launch(argv=spec.run.command, env=ctx.env, cwd=resolve_cwd(spec, ctx.workdir),
                      description="process")


def resolve_cwd(spec: InstanceSpec, workdir: Path | None) -> str | None:
    """The run's working directory: ``run.cwd`` if absolute; else relative to
    the bundle (its root when ``run.cwd`` is unset); else None (the daemon's)."""
    cwd = spec.run.cwd
    if cwd is not None and os.path.isabs(cwd):
        return cwd
    if workdir is None:
        if cwd is not None:
            raise LaunchError(f"run.cwd {cwd!r} is relative, but the service was deployed "
                              "without a bundle to be relative to")
        return None
    return str(workdir / cwd) if cwd else str(workdir)


LAUNCHERS_BY_KIND: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "process": ("host",), "container": ("runc", "podman", "docker")})
"""Which engines can run which kind."""
