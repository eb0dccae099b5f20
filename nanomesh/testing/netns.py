"""A network-namespace lab: n "hosts" on one private bridge, with real faults.

Layout of a lab with prefix ``nmab12`` and n hosts::

    nmab12-h   hub namespace: bridge ``br0`` with ports ``v0`` .. ``v{n-1}``
    nmab12-0   host 0: ``lo`` + ``eth0`` (veth peer of ``v0``), 10.77.R.1/24
    nmab12-1   host 1: ``lo`` + ``eth0`` (veth peer of ``v1``), 10.77.R.2/24
    ...

``R`` is a random run octet (1..254), so two labs that exist at the same time
use different names and different addresses (they cannot reach each other
anyway: each lab has its own bridge and no route anywhere else).

Nothing in the root network namespace is touched: the veth pairs are created
directly inside the lab's namespaces, no address or route is added outside the
lab, and all firewall rules live in the hosts' own namespaces. The only global
side effects are the mount files under ``/run/netns`` (made by ``ip netns
add``) and one small owner file per lab under ``/run/nanomesh-netns`` used by
:func:`cleanup_stale` to tell live labs from leftovers of crashed runs.

Faults use nftables (``nft``): each host namespace gets a table ``inet
nanomesh`` with an ``input`` base chain (hook input) that jumps to two regular
chains, ``partition`` and ``loss``. Each chain is flushed and refilled in one
atomic ``nft -f -`` transaction. Rules only match packets arriving on
``eth0``: dropping on the sending side would make ``sendto`` fail with EPERM
instead of silently losing the datagram, and loopback traffic inside a host is
never affected. ARP is not filtered (the ``inet`` family does not see it), so
neighbours still resolve; only IP traffic is lost.

Typical use::

    with NetnsLab(3) as lab:
        server = lab.popen(1, [sys.executable, "server.py", lab.address(1)])
        lab.set_loss(1, 0.1)          # 10% of packets arriving at host 1 dropped
        lab.partition([[0], [1, 2]])  # 0 cannot talk to 1 or 2
        lab.heal()                    # partitions gone, loss stays
    # namespaces, veths, bridge and every process inside them are gone
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import ipaddress
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

__all__ = [
    "MAX_HOSTS",
    "NetnsError",
    "NetnsLab",
    "cleanup_stale",
    "netns_available",
]

MAX_HOSTS = 200
"""Most hosts one lab may have (addresses are .1 .. .200 of one /24)."""

NETNS_DIR = Path("/run/netns")
OWNER_DIR = Path("/run/nanomesh-netns")
HUB_SUFFIX = "h"
NFT_TABLE = "nanomesh"
HOST_IFACE = "eth0"
BRIDGE = "br0"

_CMD_TIMEOUT = 30.0
_MAX_PARALLEL = 32
_LOSS_SCALE = 1_000_000  # numgen modulus: loss probability resolution is 1e-6
_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.]{1,12}$")
_PRIVATE_NETS = (
    ipaddress.IPv4Network("10.0.0.0/8"),
    ipaddress.IPv4Network("172.16.0.0/12"),
    ipaddress.IPv4Network("192.168.0.0/16"),
)

ExecMode = Literal["nsenter", "ip-netns-exec"]
Protocol = Literal["udp", "tcp"]
"""A transport protocol that loss can be limited to (None: every IP packet)."""


class NetnsError(RuntimeError):
    """A command that builds or changes the lab failed."""


# --------------------------------------------------------------------------- helpers


def _which(tool: str) -> str:
    path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if path is None:
        raise NetnsError(f"{tool!r} not found on PATH (apt-get install iproute2 nftables)")
    return path


def _run(argv: Sequence[str], stdin: str | None = None) -> str:
    try:
        proc = subprocess.run(
            list(argv),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=_CMD_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"{' '.join(argv)}: {exc}") from exc
    if proc.returncode != 0:
        raise NetnsError(
            f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}"
            + (f"\n--- input ---\n{stdin}" if stdin else "")
        )
    return proc.stdout


def _run_all(jobs: Sequence[tuple[Sequence[str], str | None]]) -> None:
    """Run independent commands concurrently (bounded); raise if any failed."""
    errors: list[str] = []
    for start in range(0, len(jobs), _MAX_PARALLEL):
        chunk = jobs[start : start + _MAX_PARALLEL]
        procs: list[tuple[Sequence[str], str | None, subprocess.Popen[str]]] = []
        for argv, stdin in chunk:
            try:
                proc = subprocess.Popen(
                    list(argv),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            except OSError as exc:
                errors.append(f"{' '.join(argv)}: {exc}")
                continue
            procs.append((argv, stdin, proc))
        for argv, stdin, proc in procs:
            try:
                _out, err = proc.communicate(stdin, timeout=_CMD_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                errors.append(f"{' '.join(argv)}: timed out")
                continue
            if proc.returncode != 0:
                errors.append(f"{' '.join(argv)} exited {proc.returncode}: {err.strip()}")
    if errors:
        raise NetnsError("; ".join(errors))


def _start_time(pid: int) -> str | None:
    """Kernel start time of a process (guards against pid reuse), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime); the command name in parentheses may contain spaces.
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def _owner_alive(owner_file: Path) -> bool:
    try:
        pid_s, start = owner_file.read_text().split()
        pid = int(pid_s)
    except (OSError, ValueError):
        return False
    return _start_time(pid) == start


