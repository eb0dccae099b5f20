"""Operators see, scrape and follow the mesh (issue 13), on real daemons.

One two-peer mesh for the module (loopback from the harness' pool): the
second peer logs JSON (``--log-format json``). A Prometheus scrape of
``/v1/metrics`` is parsed with prometheus_client's own text parser and its
counters move; ``/v1/openapi.json`` documents ``/v1/metrics``; ``nanomesh
logs -f`` follows a crash-looping service's lines across its restarts until
SIGINT.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mesh_harness import PY, AddressPool, Cluster, Peer
from prometheus_client.parser import text_string_to_metric_families
from service_helpers import REPO, cli_retry, coap_request
from test_control_plane import read_token_when_ready, wait_agreed

pytestmark = pytest.mark.integration


class Mesh:
    def __init__(self, cluster: Cluster, peers: list[Peer], token: str) -> None:
        self.cluster, self.peers, self.token = cluster, peers, token


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, address_pool: AddressPool
         ) -> Iterator[Mesh]:
    cluster = Cluster(tmp_path_factory.mktemp("obs"), address_pool)
    try:
        seed = cluster.add("obs-1")
        cluster.wait_api([seed])
        second = cluster.add("obs-2", join=[seed.gossip], extra_args=["--log-format", "json"])
        peers = [seed, second]
        cluster.wait_converged(peers)
        token = read_token_when_ready(cluster, seed)
        wait_agreed(cluster, peers, min_voters=1)
        yield Mesh(cluster, peers, token)
    finally:
        cluster.close()


@pytest.fixture
def live(mesh: Mesh, attach_logs: Any) -> Mesh:
    attach_logs(mesh.cluster)
    mesh.cluster.check_processes()
    return mesh


def scrape(peer: Peer) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{peer.api}/v1/metrics", timeout=10) as reply:
        assert reply.headers["content-type"].startswith("text/plain")
        text = reply.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return samples


def test_a_scrape_parses_and_its_counters_move(live: Mesh) -> None:
    """Probes and acks grow between two scrapes; members, Raft and bytes read
    the daemon's state; the API counts the scrapes themselves by route."""
    first = scrape(live.peers[0])
    time.sleep(2.0)  # the local preset probes every 0.2 s
    second = scrape(live.peers[0])
    assert second["nanomesh_gossip_probes_total"] > first["nanomesh_gossip_probes_total"] > 0
    assert second["nanomesh_gossip_probe_acks_total"] > first["nanomesh_gossip_probe_acks_total"]
    assert second["nanomesh_members{state=alive}"] == 2
    assert second["nanomesh_raft_term"] >= 1 and second["nanomesh_raft_commit_index"] >= 1
    assert second["nanomesh_raft_role{role=voter}"] == 1
    assert sum(v for k, v in second.items() if k.startswith("nanomesh_raft_leader{")) == 1
    for direction in ("received", "sent"):
        key = f"nanomesh_network_{direction}_bytes_total{{channel=gossip_udp}}"
        assert second[key] > first[key] > 0, key
    route = "nanomesh_http_requests_total{method=GET,route=/v1/metrics,status=200}"
    assert second[route] == first.get(route, 0) + 1
    assert second["process_resident_memory_bytes"] > 0
    other = scrape(live.peers[1])
    assert other["nanomesh_peer_info{name=obs-2,version=0.1.0}"] == 1


async def test_gateway_requests_are_counted_by_code_and_timed(live: Mesh) -> None:
    """Two CoAP requests through a peer's gateway (aiocoap, as a device would)
    show in its metrics: one 2.05 (``/.well-known/core``), one 4.04."""
    peer = live.peers[0]
    before = scrape(peer)
    found = await coap_request(peer.ip, ".well-known/core")
    missing = await coap_request(peer.ip, "s/no-such-service/x")
    assert found.code.startswith("2.05") and missing.code.startswith("4.04"), (found, missing)
    after = scrape(peer)
    for code in ("2.05", "4.04"):
        key = f"nanomesh_gateway_requests_total{{code={code}}}"
        assert after.get(key, 0) == before.get(key, 0) + 1, key
    count = "nanomesh_gateway_request_duration_seconds_count"
    assert after[count] == before[count] + 2
    assert after["nanomesh_gateway_request_duration_seconds_bucket{le=+Inf}"] == after[count]


