"""`nanomesh demo failover`: watch the mesh survive the loss of its leader.

The demo starts a local mesh with `nanomesh.cli.lab` (in its own directory, so a
lab of yours is never touched), deploys three small services from manifests
it writes itself, SIGKILLs the peer that leads Raft and narrates what the
survivors do about it, each step with the seconds since the kill:

- the Raft election of a new leader (fast: a few hundred milliseconds),
- gossip declaring the dead peer dead at every survivor (SWIM + Lifeguard),
- the new leader's plan moving the dead peer's instances, and those
  instances running on their new peers,
- the mesh healthy again: one leader everybody agrees on, a voter majority
  alive, every instance running.

It then checks that the mesh takes writes again (deploys and removes a tiny
service through a surviving follower) and stops every peer, also on Ctrl-C or
SIGTERM. Timings are what the demo *observed*, polling each survivor's API
every `POLL_PERIOD`, so they are accurate to about that much.

**Making sure the leader hosts something.** Placement decides where
instances go, so left alone the leader may host nothing, and the demo would
have nothing to reschedule. The ``sensor`` service is therefore deployed
*pinned* to the leader (``placement.peer``), and once its instance runs there
the pin is lifted: a running instance never moves for a better score, so it
stays, and changing only ``placement`` never restarts it — but unpinned it is
free to move when its peer dies. (Pinning it for good would make it
unplaceable once the leader is dead; a service with one replica per peer and
a hard spread would lose a replica for want of a free peer.)

**Its directory** (`default_dir`, or ``--dir``) holds the lab state, the
peers' data and logs and the manifests. Every run starts from an empty one
(an earlier run's is replaced, so Raft never resumes an old cluster), and it
is removed at the end, unless ``--keep``, or unless a step failed: then it
stays for its logs, which the error message points to. A non-empty directory
without the demo's `MARKER` file is never replaced.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from nanomesh.cli import lab
from nanomesh.config import DEFAULT_API_PORT, DEFAULT_GOSSIP_PORT
from nanomesh.errors import NanomeshError
from nanomesh.security.auth import TOKEN_FILE, read_token_file
from nanomesh.transport.apiclient import ApiError, get_json, request_json

# The consensus package (trio, pysyncobj) and the manifest loader (placement,
# runtime) are imported inside the two functions that use them: every
# `nanomesh` command imports this module, and they would add a quarter of a
# second to each.

T = TypeVar("T")

DEFAULT_PEERS = 5
MIN_PEERS = 3
"""The leader is a voter, and electing its successor needs a majority of the
voters alive: 2 of 3 survive the kill, while 1 of 2 is no majority."""
STEP_TIMEOUT = 30.0
"""Seconds each step may take (start-up, voters, deploy, failover, write)."""
POLL_PERIOD = 0.05
"""Seconds between two polls of the survivors after the kill."""
REQUEST_TIMEOUT = 0.5
"""Seconds one poll of one peer's API may take (a live loopback peer answers
in milliseconds)."""
MARKER = ".nanomesh-demo"
"""File that marks a directory as the demo's, so that it may be replaced."""
GOSSIP_PRESET = "local"
"""Gossip timing of the demo peers: the lab's loopback preset (fast detection)."""

LABELS = {
    "leader killed": "leader killed (SIGKILL)",
    "suspected": "dead peer suspected (gossip)",
    "declared dead": "declared dead by a first peer",
    "new leader": "new leader elected (Raft)",
    "failure detected": "failure detected by all (gossip)",
    "new plan": "new placement plan committed",
    "rescheduled": "its instances running again",
    "healthy": "mesh healthy",
}
"""The events narrated after the kill, in causal order, with their summary labels."""


class DemoError(NanomeshError):
    pass


def default_dir() -> Path:
    """``$XDG_STATE_HOME/nanomesh/demo`` (``~/.local/state/...``): beside the
    lab's default directory, never the lab's own (nor ``$NANOMESH_LAB_DIR``)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "nanomesh" / "demo"


# ------------------------------------------------------------------ the services


_HEARTBEAT = """\
import os, time
while True:
    print('heartbeat from', os.environ['NANOMESH_INSTANCE'], flush=True)
    time.sleep(1)
