"""OCI runtime bundles for runc, decided in pure code from an :class:`InstanceSpec`.

:func:`oci_config` is the one home of the ``config.json`` we hand to runc
(runtime-spec 1.0): what the container runs, which namespaces it gets, its
mounts, its resource limits and where its cgroups go. The I/O (unpacking a
rootfs, writing the file, running runc) is in :mod:`nanomesh.runtime.container`.

**Host network, on purpose.** The container gets its own pid, mount, ipc and
uts namespaces but *not* a network namespace: a nanoservice's endpoints are
published through gossip as ``<peer IP>:<port>`` and found by name from
anywhere in the mesh, so the service must bind the peer's own address and the
port the runtime picked (``NANOMESH_HOST``, ``NANOMESH_PORT_<NAME>``). A
private network namespace would need a bridge, NAT and port forwarding per
instance (what docker's ``-p`` does with iptables and a proxy process): more
moving parts, more latency, and a second address space that gossip would have
to translate, for isolation a nanoservice does not need. Podman and docker
runs use ``--network host`` for the same reason.

**Cgroups under the instance's cgroup.** runc 1.1.5 places a *relative*
``linux.cgroupsPath`` differently per hierarchy (measured on the hybrid
layout of these machines): in every v1 hierarchy (memory, cpu, pids, ...)
relative to runc's own cgroup there, which is the instance's because the
shim joined it before starting runc; but in the v2 ``unified`` hierarchy of a
hybrid layout relative to the hierarchy's *root*. So on a hybrid machine the
path we give is the instance's unified path plus the container id: the
container lands under the instance's cgroup in the unified hierarchy (where
``cgroup.kill`` of the instance reaches it) and, one level deeper than
needed but still inside, under the instance's v1 cgroups (whose limits then
bound it too). On a pure v2 machine runc resolves a relative path against the
*parent* of its own cgroup, so there we give the absolute path. See
:func:`cgroups_path`.

**PID 1.** The container's first process is the pid namespace's init: the
kernel drops signals it has no handler for, so a ``command`` that does not
handle SIGTERM (``busybox httpd -f`` as PID 1, say) ignores the stop request
and is killed after the stop timeout (the run's cleanup, ``runc delete
--force``). Wrap such a command in a shell with ``trap 'exit 0' TERM``, as the
``counter-container`` sample does (docker's ``--init`` solves the same).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from nanomesh.ids import partition_instance_id
from nanomesh.runtime.instance_spec import RESERVED_ENV, InstanceSpec, Limits

OCI_VERSION = "1.0.2"
"""The runtime-spec version runc 1.1.5 writes with ``runc spec``."""

CgroupLayout = Literal["hybrid", "unified", "legacy", "none"]

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""``PATH`` inside a container: the usual one (``runc spec``, docker); the
host's ``PATH`` means nothing in another root filesystem."""

CPU_PERIOD_US = 100_000
"""CFS period for ``limits.cpu`` (the kernel's and docker's default, 100 ms):
the quota is ``cpu * period``; a shorter period throttles more smoothly but
costs scheduler work on a small device."""
MIN_CPU_QUOTA_US = 1_000
"""The kernel refuses a CFS quota below 1 ms."""

NOFILE = 4096
"""Open-file limit inside a container (soft = hard), as PLATFORM.md's podman
setup uses: plenty for a nanoservice, bounded for a small device."""

CONTAINER_ID_MAX = 96
"""Longest container id we make: a runc state dir, a cgroup dir (255 bytes at
most) and a podman/docker name; longer ids get a hash suffix instead of a
tail."""

HOSTNAME_MAX = 63
"""The kernel's UTS name holds 64 bytes, NUL included."""

NAMESPACES = ("pid", "mount", "ipc", "uts")
"""No ``network`` namespace (module docstring); no ``user`` namespace: the
container's root is the host's root with most capabilities dropped."""

CAPABILITIES = ("CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE")
"""``runc spec``'s default set: enough to bind a low port and signal its own
processes, nothing that reaches the host (on the host network, no
``CAP_NET_ADMIN``/``CAP_NET_RAW``)."""

HOST_FILES = ("/etc/resolv.conf", "/etc/hosts")
"""Bound read-only into the container when the host has them: on the host
network the host's resolver and names are the right ones."""

MASKED_PATHS = ("/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/sys/firmware", "/proc/scsi")
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
"""Both as ``runc spec`` (and docker) set them."""

FALLBACK_PARENT = "nanomesh-runc"
"""Parent of a container's cgroups when there is no instance cgroup to nest
under (relative to runc's own cgroup; in a hybrid layout's unified hierarchy,
to its root). Not ``nanomesh``: that folder holds the driver's per-daemon
scopes (:mod:`nanomesh.runtime.cgroups`)."""

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def container_id(iid: str, peer: str = "") -> str:
    """``nm-<service>-<index>[-<peer>]`` with anything but letters, digits,
    ``_ . -`` replaced by ``-`` (runc's and docker's rule). The peer name keeps
    two lab peers on one machine apart where names are global (podman,
    docker, cgroup paths); runc state is per peer already (``--root``)."""
    service, index = partition_instance_id(iid)
    parts = ["nm", service or iid, index if service else ""]
    if peer:
        parts.append(peer)
    raw = "-".join(p for p in parts if p)
    cid = _UNSAFE.sub("-", raw).strip("-.") or "nm"
    if len(cid) > CONTAINER_ID_MAX:
        digest = hashlib.sha256(raw.encode()).hexdigest()[:12]
        cid = f"{cid[:CONTAINER_ID_MAX - 13]}-{digest}"
    return cid


