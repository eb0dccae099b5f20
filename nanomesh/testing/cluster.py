"""One harness for a mesh of real peer processes on this machine.

`nanomesh lab`, the integration tests (``tests/integration/mesh_harness.py``)
and the experiments (``experiments/_meshlib.py``) all run real ``python -m
nanomesh peer run`` processes. They used to build that mesh each in their
own way, and the copies drifted (one probed the Raft port, one did not; one
marked restarts in the log, one did not). Now they share:

- `PeerProcess`: one peer daemon process that may be stopped and started
  again: its command line (`nanomesh.testing.peerproc.peer_argv`), its log
  file (appended, with a ``start #k`` line on every restart), SIGKILL or
  SIGTERM, and GETs on its API. Two hooks make it run anywhere: a *starter*
  (a plain `subprocess.Popen` in the root namespace, or `NetnsLab.popen`
  inside a network-namespace host) and a *getter* (a direct HTTP GET, or a
  `NsAgent` inside the host when the root namespace has no route there).
- address sources: the tests' `AddressPool` (addresses reserved with a file
  lock, because concurrent test runs share the machine) and the experiments'
  `AddressRange` (a fixed, reproducible range a run asks for), both behind
  `AddressSource`.
- `Cluster`: owns peers, waits (bounded, failing fast with the log tail when
  a peer that should run has exited), compares views, and kills and reaps
  every process it started on `close`. `LoopbackCluster` puts peers on
  loopback addresses of the root namespace; `NetnsCluster`
  (`nanomesh.testing.netns_cluster`) one per host of a
  `nanomesh.testing.netns.NetnsLab`.

Before every start in the root namespace, `PeerProcess.start` checks that
the peer's gossip, API and Raft ports are free on its address (`ports_free`),
so a busy address is named at once instead of showing up as a peer that
exits with a bind error in its log.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

from nanomesh.config import DEFAULT_API_PORT, DEFAULT_GOSSIP_PORT, DEFAULT_RAFT_PORT
from nanomesh.testing.peerproc import peer_argv, ports_free
from nanomesh.transport.apiclient import ApiError, get_json
from nanomesh.wire import generate_key

PY = sys.executable
GOSSIP_PORT = DEFAULT_GOSSIP_PORT
API_PORT = DEFAULT_API_PORT
RAFT_PORT = DEFAULT_RAFT_PORT
POLL_INTERVAL = 0.05
"""Seconds between two polls of a wait: short, as a poll is one local HTTP GET."""
TIMEOUT = 30.0
"""Default bound of a wait, in seconds: generous, never a performance claim."""
API_TIMEOUT = 3.0
"""Seconds one API GET of the harness may take (a loaded machine answers slowly)."""
REAP_TIMEOUT = 10.0
"""Seconds to wait for a killed peer to be reaped (SIGKILL cannot be caught)."""
TAIL_LINES = 40
"""Log lines quoted when a peer exited unexpectedly."""

T = TypeVar("T")


class WaitTimeout(AssertionError, TimeoutError):
    """A bounded wait ran out. An AssertionError for pytest, a TimeoutError
    for the experiments that catch one."""


class PeerExited(AssertionError):
    """A peer that should run has exited (the message quotes its log)."""


class AddressBusy(RuntimeError):
    """A peer's ports are taken on its address (another run, a stray process)."""


# --------------------------------------------------------------------------- waiting


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last `lines` lines of a log file, or "(no log)"."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def timeout_message(what: str, timeout: float, last: Any, last_error: Exception | None,
                    extra: str = "") -> str:
    """What a wait that ran out says: what it waited for, the last value, the
    last API error and anything `extra` (the peers' views)."""
    return (f"timed out after {timeout:g}s waiting for {what}; last value {last!r}; "
            f"last API error {last_error}" + (f"\n{extra}" if extra else ""))


