"""Nanoservices end to end (issue 4 acceptance), on real peer processes.

Services from ``services/`` are deployed through the command line
(``python -m nanomesh deploy ...`` subprocesses) onto meshes of three real
peer daemons on loopback 127.0.10.x, and called by name: through the CoAP
gateway every peer runs (``coap://<peer>:5683/s/<service>/<path>``, with
aiocoap as a constrained device would) and through ``nanomesh.sdk.client``
(ZeroMQ straight to an instance).

Most tests share one module-wide mesh (each with its own service names);
the failover test kills a peer and has its own. Every process a mesh caused
(shims, instances, containers; found by the mesh's directory in their command
line or working directory) must be gone once its peers are killed: the shims
stop their instances when their daemon dies.

Waits are bounded (`wait_until`, 45 s where a deploy, a fetch and a health
check add up on a busy 2-core machine); no assertion is about speed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from mesh_harness import AddressPool, Cluster, Peer
from service_helpers import (
    cli,
    cli_ok,
    cli_retry,
    coap_request,
    copy_service,
    instances,
    owned_processes,
    service_processes,
    supervising_peer,
    wait_instances,
)
from test_control_plane import call, read_token_when_ready, wait_agreed, write

from nanomesh.sdk import client

pytestmark = pytest.mark.integration

WAIT = 45.0
"""Bound for a service to run and pass its health check after a deploy."""
ORPHAN_WAIT = 20.0
"""Bound for instances to end after their daemon died: the shim notices at
once and gives the instance its grace period (5 s) before SIGKILL."""


# --------------------------------------------------------------------------- fixtures


@dataclass
class Mesh:
    cluster: Cluster
    peers: list[Peer]
    token: str

    def others(self, *hosts: str) -> list[Peer]:
        """The peers whose name is not in ``hosts``."""
        return [p for p in self.peers if p.name not in hosts]

    def peer(self, name: str) -> Peer:
        return next(p for p in self.peers if p.name == name)


def start_mesh(cluster: Cluster) -> Mesh:
    """Three converged peers with three Raft voters; the founder's token."""
    peers = cluster.start_mesh(3)
    token = read_token_when_ready(cluster, peers[0])
    wait_agreed(cluster, peers, voters=3)
    return Mesh(cluster, peers, token)


def close_and_check_orphans(cluster: Cluster) -> None:
    """Kill every peer (SIGKILL); then nothing the mesh started may live on."""
    cluster.close()
    deadline = time.monotonic() + ORPHAN_WAIT
    while owned_processes(cluster.root) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = owned_processes(cluster.root)
    for p in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGKILL)
    assert not left, f"processes outlived their SIGKILLed peers: {left}"


@pytest.fixture(scope="module")
def shared_mesh(tmp_path_factory: pytest.TempPathFactory, address_pool: AddressPool
                ) -> Iterator[Mesh]:
    cluster = Cluster(tmp_path_factory.mktemp("mesh"), address_pool)
    try:
        yield start_mesh(cluster)
    finally:
        close_and_check_orphans(cluster)


@pytest.fixture
def mesh(shared_mesh: Mesh, attach_logs: Callable[[Any], None]) -> Mesh:
    """The module's mesh, its peers' logs attached to a failing test's report."""
    attach_logs(shared_mesh.cluster)
    shared_mesh.cluster.check_processes()
    return shared_mesh


@dataclass
class Deployed:
    output: str
    """What `nanomesh deploy services/echo` printed."""
    hosts: dict[str, str]
    """instance id -> peer name."""


@pytest.fixture(scope="module")
def echo(shared_mesh: Mesh) -> Deployed:
    """services/echo (2 replicas, spread) deployed through the CLI, running
    and healthy as every peer sees it."""
    m = shared_mesh
    out = cli_retry(m.cluster, "deploy", str(SERVICES / "echo"), peer=m.peers[1],
                    token=m.token)
    hosts = wait_instances(m.cluster, m.peers, "echo", 2, timeout=WAIT)
    return Deployed(out, hosts)


SERVICES = Path(__file__).resolve().parents[2] / "services"


# --------------------------------------------------------------------------- helpers