def _pids_in(namespaces: Iterable[str]) -> list[int]:
    """Pids of all processes whose network namespace is one of ``namespaces``."""
    wanted: set[tuple[int, int]] = set()
    for name in namespaces:
        with contextlib.suppress(OSError):
            st = os.stat(NETNS_DIR / name)
            wanted.add((st.st_dev, st.st_ino))
    if not wanted:
        return []
    me = os.getpid()
    pids: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            st = os.stat(f"/proc/{entry.name}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in wanted:
            pids.append(int(entry.name))
    return pids


def _kill_pids(pids: Iterable[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _delete_namespaces(names: Sequence[str]) -> None:
    if not names:
        return
    ip = _which("ip")
    # -force: keep going past names that are already gone.
    subprocess.run(
        [ip, "-force", "-batch", "-"],
        input="".join(f"netns delete {n}\n" for n in names),
        capture_output=True,
        text=True,
        timeout=_CMD_TIMEOUT,
        check=False,
    )


def _terminate(procs: Sequence[subprocess.Popen[Any]], grace: float) -> None:
    running = [p for p in procs if p.poll() is None]
    for p in running:
        with contextlib.suppress(ProcessLookupError):
            p.terminate()
    deadline = time.monotonic() + grace
    for p in running:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5.0)


@dataclass
class _LabState:
    """Everything teardown needs; kept apart from the lab so a finalizer can own it."""

    prefix: str
    names: list[str]
    owner_file: Path
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)


def _teardown(state: _LabState) -> None:
    _terminate(state.procs, grace=2.0)
    # Anything else still inside the lab (started via exec_prefix, or children
    # that outlived their parent) would keep the namespaces alive: kill it.
    for _ in range(3):
        pids = _pids_in(state.names)
        if not pids:
            break
        _kill_pids(pids)
        time.sleep(0.05)
    for p in state.procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=1.0)
    _delete_namespaces(state.names)
    with contextlib.suppress(OSError):
        state.owner_file.unlink()


# --------------------------------------------------------------------------- public API


@functools.cache
def netns_available() -> tuple[bool, str]:
    """(True, "") if this process can build a lab here, else (False, reason).

    Checks root, the ``ip``/``nft``/``nsenter`` tools, and really builds a one-host
    lab with an nft ``numgen`` rule (cached for the life of the process).
    """
    if os.uname().sysname != "Linux":
        return False, "network namespaces need Linux"
    if os.geteuid() != 0:
        return False, f"needs root for network namespaces (euid={os.geteuid()})"
    for tool, pkg in (("ip", "iproute2"), ("nft", "nftables"), ("nsenter", "util-linux")):
        if shutil.which(tool) is None and shutil.which(tool, path="/usr/sbin:/sbin") is None:
            return False, f"{tool!r} not found (apt-get install -y {pkg})"
    try:
        with NetnsLab(1) as lab:
            lab.set_loss(0, 0.5)
            lab.partition([[0]])
            lab.heal()
            lab.set_loss(0, 0.0)
            lab.run(0, ["true"])
    except (NetnsError, OSError, subprocess.SubprocessError) as exc:
        return False, f"network namespace lab does not work here: {exc}"
    return True, ""


