"""The peer daemon works under peers/nanomesh.service's hardening (issue 8, item 7).

There is no running systemd on the test machines, so the unit cannot be
started as it is. Instead the daemon runs under the same restrictions applied
by hand, read from the unit file itself (a change to the unit is tested as
it is written):

- ``CapabilityBoundingSet=`` and ``NoNewPrivileges=`` with ``setpriv``;
- ``SystemCallFilter=`` (groups expanded by ``systemd-analyze syscall-filter``),
  ``SystemCallErrorNumber=``, ``SystemCallArchitectures=native``,
  ``RestrictAddressFamilies=``, ``RestrictNamespaces=`` and
  ``RestrictSUIDSGID=`` as one seccomp
  filter (tests/integration/seccomp_exec.py, libseccomp);
- ``ProtectHome=`` but for a home that holds the tests' Python (pyenv);
- ``ProtectSystem=strict`` in a private mount namespace: every mount
  read-only except /dev, /proc, /sys and the writable paths (the peer's data
  directory for ``StateDirectory=``, ``ReadWritePaths=``);
  ``ProtectKernelTunables=`` (/sys and /proc/sys read-only, the cgroup mounts
  writable); a private /var/tmp; ``UMask=``; ``LimitNOFILE=``.

Not reproduced: ``PrivateTmp=`` for /tmp (the test's files live there),
``ProtectProc=invisible`` (it needs a new procfs), ``ProtectKernelModules/
Logs/Clock=``, ``LockPersonality=``, ``RestrictRealtime=``, ``KeyringMode=``
and ``Delegate=`` (systemd's own cgroup setup).

Under those, a peer founds a mesh, runs a process nanoservice (echo, called
by name) and a runc container (counter-container, its HTTP endpoint answering
a growing count), and stops the container on undeploy; the daemon and an
instance carry the bounding set, no_new_privs and the filter.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mesh_harness import Cluster, Peer
from service_helpers import (
    cli_ok,
    cli_retry,
    copy_service,
    instances,
    service_processes,
    wait_instances,
)
from test_control_plane import read_token_when_ready

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "peers" / "nanomesh.service"
SECCOMP_EXEC = Path(__file__).resolve().parent / "seccomp_exec.py"
SYSTEM_PYTHON = "/usr/bin/python3"
WAIT = 45.0


def _system_python_has_seccomp() -> bool:
    if not os.path.exists(SYSTEM_PYTHON):
        return False
    return subprocess.run([SYSTEM_PYTHON, "-c", "import seccomp"],
                          capture_output=True, check=False).returncode == 0


MISSING = [what for what, ok in (
    ("root", os.geteuid() == 0),
    ("runc", shutil.which("runc") is not None),
    ("busybox-static", os.path.exists("/bin/busybox")),
    ("setpriv and unshare (util-linux)", bool(shutil.which("setpriv") and shutil.which("unshare"))),
    ("systemd-analyze (systemd)", shutil.which("systemd-analyze") is not None),
    ("python3-seccomp for /usr/bin/python3", _system_python_has_seccomp()),
) if not ok]

NAMESPACE_FLAGS = {"mnt": 0x00020000, "cgroup": 0x02000000, "uts": 0x04000000,
                   "ipc": 0x08000000, "user": 0x10000000, "pid": 0x20000000,
                   "net": 0x40000000}


# --------------------------------------------------------------------------- the unit


def unit_settings(path: Path = UNIT) -> dict[str, list[str]]:
    """``[Service]`` settings: key -> the words of every assignment, in order
    (systemd appends list settings given twice)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]" and "=" in line:
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).extend(value.split())
    return out


def syscall_groups() -> dict[str, list[str]]:
    """``@group`` -> its members, from ``systemd-analyze syscall-filter``."""
    text = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True,
                          text=True, check=True).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif current is not None and line.strip() and not line.strip().startswith("#"):
            current.append(line.split()[0])
    return groups


def expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    out: set[str] = set()
    for name in names:
        out |= expand(groups[name], groups) if name.startswith("@") else {name}
    return out


def seccomp_spec(settings: dict[str, list[str]]) -> dict[str, Any]:
    errno_name = settings.get("SystemCallErrorNumber", ["EPERM"])[-1]
    allowed_ns = set(settings["RestrictNamespaces"])
    forbidden = sum(flag for name, flag in NAMESPACE_FLAGS.items() if name not in allowed_ns)
    return {
        "allow": sorted(expand(settings["SystemCallFilter"], syscall_groups())),
        "errno": getattr(__import__("errno"), errno_name),
        "families": [int(getattr(socket, f)) for f in settings["RestrictAddressFamilies"]],
        "forbidden_namespaces": forbidden,
        "restrict_suid_sgid": settings.get("RestrictSUIDSGID", ["no"])[-1] == "yes",
    }