"""
_SENSOR = """\
import os, random, time
t = 21.0
while True:
    t += random.uniform(-0.2, 0.2)
    print(os.environ['NANOMESH_INSTANCE'], f'temperature {t:.1f} C', flush=True)
    time.sleep(1)
"""
_LOGGER = """\
import os, time
n = 0
while True:
    n += 1
    print(os.environ['NANOMESH_INSTANCE'], 'log line', n, flush=True)
    time.sleep(2)
"""
_PROBE = """\
import time
time.sleep(3600)
"""

PINNED = "sensor"
"""The service first placed on the leader (module docstring)."""


def _manifest(name: str, description: str, replicas: int, script: str, demo_dir: Path
              ) -> dict[str, Any]:
    # The demo directory as an (ignored) argument marks the instance processes
    # as the demo's: `pgrep -f DIR` finds peers and instances alike.
    return {"name": name, "version": "1.0.0", "description": description,
            "kind": "process", "replicas": replicas,
            "run": {"command": [sys.executable, "-u", "-c", script, str(demo_dir)]},
            "requires": {"cpu": 0.05, "memory_mb": 16},
            "placement": {"spread": True}}


def demo_services(demo_dir: Path) -> list[dict[str, Any]]:
    """The three services the demo deploys: 4 instances."""
    return [
        _manifest("heartbeat", "prints a heartbeat every second (2 replicas on 2 peers)",
                  2, _HEARTBEAT, demo_dir),
        _manifest(PINNED, "a simulated temperature sensor", 1, _SENSOR, demo_dir),
        _manifest("logger", "writes a log line every 2 seconds", 1, _LOGGER, demo_dir),
    ]


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string (ASCII, escaped) is a TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}"
                                for k, x in v.items()) + " }"
    raise TypeError(f"no TOML for {v!r}")


def to_toml(doc: Mapping[str, Any]) -> str:
    """A manifest dict as ``nanoservice.toml`` text (one level of tables)."""
    top = [f"{k} = {_toml_value(v)}" for k, v in doc.items() if not isinstance(v, Mapping)]
    tables = [f"\n[{k}]\n" + "\n".join(f"{kk} = {_toml_value(vv)}" for kk, vv in v.items())
              for k, v in doc.items() if isinstance(v, Mapping)]
    return "\n".join(top) + "\n" + "\n".join(tables) + "\n"


def write_manifest(doc: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """Write ``folder/NAME/nanoservice.toml``, validate it as `nanomesh deploy`
    would, and return the raw manifest to POST."""
    path = folder / doc["name"] / "nanoservice.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# written by `nanomesh demo failover`; deploy it with "
                    f"`nanomesh deploy {path.parent}`\n" + to_toml(doc))
    from nanomesh.runtime.manifest import load_manifest

    load_manifest(path)
    with path.open("rb") as f:
        return tomllib.load(f)


# ------------------------------------------------------------------ helpers


def wait_for(what: str, check: Callable[[], T | None], timeout: float,
             hint: Callable[[], str], period: float = 0.1) -> T:
    """Call `check` every `period` seconds until it returns something (an
    ApiError counts as nothing yet); DemoError naming `what` and `hint()`
    (where the logs are) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except ApiError:
            result = None
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}; " + hint())
        time.sleep(period)


def answers(ip: str, port: int) -> bool:
    """Does something accept TCP connections on ip:port?"""
    try:
        with socket.create_connection((ip, port), timeout=0.3):
            return True
    except OSError:
        return False


def _poll(api: str, path: str) -> Any:
    """One API read, None when the peer does not answer (in time)."""
    try:
        return get_json(api, path, timeout=REQUEST_TIMEOUT)
    except ApiError:
        return None


def _raft_ip(addr: str | None) -> str | None:
    return addr.rpartition(":")[0] if addr else None


def _majority(n: int) -> int:
    return n // 2 + 1


