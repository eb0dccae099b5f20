"""`nanomesh lab`: a small mesh of real peer processes on this machine.

Each peer binds its own loopback address (127.0.0.2, 127.0.0.3, ...) with the
default ports, exactly as separate devices would on a LAN. The lab directory
(``--dir``, else `nanomesh.config.default_lab_dir`) holds the cluster key, one
data directory and one log file per peer, and ``lab.json`` with what the
other commands need (every peer's name, address, pid and log; the preset).

A running lab changes live, as devices come and go: `add` starts more peers
(joined through the running ones), `stop` ends one (a graceful leave, or a
SIGKILL as a crash), `start` brings a stopped one back on its own data
directory and address, `restart` does both, `remove` stops one and drops it
from the lab (its data directory stays). lab.json follows every change, so
`status` and `down` see the peers as they are. The commands themselves are
in `nanomesh.cli.local`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from nanomesh.cli import labfaults
from nanomesh.config import DEFAULT_API_PORT, DEFAULT_GOSSIP_PORT
from nanomesh.errors import NanomeshError

# Re-exported: the lab commands and the demo use them as lab.load_state, ...
from nanomesh.labstate import STATE_FILE as STATE_FILE
from nanomesh.labstate import LabError as LabError
from nanomesh.labstate import LabPeer as LabPeer
from nanomesh.labstate import alive as alive
from nanomesh.labstate import load_state as load_state
from nanomesh.testing.cluster import AddressBusy, PeerProcess, popen_starter, starts_in_log
from nanomesh.transport.apiclient import ApiError, get_json
from nanomesh.wire import generate_key

FOUNDER = "peer-1"
"""The lab peer that bootstraps the mesh (and so holds the management token)."""
CONVERGE_TIMEOUT = 30.0
"""Seconds `lab up` waits for every peer to see every other peer alive."""
STOP_TIMEOUT = 15.0
"""Seconds `lab down` waits after SIGTERM before SIGKILL: a peer hands over its
Raft membership (<= 3 s), stops its instances (<= 5 s each, in parallel) and
leaves the mesh (0.5 s)."""


def peer_ip(index: int) -> str:
    """Loopback address of lab peer `index` (0-based): 127.0.0.2 upwards."""
    n = index + 2
    return f"127.0.{n // 256}.{n % 256}"


def peer_index(name: str) -> int:
    """The 0-based index of lab peer ``peer-K`` (its address follows from it)."""
    prefix, _, number = name.rpartition("-")
    if prefix != "peer" or not number.isdigit() or int(number) < 1:
        raise LabError(f"{name!r} is not a lab peer name (peer-1, peer-2, ...)")
    return int(number) - 1


def load_preset(lab_dir: Path) -> str:
    """The gossip preset the lab was started with ("local" for older labs)."""
    try:
        return str(json.loads((lab_dir / STATE_FILE).read_text()).get("preset", "local"))
    except (OSError, ValueError, AttributeError):
        return "local"


def save_state(lab_dir: Path, peers: list[LabPeer], preset: str | None = None) -> None:
    preset = preset or load_preset(lab_dir)
    tmp = lab_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps({"preset": preset, "peers": [asdict(p) for p in peers]},
                              indent=2) + "\n")
    tmp.replace(lab_dir / STATE_FILE)


def up(n: int, lab_dir: Path, preset: str = "local",
       say: Callable[[str], None] = print) -> list[LabPeer]:
    """Start `n` peers joined into one mesh; return once they all see each other.
    They share LAB_DIR/cluster.key, generated on the first `up` and kept."""
    if not 1 <= n <= 250:
        raise LabError("a lab has 1 to 250 peers")
    already = running(lab_dir)
    if already:
        raise LabError(f"a lab of {len(already)} peers is already running in {lab_dir}; "
                       "run `nanomesh lab down` first")
    lab_dir.mkdir(parents=True, exist_ok=True)
    key_file = lab_dir / "cluster.key"
    if not key_file.exists():
        key_file.write_text(generate_key() + "\n")
        key_file.chmod(0o600)
    peers: list[LabPeer] = []
    procs: dict[str, subprocess.Popen[bytes]] = {}
    seed = f"{peer_ip(0)}:{DEFAULT_GOSSIP_PORT}"
    try:
        for i in range(n):
            peer, procs[peer_name(i)] = _spawn(i, lab_dir, [seed] if i else [], preset,
                                                  key_file)
            peers.append(peer)
            save_state(lab_dir, peers, preset)
            if i == 0:  # the seed first, so the others join at their first attempt
                wait_converged(peers, 1, procs)
        say(f"started {n} peers in {lab_dir}; waiting for them to converge...")
        wait_converged(peers, n, procs)
        wait_bootstrapped(peers[0], lab_dir / FOUNDER, procs)
    except BaseException:
        # Leave nothing half-started behind: a failed `up` must not block the next.
        for proc in procs.values():
            proc.kill()
            proc.wait()
        (lab_dir / STATE_FILE).unlink(missing_ok=True)
        raise
    return peers


def _spawn(i: int, lab_dir: Path, seeds: list[str], preset: str, key_file: Path,
           config: str | None = None) -> tuple[LabPeer, subprocess.Popen[bytes]]:
    peer, proc = spawn_peer(peer_name(i), peer_ip(i), lab_dir, seeds, preset, key_file,
                            config=Path(config) if config else None)
    return replace(peer, config=config), proc


def spawn_peer(name: str, ip: str, lab_dir: Path, seeds: list[str], preset: str,
               key_file: Path, *, config: Path | None = None,
               env: dict[str, str] | None = None) -> tuple[LabPeer, subprocess.Popen[bytes]]:
    """Start one peer process named ``name`` on ``ip`` (data in LAB_DIR/NAME,
    log in LAB_DIR/NAME.log), joining through ``seeds``; with a peer
    ``config`` file (its ``[[devices]]``, labels) and extra ``env`` (the
    process's and its instances'). The process is the shared harness's
    (`nanomesh.testing.cluster.PeerProcess`) in a session of its own, so it
    outlives this command; lab.json records its pid. LabError if its ports
    are taken on ``ip``. Returns at once: see `wait_converged`."""
    peer = PeerProcess(name, ip, lab_dir / name, lab_dir / f"{name}.log", key_file=key_file,
                       join=seeds, preset=preset,
                       extra_args=["--config", str(config)] if config is not None else (),
                       starter=popen_starter(env=env))
    # A restarted lab peer appends to its log: number this start after the
    # earlier ones, so the log shows where each run begins.
    peer.starts = starts_in_log(peer.log_path)
    try:
        peer.start()
    except AddressBusy as exc:
        raise LabError(str(exc)) from None
    assert peer.proc is not None
    return (LabPeer(name, peer.proc.pid, ip, DEFAULT_GOSSIP_PORT, DEFAULT_API_PORT,
                    str(peer.log_path)), peer.proc)


def wait_converged(peers: list[LabPeer], n: int,
                   procs: dict[str, subprocess.Popen[bytes]]) -> None:
    """Until each of ``peers`` sees ``n`` members alive; LabError (with the log's
    tail) if one of ``procs`` exits, or after `CONVERGE_TIMEOUT`."""
    deadline = time.monotonic() + CONVERGE_TIMEOUT
    pending = list(peers)
    while pending:
        for p in list(pending):
            proc = procs.get(p.name)
            if proc is not None and proc.poll() is not None:
                raise LabError(f"{p.name} exited during start-up; its log {p.log} ends:\n"
                               + _tail(Path(p.log)))
            try:
                members = get_json(p.api, "/v1/members", timeout=1.0)
            except ApiError:
                continue
            if sum(1 for m in members if m["state"] == "alive") == n:
                pending.remove(p)
        if pending and time.monotonic() > deadline:
            names = ", ".join(p.name for p in pending)
            logs = Path(peers[0].log).parent
            raise LabError(f"peers {names} did not see all {n} peers alive within "
                           f"{CONVERGE_TIMEOUT:.0f}s; see their logs in {logs}")
        time.sleep(0.1)


def wait_bootstrapped(founder: LabPeer, data_dir: Path,
                      procs: dict[str, subprocess.Popen[bytes]]) -> None:
    """Until the founder's Raft leader is elected and its management token is
    committed (in its ``data_dir``), so that `nanomesh deploy` works."""
    deadline = time.monotonic() + CONVERGE_TIMEOUT
    token = data_dir / "management.token"
    while time.monotonic() < deadline:
        if procs[founder.name].poll() is not None:
            raise LabError(f"{founder.name} exited; its log {founder.log} ends:\n"
                           + _tail(Path(founder.log)))
        try:
            ready = get_json(founder.api, "/v1/status", timeout=1.0).get("leader") is not None
        except ApiError:
            ready = False
        if ready and token.exists():
            return
        time.sleep(0.1)
    raise LabError(f"no Raft leader within {CONVERGE_TIMEOUT:.0f}s; see {founder.log}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def status(lab_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for p in load_state(lab_dir):
        row: dict[str, Any] = {"name": p.name, "pid": p.pid, "api": p.api,
                               "process": "running" if alive(p.pid) else "exited"}
        try:
            health = get_json(p.api, "/v1/health", timeout=1.0)
            row["members"] = health["members"]
        except ApiError as exc:
            row["members"] = None
            row["error"] = exc.operator_message()
        rows.append(row)
    return rows


def down(lab_dir: Path, say: Callable[[str], None] = print) -> int:
    """SIGTERM every peer (graceful leave), SIGKILL stragglers; return how many ran."""
    peers = running(lab_dir)
    _stop_all(peers, signal.SIGTERM, say)
    (lab_dir / STATE_FILE).unlink(missing_ok=True)
    with contextlib.suppress(NanomeshError):  # without root there are no faults to clear
        labfaults.clear(lab_dir)
    return len(peers)


def running(lab_dir: Path) -> list[LabPeer]:
    """The lab's peers whose process runs."""
    return [p for p in load_state(lab_dir) if alive(p.pid)]


