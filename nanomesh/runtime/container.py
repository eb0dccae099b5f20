"""Container launchers: ``kind = "container"`` services through runc, podman or docker.

Each launcher turns one run of an instance into a command that runs the
container *in the foreground* (``runc run``, ``podman run``, ``docker run``),
so the :class:`~nanomesh.runtime.process.ProcessDriver` supervises it like
any process: its end is the container's end, its stdout/stderr are the
instance's log, SIGTERM to the group is forwarded to the container
(runc forwards every signal to the container's init; podman/docker with
``--sig-proxy=true``), and the run's ``cleanup`` (``runc delete --force``,
``podman rm -f``) removes whatever survived a SIGKILL of the group: the
container's processes are not in the group (runc makes the container's init
a session leader; podman's and docker's are children of conmon/containerd).

Engines, lightest first (:data:`ENGINE_ORDER`):

* **runc** (:class:`RuncLauncher`) for ``[container] rootfs`` services: an
  OCI bundle written in pure code (:mod:`nanomesh.runtime.oci`), no daemon,
  no image store; ~50 ms to a running container. Good for small devices.
* **podman**, then **docker** (:class:`PodmanLauncher`,
  :class:`DockerLauncher`) for ``[container] image`` services, and for
  ``rootfs`` services where runc is missing (the rootfs is imported once as
  an image: ``tar -C ROOTFS -c . | podman import - NAME``).

:func:`choose_container_launcher` picks per service from what
:func:`detect_engines` found (an engine counts only if it really works:
``podman info``/``docker info`` answer, runc runs as root), or the peer
config's ``container_engine`` when it is not ``auto``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from nanomesh.config import CONTAINER_ENGINES
from nanomesh.runtime.instance_spec import InstanceSpec
from nanomesh.runtime.launch import Launch, LaunchContext, Launcher, LaunchError
from nanomesh.runtime.oci import (
    HOST_FILES,
    CgroupLayout,
    cgroup_layout,
    cgroups_path,
    container_cwd,
    container_env,
    container_id,
    oci_config,
)

if TYPE_CHECKING:
    from nanomesh.runtime.cgroups import InstanceCgroup

log = logging.getLogger("nanomesh.runtime.container")

ENGINE_ORDER = ("runc", "podman", "docker")
"""Preference for ``container_engine = "auto"``: runc for ``rootfs``
services (no daemon, fastest start, least memory), then podman (daemonless,
rootless-capable), then docker (needs dockerd)."""
IMAGE_ENGINES = ("podman", "docker")
"""Engines that can run an OCI image (runc needs an unpacked bundle; pulling
and unpacking images is what podman and docker are for)."""

PROBE_TIMEOUT = 5.0
"""Seconds ``podman info``/``docker info`` may take at start-up. A working
engine answers in well under a second (podman's first run sets up its
storage, about 1 s on a Pi); a docker client whose daemon is not running
fails at once."""
ENGINE_TIMEOUT = 120.0
"""Seconds for an engine command in :meth:`prepare` (``podman import`` of a
rootfs, ``rm`` of a stale container): big rootfs tarballs on SD cards are slow;
anything longer is stuck."""
UNPACK_MARK = ".nanomesh-rootfs"
"""Prefix of a launcher's copies of a rootfs in an instance's state dir."""
ROOTFS_SUFFIXES = (".tar", ".tar.gz", ".tgz")


# ---------------------------------------------------------------- rootfs


def rootfs_source(spec: InstanceSpec, ctx: LaunchContext) -> Path:
    """The rootfs named by ``[container] rootfs`` in the service's bundle;
    LaunchError if the spec has none or the bundle lacks it."""
    if spec.container is None or spec.container.rootfs is None:
        raise LaunchError(f"{ctx.iid}: this launcher needs [container] rootfs")
    if ctx.workdir is None:
        raise LaunchError(f"{ctx.iid}: container.rootfs {spec.container.rootfs!r} needs the "
                          "service's bundle, but it was deployed without one")
    source = ctx.workdir / spec.container.rootfs
    if source.is_dir():
        return source
    if not source.is_file():
        raise LaunchError(f"{ctx.iid}: container.rootfs {spec.container.rootfs!r}: no such "
                          "folder or file in the service's bundle (build it before deploying)")
    if not source.name.endswith(ROOTFS_SUFFIXES):
        raise LaunchError(f"{ctx.iid}: container.rootfs {spec.container.rootfs!r} must be a "
                          f"folder or a {', '.join(ROOTFS_SUFFIXES)} file")
    return source


def content_key(source: Path) -> str:
    """sha256 naming a rootfs's content: of the tarball's bytes, or of a
    folder's listing (path, type, mode, size, mtime, link target), which
    changes whenever a new bundle version is extracted."""
    h = hashlib.sha256()
    if source.is_file():
        with source.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            link = os.readlink(path) if os.path.islink(path) else ""
            rel = os.path.relpath(path, source)
            h.update(f"{rel}\0{st.st_mode}\0{st.st_size}\0{st.st_mtime_ns}\0{link}\n".encode())
    return h.hexdigest()


def materialise_rootfs(source: Path, state_dir: Path) -> Path:
    """The instance's own writable copy of ``source`` (a folder, copied; a
    tarball, unpacked) in ``state_dir``, made once per content: later runs
    reuse it (so files the service writes there survive its restarts), a new
    bundle version replaces it. The bundle itself stays untouched (it is
    content-addressed and shared by the service's instances)."""
    key = content_key(source)[:16]
    target = state_dir / f"{UNPACK_MARK}-{key}"
    if not target.is_dir():
        tmp = state_dir / f"{UNPACK_MARK}-{key}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            if source.is_dir():
                shutil.copytree(source, tmp, symlinks=True)
            else:
                with tarfile.open(source, "r:*") as tar:
                    # "tar" filter: no absolute or escaping member paths, no
                    # setuid bits; keeps device nodes and owners (a root filesystem).
                    tar.extractall(tmp, filter="tar")
        except (OSError, tarfile.TarError) as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise LaunchError(f"cannot unpack rootfs {source.name}: {exc}") from None
        tmp.rename(target)
    for old in state_dir.glob(f"{UNPACK_MARK}-*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)
    return target


def write_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` atomically (the config holds the instance token: 0600)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(path)


UNIFIED_MOUNTS: Mapping[str, Path] = {"hybrid": Path("/sys/fs/cgroup/unified"),
                                       "unified": Path("/sys/fs/cgroup")}
"""Where the v2 hierarchy is mounted, by :func:`~nanomesh.runtime.oci.cgroup_layout`."""


def instance_unified_path(cgroup: InstanceCgroup | None, unified_mount: Path | None
                          ) -> str | None:
    """The instance cgroup's directory in the v2 hierarchy relative to the
    hierarchy's root (``process_api/x/nanomesh/pd1.42/hello-0``), from
    ``cgroup.dirs["unified"]``; None without one."""
    if cgroup is None or unified_mount is None:
        return None
    unified = cgroup.dirs.get("unified")
    if unified is None:
        return None
    try:
        return str(Path(unified).relative_to(unified_mount))
    except ValueError:
        return None


# ---------------------------------------------------------------- runc


class RuncLauncher:
    """``runc run`` on an OCI bundle in the instance's state dir.

    ``state_root``: this peer's directory for container state (the runc
    ``--root`` is ``state_root/runc``: one per peer, so lab peers sharing a
    machine never see each other's containers). ``peer``: this peer's name,
    part of container ids and cgroup paths."""

    engine = "runc"

    def __init__(self, state_root: Path, *, peer: str = "", runc: str = "runc",
                 layout: CgroupLayout | None = None) -> None:
        self.root = Path(state_root).absolute() / "runc"
        self.peer = peer
        self.runc = runc
        self.layout: CgroupLayout = cgroup_layout() if layout is None else layout
        self.host_files = tuple(p for p in HOST_FILES if os.path.isfile(p))

    def command(self, *args: str) -> tuple[str, ...]:
        """``runc --root ROOT ARGS...``"""
        return (self.runc, "--root", str(self.root), *args)

    async def prepare(self, spec: InstanceSpec, ctx: LaunchContext) -> Launch:
        if not spec.run.command:
            raise LaunchError(f"{ctx.iid}: runc needs run.command: a rootfs carries no image "
                              "config saying what to run")
        source = rootfs_source(spec, ctx)
        cid = container_id(ctx.iid, self.peer)
        cgroups = cgroups_path(cid, self.layout, in_instance=ctx.cgroup is not None,
                               instance_unified=instance_unified_path(
                                   ctx.cgroup, UNIFIED_MOUNTS.get(self.layout)))
        bundle = ctx.state_dir / "bundle"

        def build() -> None:
            bundle.mkdir(parents=True, exist_ok=True)
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            rootfs = materialise_rootfs(source, ctx.state_dir)
            config = oci_config(spec, env=ctx.env, rootfs=rootfs, cgroups=cgroups,
                                host_files=self.host_files)
            write_file(bundle / "config.json", json.dumps(config, indent=1).encode())

        await trio.to_thread.run_sync(build)
        if (self.root / cid).exists():  # left by a daemon that died mid-run
            await _run_quiet(self.command("delete", "--force", cid), ENGINE_TIMEOUT)
        # runc enforces the limits in the container's own (nested) cgroups, so
        # the OOM killer picks among the container's processes only, never the
        # shim or runc. (The kernel counts a v1 OOM kill only in the victim's own
        # cgroup, which runc removes when the container ends: the driver sees
        # exit code 137, not its "killed by its memory limit".)
        return Launch(argv=self.command("run", "--bundle", str(bundle), cid), env=ctx.env,
                      cwd=str(bundle), cleanup=self.command("delete", "--force", cid),
                      description=f"runc container {cid}", enforces_limits=True,
                      exec_prefix=self.exec_argv(ctx.iid, ()))

    def exec_argv(self, iid: str, command: Sequence[str]) -> tuple[str, ...]:
        """``runc --root ROOT exec ID COMMAND...``: ``command`` inside the running
        container of ``iid`` (its root filesystem, environment, cwd, namespaces
        and cgroup, as config.json gives them), in the foreground, exiting as
        the command does."""
        return self.command("exec", container_id(iid, self.peer), *command)

    async def sweep(self) -> list[str]:
        """Remove every container under this peer's runc root (at daemon
        start: a daemon killed with SIGKILL leaves containers whose init
        ignored SIGTERM). Returns their ids."""
        if not self.root.is_dir():
            return []
        result = await _run_quiet(self.command("list", "--quiet"), ENGINE_TIMEOUT)
        ids = result.stdout.decode(errors="replace").split() if result.returncode == 0 else []
        for cid in ids:
            await _run_quiet(self.command("delete", "--force", cid), ENGINE_TIMEOUT)
        return ids


# ---------------------------------------------------------------- podman / docker


def engine_run_argv(engine: str, spec: InstanceSpec, *, cid: str, image: str,
                    env: Mapping[str, str], peer: str = "", iid: str = "") -> tuple[str, ...]:
    """``podman run``/``docker run`` for one run: in the foreground, removed
    when it ends, on the host network (:mod:`nanomesh.runtime.oci` says why),
    with ``spec.limits``, the environment contract passed by *name*
    (``--env NAME``: the values come from the engine client's environment,
    so the instance token never shows in ``ps``), and labels that let a
    restarted daemon find its leftovers (:meth:`EngineLauncher.sweep`)."""
    argv = [engine, "run", "--rm", "--name", cid, "--network", "host", "--sig-proxy=true",
            "--label", f"nanomesh.peer={peer}", "--label", f"nanomesh.instance={iid}"]
    if engine == "podman":
        argv.append("--replace")  # a container of that name left by a dead daemon
    limits = spec.limits
    if limits.memory_mb is not None:
        argv += ["--memory", f"{limits.memory_mb}m"]
    if limits.cpu is not None:
        argv += ["--cpus", f"{limits.cpu:g}"]
    if limits.pids is not None:
        argv += ["--pids-limit", str(limits.pids)]
    for key in sorted(container_env(spec, env)):
        if key not in ("PATH", "HOME", "TERM"):  # the image's own defaults win
            argv += ["--env", key]
    if spec.run.cwd is not None and os.path.isabs(spec.run.cwd):
        argv += ["--workdir", container_cwd(spec)]
    return (*argv, image, *spec.run.command)


def imported_image_name(engine: str, service: str, key: str) -> str:
    """The image a rootfs is imported as, tagged by content."""
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in service.lower()) or "svc"
    prefix = "localhost/" if engine == "podman" else ""
    return f"{prefix}nanomesh/{name}:{key[:16]}"


def import_command(engine: str, source: Path, image: str) -> tuple[str, ...]:
    """Import a rootfs folder or tarball as ``image``."""
    if source.is_dir():
        return ("sh", "-c", f"tar -C {shlex.quote(str(source))} -c . | "
                            f"{shlex.quote(engine)} import - {shlex.quote(image)}")
    return (engine, "import", str(source), image)


class EngineLauncher:
    """``podman run``/``docker run`` in the foreground (see
    :func:`engine_run_argv`); a ``rootfs`` service's rootfs is imported
    once per content as a local image."""

    def __init__(self, engine: str, *, peer: str = "", binary: str | None = None) -> None:
        if engine not in IMAGE_ENGINES:
            raise ValueError(f"engine must be one of {', '.join(IMAGE_ENGINES)}, got {engine!r}")
        self._engine = engine
        self.binary = binary or engine
        self.peer = peer

    @property
    def engine(self) -> str:
        return self._engine

    async def prepare(self, spec: InstanceSpec, ctx: LaunchContext) -> Launch:
        if spec.container is None:
            raise LaunchError(f"{ctx.iid}: a container service needs a [container] section")
        cid = container_id(ctx.iid, self.peer)
        image = spec.container.image
        if image is None:
            if not spec.run.command:
                raise LaunchError(f"{ctx.iid}: a rootfs service needs run.command (an imported "
                                  "rootfs has no image config saying what to run)")
            image = await self._import(spec, ctx)
        if self._engine == "docker":  # podman has --replace; docker needs a separate rm
            await _run_quiet((self.binary, "rm", "-f", cid), ENGINE_TIMEOUT)
        argv = engine_run_argv(self.binary, spec, cid=cid, image=image, env=ctx.env,
                               peer=self.peer, iid=ctx.iid)
        return Launch(argv=argv, env={**ctx.env, **container_env(spec, ctx.env)}, cwd=None,
                      cleanup=(self.binary, "rm", "-f", cid),
                      description=f"{self._engine} container {cid} ({image})",
                      enforces_limits=True, exec_prefix=self.exec_argv(ctx.iid, ()))

    def exec_argv(self, iid: str, command: Sequence[str]) -> tuple[str, ...]:
        """``podman exec ID COMMAND...`` (``docker exec``): ``command`` inside the
        running container of ``iid``, with the container's environment."""
        return (self.binary, "exec", container_id(iid, self.peer), *command)

    async def _import(self, spec: InstanceSpec, ctx: LaunchContext) -> str:
        source = rootfs_source(spec, ctx)
        key = await trio.to_thread.run_sync(content_key, source)
        image = imported_image_name(self._engine, spec.service, key)
        exists = await _run_quiet((self.binary, "image", "inspect", image), ENGINE_TIMEOUT)
        if exists.returncode != 0:
            result = await _run_quiet(import_command(self.binary, source, image), ENGINE_TIMEOUT)
            if result.returncode != 0:
                raise LaunchError(f"{ctx.iid}: {self._engine} import of {source.name} failed: "
                                  f"{_tail(result.stderr)}")
        return image

    async def sweep(self) -> list[str]:
        """Remove this peer's leftover containers (by label)."""
        result = await _run_quiet((self.binary, "ps", "-aq", "--filter",
                                   f"label=nanomesh.peer={self.peer}"), ENGINE_TIMEOUT)
        ids = result.stdout.decode(errors="replace").split() if result.returncode == 0 else []
        if ids:
            await _run_quiet((self.binary, "rm", "-f", *ids), ENGINE_TIMEOUT)
        return ids


class PodmanLauncher(EngineLauncher):
    def __init__(self, *, peer: str = "", binary: str | None = None) -> None:
        super().__init__("podman", peer=peer, binary=binary)


class DockerLauncher(EngineLauncher):
    def __init__(self, *, peer: str = "", binary: str | None = None) -> None:
        super().__init__("docker", peer=peer, binary=binary)


# ---------------------------------------------------------------- choosing


def pick_engine(available: Sequence[str], preference: str, spec: InstanceSpec) -> str:
    """The engine for ``spec`` (pure). ``auto``: runc for a rootfs, else the
    first image engine available; a preference other than ``auto`` is used
    for every service it can run. LaunchError naming what this peer has."""
    if spec.container is None:
        raise LaunchError(f"{spec.service}: a container service needs a [container] section")
    have = ", ".join(available) or "none"
    if preference != "auto":
        if preference not in available:
            raise LaunchError(f"container_engine = {preference!r} in the peer config, but "
                              f"{preference} does not work here; this peer has: {have}")
        if spec.container.image is not None and preference not in IMAGE_ENGINES:
            raise LaunchError(f"{spec.service}: image services need podman or docker; "
                              f"container_engine = {preference!r} in the peer config")
        return preference
    usable = IMAGE_ENGINES if spec.container.image is not None else ENGINE_ORDER
    for engine in ENGINE_ORDER:
        if engine in usable and engine in available:
            return engine
    if spec.container.image is not None:
        raise LaunchError(f"{spec.service}: image services need podman or docker; "
                          f"this peer has: {have}")
    raise LaunchError(f"{spec.service}: no container engine on this peer (install runc, "
                      "podman or docker)")


class ContainerLauncher:
    """The ``kind = "container"`` launcher: dispatches each service to the
    engine :func:`pick_engine` chooses."""

    def __init__(self, launchers: Mapping[str, Launcher], preference: str = "auto") -> None:
        if preference not in CONTAINER_ENGINES:
            raise ValueError(f"preference must be one of {', '.join(CONTAINER_ENGINES)}")
        self.launchers = dict(launchers)
        self.preference = preference

    @property
    def engine(self) -> str:
        """``runc``, or ``runc/podman`` when several engines serve."""
        if self.preference != "auto":
            return self.preference
        return "/".join(e for e in ENGINE_ORDER if e in self.launchers) or "none"

    @property
    def engines(self) -> list[str]:
        return [e for e in ENGINE_ORDER if e in self.launchers]

    def pick(self, spec: InstanceSpec) -> Launcher:
        return self.launchers[pick_engine(self.engines, self.preference, spec)]

    async def prepare(self, spec: InstanceSpec, ctx: LaunchContext) -> Launch:
        return await self.pick(spec).prepare(spec, ctx)

    def describe(self) -> dict[str, Any]:
        """For the peer profile: ``{"container_engines": ["runc"]}``."""
        return {"container_engines": self.engines}

    async def sweep(self) -> dict[str, list[str]]:
        """Remove containers left by an earlier run of this peer's daemon;
        call once at start-up, before the first instance starts."""
        out: dict[str, list[str]] = {}
        for name, launcher in self.launchers.items():
            sweep = getattr(launcher, "sweep", None)
            if sweep is not None:
                out[name] = await sweep()
        return out


# ---------------------------------------------------------------- detection

Runner = Callable[[Sequence[str], float], "subprocess.CompletedProcess[bytes]"]


def _run_sync(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(list(argv), stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=timeout, check=False)


def probe_engine(engine: str, *, which: Callable[[str], str | None] = shutil.which,
                 run: Runner = _run_sync, euid: int | None = None) -> str | None:
    """None if ``engine`` works here, else why not (for the start-up log).
    A binary is not enough: docker's client without a daemon, podman without
    its storage, runc without root all fail at the first container."""
    if which(engine) is None:
        return "not installed"
    if engine == "runc":
        if (os.geteuid() if euid is None else euid) != 0:
            return "needs root (rootless runc is not supported)"
        argv: tuple[str, ...] = ("runc", "--version")
    else:
        argv = (engine, "info")
    try:
        result = run(argv, PROBE_TIMEOUT)
    except subprocess.TimeoutExpired:
        return f"`{shlex.join(argv)}` did not answer within {PROBE_TIMEOUT:g} s"
    except OSError as exc:
        return f"cannot run {engine}: {exc.strerror}"
    if result.returncode != 0:
        return f"`{shlex.join(argv)}` failed: {_tail(result.stderr)}"
    return None


def detect_engines(*, which: Callable[[str], str | None] = shutil.which,
                   run: Runner = _run_sync) -> list[str]:
    """The container engines that work on this machine, in
    :data:`ENGINE_ORDER`. Blocking (up to :data:`PROBE_TIMEOUT` per engine):
    call it once at start-up, from a thread under trio. Logs the result."""
    found: list[str] = []
    notes: list[str] = []
    for engine in ENGINE_ORDER:
        why = probe_engine(engine, which=which, run=run)
        if why is None:
            found.append(engine)
        else:
            notes.append(f"{engine}: {why}")
    log.info("container engines: %s%s", ", ".join(found) or "none",
             f" ({'; '.join(notes)})" if notes else "")
    return found


def choose_container_launcher(preference: str = "auto", *, state_root: Path, peer: str = "",
                              engines: Sequence[str] | None = None,
                              ) -> ContainerLauncher | None:
    """The launcher for this peer's ``kind = "container"`` instances.

    ``preference``: the peer config's ``container_engine``; ``state_root``:
    where container state lives (``data_dir / "containers"``); ``engines``:
    what :func:`detect_engines` found (detected here, blocking, if None).
    None when no engine works and none was asked for (container instances
    then fail with the driver's "no launcher" message); an engine that was
    asked for but does not work gives a launcher whose every ``prepare``
    fails saying so, so the operator sees it in the instance's status."""
    if preference not in CONTAINER_ENGINES:
        raise ValueError(f"container_engine must be one of {', '.join(CONTAINER_ENGINES)}, "
                         f"got {preference!r}")
    available = detect_engines() if engines is None else list(engines)
    if not available and preference == "auto":
        return None
    if preference != "auto" and preference not in available:
        log.error("container_engine = %r in the peer config, but %s does not work here "
                  "(this peer has: %s): container services will fail", preference, preference,
                  ", ".join(available) or "none")
    launchers: dict[str, Launcher] = {}
    for engine in available:
        if engine == "runc":
            launchers[engine] = RuncLauncher(state_root, peer=peer)
        elif engine == "podman":
            launchers[engine] = PodmanLauncher(peer=peer)
        elif engine == "docker":
            launchers[engine] = DockerLauncher(peer=peer)
    return ContainerLauncher(launchers, preference)


# ---------------------------------------------------------------- helpers


async def _run_quiet(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[bytes]:
    """Run a short engine command, output captured; a timeout or a missing
    binary is a failed result, not an exception."""
    try:
        with trio.fail_after(timeout):
            return await trio.run_process(list(argv), stdin=b"", capture_stdout=True,
                                          capture_stderr=True, check=False)
    except trio.TooSlowError:
        return subprocess.CompletedProcess(list(argv), -1, b"", b"timed out")
    except OSError as exc:
        return subprocess.CompletedProcess(list(argv), -1, b"", str(exc).encode())


def _tail(stderr: bytes | None, limit: int = 300) -> str:
    text = (stderr or b"").decode(errors="replace").strip()
    return text[-limit:] or "no output"
