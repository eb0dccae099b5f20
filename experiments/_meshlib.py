"""Shared helpers for the experiments in this folder (not an experiment itself).

- statistics (nearest-rank percentiles) and result writing (CSV + summary JSON
  under ``experiments/results/``);
- parsing the peer daemon's log lines (``%(asctime)s NAME LEVEL logger: msg``,
  local wall time with milliseconds);
- `LoopbackMesh`: N real ``python -m nanomesh peer run`` processes on loopback
  addresses of the root network namespace, each with its own log file, all
  killed on `close()` (SIGKILL, then reaped): the experiments' names for the
  shared harness, `nanomesh.testing.cluster` (the integration tests and
  ``nanomesh lab`` start their peers with it too);
- a guard that waits for a quiet machine before timing anything, and a SIGTERM
  handler that turns termination into an exception so ``finally`` blocks run.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import math
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from nanomesh.gossip.config import PRESETS  # noqa: E402
from nanomesh.testing import cluster  # noqa: E402
from nanomesh.transport.apiclient import ApiError  # noqa: E402

RESULTS_DIR = REPO_ROOT / "experiments" / "results"
PY = sys.executable
GOSSIP_PORT = cluster.GOSSIP_PORT
API_PORT = cluster.API_PORT
RAFT_PORT = cluster.RAFT_PORT
LOOPBACK_PREFIX = "127.0.20."
"""Experiments only ever use 127.0.20.1-250 (other ranges belong to tests)."""


# --------------------------------------------------------------------------- statistics


def experiment_parser(doc: str, peers: int, peers_help: str) -> argparse.ArgumentParser:
    """The options every mesh experiment shares: its docstring as help, the
    mesh size and the gossip preset (`--preset`, default lan)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                epilog=doc.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", "--peers", type=int, default=peers, help=peers_help)
    p.add_argument("--preset", default="lan", choices=list(PRESETS),
                   help="gossip preset of every peer (default lan)")
    return p


def add_run_options(p: argparse.ArgumentParser, *, name: str | None,
                    name_help: str = "result file stem",
                    subnet: str | None = None, first_octet: int = 1) -> None:
    """The run options of the experiments that start real daemons:
    ``--first-octet`` (with ``subnet``, e.g. ``"127.0.60"``), ``--name`` (the
    result file stem) and ``--max-load`` (see `wait_for_quiet`)."""
    if subnet is not None:
        p.add_argument("--first-octet", type=int, default=first_octet,
                       help=f"peers use {subnet}.FIRST .. FIRST+N-1 (default {first_octet})")
    p.add_argument("--name", default=name, help=name_help)
    p.add_argument("--max-load", type=float, default=1.5,
                   help="wait until the 1-min load average is at most this before starting")