def _stop_all(peers: list[LabPeer], sig: signal.Signals,
              say: Callable[[str], None] = print) -> None:
    """Send `sig` to every peer and wait for them to exit; SIGKILL those
    still running after STOP_TIMEOUT."""
    for p in peers:
        _signal(p.pid, sig)
    deadline = time.monotonic() + STOP_TIMEOUT
    while any(alive(p.pid) for p in peers) and time.monotonic() < deadline:
        time.sleep(0.05)
    for p in peers:
        if alive(p.pid):
            say(f"{p.name} did not stop within {STOP_TIMEOUT:.0f}s; killing it")
            _signal(p.pid, signal.SIGKILL)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


# ------------------------------------------------------------------ live changes


def add(k: int, lab_dir: Path, say: Callable[[str], None] = print, *,
        config: Path | None = None) -> list[LabPeer]:
    """Start `k` more peers (the next names and addresses), joined through
    the running ones, each with the peer `config` file if given (a device's
    ``[[devices]]`` and labels; its ``name`` and addresses are the lab's);
    return them once every running peer sees them all."""
    if config is not None and not config.is_file():
        raise LabError(f"no peer config at {config}")
    config_text = None if config is None else str(config.resolve())
    peers = load_state(lab_dir)
    running = _running_or_fail(peers, lab_dir)
    first = max(peer_index(p.name) for p in peers) + 1
    if k < 1 or first + k > 250:
        raise LabError(f"a lab has at most 250 peers; {len(peers)} are in it")
    procs: dict[str, subprocess.Popen[bytes]] = {}
    added: list[LabPeer] = []
    seeds = _seeds(running)
    for i in range(first, first + k):
        peer, procs[peer_name(i)] = _spawn(i, lab_dir, seeds, load_preset(lab_dir),
                                           lab_dir / "cluster.key", config_text)
        added.append(peer)
        save_state(lab_dir, peers + added)
    say(f"started {', '.join(p.name for p in added)}; waiting for the mesh to see them...")
    wait_converged(running + added, len(running) + k, procs)
    return added