def wait_until(predicate: Callable[[], T], timeout: float = TIMEOUT, *,
               interval: float = POLL_INTERVAL, what: str | None = None,
               describe: Callable[[], str] | None = None,
               check: Callable[[], None] | None = None) -> T:
    """Poll `predicate` every `interval` s until it returns something truthy
    (returned) or `timeout` s pass (`WaitTimeout` naming `what`, with the last
    value, the last API error and `describe()`).

    An `ApiError` from the predicate counts as "not yet". `check` runs before
    each poll and may raise to fail fast (e.g. a peer process died).
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    last_error: Exception | None = None
    while True:
        if check is not None:
            check()
        try:
            value = predicate()
        except ApiError as exc:
            last_error = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            name = what or str(getattr(predicate, "__name__", repr(predicate)))
            extra = ""
            if describe is not None:
                try:
                    extra = describe()
                except ApiError as exc:
                    extra = f"(describe failed: {exc})"
            raise WaitTimeout(timeout_message(name, timeout, last, last_error, extra))
        time.sleep(interval)


def write_key(path: Path) -> Path:
    """A new cluster key in `path` (mode 0600)."""
    path.write_text(generate_key() + "\n")
    path.chmod(0o600)
    return path


# --------------------------------------------------------------------------- addresses


class AddressSource(Protocol):
    """Where a cluster gets the address of its next peer."""

    def take(self) -> str: ...

    def release(self, ip: str) -> None: ...


ADDRESS_LOCK_DIR = Path(tempfile.gettempdir()) / "nanomesh-test-addresses"
"""Where `AddressPool` keeps one lock file per reserved address."""


class AddressPool:
    """Hands out loopback addresses PREFIX.FIRST-LAST (the tests':
    127.0.10.1-249), skipping any address where the gossip, API or Raft port
    is already taken (another run, a stray process).

    Concurrent test runs (several pytest processes on one machine) each have
    their own pool, so a free-port probe alone races: two runs could probe
    the same free address and both start peers there, and a peer that a test
    killed leaves its address free until the test restarts it. So every
    address handed out is also reserved across processes, by an exclusive
    `flock` on ``lock_dir/<ip>``, until `release` (a cluster releases its
    addresses when it closes) or the process exits (the kernel drops the
    lock, even after SIGKILL)."""

    def __init__(self, first: int = 1, last: int = 249, *, prefix: str = "127.0.10.",
                 lock_dir: Path = ADDRESS_LOCK_DIR) -> None:
        self.prefix = prefix
        self._next = first
        self._first = first
        self._last = last
        self._lock_dir = lock_dir
        self._lock = threading.Lock()
        self._reserved: dict[str, int] = {}

    def take(self) -> str:
        with self._lock:
            while self._next <= self._last:
                ip = f"{self.prefix}{self._next}"
                self._next += 1
                if self._reserve(ip):
                    if ports_free(ip):
                        return ip
                    self._unreserve(ip)
        raise RuntimeError(f"no free address left in {self.prefix}{self._first}-{self._last}")

    def release(self, ip: str) -> None:
        """Let other processes use `ip` again (this pool never hands it out twice)."""
        with self._lock:
            self._unreserve(ip)

    def _reserve(self, ip: str) -> bool:
        try:
            self._lock_dir.mkdir(mode=0o777, exist_ok=True)
            fd = os.open(self._lock_dir / ip, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:
            return True  # no lock directory: fall back to the port probe alone
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False  # another process holds it
        self._reserved[ip] = fd
        return True

    def _unreserve(self, ip: str) -> None:
        fd = self._reserved.pop(ip, None)
        if fd is not None:
            os.close(fd)  # closing drops the flock


class AddressRange:
    """The fixed addresses SUBNET.FIRST .. SUBNET.FIRST+COUNT-1 in order (the
    experiments': a run names its range, so a result is reproducible and
    engineers sharing a machine keep to ranges of their own). `subnet` is the
    first three octets ("127.0.60"; a trailing dot is allowed). Nothing is
    reserved: a busy address fails at the start of its peer (`AddressBusy`)."""

    def __init__(self, subnet: str, first_octet: int, count: int) -> None:
        self.subnet = subnet.rstrip(".")
        parts = self.subnet.split(".")
        if len(parts) != 3 or not all(p.isdigit() and int(p) <= 255 for p in parts):
            raise ValueError(f"subnet {subnet!r} is not three octets like 127.0.60")
        if count < 0 or first_octet < 1 or first_octet + count - 1 > 250:
            raise ValueError(f"addresses must stay within {self.subnet}.1-250 "
                             f"(asked for {count} from .{first_octet})")
        self.first_octet = first_octet
        self.count = count
        self._taken = 0

    def address(self, i: int) -> str:
        """The i-th address of the range (0-based)."""
        if not 0 <= i < self.count:
            raise IndexError(f"{self.subnet}.{self.first_octet}+{i} is outside the range")
        return f"{self.subnet}.{self.first_octet + i}"

    def take(self) -> str:
        if self._taken >= self.count:
            raise RuntimeError(f"all {self.count} addresses from {self.address(0)} are taken")
        self._taken += 1
        return self.address(self._taken - 1)

    def release(self, ip: str) -> None:
        """Nothing to do: the range is the caller's own."""


# --------------------------------------------------------------------------- one peer