def test_the_openapi_document_lists_what_the_peer_serves(live: Mesh) -> None:
    with urllib.request.urlopen(f"http://{live.peers[1].api}/v1/openapi.json",
                                timeout=10) as reply:
        doc = json.load(reply)
    assert doc["openapi"] == "3.1.0"
    assert {"/v1/metrics", "/v1/openapi.json", "/v1/members"} <= set(doc["paths"])


def test_a_peer_started_with_json_logs_writes_one_object_per_line(live: Mesh) -> None:
    lines = [line for line in live.peers[1].log_path.read_text().splitlines()
             if line.strip() and not line.startswith("---- harness")]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"ts", "level", "logger", "msg", "peer"} <= r.keys() for r in records)
    assert all(r["peer"] == "obs-2" for r in records)
    assert any(r["logger"] == "nanomesh.peer" and "listening" in r["msg"] for r in records)
    assert not live.peers[0].log_path.read_text().lstrip().startswith("{")  # text by default


TICKER = """\
import os, sys, time
for i in range(3):
    print(f"tick pid={os.getpid()} i={i}", flush=True)
    time.sleep(0.4)
sys.exit(3)
"""


def test_logs_follow_prints_each_new_line_once_across_restarts(live: Mesh, tmp_path: Path
                                                               ) -> None:
    """`nanomesh logs ticker -f`: a service that prints three lines and exits
    (restart policy always) is followed through two restarts; every line of
    every run shows once, in order; SIGINT ends it with status 130."""
    folder = tmp_path / "ticker"
    folder.mkdir()
    (folder / "tick.py").write_text(TICKER)
    (folder / "nanoservice.toml").write_text(
        'name = "ticker"\nversion = "0.1.0"\nkind = "process"\nreplicas = 1\n'
        '[run]\ncommand = ["python3", "-u", "tick.py"]\n[restart]\npolicy = "always"\n'
        '[requires]\ncpu = 0.05\nmemory_mb = 16\n')
    cli_retry(live.cluster, "deploy", str(folder), "--detach", peer=live.peers[0],
              token=live.token)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NANOMESH_")}
    proc = subprocess.Popen([PY, "-m", "nanomesh", "logs", "ticker", "-f", "-n", "1",
                             "--peer", live.peers[1].api, "--token", live.token],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=REPO, stdin=subprocess.DEVNULL)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")),  # type: ignore[union-attr]
                              daemon=True)
    reader.start()

    def pids() -> list[str]:
        return list(dict.fromkeys(line.split("pid=")[1].split()[0]
                                  for line in list(lines) if "tick pid=" in line))
    try:
        live.cluster.wait(lambda: len(pids()) >= 3, 60.0,
                          what="three runs of ticker in `logs -f`",
                          describe=lambda: "".join(lines) + proc.stderr.read()  # type: ignore[union-attr]
                          if proc.poll() is not None else "".join(lines))
    finally:
        proc.send_signal(signal.SIGINT)
        status = proc.wait(timeout=15)
        reader.join(timeout=5)
    assert status == 130, (status, lines)
    ticks = [line.strip() for line in lines if "tick pid=" in line]
    assert len(ticks) == len(set(ticks)), f"a line printed twice: {lines}"
    for pid in pids()[1:-1]:  # whole runs seen from start to end: all three lines, in order
        assert [t for t in ticks if f"pid={pid} " in t] == [
            f"tick pid={pid} i={i}" for i in range(3)], lines
    assert any("ticker/0 failed: " in line for line in lines), lines  # a run's footer
    # The restarts count in the metrics of the peer that ran them.
    restarts = sum(scrape(p).get("nanomesh_instance_restarts_total{service=ticker}", 0)
                   for p in live.peers)
    assert restarts >= len(pids()) - 1, (restarts, pids())