def resolve_json(peer: Peer, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(cli_ok("resolve", name, "--json", peer=peer))
    return doc


async def client_call(peer: Peer, service: str, path: str, data: object = None, *,
                      method: str = "GET") -> client.Reply:
    async with client.connect(peer.api) as m:
        return await m.call(service, path, data, method=method, timeout=3.0, retries=2)


async def wait_async(predicate: Callable[[], Any], timeout: float, what: str,
                     cluster: Cluster | None = None) -> Any:
    """`wait_until` for async predicates: exceptions count as "not yet"; the
    last one is reported on timeout."""
    last: BaseException | None = None
    deadline = trio.current_time() + timeout
    while True:
        if cluster is not None:
            cluster.check_processes()
        try:
            result = await predicate()
        except Exception as exc:  # any failure means "not yet"
            last = exc
        else:
            if result:
                return result
        if trio.current_time() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; "
                                 f"last error: {last!r}")
        await trio.sleep(0.2)


def settled_revision(mesh: Mesh, quiet: float = 1.0) -> int:
    """The Raft revision once every peer agrees on it and it has not moved
    for ``quiet`` s (an earlier test's undeploy is followed by the leader's
    plan commit: a change this test did not make)."""
    def settled() -> int | None:
        first = wait_agreed(mesh.cluster, mesh.peers)["revision"]
        time.sleep(quiet)
        again = wait_agreed(mesh.cluster, mesh.peers)["revision"]
        return int(again) if again == first else None
    result: int = mesh.cluster.wait(settled, WAIT, what="a settled Raft revision")
    return result