def capability_mask(names: list[str]) -> int:
    """The CapBnd bits of capability names (``setpriv --list-caps`` lists
    them in the kernel's order)."""
    listing = subprocess.run(["setpriv", "--list-caps"], capture_output=True, text=True,
                             check=True).stdout.split()
    return sum(1 << listing.index(n.removeprefix("CAP_").lower()) for n in names)


def sandbox_argv(settings: dict[str, list[str]], spec_file: Path, writable: list[Path],
                 argv: list[str]) -> list[str]:
    """``unshare -m sh -c SETUP`` that restricts itself as the unit says, then
    execs ``argv`` through setpriv and the seccomp filter (one pid all along)."""
    assert settings["ProtectSystem"] == ["strict"] and settings["ProtectHome"] == ["yes"]
    assert settings["ProtectKernelTunables"] == ["yes"]
    assert settings["NoNewPrivileges"] == ["yes"]
    caps = ",".join("+" + c.removeprefix("CAP_").lower()
                    for c in settings["CapabilityBoundingSet"])
    # install.sh creates every ReadWritePaths= entry before the unit starts
    # (/opt/nanomesh: the install root `nanomesh upgrade` writes); the daemon
    # here runs from the checkout, so an entry missing on this machine has
    # nothing to protect and is left out, as a "-" entry would be.
    rw = [*writable, *(p.removeprefix("-") for p in settings.get("ReadWritePaths", [])
                       if os.path.exists(p.removeprefix("-")))]
    setup = f"""set -e
for mp in $(awk '{{print $5}}' /proc/self/mountinfo | sort -u); do
    case "$mp" in /proc|/proc/*|/dev|/dev/*|/sys|/sys/*) continue ;; esac
    mount -o remount,bind,ro "$mp" 2>/dev/null || echo "sandbox: $mp stays writable" >&2
done
mount -o remount,bind,ro /sys
mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys
for home in {" ".join(hidden_homes())}; do
    [ -d "$home" ] && mount -t tmpfs -o ro,mode=0755 tmpfs "$home"
done
mount -t tmpfs -o mode=1777 tmpfs /var/tmp
for p in "$@"; do mount --rbind "$p" "$p"; mount -o remount,bind,rw "$p"; done
umask {settings["UMask"][-1]}
ulimit -n {settings["LimitNOFILE"][-1]}
exec setpriv --bounding-set -all,{caps} --inh-caps -all --no-new-privs -- \\
    {SYSTEM_PYTHON} {SECCOMP_EXEC} {spec_file} {" ".join(map(_quote, argv))}
"""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", setup, "sandbox",
            *map(str, rw)]


def hidden_homes() -> list[str]:
    """``ProtectHome=``'s directories, but not one that holds the Python that
    runs the tests (a pyenv in /root): on a device the venv is in /opt."""
    python = str(Path(sys.executable).resolve())
    return [h for h in ("/home", "/root", "/run/user") if not python.startswith(h + "/")]


def _quote(word: str) -> str:
    return "'" + word.replace("'", "'\\''") + "'"


def proc_status(pid: int) -> dict[str, str]:
    text = Path(f"/proc/{pid}/status").read_text()
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def assert_restricted(pid: int, cap_mask: int) -> None:
    status = proc_status(pid)
    assert int(status["CapBnd"], 16) == cap_mask, (pid, status["CapBnd"])
    assert status["NoNewPrivs"].strip() == "1", pid
    assert status["Seccomp"].strip() == "2", pid


# --------------------------------------------------------------------------- the tests


PROBE = """
import ctypes, errno, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
def refused(call, *args):
    if call(*args) == 0:
        return False
    return ctypes.get_errno() in (errno.EPERM, errno.EACCES, errno.EROFS, errno.EAFNOSUPPORT)
def read_only(path):  # opened for writing, never written
    try:
        os.close(os.open(path, os.O_WRONLY))
    except OSError as exc:
        return exc.errno == errno.EROFS
    return False
path = sys.argv[1] + "/probe"
open(path, "w").close()
print(json.dumps({
    "unshare_net": refused(libc.unshare, 0x40000000),
    "unshare_user": refused(libc.unshare, 0x10000000),
    "unshare_pid": not refused(libc.unshare, 0x20000000),
    "setuid_file": refused(libc.chmod, path.encode(), 0o4755),
    "plain_chmod": not refused(libc.chmod, path.encode(), 0o755),
    "packet_socket": refused(libc.socket, 17, 3, 0),
    "udp_socket": libc.socket(2, 2, 0) >= 0,
    "ptrace": refused(libc.ptrace, 16, os.getppid(), 0, 0),
    "write_usr": refused(libc.mkdir, b"/usr/nanomesh-probe", 0o755),
    "write_state": not refused(libc.mkdir, (sys.argv[1] + "/d").encode(), 0o755),
    "proc_sys_readonly": read_only("/proc/sys/vm/overcommit_memory"),
    "sys_readonly": read_only("/sys/kernel/profiling"),
}))
"""