@dataclass
class _Demo:
    n: int
    dir: Path
    say: Callable[[str], None]
    peers: list[lab.LabPeer] = field(default_factory=list)
    token: str = ""

    # -------------------------------------------------------------- small tools

    def logs_hint(self) -> str:
        return (f"the peers' logs are {self.dir}/peer-N.log, their instances' logs "
                f"{self.dir}/peer-N/logs/")

    def wait(self, what: str, check: Callable[[], T | None],
             timeout: float = STEP_TIMEOUT) -> T:
        return wait_for(what, check, timeout, self.logs_hint)

    def by_ip(self, ip: str | None) -> lab.LabPeer | None:
        return next((p for p in self.peers if p.ip == ip), None)

    def name_of_raft(self, addr: str | None) -> str:
        p = self.by_ip(_raft_ip(addr))
        return p.name if p else str(addr)

    # -------------------------------------------------------------- steps

    def prepare_dir(self) -> None:
        ips = [lab.peer_ip(i) for i in range(self.n)]
        busy = [ip for ip in ips
                if answers(ip, DEFAULT_API_PORT) or answers(ip, DEFAULT_GOSSIP_PORT)]
        if busy:
            raise DemoError(
                f"something already runs on {', '.join(busy)} (a `nanomesh lab`, or another "
                f"demo?): the demo's peers use the lab's fixed addresses "
                f"{lab.peer_ip(0)}-{lab.peer_ip(self.n - 1)}. Stop it first "
                "(`nanomesh lab down`), or wait for the other demo to finish")
        if self.dir.exists():
            running = [p for p in lab.load_state(self.dir) if lab.alive(p.pid)]
            if running:
                pids = " ".join(str(p.pid) for p in running)
                raise DemoError(f"peers of an earlier demo still run from {self.dir} "
                                f"(pids {pids}); stop them with "
                                f"`nanomesh lab down --dir {self.dir}`")
            if not (self.dir / MARKER).exists() and any(self.dir.iterdir()):
                raise DemoError(f"{self.dir} exists and is not a demo directory; choose "
                                "another --dir (the demo replaces its directory at each run)")
            shutil.rmtree(self.dir)  # an earlier run's (kept) directory: start afresh
        self.dir.mkdir(parents=True)
        (self.dir / MARKER).write_text("created by `nanomesh demo failover`; replaced at "
                                       "each run\n")

    def start_mesh(self) -> None:
        from nanomesh.consensus.role_core import RoleConfig
        from nanomesh.consensus.voters import voter_goal

        started = time.monotonic()
        self.say(f"starting {self.n} peers on {lab.peer_ip(0)}-{lab.peer_ip(self.n - 1)} "
                 f"(gossip preset {GOSSIP_PRESET})...")
        self.peers = lab.up(self.n, self.dir, preset=GOSSIP_PRESET,
                            say=lambda text: self.say("  " + text))
        want = voter_goal(RoleConfig().target_voters, self.n)

        def ready() -> dict[str, Any] | None:
            statuses = [get_json(p.api, "/v1/status", timeout=1.0) for p in self.peers]
            leaders = {s["leader"] for s in statuses}
            if len(leaders) != 1 or None in leaders:
                return None
            leader = self.by_ip(_raft_ip(statuses[0]["leader"]))
            if leader is None:
                return None
            st: dict[str, Any] = get_json(leader.api, "/v1/status", timeout=1.0)
            return st if len(st["voters"]) == want and st["role"] == "leader" else None

        st = self.wait(f"{want} Raft voters and one leader known to every peer", ready)
        token_file = self.dir / lab.FOUNDER / TOKEN_FILE
        self.token = self.wait(f"the management token in {token_file}",
                               lambda: read_token_file(token_file)
                               if token_file.exists() else None)
        self.say(f"  mesh up in {time.monotonic() - started:.1f} s: {want} voters, leader "
                 f"{self.name_of_raft(st['leader'])} (term {st['term']})")
        for p in self.peers:
            self.say(f"    {p.name}  {p.ip}  pid {p.pid}")

    def leader(self) -> lab.LabPeer:
        def find() -> lab.LabPeer | None:
            st = get_json(self.peers[0].api, "/v1/status", timeout=1.0)
            return self.by_ip(_raft_ip(st["leader"]))
        return self.wait("a Raft leader", find)

    def deploy(self, raw: Mapping[str, Any], via: lab.LabPeer) -> dict[str, Any]:
        """POST a manifest (retried while the mesh answers 503: no leader yet)."""
        def post() -> dict[str, Any] | None:
            try:
                reply: dict[str, Any] = request_json("POST", via.api, "/v1/services", raw,
                                                     self.token, timeout=10.0)
                return reply
            except ApiError as exc:
                if exc.status in (503, 504):
                    return None
                raise DemoError(f"deploying {raw['name']} failed: "
                                f"{exc.operator_message()}") from None
        return self.wait(f"the mesh to accept service {raw['name']}", post)

    def placement(self, via: lab.LabPeer) -> dict[str, Any]:
        p: dict[str, Any] = get_json(via.api, "/v1/placement", timeout=1.0)
        return p

    def all_running(self, via: lab.LabPeer, count: int, alive: Sequence[str]
                    ) -> dict[str, Any] | None:
        p = self.placement(via)
        inst = p["instances"]
        ok = (len(inst) == count and not p["unplaced"]
              and all(i["state"] == "running" and i["peer"] in alive for i in inst))
        return p if ok else None

    def deploy_services(self) -> None:
        leader = self.leader()
        docs = demo_services(self.dir)
        folder = self.dir / "services"
        raws = {d["name"]: write_manifest(d, folder) for d in docs}
        count = sum(d["replicas"] for d in docs)
        self.say(f"deploying 3 services ({count} instances) from {folder}/:")
        for d in docs:
            extra = (f"; placed on the leader {leader.name} first (pinned, then unpinned so "
                     "it may move)") if d["name"] == PINNED else ""
            self.say(f"  {d['name']:<10} {d['replicas']} x  {d['description']}{extra}")
        started = time.monotonic()
        for name, raw in raws.items():
            body = raw
            if name == PINNED:
                body = {**raw, "placement": {**raw["placement"], "peer": leader.name}}
            self.deploy(body, leader)
        names = [p.name for p in self.peers]
        self.wait(f"all {count} instances running",
                  lambda: self.all_running(leader, count, names))
        # Lift the pin: a placement-only change neither moves nor restarts it.
        self.deploy(raws[PINNED], leader)
        pinned = f"{PINNED}/0"

        def settled() -> dict[str, Any] | None:
            p = self.all_running(leader, count, names)
            return p if p is not None and self._host(p, pinned) == leader.name else None

        placement = self.wait(f"all {count} instances running after unpinning {PINNED}",
                              settled)
        self.say(f"  all {count} instances running after {time.monotonic() - started:.1f} s"
                 f" (plan epoch {placement['epoch']}):")
        self.print_placement(placement, leader)

    @staticmethod
    def _host(placement: Mapping[str, Any], iid: str) -> str | None:
        return next((i["peer"] for i in placement["instances"] if i["instance"] == iid), None)

    def print_placement(self, placement: Mapping[str, Any], leader: lab.LabPeer) -> None:
        width = max(len(p.name) for p in self.peers) + len(" (leader)")
        for p in self.peers:
            here = [i["instance"] for i in placement["instances"] if i["peer"] == p.name]
            label = p.name + (" (leader)" if p.name == leader.name else "")
            self.say(f"    {label:<{width}}  {', '.join(here) or '-'}")

    # -------------------------------------------------------------- the failover

    def failover(self) -> tuple[list[tuple[str, float]], str | None]:
        """Kill the leader, narrate the recovery; the event times and the new
        leader's Raft address."""
        leader = self.leader()  # again: leadership may have moved since the deploy
        old = get_json(leader.api, "/v1/status", timeout=1.0)
        if old["role"] != "leader":
            raise DemoError(f"{leader.name} stopped leading just before the kill (an election "
                            "under way?); " + self.logs_hint())
        pid = next(p.pid for p in lab.load_state(self.dir) if p.name == leader.name)
        watch = _Watch(self, leader, self.placement(leader), old["term"])
        survivors = watch.survivors
        hosted = ", ".join(watch.orphans) or "no instance"
        self.say(f"\nkilling the leader {leader.name} ({leader.ip}, pid {pid}) with SIGKILL; "
                 f"it hosts {hosted}. Survivors polled every {POLL_PERIOD * 1000:.0f} ms:")
        os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        self.say(f"  +0.000s  killed leader {leader.name} ({leader.ip})")
        if not watch.orphans:
            self.say("           (the leader hosted no instance: nothing to reschedule)")

        def fetch(api: str, path: str) -> tuple[float, Any]:
            data = _poll(api, path)
            return time.monotonic() - t0, data

        with ThreadPoolExecutor(max_workers=2 * len(survivors) + 1) as pool:
            while "healthy" not in watch.done:
                started = time.monotonic()
                if started - t0 > STEP_TIMEOUT:
                    missing = [w for w in ("new leader", "failure detected", "rescheduled",
                                           "healthy") if w not in watch.done]
                    raise DemoError(f"timed out after {STEP_TIMEOUT:.0f} s after the kill "
                                    f"waiting for: {', '.join(missing)}; " + self.logs_hint())
                st = {p.name: pool.submit(fetch, p.api, "/v1/status") for p in survivors}
                ms = {p.name: pool.submit(fetch, p.api, "/v1/members") for p in survivors}
                via = self.by_ip(_raft_ip(watch.new_leader)) or survivors[0]
                pl = pool.submit(fetch, via.api, "/v1/placement")
                rnd = _Round({n: f.result() for n, f in st.items()},
                             {n: f.result() for n, f in ms.items()}, pl.result())
                for t, _, text in watch.events(rnd):
                    self.say(f"  +{t:.3f}s  {text}")
                time.sleep(max(0.0, POLL_PERIOD - (time.monotonic() - started)))
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # the killed peer is our child: reap it
        return [("leader killed", 0.0), *watch.done.items()], watch.new_leader

    def write_check(self, new_leader_api: str | None) -> list[tuple[str, float]]:
        """Deploy a tiny service through a surviving follower, see it run,
        remove it; return the latencies (seconds) for the summary."""
        survivors = [p for p in self.peers if lab.alive(p.pid)]
        via = next((p for p in survivors if p.api != new_leader_api), survivors[0])
        raw = write_manifest(_manifest("probe", "write check after failover", 1, _PROBE,
                                       self.dir), self.dir / "services")
        started = time.monotonic()
        self.deploy(raw, via)
        deployed = time.monotonic() - started
        names = [p.name for p in survivors]

        def probe_running() -> str | None:
            p = self.placement(via)
            return next((i["peer"] for i in p["instances"] if i["instance"] == "probe/0"
                         and i["state"] == "running" and i["peer"] in names), None)

        host = self.wait("the probe service to run", probe_running)
        running = time.monotonic() - started
        t1 = time.monotonic()
        self.wait("the mesh to remove the probe service", lambda: self._undeploy("probe", via))
        removed = time.monotonic() - t1
        self.say(f"  write through {via.name} (a follower: it forwards to the leader): "
                 f"deployed `probe` in {deployed:.3f} s, running on {host} after "
                 f"{running:.2f} s, removed in {removed:.3f} s")
        return [("write: deploy committed", deployed), ("write: probe running", running),
                ("write: removal committed", removed)]

    def _undeploy(self, name: str, via: lab.LabPeer) -> bool | None:
        try:
            request_json("DELETE", via.api, f"/v1/services/{name}", token=self.token,
                         timeout=10.0)
            return True
        except ApiError as exc:
            if exc.status in (503, 504):
                return None
            raise DemoError(f"removing {name} failed: {exc.operator_message()}") from None