def add_subnet_option(p: argparse.ArgumentParser, subnet: str) -> None:
    """``--subnet``: the first three octets of the peers' addresses. Several
    engineers measure on one machine; each keeps to a range of its own."""
    p.add_argument("--subnet", default=subnet,
                   help=f"peers use SUBNET.FIRST .. (default {subnet})")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): the smallest value with at least
    q % of the values at or below it. With 50 values, p99 is the maximum."""
    vals = sorted(v for v in values if v is not None and not math.isnan(v))
    if not vals:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(vals)))
    return vals[min(rank, len(vals)) - 1]


def describe(values: Sequence[float]) -> dict[str, float | int]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return {"n": 0}
    return {
        "n": len(vals),
        "min": round(min(vals), 4),
        "median": round(statistics.median(vals), 4),
        "mean": round(statistics.fmean(vals), 4),
        "p90": round(percentile(vals, 90), 4),
        "p99": round(percentile(vals, 99), 4),
        "max": round(max(vals), 4),
    }


# --------------------------------------------------------------------------- results


def results_paths(name: str) -> tuple[Path, Path]:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    return RESULTS_DIR / f"{name}.csv", RESULTS_DIR / f"{name}.summary.json"


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            w.writerow(["" if v is None or (isinstance(v, float) and math.isnan(v))
                        else (f"{v:.4f}" if isinstance(v, float) else v) for v in r])


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def machine_info() -> dict[str, Any]:
    try:
        import psutil
        mem_gib = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:  # pragma: no cover
        mem_gib = None
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "memory_gib": mem_gib,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        # experiments/report.py prints it beside the numbers: one command
        # reproduces the line
        "command": shlex.join(["python", _repo_relative(sys.argv[0]), *sys.argv[1:]]),
    }


def _repo_relative(path: str) -> str:
    here = Path(path).resolve()
    try:
        return str(here.relative_to(Path(__file__).resolve().parents[1]))
    except ValueError:
        return path


# --------------------------------------------------------------------------- quiet machine


def wait_for_quiet(max_load: float, timeout: float, say: Callable[[str], None] = print) -> float:
    """Wait (up to `timeout` s) until the 1-minute load average is at most
    `max_load`, so colleagues' test runs do not distort timings; return it."""
    deadline = time.monotonic() + timeout
    load = os.getloadavg()[0]
    warned = False
    while load > max_load and time.monotonic() < deadline:
        if not warned:
            say(f"load average {load:.2f} > {max_load}: waiting for a quiet machine "
                f"(up to {timeout:.0f}s; --max-load to change)")
            warned = True
        time.sleep(5)
        load = os.getloadavg()[0]
    if load > max_load:
        say(f"WARNING: load average still {load:.2f}; measuring anyway")
    return load


def install_sigterm_handler() -> None:
    """SIGTERM/SIGHUP raise SystemExit and SIGINT KeyboardInterrupt in the main
    thread (even if SIGINT was inherited as ignored, as in a background job),
    so the scripts' `finally` blocks kill every peer they started."""
    def handler(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)


# --------------------------------------------------------------------------- logs

LOG_RE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) (\S+) ([A-Z]+) ([\w.]+): (.*)$")


@dataclass(frozen=True)
class LogLine:
    ts: float
    """Wall time (seconds since the epoch) from the local-time log stamp (ms, floored)."""
    peer: str
    level: str
    logger: str
    msg: str


def parse_line(line: str) -> LogLine | None:
    m = LOG_RE.match(line)
    if m is None:
        return None
    stamp, ms, peer, level, logger, msg = m.groups()
    ts = time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(ms) / 1000.0
    return LogLine(ts, peer, level, logger, msg)


class LogTail:
    """Reads the complete lines appended to a log file since the last read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self._partial = b""

    def skip_to_end(self) -> None:
        self.read()

    def read(self) -> list[LogLine]:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        out = []
        for raw in lines:
            parsed = parse_line(raw.decode("utf-8", "replace"))
            if parsed is not None:
                out.append(parsed)
        return out


def read_log(path: Path) -> list[LogLine]:
    return LogTail(path).read()


FAILED_RE = re.compile(r"^member (\S+) failed \(declared dead by (\S+)\)")
SUSPECTED_RE = re.compile(r"^member (\S+) suspected \(by (\S+)\)")
RECOVERED_RE = re.compile(r"^member (\S+) refuted its suspicion: alive")
REFUTED_RE = re.compile(r"^we were suspected or declared dead by (\S+); refuted with "
                        r"incarnation (\d+)")
JOINED_RE = re.compile(r"^member (\S+) (joined|rejoined) at ")


# --------------------------------------------------------------------------- loopback mesh


def keygen(path: Path) -> Path:
    """A cluster key made by the CLI itself: ``python -m nanomesh keygen``."""
    key = subprocess.run([PY, "-m", "nanomesh", "keygen"], check=True, capture_output=True,
                         text=True, cwd=REPO_ROOT).stdout.strip()
    path.write_text(key + "\n")
    path.chmod(0o600)
    return path


def parallel(fn: Callable[[Any], Any], items: Iterable[Any], workers: int = 20) -> list[Any]:
    items = list(items)
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(pool.map(fn, items))


class Peer(cluster.PeerProcess):
    """A harness peer (`nanomesh.testing.cluster.PeerProcess`) with `tail`, a
    `LogTail` of its log: the experiments read its new lines as they come."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tail = LogTail(self.log_path)