def stop(name: str, lab_dir: Path, *, kill: bool = False) -> LabPeer:
    """Stop one peer: SIGTERM (a graceful leave; SIGKILL after STOP_TIMEOUT)
    or, with `kill`, SIGKILL at once (a crash: the others detect it)."""
    peer = _find(name, lab_dir)
    if not alive(peer.pid):
        raise LabError(f"{name} is not running (`nanomesh lab start {name}`)")
    _stop_all([peer], signal.SIGKILL if kill else signal.SIGTERM)
    return peer


def start(name: str, lab_dir: Path) -> LabPeer:
    """Start a stopped peer again on its own data directory and address,
    joined through the running peers; return once every running peer sees
    it alive."""
    peers = load_state(lab_dir)
    peer = _find(name, lab_dir, peers)
    if alive(peer.pid):
        raise LabError(f"{name} is already running (pid {peer.pid})")
    running = [p for p in peers if alive(p.pid)]
    new, proc = _spawn(peer_index(name), lab_dir, _seeds(running), load_preset(lab_dir),
                       lab_dir / "cluster.key", peer.config)
    save_state(lab_dir, [new if p.name == name else p for p in peers])
    wait_converged([*running, new], len(running) + 1, {name: proc})
    return new


def remove(name: str, lab_dir: Path, *, kill: bool = False) -> LabPeer:
    """Stop a peer (if it runs) and drop it from the lab; its data directory
    and log stay in the lab directory."""
    peer = _find(name, lab_dir)
    if alive(peer.pid):
        stop(name, lab_dir, kill=kill)
    save_state(lab_dir, [p for p in load_state(lab_dir) if p.name != name])
    return peer


def peer_name(index: int) -> str:
    return f"peer-{index + 1}"


def _find(name: str, lab_dir: Path, peers: list[LabPeer] | None = None) -> LabPeer:
    peers = load_state(lab_dir) if peers is None else peers
    for p in peers:
        if p.name == name:
            return p
    known = ", ".join(p.name for p in peers) or "none"
    raise LabError(f"no peer {name!r} in the lab in {lab_dir} (its peers: {known})")


def _running_or_fail(peers: list[LabPeer], lab_dir: Path) -> list[LabPeer]:
    running = [p for p in peers if alive(p.pid)]
    if not running:
        raise LabError(f"no lab peer runs in {lab_dir}; start one with `nanomesh lab up`")
    return running


def _seeds(running: list[LabPeer], most: int = 3) -> list[str]:
    """Seeds for a peer that joins a running lab: a few running peers, the
    founder first if it runs (any one answering is enough)."""
    ordered = sorted(running, key=lambda p: peer_index(p.name))
    return [f"{p.ip}:{p.gossip_port}" for p in ordered[:most]]