def cleanup_stale(prefix_glob: str = "nm????-*", *, kill_processes: bool = True) -> list[str]:
    """Delete namespaces left behind by crashed labs; return their names.

    Only names matching ``prefix_glob`` (which must start with ``nm``) are
    considered, and a namespace is left alone while the process that created
    its lab is still alive (owner file in ``/run/nanomesh-netns``), so it is
    safe to call while other labs are running. With ``kill_processes`` any
    process still inside a stale namespace is SIGKILLed first.
    """
    if not prefix_glob.startswith("nm"):
        raise ValueError("cleanup_stale only handles the 'nm...' naming convention")
    try:
        existing = sorted(p.name for p in NETNS_DIR.iterdir())
    except OSError:
        existing = []
    stale: list[str] = []
    for name in existing:
        if not fnmatch.fnmatchcase(name, prefix_glob) or "-" not in name:
            continue
        prefix = name.rsplit("-", 1)[0]
        if not _owner_alive(OWNER_DIR / f"{prefix}.owner"):
            stale.append(name)
    if stale:
        if kill_processes:
            _kill_pids(_pids_in(stale))
        _delete_namespaces(stale)
    # Owner files of dead owners whose namespaces are all gone.
    with contextlib.suppress(OSError):
        left = {p.name.rsplit("-", 1)[0] for p in NETNS_DIR.iterdir()}
        for owner in OWNER_DIR.glob("*.owner"):
            prefix = owner.name.removesuffix(".owner")
            if prefix not in left and not _owner_alive(owner):
                owner.unlink(missing_ok=True)
    return stale