class _PeersWithTails(cluster.LoopbackCluster):
    peer_type = Peer


class LoopbackMesh:
    """N peer daemons on 127.0.20.{first}..{first+n-1} (another loopback /24
    if `subnet` says so); peer 1 is the seed. A thin adapter over the shared
    `nanomesh.testing.cluster.LoopbackCluster` (its peers are in `cluster`)
    keeping the experiments' vocabulary: waits return the seconds they took,
    a timeout is a TimeoutError. With `pad_names` the names are zero-padded
    to one width (peer-01 .. peer-20)."""

    def __init__(self, n: int, root: Path, *, preset: str, key_file: Path | None,
                 first_octet: int = 1, log_level: str = "INFO", prefix: str = "peer",
                 subnet: str = LOOPBACK_PREFIX, pad_names: bool = True) -> None:
        self.root = root
        self.preset = preset
        self.cluster = _PeersWithTails(root, cluster.AddressRange(subnet, first_octet, n),
                                       key_file=key_file)
        self.cluster.add_mesh(cluster.numbered_names(prefix, n, pad=pad_names), preset=preset,
                              log_level=log_level,
                              starter=cluster.popen_starter(cwd=REPO_ROOT))
        self.peers: list[Peer] = [p for p in self.cluster.peers if isinstance(p, Peer)]

    def by_name(self, name: str) -> Peer:
        return next(p for p in self.peers if p.name == name)

    def start(self, peer: Peer) -> None:
        """Start (or restart) one peer; AddressBusy if its ports are taken."""
        peer.start()

    def kill(self, peer: Peer) -> float:
        """SIGKILL (a crash, no leave message); returns the wall time of the kill."""
        t = time.time()
        peer.kill()
        return t

    def launch(self) -> None:
        """Start the seed and wait for its API, then start all others at once;
        return without waiting for them to converge."""
        self.cluster.start_peers(self.peers, converge=False)

    def start_all(self, timeout: float = 60.0) -> float:
        """Seed first, then all others at once; wait until all see all alive.
        Returns the seconds it took."""
        t0 = time.monotonic()
        self.launch()
        self.wait_converged(timeout)
        return time.monotonic() - t0

    def views_converged(self, names: set[str] | None = None) -> bool:
        """Every running peer lists exactly the peers in `names`, all alive."""
        names = names or {p.name for p in self.peers}
        running = [p for p in self.peers if p.running]

        def ok(p: Peer) -> bool:
            try:
                members = p.get("/v1/members", timeout=2.0)
            except ApiError:
                return False
            return {m["name"] for m in members if m["state"] == "alive"} == names and \
                len(members) == len(names)
        return all(parallel(ok, running))

    def wait_converged(self, timeout: float = 60.0, names: set[str] | None = None) -> float:
        return self.wait(lambda: self.views_converged(names), timeout,
                         "every peer to see every peer alive", interval=0.25)

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str,
             interval: float = 0.1) -> float:
        """Until `predicate()`; returns the seconds it took. A peer that exited
        without being killed fails at once (`PeerExited`, with its log tail);
        a timeout raises `WaitTimeout`, a TimeoutError."""
        t0 = time.monotonic()
        self.cluster.wait(predicate, timeout, what=what, interval=interval,
                          describe=lambda: "")
        return time.monotonic() - t0

    def close(self) -> None:
        """SIGKILL every peer process we started and reap it (idempotent)."""
        self.cluster.close()


# --------------------------------------------------------------------------- traffic counters