@pytest.mark.skipif(bool(MISSING), reason="needs " + ", ".join(MISSING))
def test_the_emulated_restrictions_are_in_force(tmp_path: Path) -> None:
    """The sandbox really applies the unit: what it forbids fails, what it
    allows works (so the daemon test below proves something)."""
    settings = unit_settings()
    spec_file = tmp_path / "seccomp.json"
    spec_file.write_text(json.dumps(seccomp_spec(settings)))
    state = tmp_path / "state"
    state.mkdir()
    argv = sandbox_argv(settings, spec_file, [state], [sys.executable, "-c", PROBE, str(state)])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert results == dict.fromkeys(results, True), results


@pytest.fixture
def sandboxed_peer(cluster: Cluster, tmp_path: Path) -> Iterator[Peer]:
    settings = unit_settings()
    spec_file = tmp_path / "seccomp.json"
    spec_file.write_text(json.dumps(seccomp_spec(settings)))
    key = cluster.default_key  # the session's: the test's `nanomesh call` reads it
    ip = cluster.pool.take()
    data_dir = cluster.root / "data" / "hardened"
    data_dir.mkdir(parents=True, mode=0o700)

    def starter(argv: list[str], log: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(sandbox_argv(settings, spec_file, [data_dir], argv),
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)

    peer = Peer("hardened", ip, data_dir, cluster.root / "hardened.log", key_file=key,
                join=(), preset="local", starter=starter)
    cluster.peers.append(peer)
    yield peer.start()


@pytest.mark.skipif(bool(MISSING), reason="needs " + ", ".join(MISSING))
def test_daemon_runs_processes_and_containers_under_the_units_restrictions(
        cluster: Cluster, sandboxed_peer: Peer, tmp_path: Path) -> None:
    peer = sandboxed_peer
    token = read_token_when_ready(cluster, peer)
    assert peer.pid is not None
    cap_mask = capability_mask(unit_settings()["CapabilityBoundingSet"])
    assert_restricted(peer.pid, cap_mask)
    mounts = Path(f"/proc/{peer.pid}/mountinfo").read_text()
    assert re.search(r"^\S+ \S+ \S+ \S+ / ro,", mounts, re.M), "/ is not read-only"

    # A process nanoservice, called by name.
    echo = copy_service("echo", tmp_path / "echo", {"replicas = 2": "replicas = 1"})
    cli_retry(cluster, "deploy", str(echo), peer=peer, token=token)
    wait_instances(cluster, [peer], "echo", 1, timeout=WAIT)
    assert cli_ok("call", "echo", "whoami", peer=peer).strip() == "echo/0"
    [instance] = service_processes(cluster, "echo")
    assert_restricted(instance.pid, cap_mask)

    # A runc container: mounts, pivot_root and namespaces under the filter.
    folder = copy_service("counter-container", tmp_path / "ctr")
    subprocess.run(["sh", str(folder / "build-rootfs.sh")], check=True, capture_output=True,
                   timeout=60)
    cli_retry(cluster, "deploy", str(folder), peer=peer, token=token)
    wait_instances(cluster, [peer], "counter-container", 1, timeout=WAIT)
    [ep] = [e for e in json.loads(cli_ok("resolve", "counter-container", "--json",
                                         peer=peer))["endpoints"]]
    address = f"{ep['host']}:{ep['port']}"

    def count() -> int | None:
        try:
            with urllib.request.urlopen(f"http://{address}/count", timeout=5) as resp:
                body = resp.read().strip()
        except OSError:
            return None
        return int(body) if body.isdigit() else None
    first = cluster.wait(count, 20, what=f"GET http://{address}/count")
    cluster.wait(lambda: (count() or 0) > first, 20, what="the count to grow")

    cli_retry(cluster, "undeploy", "counter-container", peer=peer, token=token)
    cluster.wait(lambda: count() is None and not instances(peer, "counter-container")
                 and not service_processes(cluster, "counter-container"),
                 what="the container to stop")
    peer.check_alive()