def http_get(address: str, path: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as resp:
        return resp.status, resp.read()


# --------------------------------------------------------------------------- by name


async def test_echo_deployed_by_cli_is_reachable_by_name_from_a_peer_without_it(
        mesh: Mesh, echo: Deployed) -> None:
    """`nanomesh deploy services/echo` (a subprocess, sent to the second
    peer) uploads the bundle and deploys; both instances run,
    healthy, on distinct peers, each a real process under its own peer's
    daemon. `nanomesh resolve echo --json` on every peer lists both
    instances' zmq and coap endpoints on their hosts' addresses. From the
    one peer that hosts no instance, a call by name succeeds through its CoAP
    gateway (GET, POST, a 6 KiB block-wise body) and through nanomesh.sdk.client
    (ZeroMQ), and `whoami` answers each instance id."""
    assert "uploaded bundle" in echo.output and "deployed echo" in echo.output, echo.output
    assert sorted(echo.hosts) == ["echo/0", "echo/1"]
    procs = service_processes(mesh.cluster, "echo")
    assert sorted((p.instance, supervising_peer(mesh.cluster, p.pid)) for p in procs) == \
        sorted(echo.hosts.items()), procs

    by_name = {p.name: p.ip for p in mesh.peers}
    for p in mesh.peers:
        endpoints = resolve_json(p, "echo")["endpoints"]
        seen = {(e["instance"], e["protocol"]): e for e in endpoints}
        assert set(seen) == {(i, proto) for i in echo.hosts for proto in ("zmq", "coap")}, \
            (p.name, endpoints)
        for (iid, _), e in seen.items():
            assert e["peer"] == echo.hosts[iid] and e["host"] == by_name[e["peer"]], e
            assert e["state"] == "running" and e["health"] == "healthy", e
            assert 0 < e["port"] < 65536, e

    [remote] = mesh.others(*echo.hosts.values())
    reply = await coap_request(remote.ip, "s/echo/whoami")
    assert reply.ok and reply.payload.decode().strip('"') in echo.hosts, reply
    reply = await coap_request(remote.ip, "s/echo/echo/hello-coap")
    assert reply.ok and b"hello-coap" in reply.payload, reply
    reply = await coap_request(remote.ip, "s/echo/echo", method="POST", payload=b"posted")
    assert reply.ok and reply.payload == b"posted", reply
    big = bytes(range(256)) * 24  # 6 KiB: block-wise both ways through the gateway
    reply = await coap_request(remote.ip, "s/echo/echo", method="POST", payload=big)
    assert reply.ok and reply.payload == big, (reply.code, len(reply.payload))
    missing = await coap_request(remote.ip, "s/no-such-service/x")
    assert missing.code == "4.04 Not Found", missing

    answered = set()
    async with client.connect(remote.api) as m:
        for _ in range(6):
            r = await m.call("echo", "whoami", timeout=3.0)
            answered.add(r.text().strip('"'))
        r = await m.call("echo", "echo", {"k": [1, 2]}, method="POST")
        assert r.json() == {"k": [1, 2]}
        with pytest.raises(client.ServiceUnavailable):
            await m.call("no-such-service", "x")
    assert answered == set(echo.hosts), answered  # the client rotates between replicas

    out = cli_ok("call", "echo", "echo/from-cli", peer=remote)
    assert "from-cli" in out, out


# --------------------------------------------------------------------------- failover


async def test_hosting_peer_sigkilled_calls_succeed_again_elsewhere(
        cluster: Cluster) -> None:
    """Failover: echo with replicas = 1, deployed by the CLI; SIGKILL the
    peer that hosts it. Calls by name from a surviving peer, through the
    client and through the CoAP gateway, succeed again (bounded wait) once the
    instance runs on a survivor, which answers `whoami` with the same
    instance id; the killed peer's instance process is gone (its shim
    stopped it), and exactly one echo process runs, under a live daemon."""
    m = start_mesh(cluster)
    folder = copy_service("echo", cluster.root / "echo-one", {r"replicas = 2": "replicas = 1"})
    cli_retry(cluster, "deploy", str(folder), peer=m.peers[0], token=m.token)
    [(iid, host)] = wait_instances(cluster, m.peers, "echo", 1, timeout=WAIT).items()
    [old] = service_processes(cluster, "echo")
    assert supervising_peer(cluster, old.pid) == host
    survivors = m.others(host)
    caller = survivors[0]
    assert (await client_call(caller, "echo", "whoami")).text().strip('"') == iid

    m.peer(host).kill()

    async def via_client() -> bool:
        return (await client_call(caller, "echo", "whoami")).text().strip('"') == iid

    async def via_coap() -> bool:
        reply = await coap_request(caller.ip, "s/echo/whoami", timeout=3.0)
        return reply.ok and reply.payload.decode().strip('"') == iid

    await wait_async(via_client, 60, "a call by name through the client to succeed", cluster)
    await wait_async(via_coap, 30, "a call by name through the CoAP gateway to succeed",
                     cluster)
    [(_, new_host)] = wait_instances(cluster, survivors, "echo", 1, timeout=WAIT).items()
    assert new_host != host
    for p in survivors:  # from the other survivor too, whichever hosts it now
        reply = await coap_request(p.ip, "s/echo/echo/again")
        assert reply.ok and b"again" in reply.payload, (p.name, reply)

    def only_new() -> list[Any] | None:
        procs = service_processes(cluster, "echo")
        return procs if [p.pid for p in procs] != [old.pid] and len(procs) == 1 else None
    cluster.wait(only_new, ORPHAN_WAIT, what="the killed peer's echo process to be gone "
                 "and one echo process to run",
                 describe=lambda: str(service_processes(cluster, "echo")))
    [new] = service_processes(cluster, "echo")
    assert supervising_peer(cluster, new.pid) == new_host
    close_and_check_orphans(cluster)


# --------------------------------------------------------------------------- seed files


def test_seed_file_round_trip_keeps_the_counter(mesh: Mesh, tmp_path: Path) -> None:
    """`nanomesh deploy services/counter`; POST count three times (by 1, 2,
    4) through `nanomesh call`; `undeploy counter --save SEED`, sent to a peer
    that neither received the upload nor runs the instance (so it holds no
    copy of the bundle: the seed's bundle must come from the mesh), writes
    the seed and removes the service (no process, not in any peer's
    services, resolve is a 404); `deploy --from-seed SEED` brings it back
    and `GET count` answers the saved 7."""
    cluster, via = mesh.cluster, mesh.peers[2]
    cli_retry(cluster, "deploy", str(SERVICES / "counter"), peer=via, token=mesh.token)
    [host] = wait_instances(cluster, mesh.peers, "counter", 1, timeout=WAIT).values()
    saver = mesh.others(via.name, host)[0]
    for by, total in ((1, 1), (2, 3), (4, 7)):
        out = cli_ok("call", "counter", "count", "--data", json.dumps({"by": by}), peer=via)
        assert json.loads(out) == {"count": total}, out
    assert json.loads(cli_ok("call", "counter", "count", peer=mesh.peers[0])) == {"count": 7}

    seed = tmp_path / "counter.seed"
    out = cli_retry(cluster, "undeploy", "counter", "--save", str(seed), peer=saver,
                    token=mesh.token)
    assert "saved counter" in out and "undeployed counter" in out, out
    assert seed.is_file() and seed.stat().st_size > 0
    for p in mesh.peers:
        cluster.wait(lambda p=p: "counter" not in {d["name"] for d in p.get("/v1/services")}
                     and not instances(p, "counter"), what=f"counter gone on {p.name}")
    cluster.wait(lambda: not service_processes(cluster, "counter"),
                 what="counter's process to end")
    assert call(mesh.peers[0], "GET", "/v1/resolve/counter")[0] == 404

    out = cli_retry(cluster, "deploy", "--from-seed", str(seed), peer=mesh.peers[0],
                    token=mesh.token)
    assert "restoring counter" in out and "deployed counter" in out, out
    wait_instances(cluster, mesh.peers, "counter", 1, timeout=WAIT)
    assert json.loads(cli_ok("call", "counter", "count", peer=via)) == {"count": 7}
    assert json.loads(cli_ok("call", "counter", "count", "--data", "{}", peer=via)) == \
        {"count": 8}


# --------------------------------------------------------------------------- idle / activate


async def test_idle_stops_the_process_and_activate_starts_it(mesh: Mesh) -> None:
    """`nanomesh idle` keeps the instance placed but stops it: every peer's
    placement shows it `idle`, no process of it runs, resolve lists no
    endpoint and a call by name is refused as unavailable; `nanomesh
    activate` runs it again (running, healthy, answering). A client that was
    refused while it was idle, and keeps calling, gets through as soon as
    the peer resolves it again (no stale "nothing runs" answer is reused)."""
    cluster = mesh.cluster
    folder = copy_service("echo", cluster.root / "idler",
                          {r'name = "echo"': 'name = "idler"', r"replicas = 2": "replicas = 1"})
    cli_retry(cluster, "deploy", str(folder), peer=mesh.peers[0], token=mesh.token)
    [(iid, host)] = wait_instances(cluster, mesh.peers, "idler", 1, timeout=WAIT).items()
    assert len(service_processes(cluster, "idler")) == 1

    out = cli_retry(cluster, "idle", "idler", peer=mesh.peers[1], token=mesh.token)
    assert "idler is idle" in out, out
    assert wait_instances(cluster, mesh.peers, "idler", 1, state="idle", health=None) == \
        {iid: host}
    cluster.wait(lambda: not service_processes(cluster, "idler"), what="idler's process to end")
    cluster.wait(lambda: resolve_json(mesh.peers[2], "idler")["endpoints"] == [],
                 what="no endpoint of idler resolved")
    with pytest.raises(client.ServiceUnavailable):
        await client_call(mesh.peers[2], "idler", "whoami")
    reply = await coap_request(mesh.peers[2].ip, "s/idler/whoami")
    assert reply.code.startswith("5."), reply  # 5.03: no instance can serve now

    caller = mesh.others(host)[0]
    async with client.connect(caller.api) as long_lived:
        with pytest.raises(client.ServiceUnavailable):
            await long_lived.call("idler", "whoami", retries=0)
        out = cli_retry(cluster, "activate", "idler", peer=mesh.peers[2], token=mesh.token)
        assert "idler is active" in out, out

        def resolvable() -> bool:
            endpoints = caller.get("/v1/resolve/idler?protocol=zmq")["endpoints"]
            return any(e["health"] == "healthy" for e in endpoints)
        with trio.fail_after(WAIT):
            while True:  # the caller keeps trying, as a client of an idle service would
                with contextlib.suppress(client.ClientError):  # starting: not yet
                    await long_lived.call("idler", "whoami", retries=0)
                if resolvable():
                    break
                await trio.sleep(0.05)
        # Retries do not hide a stale "nothing runs": that fails before any attempt.
        reply = await long_lived.call("idler", "whoami")
        assert reply.text().strip('"') == iid
    assert wait_instances(cluster, mesh.peers, "idler", 1, timeout=WAIT) == {iid: host}
    assert len(service_processes(cluster, "idler")) == 1


# --------------------------------------------------------------------------- logs


def test_logs_prints_each_instance(mesh: Mesh, echo: Deployed) -> None:
    """`nanomesh logs echo` (from any peer) prints a header and lines from
    each instance's log, fetched from the peer that runs it: each instance
    logged its endpoints on its own host's address."""
    out = cli_ok("logs", "echo", peer=mesh.peers[0], token=mesh.token)
    sections = {}
    for chunk in out.split("==> ")[1:]:
        header, _, body = chunk.partition("\n")
        sections[header.split()[0]] = (header, body)
    assert set(sections) == set(echo.hosts), out
    for iid, host in echo.hosts.items():
        header, body = sections[iid]
        assert f"on {host}" in header and "running" in header, header
        ip = mesh.peer(host).ip
        assert f"{iid}: endpoint api (zmq) on {ip}:" in body, (iid, body)
        assert f"starting {iid}" in body, (iid, body)
    only = cli_ok("logs", "echo", "--instance", "1", "-n", "5", peer=mesh.peers[2],
                  token=mesh.token)
    assert only.count("==> ") == 1 and "echo/1" in only, only
    refused = cli("logs", "echo", peer=mesh.peers[0], token="wrong-token")
    assert refused.returncode != 0 and "needs the mesh's management token" in \
        refused.stdout + refused.stderr, refused


# --------------------------------------------------------------------------- registry


async def test_registry_push_then_deploy_fetches_the_bundle_from_a_peer(
        mesh: Mesh, tmp_path: Path) -> None:
    """`nanomesh registry push DIR` uploads the bundle to one peer only and
    registers it; `nanomesh registry` lists it with its requirements and that
    peer as holder. `deploy --from-registry regecho` (3 replicas, one per
    peer) then runs it everywhere: the two peers that did not have the bundle
    fetched it from the mesh (their data directory now holds bundles/<sha>.tar
    with that sha256) and serve it."""
    cluster = mesh.cluster
    pusher = mesh.peers[1]
    folder = copy_service("echo", tmp_path / "regecho", {
        r'name = "echo"': 'name = "regecho"', r"replicas = 2": "replicas = 3",
        r'version = "0.1.0"': 'version = "1.2.0"'})
    out = cli_ok("registry", "push", str(folder), peer=pusher, token=mesh.token)
    assert "pushed regecho@1.2.0" in out, out

    entry = cluster.wait(lambda: next((e for e in json.loads(cli_ok(
        "registry", "--json", "--peer", mesh.peers[2].api)) if e["name"] == "regecho"), None),
        what="regecho in the registry")
    sha = entry["sha256"]
    assert entry["version"] == "1.2.0" and entry["holders"] == [pusher.name], entry
    assert entry["requires"]["cpu"] == 0.1 and entry["requires"]["memory_mb"] == 48, entry
    table = cli_ok("registry", "--peer", mesh.peers[0].api)
    assert "regecho" in table and "memory_mb=48" in table and pusher.name in table, table
    for p in mesh.others(pusher.name):
        assert not (p.data_dir / "bundles" / f"{sha}.tar").exists(), p.name

    out = cli_retry(cluster, "deploy", "--from-registry", "regecho", peer=mesh.peers[0],
                    token=mesh.token)
    assert "from the registry" in out, out
    hosts = wait_instances(cluster, mesh.peers, "regecho", 3, timeout=WAIT)
    assert set(hosts.values()) == {p.name for p in mesh.peers}
    for p in mesh.peers:
        tar = p.data_dir / "bundles" / f"{sha}.tar"
        assert tar.is_file(), p.name
        assert hashlib.sha256(tar.read_bytes()).hexdigest() == sha, p.name
    for p in mesh.peers:
        reply = await coap_request(p.ip, "s/regecho/echo/fetched")
        assert reply.ok and b"fetched" in reply.payload, (p.name, reply)
    cli_retry(cluster, "undeploy", "regecho", peer=mesh.peers[0], token=mesh.token)
    cluster.wait(lambda: not any(instances(p, "regecho") for p in mesh.peers)
                 and not service_processes(cluster, "regecho"), what="regecho gone")


# --------------------------------------------------------------------------- bad manifests


def test_bad_manifests_are_refused_and_echo_keeps_running(mesh: Mesh, echo: Deployed,
                                                          tmp_path: Path) -> None:
    """Updates of the running echo with a bad manifest are refused, naming
    the field: by the CLI before anything is uploaded (an unknown endpoint
    protocol, a bad restart policy), and by the API (400) for a document the
    CLI never checked (a memory limit of 1 MiB, an endpoint port 70000).
    Nothing changes: same services and revision, same placement, same
    instance processes (pids)."""
    cluster = mesh.cluster
    revision = settled_revision(mesh)
    before_procs = sorted((p.instance, p.pid) for p in service_processes(cluster, "echo"))
    before = {p.name: (instances(p, "echo"), p.get("/v1/services")) for p in mesh.peers}

    cases = [({r'protocol = "coap"': 'protocol = "gopher"'}, "endpoints[1].protocol"),
             ({r'policy = "always"': 'policy = "sometimes"'}, "restart.policy")]
    for i, (change, field) in enumerate(cases):
        folder = copy_service("echo", tmp_path / f"bad-{i}", change)
        result = cli("deploy", str(folder), peer=mesh.peers[0], token=mesh.token)
        assert result.returncode != 0 and "Traceback" not in result.stderr, result
        assert "nanomesh: error:" in result.stderr and field in result.stderr, result.stderr
        assert "uploaded bundle" not in result.stdout, result.stdout

    [doc] = [d for d in mesh.peers[1].get("/v1/services") if d["name"] == "echo"]
    from nanomesh.runtime.manifest import manifest_from_document
    good = manifest_from_document(doc)
    bad_bodies = [({**good, "limits": {"memory_mb": 1}}, "limits.memory_mb"),
                  ({**good, "endpoints": [{"name": "api", "protocol": "zmq", "port": 70000}]},
                   "endpoints[0].port")]
    for body, field in bad_bodies:
        code, reply = write(cluster, mesh.peers[2], "POST", "/v1/services", body, mesh.token)
        assert code == 400 and field in reply["error"], (field, code, reply)

    assert wait_agreed(cluster, mesh.peers)["revision"] == revision
    for p in mesh.peers:
        assert (instances(p, "echo"), p.get("/v1/services")) == before[p.name], p.name
    assert sorted((p.instance, p.pid) for p in service_processes(cluster, "echo")) == \
        before_procs


# --------------------------------------------------------------------------- containers


CONTAINERS_OK = (os.geteuid() == 0 and shutil.which("runc") is not None
                 and os.path.exists("/bin/busybox"))


@pytest.mark.skipif(not CONTAINERS_OK, reason="needs root, runc and busybox-static")
def test_container_service_through_the_mesh(mesh: Mesh, tmp_path: Path) -> None:
    """services/counter-container (a busybox rootfs built by its
    build-rootfs.sh, run by runc) deployed through the CLI runs and passes
    its HTTP health check; its http endpoint from `nanomesh resolve` answers
    GET /count with a number that grows; undeploy stops the container."""
    import subprocess

    cluster = mesh.cluster
    folder = copy_service("counter-container", tmp_path / "ctr")
    subprocess.run(["sh", str(folder / "build-rootfs.sh")], check=True, capture_output=True,
                   timeout=60)
    cli_retry(cluster, "deploy", str(folder), peer=mesh.peers[0], token=mesh.token)
    [(_, host)] = wait_instances(cluster, mesh.peers, "counter-container", 1,
                                   timeout=WAIT).items()
    [ep] = resolve_json(mesh.peers[1], "counter-container")["endpoints"]
    assert ep["protocol"] == "http" and ep["peer"] == host and ep["host"] == mesh.peer(host).ip
    address = f"{ep['host']}:{ep['port']}"

    def count() -> int | None:
        try:
            status, body = http_get(address, "/count")
        except OSError:
            return None
        return int(body) if status == 200 and body.strip().isdigit() else None
    first = cluster.wait(count, 20, what=f"GET http://{address}/count")
    procs = service_processes(cluster, "counter-container")
    assert procs and all(supervising_peer(cluster, p.pid) == host for p in procs), procs
    cluster.wait(lambda: (count() or 0) > first, 20, what="the count to grow")

    cli_retry(cluster, "undeploy", "counter-container", peer=mesh.peers[0], token=mesh.token)
    cluster.wait(lambda: count() is None and not instances(mesh.peers[0], "counter-container")
                 and not service_processes(cluster, "counter-container"),
                 what="the container to stop")