Timed = tuple[float, Any]
"""(seconds since the kill when the answer arrived, the decoded answer or None)."""


@dataclass
class _Round:
    """One round of polls of the survivors, by peer name."""

    status: dict[str, Timed]
    members: dict[str, Timed]
    placement: Timed


class _Watch:
    """Turns rounds of polls into the narrated events, each reported once,
    in the order they were observed."""

    def __init__(self, demo: _Demo, dead: lab.LabPeer, before: Mapping[str, Any],
                 old_term: int) -> None:
        self.demo, self.dead, self.old_term = demo, dead, old_term
        self.old_epoch: int = before["epoch"]
        self.count = len(before["instances"])
        self.orphans = sorted(i["instance"] for i in before["instances"]
                              if i["peer"] == dead.name)
        self.survivors = [p for p in demo.peers if p.name != dead.name]
        self.alive = {p.name for p in self.survivors}
        self.new_leader: str | None = None
        self.done: dict[str, float] = {}

    def events(self, rnd: _Round) -> list[tuple[float, str, str]]:
        found: list[tuple[float, str, str]] = []
        for check in (self._raft, self._gossip, self._placement, self._healthy):
            for t, key, text in check(rnd):
                if key not in self.done:
                    found.append((t, key, text))
                    self.done[key] = t
        order = list(LABELS)  # same instant: in causal order (healthy last)
        return sorted(found, key=lambda e: (e[0], order.index(e[1])))

    def _raft(self, rnd: _Round) -> Iterator[tuple[float, str, str]]:
        """A survivor that says it leads, in a newer term (Raft is usually
        faster than gossip: its election timeout is a few hundred ms)."""
        if "new leader" in self.done:
            return
        for t, st in rnd.status.values():
            if (st and st["role"] == "leader" and st["term"] > self.old_term
                    and _raft_ip(st["leader"]) != self.dead.ip):
                self.new_leader = st["leader"]
                yield t, "new leader", f"new leader {st['peer']} (term {st['term']})"
                return

    def _gossip(self, rnd: _Round) -> Iterator[tuple[float, str, str]]:
        """What each survivor's membership says of the dead peer."""
        views: dict[str, Timed] = {}
        for name, (t, members) in rnd.members.items():
            me = next((m for m in members or [] if m["name"] == self.dead.name), None)
            views[name] = (t, me["state"] if me else None)
        name = self.dead.name
        dead = [n for n, (_, s) in views.items() if s in ("dead", "left")]
        if len(dead) == len(views):
            self.done.setdefault("suspected", -1.0)  # no longer worth a line
            self.done.setdefault("declared dead", -1.0)
            everyone = f"all {len(views)} survivors" if len(views) > 2 else "both survivors"
            yield (max(t for t, _ in views.values()), "failure detected",
                   f"failure detected: {name} marked dead by {everyone}")
        elif dead:
            self.done.setdefault("suspected", -1.0)
            yield (views[dead[0]][0], "declared dead",
                   f"{name} declared dead by {', '.join(dead)} (the others still suspect it)")
        else:
            suspects = [n for n, (_, s) in views.items() if s == "suspect"]
            if suspects:
                yield (views[suspects[0]][0], "suspected",
                       f"{name} suspected by {', '.join(suspects)} (no answer to probes)")

    def _moved(self, placement: Mapping[str, Any]) -> dict[str, Mapping[str, Any]] | None:
        """Where the dead peer's instances are now, if all on survivors."""
        hosts = {i["instance"]: i for i in placement["instances"]}
        moved = {o: hosts[o] for o in self.orphans
                 if o in hosts and hosts[o]["peer"] in self.alive}
        return moved if len(moved) == len(self.orphans) else None

    def _placement(self, rnd: _Round) -> Iterator[tuple[float, str, str]]:
        t, pl = rnd.placement
        moved = self._moved(pl) if pl else None
        if moved is None or not pl:
            return
        if self.orphans and pl["epoch"] > self.old_epoch:
            where = ", ".join(f"{o} -> {m['peer']}" for o, m in moved.items())
            yield (t, "new plan", f"new plan (epoch {pl['epoch']}) moves {self.dead.name}'s "
                   f"instances: {where}")
        if all(m["state"] == "running" for m in moved.values()):
            where = ", ".join(f"{o} -> {m['peer']} (running)" for o, m in moved.items())
            yield (t, "rescheduled", f"instances of {self.dead.name} rescheduled: {where}"
                   if self.orphans else "no instances to reschedule")

    def _healthy(self, rnd: _Round) -> Iterator[tuple[float, str, str]]:
        """One leader every survivor agrees on, with a majority of its voters
        alive; every survivor sees all survivors alive; every instance runs."""
        if not {"new leader", "failure detected", "rescheduled"} <= set(self.done):
            return
        lead = self.demo.by_ip(_raft_ip(self.new_leader))
        if lead is None or lead.name not in rnd.status:
            return
        st, (_, pl) = rnd.status[lead.name][1], rnd.placement
        if st is None or pl is None:
            return
        agreed = all(s and s["leader"] == self.new_leader for _, s in rnd.status.values())
        everyone_alive = all(
            ms and sum(1 for m in ms if m["state"] == "alive") == len(self.survivors)
            for _, ms in rnd.members.values())
        running = (len(pl["instances"]) == self.count and not pl["unplaced"]
                   and all(i["state"] == "running" and i["peer"] in self.alive
                           for i in pl["instances"]))
        voters = st["voters"]
        up = sum(1 for v in voters if _raft_ip(v) != self.dead.ip
                 and self.demo.by_ip(_raft_ip(v)) is not None)
        quorum = _majority(len(voters))
        if agreed and everyone_alive and running and up >= quorum:
            t = max(t for t, _ in [*rnd.status.values(), *rnd.members.values(),
                                   rnd.placement])
            yield (t, "healthy", f"mesh healthy: {len(self.survivors)} peers alive, leader "
                   f"{lead.name} (term {st['term']}) agreed by all, {up}/{len(voters)} voters "
                   f"alive (quorum {quorum}), all {self.count} instances running")


