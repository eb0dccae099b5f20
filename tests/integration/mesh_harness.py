"""A small harness for integration tests that run real peer daemons.

Every peer is a real ``python -m nanomesh peer run`` subprocess with its
stderr in a per-peer log file. Peers run either on loopback addresses of the
root namespace (`Cluster`, addresses 127.0.10.1-249) or inside the hosts of a
`nanomesh.testing.netns.NetnsLab` (`NetnsCluster`), where the root namespace
cannot reach them, so their HTTP API is queried through a small long-lived
agent process inside each host namespace.

Waits are bounded (`wait_until` polls every 0.05 s); timeouts are generous,
because these tests check behaviour, never speed. Every process a cluster
started is killed when the cluster closes, whatever happened.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from nanomesh.testing.peerproc import peer_argv, ports_free
from nanomesh.transport.apiclient import ApiError, get_json
from nanomesh.wire import generate_key

PY = sys.executable
GOSSIP_PORT = 7946
API_PORT = 7947
POLL_INTERVAL = 0.05
TIMEOUT = 30.0
"""Default bound of a wait, in seconds: generous, never a performance claim."""
UNREACHABLE_IP = "127.0.10.250"
NO_KEY = Path("/nonexistent/no-key")
"""Pass as ``key_file`` to start a peer without ``--key-file`` (by default
every peer gets the cluster's `BaseCluster.default_key`)."""
"""A loopback address the harness never hands out: nothing listens there."""
MEMBER_KEYS = {"name", "address", "state", "incarnation", "profile_version", "profile"}

T = TypeVar("T")


# --------------------------------------------------------------------------- waiting


def wait_until(predicate: Callable[[], T], timeout: float = TIMEOUT, *,
               interval: float = POLL_INTERVAL, what: str | None = None,
               describe: Callable[[], str] | None = None,
               check: Callable[[], None] | None = None) -> T:
    """Poll `predicate` every `interval` s until it returns something truthy
    (returned) or `timeout` s pass (AssertionError naming `what`, with the
    last value, the last API error and `describe()`).

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
            last = predicate()
        except ApiError as exc:
            last_error = exc
        else:
            if last:
                return last
        if time.monotonic() >= deadline:
            name = what or getattr(predicate, "__name__", repr(predicate))
            extra = ""
            if describe is not None:
                try:
                    extra = "\n" + describe()
                except ApiError as exc:
                    extra = f"\n(describe failed: {exc})"
            raise AssertionError(f"timed out after {timeout:g}s waiting for {name}; "
                                 f"last value {last!r}; last API error {last_error}{extra}")
        time.sleep(interval)


def processes_mentioning(path: Path, timeout: float = 10.0) -> list[str]:
    """Pids whose command line names ``path``, after waiting up to ``timeout``
    seconds for them to go (a demo's peers after it exits)."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p.name for p in Path("/proc").iterdir() if p.name.isdigit()
                and str(path).encode() in _cmdline(p)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


_SESSION_KEY: Path | None = None


def session_key_file() -> Path:
    """The test session's default cluster key (created on first use)."""
    global _SESSION_KEY
    if _SESSION_KEY is None:
        _SESSION_KEY = write_key(Path(tempfile.mkdtemp(prefix="nanomesh-key-")) / "cluster.key")
    return _SESSION_KEY


def write_key(path: Path) -> Path:
    path.write_text(generate_key() + "\n")
    path.chmod(0o600)
    return path


# --------------------------------------------------------------------------- addresses


class AddressPool:
    """Hands out loopback addresses 127.0.10.1-249, skipping any address where
    the gossip, API or Raft port is already taken (another run, a stray
    process).

    Concurrent test runs (several pytest processes on one machine) each have
    their own pool, so a free-port probe alone races: two runs could probe
    the same free address and both start peers there, and a peer that a test
    killed leaves its address free until the test restarts it. So every
    address handed out is also reserved across processes, by an exclusive
    `flock` on ``ADDRESS_LOCK_DIR/<ip>``, until `release` (a `Cluster` releases
    its addresses when it closes) or the process exits (the kernel drops
    the lock, even after SIGKILL)."""

    def __init__(self, first: int = 1, last: int = 249) -> None:
        self._next = first
        self._last = last
        self._lock = threading.Lock()
        self._reserved: dict[str, int] = {}

    def take(self) -> str:
        with self._lock:
            while self._next <= self._last:
                ip = f"127.0.10.{self._next}"
                self._next += 1
                if self._reserve(ip):
                    if ports_free(ip):
                        return ip
                    self._unreserve(ip)
        raise RuntimeError("no free address left in 127.0.10.1-249")

    def release(self, ip: str) -> None:
        """Let other processes use `ip` again (this pool never hands it out twice)."""
        with self._lock:
            self._unreserve(ip)

    def _reserve(self, ip: str) -> bool:
        try:
            ADDRESS_LOCK_DIR.mkdir(mode=0o777, exist_ok=True)
            fd = os.open(ADDRESS_LOCK_DIR / ip, os.O_RDWR | os.O_CREAT, 0o666)
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


ADDRESS_LOCK_DIR = Path(tempfile.gettempdir()) / "nanomesh-test-addresses"
"""Where `AddressPool` keeps one lock file per reserved address."""
RAFT_PORT = 7948


# --------------------------------------------------------------------------- peers


Starter = Callable[[list[str], Any], "subprocess.Popen[bytes]"]
Getter = Callable[[str, str], Any]


def _root_get(api: str, path: str) -> Any:
    return get_json(api, path, timeout=3.0)


def _root_start(argv: list[str], log: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                            start_new_session=True)


class Peer:
    """One peer daemon process (it may be stopped and started again)."""

    def __init__(self, name: str, ip: str, data_dir: Path, log_path: Path, *,
                 key_file: Path | None, join: Sequence[str], preset: str,
                 starter: Starter = _root_start, getter: Getter = _root_get,
                 extra_args: Sequence[str] = ()) -> None:
        self.name = name
        self.ip = ip
        self.data_dir = data_dir
        self.log_path = log_path
        self.key_file = key_file
        self.join = list(join)
        self.preset = preset
        self.extra_args = list(extra_args)
        self._starter = starter
        self._getter = getter
        self.proc: subprocess.Popen[bytes] | None = None
        self.expect_running = False
        self.starts = 0

    def __repr__(self) -> str:
        return f"<Peer {self.name} {self.ip} pid={self.pid}>"

    @property
    def api(self) -> str:
        return f"{self.ip}:{API_PORT}"

    @property
    def gossip(self) -> str:
        return f"{self.ip}:{GOSSIP_PORT}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def argv(self) -> list[str]:
        return peer_argv(name=self.name, bind=self.gossip, data_dir=self.data_dir,
                         preset=self.preset, join=self.join, key_file=self.key_file,
                         extra=self.extra_args, python=PY)

    # ------------------------------------------------------------ process

    def start(self) -> Peer:
        assert not self.running, f"{self.name} is already running"
        self.starts += 1
        with self.log_path.open("ab") as log:
            if self.starts > 1:
                log.write(f"---- harness: start #{self.starts} of {self.name} ----\n".encode())
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
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM (graceful leave) and wait; return the exit status."""
        assert self.proc is not None
        self.expect_running = False
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def check_alive(self) -> None:
        """Raise if the process exited although it should be running."""
        if self.expect_running and self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"peer {self.name} exited unexpectedly with status "
                                 f"{self.proc.returncode}; its log ends:\n{tail(self.log_path)}")

    # ------------------------------------------------------------ API

    def get(self, path: str) -> Any:
        return self._getter(self.api, path)

    def members(self) -> dict[str, dict[str, Any]]:
        """name -> member object, as this peer sees the mesh."""
        return {m["name"]: m for m in self.get("/v1/members")}

    def states(self) -> dict[str, str]:
        return {name: m["state"] for name, m in self.members().items()}

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get("/v1/health")
        return result

    def self_info(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get("/v1/self")
        return result


# --------------------------------------------------------------------------- clusters


class BaseCluster:
    """Owns peers; `close()` kills all of them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.peers: list[Peer] = []
        self._keys = 0

    def new_key(self, name: str | None = None) -> Path:
        self._keys += 1
        return write_key(self.root / (name or f"cluster-{self._keys}.key"))

    @property
    def default_key(self) -> Path:
        """The key every peer gets unless a test names another (or `NO_KEY`):
        a peer never runs without one. One key for the whole test session
        (`session_key_file`), so clients started by tests (`nanomesh call`,
        `nanomesh.sdk.client`) find it through ``$NANOMESH_KEY_FILE``."""
        return session_key_file()

    def _make_peer(self, name: str, ip: str, *, key_file: Path | None, join: Sequence[str],
                   preset: str, extra_args: Sequence[str] = (), starter: Starter = _root_start,
                   getter: Getter = _root_get) -> Peer:
        if any(p.name == name for p in self.peers):
            raise ValueError(f"duplicate peer name {name}")
        if key_file is None:
            key_file = self.default_key
        elif key_file == NO_KEY:
            key_file = None
        peer = Peer(name, ip, self.root / "data" / name, self.root / f"{name}.log",
                    key_file=key_file, join=join, preset=preset, extra_args=extra_args,
                    starter=starter, getter=getter)
        self.peers.append(peer)
        return peer

    # ------------------------------------------------------------ checks and waits

    def check_processes(self) -> None:
        for p in self.peers:
            p.check_alive()

    def wait(self, predicate: Callable[[], T], timeout: float = TIMEOUT, *,
             what: str | None = None, describe: Callable[[], str] | None = None) -> T:
        """`wait_until`, failing fast if a peer that should run has exited."""
        return wait_until(predicate, timeout, what=what, check=self.check_processes,
                          describe=describe or (lambda: self.views(self.running_peers())))

    def running_peers(self) -> list[Peer]:
        return [p for p in self.peers if p.expect_running]

    def views(self, peers: Sequence[Peer]) -> str:
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

    def wait_api(self, peers: Sequence[Peer], timeout: float = TIMEOUT) -> None:
        for p in peers:
            self.wait(p.health, timeout, what=f"{p.name}'s API to answer")

    def all_see(self, observers: Sequence[Peer], names: Iterable[str], state: str,
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

    def wait_converged(self, peers: Sequence[Peer] | None = None, timeout: float = TIMEOUT
                       ) -> None:
        """Every peer lists exactly `peers`, all alive."""
        peers = list(peers if peers is not None else self.running_peers())
        names = {p.name for p in peers}
        self.wait(lambda: self.all_see(peers, names, "alive", exact=True), timeout,
                  what=f"{sorted(names)} all alive on every one of them",
                  describe=lambda: self.views(peers))

    def log_tails(self, lines: int = 40) -> str:
        parts = []
        for p in self.peers:
            state = "running" if p.running else (
                f"exited {p.proc.returncode}" if p.proc is not None else "never started")
            parts.append(f"===== {p.name} ({p.ip}, {state}) {p.log_path} =====\n"
                         + tail(p.log_path, lines))
        return "\n".join(parts)

    def close(self) -> None:
        for p in self.peers:
            p.expect_running = False
            if p.proc is not None and p.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.proc.kill()
        for p in self.peers:
            if p.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.proc.wait(timeout=10)


class Cluster(BaseCluster):
    """Peers on loopback addresses of the root network namespace."""

    def __init__(self, root: Path, pool: AddressPool) -> None:
        super().__init__(root)
        self.pool = pool

    def add(self, name: str, *, key_file: Path | None = None, join: Sequence[str] = (),
            preset: str = "local", ip: str | None = None, extra_args: Sequence[str] = (),
            start: bool = True, starter: Starter = _root_start) -> Peer:
        peer = self._make_peer(name, ip or self.pool.take(), key_file=key_file, join=join,
                               preset=preset, extra_args=extra_args, starter=starter)
        return peer.start() if start else peer

    def close(self) -> None:
        try:
            super().close()
        finally:
            for p in self.peers:
                self.pool.release(p.ip)

    def start_mesh(self, n: int, *, key_file: Path | None = None, preset: str = "local",
                   prefix: str = "peer", converge: bool = True) -> list[Peer]:
        """Start n peers: the seed first, then the others at once, all joining
        through the seed; by default wait until they all see each other."""
        seed = self.add(f"{prefix}-1", key_file=key_file, preset=preset)
        self.wait_api([seed])
        others = [self.add(f"{prefix}-{i}", key_file=key_file, preset=preset,
                           join=[seed.gossip], start=False) for i in range(2, n + 1)]
        for p in others:
            p.start()
        peers = [seed, *others]
        if converge:
            self.wait_converged(peers)
        return peers


# --------------------------------------------------------------------------- netns


AGENT = r"""
import json, sys
from nanomesh.transport.apiclient import ApiError, get_json
print("ready", flush=True)
for line in sys.stdin:
    api, path = line.split()
    try:
        out = {"ok": get_json(api, path, timeout=2.0)}
    except ApiError as exc:
        out = {"error": str(exc)}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
"""
AGENT_REPLY_TIMEOUT = 10.0


class NsAgent:
    """A python process inside one lab host that performs API GETs for us (the
    root namespace has no route into the lab). One request at a time."""

    def __init__(self, lab: Any, i: int) -> None:
        self.proc: subprocess.Popen[bytes] = lab.popen(
            i, [PY, "-c", AGENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, bufsize=0)
        self._buf = b""
        self._lock = threading.Lock()
        if self._readline() != b"ready":
            raise RuntimeError(f"API agent in lab host {i} did not start")

    def _readline(self) -> bytes:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + AGENT_REPLY_TIMEOUT
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ApiError("API agent did not answer in time")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise ApiError("API agent exited")
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def get(self, api: str, path: str) -> Any:
        assert self.proc.stdin is not None
        with self._lock:
            try:
                self.proc.stdin.write(f"{api} {path}\n".encode())
            except (BrokenPipeError, OSError) as exc:
                raise ApiError(f"API agent gone: {exc}") from None
            reply = json.loads(self._readline())
        if "error" in reply:
            raise ApiError(reply["error"])
        return reply["ok"]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)


class NetnsCluster(BaseCluster):
    """One peer per host of a NetnsLab, on the host's eth0 address."""

    def __init__(self, root: Path, lab: Any) -> None:
        super().__init__(root)
        self.lab = lab
        self.agents = [NsAgent(lab, i) for i in range(lab.n)]

    def add_host(self, i: int, *, key_file: Path | None, join: Sequence[str] = (),
                 preset: str = "lan", start: bool = True) -> Peer:
        lab = self.lab

        def starter(argv: list[str], log: Any) -> subprocess.Popen[bytes]:
            proc: subprocess.Popen[bytes] = lab.popen(
                i, argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            return proc

        peer = self._make_peer(f"host-{i}", lab.address(i), key_file=key_file, join=join,
                               preset=preset, starter=starter, getter=self.agents[i].get)
        return peer.start() if start else peer

    def start_mesh(self, *, key_file: Path | None, preset: str = "lan") -> list[Peer]:
        seed = self.add_host(0, key_file=key_file, preset=preset)
        self.wait_api([seed])
        others = [self.add_host(i, key_file=key_file, preset=preset, join=[seed.gossip])
                  for i in range(1, self.lab.n)]
        peers = [seed, *others]
        self.wait_converged(peers, timeout=30)
        return peers

    def close(self) -> None:
        try:
            super().close()
        finally:
            for a in self.agents:
                a.close()