class NetnsLab:
    """n hosts, each in its own network namespace, on one bridge in a hub namespace.

    The lab is built by the constructor and torn down by :meth:`close` (also
    via ``with``, on garbage collection and at interpreter exit). Teardown
    terminates processes started with :meth:`popen`, SIGKILLs anything else
    still inside the lab's namespaces, and deletes every namespace (which
    destroys the veths and the bridge with them).
    """

    def __init__(self, n: int, prefix: str | None = None, subnet: str = "10.77") -> None:
        if not 1 <= n <= MAX_HOSTS:
            raise ValueError(f"n must be in 1..{MAX_HOSTS}, got {n}")
        net = self._check_subnet(subnet)
        if prefix is not None and not _PREFIX_RE.match(prefix):
            raise ValueError(f"prefix must match {_PREFIX_RE.pattern}, got {prefix!r}")
        self._ip = _which("ip")
        self._nft = _which("nft")
        self._nsenter = _which("nsenter")
        self.n = n
        OWNER_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.prefix, owner_file = self._reserve_prefix(prefix)
        self.run_octet = secrets.randbelow(254) + 1
        self.network = ipaddress.IPv4Network(f"{net.network_address + self.run_octet * 256}/24")
        self._hosts = [f"{self.prefix}-{i}" for i in range(n)]
        self.hub = f"{self.prefix}-{HUB_SUFFIX}"
        self._addrs = [str(self.network.network_address + i + 1) for i in range(n)]
        self._state = _LabState(self.prefix, [], owner_file)
        self._finalizer = weakref.finalize(self, _teardown, self._state)
        self._loss = [0.0] * n
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ setup

    @staticmethod
    def _check_subnet(subnet: str) -> ipaddress.IPv4Network:
        try:
            net = ipaddress.IPv4Network(f"{subnet}.0.0/16")
        except ValueError as exc:
            raise ValueError(f"subnet must be two octets like '10.77', got {subnet!r}") from exc
        if not any(net.subnet_of(p) for p in _PRIVATE_NETS):
            raise ValueError(f"subnet {subnet!r} is not inside an RFC 1918 private range")
        return net

    @staticmethod
    def _reserve_prefix(prefix: str | None) -> tuple[str, Path]:
        """Claim a prefix by creating its owner file exclusively (atomic)."""
        for _ in range(64):
            candidate = prefix or f"nm{secrets.token_hex(2)}"
            owner_file = OWNER_DIR / f"{candidate}.owner"
            clash = (NETNS_DIR / f"{candidate}-{HUB_SUFFIX}").exists() or (
                NETNS_DIR / f"{candidate}-0"
            ).exists()
            if not clash and owner_file.exists() and not _owner_alive(owner_file):
                owner_file.unlink(missing_ok=True)  # left by a dead process, no namespaces
            if not clash:
                try:
                    fd = os.open(owner_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    clash = True
                else:
                    pid = os.getpid()
                    with os.fdopen(fd, "w") as f:
                        f.write(f"{pid} {_start_time(pid)}\n")
                    return candidate, owner_file
            if prefix is not None:
                raise NetnsError(f"a lab with prefix {prefix!r} already exists")
        raise NetnsError("could not find a free lab prefix")

    def _build(self) -> None:
        ip = self._ip
        names = [self.hub, *self._hosts]
        taken = [ns for ns in names if (NETNS_DIR / ns).exists()]
        if taken:
            # Not ours: never delete them (teardown only deletes state.names).
            raise NetnsError(f"namespaces already exist: {', '.join(taken)}")
        self._state.names = names
        # 1. namespaces (one ip process)
        _run([ip, "-batch", "-"], "".join(f"netns add {ns}\n" for ns in names))
        # 2. veth pairs created directly inside the lab namespaces (never in the root ns)
        _run(
            [ip, "-batch", "-"],
            "".join(
                f"link add {HOST_IFACE} netns {host} type veth peer name v{i} netns {self.hub}\n"
                for i, host in enumerate(self._hosts)
            ),
        )
        # 3. hub bridge + per-host addresses + per-host nft table, all concurrently
        hub_cmds = [
            "link set lo up",
            f"link add {BRIDGE} type bridge forward_delay 0 stp_state 0",
            f"link set {BRIDGE} up",
        ]
        for i in range(self.n):
            hub_cmds += [f"link set v{i} master {BRIDGE}", f"link set v{i} up"]
        jobs: list[tuple[Sequence[str], str | None]] = [
            ([ip, "-n", self.hub, "-batch", "-"], "\n".join(hub_cmds) + "\n")
        ]
        plen = self.network.prefixlen
        for i, host in enumerate(self._hosts):
            jobs.append(
                (
                    [ip, "-n", host, "-batch", "-"],
                    "link set lo up\n"
                    f"addr add {self._addrs[i]}/{plen} dev {HOST_IFACE}\n"
                    f"link set {HOST_IFACE} up\n",
                )
            )
            jobs.append((self._nft_argv(i), self._nft_base()))
        _run_all(jobs)

    @staticmethod
    def _nft_base() -> str:
        return (
            f"table inet {NFT_TABLE} {{\n"
            "  chain partition {\n  }\n"
            "  chain loss {\n  }\n"
            "  chain input {\n"
            "    type filter hook input priority -10; policy accept;\n"
            f'    iifname != "{HOST_IFACE}" accept\n'
            "    jump partition\n"
            "    jump loss\n"
            "  }\n"
            "}\n"
        )

    def _nft_argv(self, i: int) -> list[str]:
        return [self._nsenter, f"--net={NETNS_DIR / self._hosts[i]}", "--", self._nft, "-f", "-"]

    # ------------------------------------------------------------------ info

    @property
    def hosts(self) -> list[str]:
        """Namespace names of the hosts, index i is host i."""
        return list(self._hosts)

    @property
    def addresses(self) -> list[str]:
        return list(self._addrs)

    def __len__(self) -> int:
        return self.n

    def _check(self, i: int) -> int:
        if self._finalizer.alive is False:
            raise NetnsError("lab is closed")
        if not 0 <= i < self.n:
            raise IndexError(f"host index {i} out of range 0..{self.n - 1}")
        return i

    def address(self, i: int) -> str:
        """IPv4 address of host i (on its ``eth0``)."""
        return self._addrs[self._check(i)]

    def netns(self, i: int) -> str:
        """Namespace name of host i (``ip -n NAME ...``)."""
        return self._hosts[self._check(i)]

    def netns_path(self, i: int) -> str:
        """Bind-mount path of host i's namespace (for ``setns``/``nsenter --net=``)."""
        return str(NETNS_DIR / self._hosts[self._check(i)])

    def exec_prefix(self, i: int, mode: ExecMode = "nsenter") -> list[str]:
        """argv prefix that runs a command inside host i (e.g. for trio.run_process).

        ``nsenter`` only switches the network namespace. ``ip-netns-exec`` also
        unshares the mount namespace, remounts ``/sys`` for the host (so
        ``/sys/class/net`` shows its interfaces) and bind-mounts
        ``/etc/netns/NAME/*`` over ``/etc``.
        """
        ns = self.netns(i)
        if mode == "nsenter":
            return [self._nsenter, f"--net={NETNS_DIR / ns}", "--"]
        if mode == "ip-netns-exec":
            return [self._ip, "netns", "exec", ns]
        raise ValueError(f"unknown exec mode {mode!r}")

    # ------------------------------------------------------------------ processes

    def popen(
        self, i: int, argv: Sequence[str], *, mode: ExecMode = "nsenter", **kwargs: Any
    ) -> subprocess.Popen[Any]:
        """Start ``argv`` inside host i; kwargs go to :class:`subprocess.Popen`.

        The returned process is the program itself (nsenter/ip exec into it).
        It is terminated (SIGTERM, then SIGKILL after 2 s) when the lab closes.
        """
        proc: subprocess.Popen[Any] = subprocess.Popen(
            [*self.exec_prefix(i, mode), *argv], **kwargs
        )
        self._state.procs.append(proc)
        return proc

    def run(
        self,
        i: int,
        argv: Sequence[str],
        *,
        timeout: float = 60.0,
        check: bool = True,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        mode: ExecMode = "nsenter",
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside host i to completion, capturing text output."""
        return subprocess.run(
            [*self.exec_prefix(i, mode), *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            input=input,
            env=env,
        )

    # ------------------------------------------------------------------ faults

    def _nft_update(self, chain_rules: Mapping[int, tuple[str, Sequence[str]]]) -> None:
        """Atomically replace one chain's rules in each given host."""
        jobs: list[tuple[Sequence[str], str | None]] = []
        for i, (chain, rules) in chain_rules.items():
            script = f"flush chain inet {NFT_TABLE} {chain}\n" + "".join(
                f"add rule inet {NFT_TABLE} {chain} {r}\n" for r in rules
            )
            jobs.append((self._nft_argv(self._check(i)), script))
        _run_all(jobs)

    @staticmethod
    def _loss_rules(probability: float, protocol: Protocol | None = None) -> list[str]:
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability must be in [0, 1], got {probability}")
        if protocol not in (None, "udp", "tcp"):
            raise ValueError(f"protocol must be 'udp', 'tcp' or None, got {protocol!r}")
        threshold = round(probability * _LOSS_SCALE)
        if threshold == 0:
            return []
        match = f"meta l4proto {protocol} " if protocol else ""
        if threshold >= _LOSS_SCALE:
            return [f"{match}counter drop"]
        return [f"{match}numgen random mod {_LOSS_SCALE} < {threshold} counter drop"]

    def set_loss(self, i: int, probability: float, protocol: Protocol | None = None) -> None:
        """Drop this fraction of IP packets arriving at host i: of every
        protocol, or only of `protocol` (``"udp"``: a lossy or filtered path
        that TCP gets through).

        ``set_loss(i, 0)`` removes the loss. Partition rules are unaffected.
        """
        rules = self._loss_rules(probability, protocol)
        self._nft_update({self._check(i): ("loss", rules)})
        self._loss[i] = probability

    def set_loss_all(self, probability: float, protocol: Protocol | None = None) -> None:
        """:meth:`set_loss` on every host (in parallel)."""
        rules = self._loss_rules(probability, protocol)
        self._nft_update({i: ("loss", rules) for i in range(self.n)})
        self._loss = [probability] * self.n

    def loss(self, i: int) -> float:
        """The loss probability currently set on host i."""
        return self._loss[self._check(i)]

    def partition(self, groups: Sequence[Sequence[int]]) -> None:
        """Split the lab: hosts in different groups cannot exchange any IP packet.

        Replaces any previous partition. Hosts not listed in any group keep
        talking to everybody. Implemented as input drops by source address on
        every listed host, so both directions are cut. Loss rules are kept.
        """
        group_of: dict[int, int] = {}
        for g, members in enumerate(groups):
            for i in members:
                self._check(i)
                if i in group_of:
                    raise ValueError(f"host {i} is in more than one group")
                group_of[i] = g
        updates: dict[int, tuple[str, Sequence[str]]] = {}
        for i in range(self.n):
            others = [
                self._addrs[j] for j, g in group_of.items() if i in group_of and g != group_of[i]
            ]
            rules = [f"ip saddr {{ {', '.join(sorted(others))} }} counter drop"] if others else []
            updates[i] = ("partition", rules)
        self._nft_update(updates)

    def heal(self) -> None:
        """Remove every partition rule (loss rules stay)."""
        self._nft_update({i: ("partition", []) for i in range(self.n)})

    def ruleset(self, i: int) -> str:
        """``nft list table`` output of host i, with counters (for debugging)."""
        return _run([*self.exec_prefix(i), self._nft, "list", "table", "inet", NFT_TABLE])

    # ------------------------------------------------------------------ teardown

    def close(self) -> None:
        """Stop the lab's processes and delete all its namespaces (idempotent)."""
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def __enter__(self) -> NetnsLab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<NetnsLab {self.prefix} n={self.n} {self.network} {state}>"