def container_env(spec: InstanceSpec, env: Mapping[str, str]) -> dict[str, str]:
    """The container's environment: the runtime's contract (the variables of
    ``env`` named in :data:`~nanomesh.runtime.instance_spec.RESERVED_ENV` and the
    ``NANOMESH_PORT_*`` ones) and the spec's ``run.env``, over a default
    ``PATH``, ``HOME`` and ``TERM``. The rest of the daemon's environment
    stays outside: host paths and settings mean nothing in another root
    filesystem and may hold secrets (other ``NANOMESH_*`` variables included:
    ``NANOMESH_TOKEN`` is the management token)."""
    out = {"PATH": DEFAULT_PATH, "HOME": "/", "TERM": "dumb"}
    for key, value in env.items():
        if key in RESERVED_ENV or key.startswith("NANOMESH_PORT_") or key in spec.run.env:
            out[key] = value
    return out


def container_cwd(spec: InstanceSpec) -> str:
    """``run.cwd`` if absolute (a path inside the container), else ``/``: a
    relative ``cwd`` is relative to the bundle on the host, which the
    container does not see."""
    cwd = spec.run.cwd
    return cwd if cwd is not None and os.path.isabs(cwd) else "/"


def hostname(spec: InstanceSpec) -> str:
    """The container's host name: the service name, sanitised."""
    return (_UNSAFE.sub("-", spec.service).strip("-.") or "nanoservice")[:HOSTNAME_MAX]


def cgroups_path(cid: str, layout: CgroupLayout, *, in_instance: bool = False,
                 instance_unified: str | None = None) -> str:
    """``linux.cgroupsPath`` putting container ``cid`` under the instance's
    cgroup (module docstring). ``in_instance``: runc will run inside the
    instance's cgroup (the driver made one); ``instance_unified``: that
    cgroup's path in the v2 hierarchy relative to its root
    (``nanomesh/pd1/hello-0``), None if unknown or v1 only.

    ================  ======================  ========================================
    layout            instance_unified = U    otherwise
    ================  ======================  ========================================
    hybrid            ``U/cid`` (relative)    ``nanomesh-runc/cid``: under runc's v1
                                              cgroups, at the unified root
    unified (pure v2) ``/U/cid`` (absolute)   ``nanomesh-runc/cid``: by runc's own
    legacy (v1 only)  --                      ``cid`` in the instance, else
                                              ``nanomesh-runc/cid``
    ================  ======================  ========================================
    """
    unified = (instance_unified or "").strip("/")
    if unified and layout == "hybrid":
        return f"{unified}/{cid}"
    if unified and layout == "unified":
        return f"/{unified}/{cid}"
    if layout == "legacy" and in_instance:
        return cid
    return f"{FALLBACK_PARENT}/{cid}"


def resources(limits: Limits) -> dict[str, Any]:
    """``linux.resources`` for ``[limits]``: every device denied (runc adds the
    standard ones: null, zero, random, tty, ...), memory, CPU quota, pids."""
    out: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}]}
    if limits.memory_mb is not None:
        out["memory"] = {"limit": limits.memory_mb << 20}
    if limits.cpu is not None:
        quota = max(MIN_CPU_QUOTA_US, round(limits.cpu * CPU_PERIOD_US))
        out["cpu"] = {"quota": quota, "period": CPU_PERIOD_US}
    if limits.pids is not None:
        out["pids"] = {"limit": limits.pids}
    return out


def mounts(host_files: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The standard container mounts (as ``runc spec``, without the cgroup
    tree) plus a private ``/tmp`` and read-only binds of ``host_files``."""
    out: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "nodev", "mode=1777"]},
    ]
    for path in host_files:
        out.append({"destination": path, "type": "bind", "source": path,
                    "options": ["rbind", "ro", "nosuid", "nodev", "noexec"]})
    return out


def oci_config(spec: InstanceSpec, *, env: Mapping[str, str], rootfs: Path,
               cgroups: str, host_files: Sequence[str] = ()) -> dict[str, Any]:
    """The ``config.json`` of one run of ``spec`` (a ``kind = "container"``
    spec with ``run.command``): ``env`` is the instance's environment
    (filtered by :func:`container_env`), ``rootfs`` the root filesystem
    (absolute; writable, the launcher's own copy), ``cgroups`` from
    :func:`cgroups_path`, ``host_files`` the :data:`HOST_FILES` that exist."""
    if not spec.run.command:
        raise ValueError(f"{spec.service}: a runc container needs run.command")
    caps = list(CAPABILITIES)
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": False,
            "user": {"uid": 0, "gid": 0},
            "args": list(spec.run.command),
            "env": [f"{k}={v}" for k, v in sorted(container_env(spec, env).items())],
            "cwd": container_cwd(spec),
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps,
                             "ambient": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": NOFILE, "soft": NOFILE}],
            "noNewPrivileges": True,
        },
        "root": {"path": str(rootfs), "readonly": False},
        "hostname": hostname(spec),
        "mounts": mounts(host_files),
        "linux": {
            "resources": resources(spec.limits),
            "cgroupsPath": cgroups,
            "namespaces": [{"type": ns} for ns in NAMESPACES],
            "maskedPaths": list(MASKED_PATHS),
            "readonlyPaths": list(READONLY_PATHS),
        },
    }


def cgroup_layout(root: Path = Path("/sys/fs/cgroup")) -> CgroupLayout:
    """How this machine mounts cgroups: ``unified`` (pure v2),
    ``hybrid`` (v1 controllers plus v2 at ``unified/``), ``legacy`` (v1
    only) or ``none``."""
    if (root / "cgroup.controllers").exists():
        return "unified"
    if not (root / "memory").is_dir() and not (root / "pids").is_dir():
        return "none"
    if (root / "unified" / "cgroup.controllers").exists():
        return "hybrid"
    return "legacy"