Starter = Callable[[list[str], IO[bytes]], "subprocess.Popen[bytes]"]
"""Starts a peer's argv with stdout and stderr to its (open) log file."""
Getter = Callable[[str, str, float], Any]
"""GETs ``path`` on the API at ``host:port`` within a timeout; raises ApiError."""


def popen_starter(*, cwd: Path | None = None, env: Mapping[str, str] | None = None) -> Starter:
    """A starter in the root namespace: its own session (a Ctrl-C in the
    harness's terminal does not reach the peer, and a lab peer outlives the
    command that started it), `env` added to this process's environment."""
    full_env = {**os.environ, **env} if env else None

    def start(argv: list[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                cwd=cwd, env=full_env, start_new_session=True)
    return start


ROOT_START = popen_starter()


def direct_get(api: str, path: str, timeout: float) -> Any:
    """A GET on a peer API this namespace can reach."""
    return get_json(api, path, timeout=timeout)


RESTART_MARKER = "---- harness: start #"
"""How the line before a restart in a peer's log begins."""


def restart_marker(name: str, start: int) -> str:
    """The line written to a peer's log before its `start`-th start (k >= 2),
    so a reader sees where one run of the process ends and the next begins."""
    return f"{RESTART_MARKER}{start} of {name} ----\n"


def starts_in_log(path: Path) -> int:
    """How often a peer was started with this log file: 0 for none (or an
    empty one), else one more than its `restart_marker` lines (a process
    that starts again on an old log, as a lab peer does, counts on from it)."""
    try:
        with path.open("rb") as f:
            text = f.read()
    except OSError:
        return 0
    return 0 if not text else 1 + text.count(RESTART_MARKER.encode())


class PeerProcess:
    """One peer daemon process (it may be stopped and started again).

    ``key_file=None`` starts the peer without ``--key-file``; `log_level`
    None leaves the daemon's default; `extra_args` go after the others (e.g.
    ``--config FILE``). With `check_ports` (the default, for peers in the
    root namespace) every start first checks the peer's ports are free on
    its address."""

    def __init__(self, name: str, ip: str, data_dir: Path, log_path: Path, *,
                 key_file: Path | None, join: Sequence[str] = (), preset: str | None = None,
                 log_level: str | None = None, extra_args: Sequence[str] = (),
                 starter: Starter = ROOT_START, getter: Getter = direct_get,
                 check_ports: bool = True) -> None:
        self.name = name
        self.ip = ip
        self.data_dir = data_dir
        self.log_path = log_path
        self.key_file = key_file
        self.join = list(join)
        self.preset = preset
        self.log_level = log_level
        self.extra_args = list(extra_args)
        self.check_ports = check_ports
        self._starter = starter
        self._getter = getter
        self.proc: subprocess.Popen[bytes] | None = None
        self.expect_running = False
        """True from `start` until `kill`/`terminate`: an exit in between is a failure."""
        self.starts = 0

    def __repr__(self) -> str:
        return f"<PeerProcess {self.name} {self.ip} pid={self.pid}>"

    @property
    def api(self) -> str:
        return f"{self.ip}:{API_PORT}"

    @property
    def gossip(self) -> str:
        return f"{self.ip}:{GOSSIP_PORT}"

    @property
    def raft(self) -> str:
        return f"{self.ip}:{RAFT_PORT}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def argv(self) -> list[str]:
        return peer_argv(name=self.name, bind=self.gossip, data_dir=self.data_dir,
                         preset=self.preset, join=self.join, key_file=self.key_file,
                         log_level=self.log_level, extra=self.extra_args, python=PY)

    # ------------------------------------------------------------ process

    def start(self) -> PeerProcess:
        """Start the process (appending to its log); AddressBusy if its
        ports are taken. Returns at once: wait for its API or the mesh."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        if self.check_ports and not ports_free(self.ip):
            raise AddressBusy(f"{self.name}: ports {GOSSIP_PORT}/{API_PORT}/{RAFT_PORT} are "
                              f"already in use on {self.ip}: a previous run or another "
                              "process holds them")
        self.starts += 1
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            if self.starts > 1:
                log.write(restart_marker(self.name, self.starts).encode())
                log.flush()
            self.proc = self._starter(self.argv(), log)
        self.expect_running = True
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL (a crash: no leave message) and reap."""
        self.expect_running = False
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        self.proc.wait(timeout=REAP_TIMEOUT)

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM (graceful leave) and wait; return the exit status."""
        if self.proc is None:
            raise RuntimeError(f"{self.name} was never started")
        self.expect_running = False
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def exit_problem(self) -> str | None:
        """Why this peer is a problem: it exited although it should be running
        (with its status and log tail); None if not."""
        if not self.expect_running or self.proc is None or self.proc.poll() is None:
            return None
        return (f"peer {self.name} exited unexpectedly with status {self.proc.returncode}; "
                f"its log {self.log_path} ends:\n{tail(self.log_path)}")

    def check_alive(self) -> None:
        """Raise `PeerExited` if the process exited although it should be running."""
        problem = self.exit_problem()
        if problem is not None:
            raise PeerExited(problem)

    def state(self) -> str:
        """"running", "exited STATUS" or "never started" (for reports)."""
        if self.proc is None:
            return "never started"
        return "running" if self.running else f"exited {self.proc.returncode}"

    # ------------------------------------------------------------ API

    def get(self, path: str, timeout: float = API_TIMEOUT) -> Any:
        return self._getter(self.api, path, timeout)

    def members(self) -> dict[str, dict[str, Any]]:
        """name -> member object, as this peer sees the mesh."""
        return {m["name"]: m for m in self.get("/v1/members")}

    def states(self) -> dict[str, str]:
        return {name: m["state"] for name, m in self.members().items()}

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get("/v1/health")
        return result

    def api_ok(self, timeout: float = 1.0) -> bool:
        """Whether its API answers /v1/health now."""
        try:
            self.get("/v1/health", timeout)
        except ApiError:
            return False
        return True

    def self_info(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get("/v1/self")
        return result


# --------------------------------------------------------------------------- clusters


class Cluster:
    """Owns peers under `root` (``root/NAME.log``, ``root/data/NAME``);
    `close()` kills and reaps every one of them. `key_file` is the key every
    peer gets unless `add` names another (or `NO_KEY`)."""

    peer_type: type[PeerProcess] = PeerProcess
    """What `new_peer` builds (a subclass may carry more, e.g. a log reader)."""

    def __init__(self, root: Path, *, key_file: Path | None = None) -> None:
        self.root = root
        self.key_file = key_file
        self.peers: list[PeerProcess] = []
        self._keys = 0

    @property
    def default_key(self) -> Path | None:
        return self.key_file

    def new_key(self, name: str | None = None) -> Path:
        self._keys += 1
        return write_key(self.root / (name or f"cluster-{self._keys}.key"))

    def by_name(self, name: str) -> PeerProcess:
        for p in self.peers:
            if p.name == name:
                return p
        raise KeyError(f"no peer {name!r} in this cluster")

    def new_peer(self, name: str, ip: str, *, key_file: Path | None = None,
                 join: Sequence[str] = (), preset: str | None = None,
                 log_level: str | None = None, extra_args: Sequence[str] = (),
                 starter: Starter = ROOT_START, getter: Getter = direct_get,
                 check_ports: bool = True) -> PeerProcess:
        """A peer of this cluster on `ip` (not started), its data and log
        under `root`; ValueError if the name is taken."""
        if any(p.name == name for p in self.peers):
            raise ValueError(f"duplicate peer name {name}")
        peer = self.peer_type(name, ip, self.root / "data" / name, self.root / f"{name}.log",
                           key_file=resolve_key(key_file, self.default_key), join=join,
                           preset=preset, log_level=log_level, extra_args=extra_args,
                           starter=starter, getter=getter, check_ports=check_ports)
        self.peers.append(peer)
        return peer

    # ------------------------------------------------------------ checks and waits

    def check_processes(self) -> None:
        """Raise `PeerExited` if a peer that should run has exited."""
        for p in self.peers:
            p.check_alive()

    def running_peers(self) -> list[PeerProcess]:
        return [p for p in self.peers if p.expect_running]

    def wait(self, predicate: Callable[[], T], timeout: float = TIMEOUT, *,
             what: str | None = None, describe: Callable[[], str] | None = None,
             interval: float = POLL_INTERVAL) -> T:
        """`wait_until`, failing fast if a peer that should run has exited."""
        return wait_until(predicate, timeout, what=what, check=self.check_processes,
                          interval=interval,
                          describe=describe or (lambda: self.views(self.running_peers())))

    def views(self, peers: Sequence[PeerProcess]) -> str:
        """Each peer's view of the mesh, one line each (for failure messages)."""
        lines = []
        for p in peers:
            try:
                seen = ", ".join(f"{n}={m['state']}/{m['incarnation']}"
                                 for n, m in sorted(p.members().items()))
            except ApiError as exc:
                seen = f"(API error: {exc})"
            lines.append(f"  {p.name} sees: {seen}")
        return "views:\n" + "\n".join(lines)

    def wait_api(self, peers: Sequence[PeerProcess], timeout: float = TIMEOUT) -> None:
        for p in peers:
            self.wait(p.health, timeout, what=f"{p.name}'s API to answer")

    def all_see(self, observers: Sequence[PeerProcess], names: Iterable[str], state: str,
                exact: bool = False) -> bool:
        """Does every observer list every one of `names` in `state`? With
        `exact`, it must list no other member either."""
        names = set(names)
        for o in observers:
            states = o.states()
            if any(states.get(n) != state for n in names):
                return False
            if exact and set(states) != names:
                return False
        return True

    def wait_converged(self, peers: Sequence[PeerProcess] | None = None,
                       timeout: float = TIMEOUT) -> None:
        """Every peer lists exactly `peers` (default: those that should run), all alive."""
        peers = list(peers if peers is not None else self.running_peers())
        names = {p.name for p in peers}
        self.wait(lambda: self.all_see(peers, names, "alive", exact=True), timeout,
                  what=f"{sorted(names)} all alive on every one of them",
                  describe=lambda: self.views(peers))

    def log_tails(self, lines: int = TAIL_LINES) -> str:
        return "\n".join(f"===== {p.name} ({p.ip}, {p.state()}) {p.log_path} =====\n"
                         + tail(p.log_path, lines) for p in self.peers)

    def close(self) -> None:
        """SIGKILL every peer still running, then reap them all (idempotent)."""
        for p in self.peers:
            p.expect_running = False
            if p.proc is not None and p.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.proc.kill()
        for p in self.peers:
            if p.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.proc.wait(timeout=REAP_TIMEOUT)


NO_KEY = Path("/nonexistent/no-key")
"""Pass as ``key_file`` to start a peer without ``--key-file`` (by default
every peer gets its cluster's `Cluster.default_key`)."""


def resolve_key(key_file: Path | None, default: Path | None) -> Path | None:
    """The key a new peer gets: the one named, else the cluster's default;
    `NO_KEY` means none."""
    if key_file is None:
        return default
    return None if key_file == NO_KEY else key_file


def numbered_names(prefix: str, n: int, *, pad: bool = False) -> list[str]:
    """PREFIX-1 .. PREFIX-n; with `pad`, zero-padded to one width
    (peer-01 .. peer-20) so names sort as numbers."""
    width = len(str(n)) if pad else 1
    return [f"{prefix}-{i:0{width}d}" for i in range(1, n + 1)]


class LoopbackCluster(Cluster):
    """Peers on loopback addresses of the root network namespace, from
    `addresses` (released when the cluster closes)."""

    def __init__(self, root: Path, addresses: AddressSource, *,
                 key_file: Path | None = None) -> None:
        super().__init__(root, key_file=key_file)
        self.addresses = addresses

    def add(self, name: str, *, key_file: Path | None = None, join: Sequence[str] = (),
            preset: str | None = "local", ip: str | None = None, log_level: str | None = None,
            extra_args: Sequence[str] = (), start: bool = True,
            starter: Starter = ROOT_START) -> PeerProcess:
        peer = self.new_peer(name, ip or self.addresses.take(), key_file=key_file,
                               join=join, preset=preset, log_level=log_level,
                               extra_args=extra_args, starter=starter)
        return peer.start() if start else peer

    def add_mesh(self, names: Sequence[str], **kwargs: Any) -> list[PeerProcess]:
        """Peers `names` (not started), the first one the seed every other joins."""
        seed = self.add(names[0], start=False, **kwargs)
        return [seed, *(self.add(n, join=[seed.gossip], start=False, **kwargs)
                        for n in names[1:])]

    def start_mesh(self, n: int, *, key_file: Path | None = None, preset: str | None = "local",
                   prefix: str = "peer", converge: bool = True,
                   timeout: float = TIMEOUT) -> list[PeerProcess]:
        """Start n peers: the seed first, then the others at once, all joining
        through the seed; by default wait until they all see each other."""
        return self.start_peers(self.add_mesh(numbered_names(prefix, n), key_file=key_file,
                                              preset=preset),
                                converge=converge, timeout=timeout)

    def start_peers(self, peers: Sequence[PeerProcess], *, converge: bool = True,
                    timeout: float = TIMEOUT) -> list[PeerProcess]:
        """Start `peers[0]` (the seed) and wait for its API, then the others at
        once; with `converge`, wait until they all see each other alive."""
        seed, *others = peers
        seed.start()
        self.wait_api([seed])
        for p in others:
            p.start()
        if converge:
            self.wait_converged(peers, timeout)
        return list(peers)

    def close(self) -> None:
        try:
            super().close()
        finally:
            for p in self.peers:
                self.addresses.release(p.ip)