TRAFFIC_CLASSES = ("gossip_udp", "gossip_tcp", "raft", "other")
"""What a peer sends, by class (`NftTraffic`): gossip datagrams (UDP 7946),
gossip streams (TCP 7946: push-pull, profile pulls), Raft links (TCP 7948),
and everything else the peer sends to other peers (the peer API 7947 between
peers, CoAP, ZeroMQ)."""


class NftTraffic:
    """Bytes each peer address sends, counted by the kernel: an nftables table
    on the output hook with one chain per peer (``ip saddr`` verdict map) and
    one counter per traffic class. Counts whole packets (IP and UDP/TCP
    headers included), on loopback as on a wire. What a peer sends to
    127.0.0.1, i.e. its answers to this benchmark's own API polls, is counted
    apart (class ``bench``) and left out of the peer's traffic. Needs root and
    nft; `available` says whether it can run."""

    def __init__(self, ips: Sequence[str]) -> None:
        self.table = f"nmbench{os.getpid()}"
        self.ips = list(ips)

    @staticmethod
    def available() -> bool:
        return os.geteuid() == 0 and subprocess.run(
            ["nft", "list", "tables"], capture_output=True).returncode == 0

    def classes(self, ip: str) -> list[tuple[str, str]]:
        """(nft match, class) of peer `ip`'s packets, first match wins; the
        last match should be empty (everything else)."""
        return [("ip daddr 127.0.0.1", "bench"),
                ("udp sport 7946", "gossip_udp"),
                ("tcp sport 7946", "gossip_tcp"),
                ("tcp dport 7946", "gossip_tcp"),
                (f"tcp sport {RAFT_PORT}", "raft"),
                (f"tcp dport {RAFT_PORT}", "raft"),
                ("", "other")]

    def __enter__(self) -> NftTraffic:
        rules = [f"add table inet {self.table}",
                 f"add chain inet {self.table} out "
                 "{ type filter hook output priority 0; policy accept; }"]
        for i, ip in enumerate(self.ips):
            chain = f"p{i}"
            rules.append(f"add chain inet {self.table} {chain}")
            for match, label in self.classes(ip):
                rules.append(f"add rule inet {self.table} {chain} {match} counter accept "
                             f'comment "{label}"')
        vmap = ", ".join(f"{ip} : jump p{i}" for i, ip in enumerate(self.ips))
        rules.append(f"add rule inet {self.table} out ip saddr vmap {{ {vmap} }}")
        subprocess.run(["nft", "-f", "-"], input="\n".join(rules) + "\n", text=True,
                       check=True, capture_output=True)
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["nft", "delete", "table", "inet", self.table], capture_output=True)

    def read(self) -> dict[str, dict[str, int]]:
        """{ip: {class: bytes so far}} for every peer address."""
        return {ip: {label: nbytes for label, (nbytes, _) in by_class.items()}
                for ip, by_class in self.counters().items()}

    def counters(self) -> dict[str, dict[str, tuple[int, int]]]:
        """{ip: {class: (bytes, packets) so far}} for every peer address."""
        out = subprocess.run(["nft", "-j", "list", "table", "inet", self.table],
                             check=True, capture_output=True, text=True).stdout
        counts = {ip: {label: (0, 0) for _, label in self.classes(ip)} for ip in self.ips}
        for item in json.loads(out)["nftables"]:
            rule = item.get("rule")
            if not rule or not rule["chain"].startswith("p"):
                continue
            ip = self.ips[int(rule["chain"][1:])]
            ctr = next(e["counter"] for e in rule["expr"] if "counter" in e)
            nbytes, packets = counts[ip][rule["comment"]]
            counts[ip][rule["comment"]] = (nbytes + ctr["bytes"], packets + ctr["packets"])
        return counts


def smaps_rollup(pid: int) -> dict[str, int]:
    """Rss and Pss of a process in bytes, from /proc/PID/smaps_rollup."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss"):
                out[key.lower()] = int(rest.split()[0]) * 1024
    return out
