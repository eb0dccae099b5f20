"""The control plane end to end (issue 3 acceptance), on real peer processes.

Every test starts its own mesh of ``python -m nanomesh peer run`` processes on
loopback addresses (the ``cluster`` fixture) and drives it through the HTTP
API only: ``/v1/status`` (Raft leader, term, voters, plan epoch),
``/v1/services``, ``/v1/placement`` and the token-protected writes.

Instances are real supervised processes. Each test's services carry a marker
argument unique to that test in their command line, so ``pgrep -f MARKER``
finds exactly the processes the test caused (the supervisor shim repeats the
command in its own argv; `marker_procs` tells shims and instances apart, and
follows instance -> shim -> peer daemon through the parent pids, which proves
*which* peer runs an instance).

Waits are bounded (`wait_until`, 30 s by default, more where a documented
timer such as the 10 s voter stabilization adds up); no assertion is about
speed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mesh_harness import Cluster, Peer

from nanomesh.transport.apiclient import ApiError

pytestmark = pytest.mark.integration

RAFT_PORT = 7948
TOKEN_FILE = "management.token"
VOTERS_TIMEOUT = 45.0
"""Bound for reaching the full voter set: bootstrap_grace (3 s) + min_alive
(5 s) + one promotion per second, on 2 busy cores."""
INSTANCE_SCRIPT = "import time\nwhile True:\n    time.sleep(0.5)\n"


# --------------------------------------------------------------------------- API


def call(peer: Peer, method: str, path: str, body: Any = None, token: str | None = None,
         timeout: float = 10.0) -> tuple[int, Any]:
    """One API call: (HTTP status, decoded body). ApiError only if the peer
    cannot be reached (so `wait_until` retries it)."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"content-type": "application/json"} if data is not None else {}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(f"http://{peer.api}{path}", data=data, method=method,
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw.decode(errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        raise ApiError(f"cannot reach {peer.name}: {exc}") from None


def write(cluster: Cluster, peer: Peer, method: str, path: str, body: Any = None,
          token: str | None = None, timeout: float = 30.0) -> tuple[int, Any]:
    """A write, retried while the mesh answers 503/504 (no leader or no token
    committed yet, an election, an unconfirmed commit: all transient; a
    deploy is idempotent). Returns the first other (status, body)."""
    def attempt() -> tuple[int, Any] | None:
        code, reply = call(peer, method, path, body, token)
        return None if code in (503, 504) else (code, reply)
    return cluster.wait(attempt, timeout, what=f"{method} {path} via {peer.name} to be "
                        "answered with something other than 503/504")


def deploy(cluster: Cluster, peer: Peer, manifest: dict[str, Any], token: str) -> Any:
    code, reply = write(cluster, peer, "POST", "/v1/services", manifest, token)
    assert code in (200, 201), (code, reply)
    return reply


def deploy_and_read(cluster: Cluster, peer: Peer, manifest: dict[str, Any], token: str
                    ) -> list[dict[str, Any]]:
    """Deploy through `peer`; once `peer` has applied it, its service list."""
    deploy(cluster, peer, manifest, token)
    name = manifest["name"]
    result: list[dict[str, Any]] = cluster.wait(
        lambda: (docs := peer.get("/v1/services")) and name in {d["name"] for d in docs}
        and docs, what=f"{name} applied on {peer.name}")
    return result


def status(peer: Peer) -> dict[str, Any]:
    result: dict[str, Any] = peer.get("/v1/status")
    return result


def placement(peer: Peer) -> dict[str, Any]:
    result: dict[str, Any] = peer.get("/v1/placement")
    return result


def service_names(peer: Peer) -> set[str]:
    return {d["name"] for d in peer.get("/v1/services")}


def raft_addr(peer: Peer) -> str:
    return f"{peer.ip}:{RAFT_PORT}"


def peer_of(peers: Sequence[Peer], addr: str | None) -> Peer | None:
    return next((p for p in peers if raft_addr(p) == addr), None)


def read_token(peer: Peer) -> str:
    return (peer.data_dir / TOKEN_FILE).read_text().strip()


def read_token_when_ready(cluster: Cluster, founder: Peer) -> str:
    """The founder's token, once the file exists."""
    path = founder.data_dir / TOKEN_FILE
    cluster.wait(path.exists, what=f"{path} to exist")
    return read_token(founder)


def agreed(peers: Sequence[Peer], voters: int | None = None, *, min_voters: int = 1
           ) -> dict[str, Any] | None:
    """If every peer in `peers` reports the same non-null leader, term, voter
    list and plan epoch (and the leader is among `peers` and says it leads,
    with `voters` voters, or at least `min_voters`): the leader's status,
    plus ``"statuses"``. Else None."""
    statuses = {p.name: status(p) for p in peers}
    leaders = {s["leader"] for s in statuses.values()}
    if len(leaders) != 1 or None in leaders:
        return None
    if len({s["term"] for s in statuses.values()}) != 1:
        return None
    if len({tuple(s["voters"]) for s in statuses.values()}) != 1:
        return None
    if len({s["epoch"] for s in statuses.values()}) != 1:
        return None
    leader = peer_of(peers, leaders.pop())
    if leader is None or statuses[leader.name]["role"] != "leader":
        return None
    n = len(statuses[leader.name]["voters"])
    if (voters is not None and n != voters) or n < min_voters:
        return None
    return {**statuses[leader.name], "statuses": statuses}


def wait_agreed(cluster: Cluster, peers: Sequence[Peer], voters: int | None = None, *,
                min_voters: int = 1, timeout: float = VOTERS_TIMEOUT) -> dict[str, Any]:
    return cluster.wait(lambda: agreed(peers, voters, min_voters=min_voters), timeout,
                        what=f"{[p.name for p in peers]} to agree on one leader, term, "
                        f"epoch and {voters or f'>= {min_voters}'} voters",
                        describe=lambda: describe_status(peers))


def describe_status(peers: Sequence[Peer]) -> str:
    lines = []
    for p in peers:
        try:
            s = status(p)
            lines.append(f"  {p.name}: role={s['role']} leader={s['leader']} term={s['term']} "
                         f"epoch={s['epoch']} voters={s['voters']}")
        except ApiError as exc:
            lines.append(f"  {p.name}: ({exc})")
    return "status:\n" + "\n".join(lines)


def running_instances(peer: Peer, service: str) -> dict[str, str]:
    """instance id -> hosting peer of `service`'s instances that `peer`'s
    placement shows as running."""
    return {i["instance"]: i["peer"] for i in placement(peer)["instances"]
            if i["service"] == service and i["state"] == "running"}


# --------------------------------------------------------------------------- processes


def new_marker() -> str:
    return f"nmcp-{uuid.uuid4().hex[:16]}"


def manifest(name: str, marker: str, replicas: int = 1) -> dict[str, Any]:
    """A small process service whose argv carries `marker`."""
    return {"name": name, "version": "1.0.0", "kind": "process", "replicas": replicas,
            "run": {"command": [sys.executable, "-c", INSTANCE_SCRIPT, marker]},
            "requires": {"cpu": 0.05, "memory_mb": 8}, "placement": {"spread": True}}


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    shim: bool
    instance: str | None
    """NANOMESH_INSTANCE from its environment (instances only)."""


def _ppid(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(text.rpartition(")")[2].split()[1])


def pid_alive(pid: int) -> bool:
    """Is `pid` a live process (not gone, not a zombie)?"""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text.rpartition(")")[2].split()[0] not in ("Z", "X")


def marker_procs(marker: str) -> list[Proc]:
    """Live processes whose command line contains `marker` (pgrep -f)."""
    out = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True, check=False)
    procs = []
    for pid in map(int, out.stdout.split()):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue  # it just ended
        ppid = _ppid(pid)
        if ppid is None:
            continue
        shim = any(a.endswith(b"shim.py") for a in argv)
        instance = next((e.split(b"=", 1)[1].decode() for e in env
                         if e.startswith(b"NANOMESH_INSTANCE=")), None)
        procs.append(Proc(pid, ppid, shim, None if shim else instance))
    return procs


def instance_procs(marker: str, peers: Sequence[Peer]) -> list[tuple[str | None, str, int]]:
    """(instance id, name of the peer daemon that supervises it, pid) of each
    live instance process of `marker` (not the shims): instance -> shim ->
    daemon, through the parent pids. Sorted."""
    by_pid = {p.pid: p.name for p in peers if p.running}
    out = []
    for proc in marker_procs(marker):
        if not proc.shim:
            daemon = _ppid(proc.ppid)
            out.append((proc.instance, by_pid.get(daemon, f"pid {daemon}"), proc.pid))
    return sorted(out, key=repr)


def instance_hosts(marker: str, peers: Sequence[Peer]) -> dict[str | None, tuple[str, int]]:
    """instance id -> (peer name, pid), from `instance_procs`."""
    return {iid: (host, pid) for iid, host, pid in instance_procs(marker, peers)}


def wait_service(cluster: Cluster, observer: Peer, service: str, replicas: int, marker: str,
                 peers: Sequence[Peer], *, timeout: float = 30.0,
                 also: Callable[[dict[str, str]], bool] = lambda _: True
                 ) -> dict[str, tuple[str, int]]:
    """Wait until `observer`'s placement shows `replicas` running instances of
    `service` on distinct peers (and `also(instance id -> peer)` holds), and
    the live processes of `marker` are exactly those: one instance process
    under each assigned peer's daemon, one shim each, nothing else. Both are
    re-read on every poll (a new leader may still move instances).
    Returns instance id -> (peer name, pid)."""
    def check() -> dict[str, tuple[str, int]] | None:
        running = running_instances(observer, service)
        if (len(running) != replicas or len(set(running.values())) != replicas
                or not also(running)):
            return None
        procs = instance_procs(marker, peers)
        shims = sum(p.shim for p in marker_procs(marker))
        if sorted((i, h) for i, h, _ in procs) != sorted(running.items()) or shims != replicas:
            return None
        return {i: (h, pid) for i, h, pid in procs if i is not None}
    return cluster.wait(check, timeout, what=f"{replicas} running instances of {service} on "
                        "distinct peers, each a real process on its assigned peer",
                        describe=lambda: f"placement: {json.dumps(placement(observer))}\n"
                        f"processes: {marker_procs(marker)}\n"
                        f"instances: {instance_procs(marker, peers)}")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def kill_markers() -> Iterator[list[str]]:
    """Markers of this test's services: whatever instance survives the test
    (a bug) is killed at teardown, and the test fails there."""
    markers: list[str] = []
    yield markers
    leftovers = []
    deadline = time.monotonic() + 15  # shims get STOP_TIMEOUT (5 s) to stop orphans
    for m in markers:
        while marker_procs(m) and time.monotonic() < deadline:
            time.sleep(0.2)
        procs = marker_procs(m)
        leftovers += procs
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
    assert not leftovers, f"instance processes outlived their peers: {leftovers}"


@pytest.fixture
def cluster(kill_markers: list[str], cluster: Cluster) -> Cluster:
    """conftest's `cluster`, set up after (so closed before) `kill_markers`:
    the leftover check runs once every peer has been killed."""
    return cluster


def start(cluster: Cluster, n: int) -> list[Peer]:
    """n peers, the first one the founder (no --join), all seeing each other
    (so that no late join makes the leader rebalance in the middle of a test)."""
    return cluster.start_mesh(n)


# --------------------------------------------------------------------------- tests


def test_bootstrap_one_leader_five_voters_token_on_founder_only(cluster: Cluster) -> None:
    """Bootstrap (issue 3): five peers started together elect exactly one
    leader and grow to five voters (three along the way is fine); every peer
    reports the same leader, term and plan epoch; exactly one peer says it is
    leader; the management token exists only in the founder's data directory,
    owner-only (0600)."""
    peers = start(cluster, 5)
    founder = peers[0]
    wait_agreed(cluster, peers, min_voters=3)
    final = wait_agreed(cluster, peers, voters=5)
    assert set(final["voters"]) == {raft_addr(p) for p in peers}
    roles = [s["role"] for s in final["statuses"].values()]
    assert roles.count("leader") == 1, final["statuses"]
    assert set(roles) <= {"leader", "follower"}, final["statuses"]

    token_path = founder.data_dir / TOKEN_FILE
    assert token_path.is_file()
    assert stat.S_IMODE(token_path.stat().st_mode) == 0o600, oct(token_path.stat().st_mode)
    assert len(read_token(founder)) >= 32
    for p in peers[1:]:
        assert not list(p.data_dir.rglob(TOKEN_FILE)), f"{p.name} holds a token file"


def test_writes_need_the_token_and_are_forwarded(cluster: Cluster,
                                                 kill_markers: list[str]) -> None:
    """Token (issue 3): a write without the token or with a wrong one is
    refused with 401 and changes nothing; read-only GETs need no token; with
    the token from the founder's data directory a deploy sent to a peer that
    is NOT the leader is forwarded, committed (201) and visible on every
    peer; repeating it is a no-op (200, unchanged)."""
    peers = start(cluster, 3)
    founder = peers[0]
    marker = new_marker()
    kill_markers.append(marker)
    svc = manifest("tok-svc", marker)
    before = wait_agreed(cluster, peers)

    code, reply = write(cluster, peers[1], "POST", "/v1/services", svc, token=None)
    assert code == 401, (code, reply)
    assert "token" in json.dumps(reply)
    code, reply = write(cluster, peers[2], "POST", "/v1/services", svc, token="not-the-token")
    assert code == 401, (code, reply)
    code, reply = write(cluster, peers[1], "DELETE", "/v1/services/tok-svc", token=None)
    assert code == 401, (code, reply)
    for p in peers:
        for path in ("/v1/status", "/v1/services", "/v1/placement", "/v1/members"):
            code, _ = call(p, "GET", path)
            assert code == 200, (p.name, path, code)
        assert service_names(p) == set(), p.name
        assert placement(p)["instances"] == []
    assert not marker_procs(marker)
    lead = wait_agreed(cluster, peers)
    assert lead["revision"] == before["revision"], "a refused write changed the state"

    follower = next(p for p in peers if raft_addr(p) != lead["leader"])
    token = read_token(founder)
    code, reply = write(cluster, follower, "POST", "/v1/services", svc, token)
    assert code == 201, (code, reply)
    assert reply["name"] == "tok-svc" and reply["changed"] is True
    cluster.wait(lambda: all(service_names(p) == {"tok-svc"} for p in peers),
                 what="tok-svc on every peer")
    code, again = write(cluster, follower, "POST", "/v1/services", svc, token)
    assert code == 200 and again["changed"] is False, (code, again)
    wait_service(cluster, follower, "tok-svc", 1, marker, peers)


def test_bad_manifest_is_refused_and_disturbs_nothing(cluster: Cluster,
                                                      kill_markers: list[str]) -> None:
    """Validation (issue 3): manifests that are invalid (bad replicas, no run
    section, unknown field, an update of the RUNNING service with an empty
    command, a bad name) are refused with 400 naming the field, and nothing
    changes: same services, same revision, same placement (epoch, hosts,
    states), the running instance keeps its process (same pid)."""
    peers = start(cluster, 3)
    marker = new_marker()
    kill_markers.append(marker)
    token = read_token_when_ready(cluster, peers[0])
    good = manifest("steady", marker)
    deploy(cluster, peers[1], good, token)
    procs = wait_service(cluster, peers[0], "steady", 1, marker, peers)
    # Instance states travel by gossip: snapshot only once every peer has heard
    # "running", or a late state update reads as a change the test did not make.
    cluster.wait(lambda: all(running_instances(p, "steady") for p in peers),
                 what="every peer seeing steady/0 running")
    # The leader settles the deployment once steady/0 has stayed healthy (a
    # commit of its own): snapshot after it, on every peer.
    cluster.wait(lambda: all(p.get("/v1/deployments")["steady"]["status"] == "successful"
                             for p in peers), what="steady's deployment settled")
    lead = wait_agreed(cluster, peers)
    before = {p.name: (placement(p), p.get("/v1/services")) for p in peers}

    bad_cases: list[tuple[dict[str, Any], str]] = [
        ({**good, "replicas": -1}, "replicas"),
        ({k: v for k, v in good.items() if k != "run"}, "run"),
        ({**good, "colour": "blue"}, "colour"),
        ({**good, "run": {"command": []}}, "run.command"),
        ({**good, "name": "Not A Name"}, "name"),
        ({**good, "requires": {"cpu": "lots"}}, "requires.cpu"),
    ]
    for body, field in bad_cases:
        code, reply = write(cluster, peers[2], "POST", "/v1/services", body, token)
        assert code == 400, (field, code, reply)
        assert field in reply["error"], (field, reply)
    code, reply = write(cluster, peers[2], "POST", "/v1/services", ["not", "a", "manifest"],
                        token)
    assert code == 400, (code, reply)

    after_status = wait_agreed(cluster, peers)
    assert after_status["revision"] == lead["revision"]
    assert after_status["epoch"] == lead["epoch"]
    for p in peers:
        assert (placement(p), p.get("/v1/services")) == before[p.name], p.name
    assert instance_hosts(marker, peers) == procs


def test_two_replicas_run_as_real_processes_on_distinct_peers(
        cluster: Cluster, kill_markers: list[str]) -> None:
    """Placement and runtime (issue 3): a 2-replica service deployed on four
    peers runs both instances, "running", on two distinct peers; each is a
    real process (pgrep -f finds exactly two instances and two shims), and
    each instance process is supervised by the daemon of the peer the plan
    assigned it to (instance -> shim -> that peer's pid)."""
    peers = start(cluster, 4)
    marker = new_marker()
    kill_markers.append(marker)
    token = read_token_when_ready(cluster, peers[0])
    deploy(cluster, peers[3], manifest("pair", marker, replicas=2), token)
    hosts = wait_service(cluster, peers[2], "pair", 2, marker, peers)
    running = {i: h for i, (h, _) in hosts.items()}
    for p in peers:  # every peer's placement says the same
        cluster.wait(lambda p=p: running_instances(p, "pair") == running,
                     what=f"{p.name}'s placement to match")


def test_killed_host_instance_is_rescheduled_without_orphans(
        cluster: Cluster, kill_markers: list[str]) -> None:
    """Failover of instances (issue 3): SIGKILL a peer (not the leader) that
    hosts an instance: the plan moves that instance to another alive peer,
    where it runs; the killed peer's instance process is gone (its shim
    stopped it), so pgrep -f finds exactly two instances (and two shims),
    on the two alive hosts."""
    peers = start(cluster, 4)
    marker = new_marker()
    kill_markers.append(marker)
    token = read_token_when_ready(cluster, peers[0])
    deploy(cluster, peers[0], manifest("mover", marker, replicas=2), token)
    old = wait_service(cluster, peers[0], "mover", 2, marker, peers)
    running = {i: h for i, (h, _) in old.items()}
    lead = wait_agreed(cluster, peers)
    leader = peer_of(peers, lead["leader"])
    victim_iid, victim_name = next((i, h) for i, h in sorted(running.items())
                                   if leader is None or h != leader.name)
    victim = next(p for p in peers if p.name == victim_name)
    victim.kill()
    alive = [p for p in peers if p is not victim]
    observer = leader if leader is not None and leader is not victim else alive[0]

    def moved(now: dict[str, str]) -> bool:
        return victim_name not in now.values() and now.get(victim_iid) not in (None, victim_name)
    hosts = wait_service(cluster, observer, "mover", 2, marker, peers, timeout=40, also=moved)
    old_pid = old[victim_iid][1]
    assert hosts[victim_iid][1] != old_pid
    cluster.wait(lambda: not pid_alive(old_pid), what=f"old {victim_iid} process to be gone")


def test_repeated_leader_failover_keeps_state_and_one_leader_per_term(
        cluster: Cluster, kill_markers: list[str]) -> None:
    """Leader failover (issue 3), three times over on five voters: SIGKILL the
    current leader; a different peer becomes leader at a higher term, with
    every committed service still there; a new write (deploy) succeeds; the
    killed peer restarts (same name, address and data directory) and is alive
    again. Sampling /v1/status of every peer throughout, no term ever has more
    than one leader."""
    peers = start(cluster, 5)
    token = read_token_when_ready(cluster, peers[0])
    wait_agreed(cluster, peers, voters=5)
    marker = new_marker()
    kill_markers.append(marker)
    docs = deploy_and_read(cluster, peers[1], manifest("base", marker), token)

    seen: dict[int, set[str]] = defaultdict(set)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for p in peers:
                if not p.running:
                    continue
                try:
                    s = call(p, "GET", "/v1/status", timeout=1.0)[1]
                except ApiError:
                    continue
                if isinstance(s, dict) and s.get("leader"):
                    seen[s["term"]].add(s["leader"])
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        for round_ in range(1, 4):
            before = wait_agreed(cluster, peers, voters=5)
            old = peer_of(peers, before["leader"])
            assert old is not None
            old.kill()
            alive = [p for p in peers if p is not old]

            def new_leader(alive: list[Peer] = alive, old: Peer = old,
                           term: int = before["term"]) -> dict[str, Any] | None:
                st = agreed(alive)
                ok = st is not None and st["leader"] != raft_addr(old) and st["term"] > term
                return st if ok else None
            after = cluster.wait(new_leader, what=f"round {round_}: a new leader",
                                 describe=lambda alive=alive: describe_status(alive))
            for p in alive:  # every committed spec, unchanged
                assert p.get("/v1/services") == docs, (round_, p.name)
            via = next(p for p in alive if raft_addr(p) != after["leader"])
            docs = deploy_and_read(cluster, via, manifest(f"round-{round_}", marker), token)
            assert len(docs) == round_ + 1
            old.start()
            cluster.wait_api([old])
            # Alive: every other peer sees it alive, and it hears the leader.
            # Not "it sees everyone": a restarted founder has no --join seed
            # and may take up to ~30 s to learn the other members.
            cluster.wait(lambda old=old, alive=alive: cluster.all_see(alive, [old.name], "alive")
                         and status(old)["leader"] is not None,
                         what=f"round {round_}: {old.name} alive again")
        wait_agreed(cluster, peers, voters=5)
        cluster.wait(lambda: all(p.get("/v1/services") == docs for p in peers),
                     what="every service on every peer")
    finally:
        stop.set()
        sampler.join(timeout=10)
    split = {term: leaders for term, leaders in seen.items() if len(leaders) > 1}
    assert not split, f"terms with more than one leader: {split}"
    assert len(seen) >= 4, f"too few terms observed: {dict(seen)}"


def test_dead_voter_is_replaced_by_the_spare(cluster: Cluster) -> None:
    """Voter replacement (issue 3): with six peers (five voters and one spare
    learner), SIGKILL a voter that is not the leader: after the stabilization
    time the leader removes it and promotes the spare, so the voters are five
    again, without the dead peer and with the spare, as every alive peer
    reports."""
    peers = start(cluster, 6)
    lead = wait_agreed(cluster, peers, voters=5)
    spare = next(p for p in peers if raft_addr(p) not in lead["voters"])
    victim = next(p for p in peers if raft_addr(p) in lead["voters"]
                  and raft_addr(p) != lead["leader"])
    victim.kill()
    alive = [p for p in peers if p is not victim]

    def replaced() -> dict[str, Any] | None:
        st = agreed(alive, voters=5)
        ok = (st is not None and raft_addr(victim) not in st["voters"]
              and raft_addr(spare) in st["voters"])
        return st if ok else None
    after = cluster.wait(replaced, 45, what=f"{victim.name} replaced by {spare.name}",
                         describe=lambda: describe_status(alive))
    assert set(after["voters"]) == {raft_addr(p) for p in alive}


def test_state_survives_killing_every_peer(cluster: Cluster,
                                           kill_markers: list[str]) -> None:
    """Durability (issue 3): deploy two services on three voters, SIGKILL
    every peer (their instances stop: the shims see the daemons die), restart
    all with the same data directories: the services and a plan (epoch not
    lower) are still there, and the instances run again, exactly once each."""
    peers = start(cluster, 3)
    token = read_token_when_ready(cluster, peers[0])
    wait_agreed(cluster, peers, voters=3)
    m1, m2 = new_marker(), new_marker()
    kill_markers += [m1, m2]
    deploy(cluster, peers[1], manifest("keep-a", m1, replicas=2), token)
    deploy(cluster, peers[2], manifest("keep-b", m2, replicas=1), token)
    wait_service(cluster, peers[0], "keep-a", 2, m1, peers)
    wait_service(cluster, peers[0], "keep-b", 1, m2, peers)
    before = wait_agreed(cluster, peers, voters=3)
    docs = peers[0].get("/v1/services")

    for p in peers:
        p.kill()
    cluster.wait(lambda: not marker_procs(m1) and not marker_procs(m2), 20,
                 what="instances to stop after their peers died")
    for p in peers:
        p.start()
    after = wait_agreed(cluster, peers, voters=3)
    assert after["epoch"] >= before["epoch"]
    assert after["revision"] >= before["revision"]
    for p in peers:
        assert p.get("/v1/services") == docs, p.name
    wait_service(cluster, peers[0], "keep-a", 2, m1, peers)
    wait_service(cluster, peers[0], "keep-b", 1, m2, peers)


def test_undeploy_stops_instances_and_forgets_the_service(
        cluster: Cluster, kill_markers: list[str]) -> None:
    """Undeploy (issue 3): DELETE /v1/services/NAME (with the token) stops the
    service's instances (their processes and shims are gone) and removes it
    from every peer's services and placement; another service keeps running
    undisturbed (same pid); undeploying it again is a 404."""
    peers = start(cluster, 3)
    token = read_token_when_ready(cluster, peers[0])
    gone, stays = new_marker(), new_marker()
    kill_markers += [gone, stays]
    deploy(cluster, peers[0], manifest("doomed", gone, replicas=2), token)
    deploy(cluster, peers[0], manifest("stays", stays, replicas=1), token)
    wait_service(cluster, peers[1], "doomed", 2, gone, peers)
    kept = wait_service(cluster, peers[1], "stays", 1, stays, peers)

    code, reply = write(cluster, peers[2], "DELETE", "/v1/services/doomed", token=token)
    assert code == 200 and reply["name"] == "doomed", (code, reply)
    cluster.wait(lambda: not marker_procs(gone), what="doomed's processes to end")
    for p in peers:
        cluster.wait(lambda p=p: service_names(p) == {"stays"}
                     and {i["service"] for i in placement(p)["instances"]} == {"stays"},
                     what=f"doomed gone from {p.name}'s services and placement")
    assert instance_hosts(stays, peers) == kept
    code, reply = write(cluster, peers[1], "DELETE", "/v1/services/doomed", token=token)
    assert code == 404, (code, reply)