# ------------------------------------------------------------------ cleanup


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (e.g. a test's timeout) cleans up like Ctrl-C does."""
    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt
    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _stop(demo: _Demo) -> bool:
    """Stop every peer of the demo: SIGTERM (graceful leave), SIGKILL after
    `lab.STOP_TIMEOUT`. Ctrl-C meanwhile skips straight to SIGKILL; True then."""
    pids = [p.pid for p in lab.load_state(demo.dir)] or [p.pid for p in demo.peers]
    interrupted = False
    try:
        stopped = lab.down(demo.dir, say=lambda text: demo.say("  " + text))
        demo.say(f"stopped {stopped} peers")
    except KeyboardInterrupt:
        interrupted = True
        demo.say("interrupted while stopping: killing the peers")
        for pid in pids:
            if lab.alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        (demo.dir / lab.STATE_FILE).unlink(missing_ok=True)
    for pid in pids:  # they are our children: reap them
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
    return interrupted


# ------------------------------------------------------------------ entry point


def failover(n: int = DEFAULT_PEERS, demo_dir: Path | None = None, keep: bool = False,
             say: Callable[[str], None] | None = None) -> int:
    """Run the failover demo (module docstring); 0 on success. Raises
    DemoError (a step failed or timed out) after stopping the peers."""
    out = say or (lambda text: print(text, flush=True))
    if n < MIN_PEERS:
        raise DemoError(f"the failover demo needs at least {MIN_PEERS} peers: electing a new "
                        "leader needs a majority of the voters to survive the old one (2 of 3; "
                        "with 2 peers the survivor alone is no majority)")
    if n > 250:
        raise DemoError("a demo mesh has at most 250 peers")
    demo = _Demo(n, (demo_dir or default_dir()).expanduser().absolute(), out)
    out(f"nanomesh demo failover: {n} peers, directory {demo.dir}")
    demo.prepare_dir()
    outcome = "failed"  # until the end: keep the directory for its logs
    with _sigterm_as_interrupt():
        try:
            demo.start_mesh()
            demo.deploy_services()
            times, new_leader = demo.failover()
            p = demo.by_ip(_raft_ip(new_leader))
            out("\nthe mesh takes writes again:")
            latencies = demo.write_check(p.api if p else None)
            _summary(out, times, latencies)
            outcome = "ok"
        except KeyboardInterrupt:
            out("\ninterrupted: cleaning up...")
            outcome = "interrupted"  # nothing to diagnose: no need to keep the directory
            raise
        finally:
            out("\nstopping the mesh...")
            if _stop(demo) and outcome == "ok":
                outcome = "interrupted"
            if keep:
                out(f"kept {demo.dir} (--keep): " + demo.logs_hint())
            elif outcome == "failed":
                out(f"kept {demo.dir} for its logs (the next demo run replaces it)")
            else:
                shutil.rmtree(demo.dir, ignore_errors=True)
                out(f"removed {demo.dir}")
    return 0 if outcome == "ok" else 130


def _summary(out: Callable[[str], None], times: Sequence[tuple[str, float]],
             latencies: Sequence[tuple[str, float]]) -> None:
    width = max(len(v) for v in [*LABELS.values(), *(k for k, _ in latencies)])
    out(f"\nsummary (seconds after the kill, as observed every {POLL_PERIOD * 1000:.0f} ms):")
    order = list(LABELS)
    for key, t in sorted(times, key=lambda kt: (kt[1], order.index(kt[0]))):
        if t >= 0:  # -1: skipped (e.g. never seen suspected, only dead)
            out(f"  {LABELS.get(key, key):<{width}}  {t:6.3f}")
    out("write after failover (seconds from the request):")
    for key, t in latencies:
        out(f"  {key:<{width}}  {t:6.3f}")
