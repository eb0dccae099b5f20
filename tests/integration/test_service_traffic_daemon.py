"""Service traffic between real peers is for members only (issue 8, item 5).

Two peer daemons share a cluster key; `services/counter` (private),
`services/echo` (public) and a test service that publishes events (private)
are deployed through the CLI. An outsider (no key, or another mesh's key)
on the same network:

- cannot call the private counter by ZeroMQ, nor through any peer's CoAP
  gateway, nor at its instance's own CoAP port: the count does not move;
- cannot subscribe to events, nor publish any that members receive;

while members (the cluster key, as `nanomesh call --key-file` and
`nanomesh.sdk.client.connect(key_file=...)` read it) call everything, also
through the gateway's authenticated link; the public echo answers plain CoAP
at every gateway; and an instance cannot publish under another's name.

Waits are bounded; nothing here is about speed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from mesh_harness import AddressPool, Cluster, Peer
from service_helpers import cli, cli_ok, cli_retry, coap_request, wait_instances
from test_control_plane import read_token_when_ready, wait_agreed

from nanomesh.sdk import client
from nanomesh.security.servicekeys import ServiceKeys
from nanomesh.transport.rpc import RpcError, zmq_call
from nanomesh.wire.envelope import Keyring
from nanomesh.wire.service_traffic import Event, Request

pytestmark = pytest.mark.integration

SERVICES = Path(__file__).resolve().parents[2] / "services"
WAIT = 60.0
HERALD = '''
import os, trio
from nanomesh.sdk.events import open_publisher
from nanomesh.sdk.service import NanoService
from nanomesh.security.servicekeys import ServiceKeys

svc = NanoService()

@svc.route("POST", "say/{topic}")
async def say(call):
    await svc.publish("herald/" + call.params["topic"], "honest")
    return "ok"

@svc.route("POST", "forge/{source}")
async def forge(call):
    """Publish claiming another source, with this instance's own keys."""
    keys = ServiceKeys.from_environ(os.environ)
    host = os.environ["NANOMESH_PEER_API"].rpartition(":")[0]
    async with open_publisher(host, 7951, call.params["source"], keys) as pub:
        for _ in range(10):
            pub.publish("herald/forged", b"forged")
            await trio.sleep(0.02)
    return "ok"

svc.run()
'''
MANIFEST = '''name = "herald"
kind = "process"
replicas = 1
[run]
command = ["python3", "-u", "herald.py"]
[[endpoints]]
name = "api"
protocol = "zmq"
port = "auto"
[health]
check = "tcp"
'''


@dataclass
class Mesh:
    cluster: Cluster
    peers: list[Peer]
    key: Path
    token: str

    @property
    def member(self) -> ServiceKeys:
        return ServiceKeys.from_keyring(Keyring.from_file(self.key))


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, address_pool: AddressPool
         ) -> Iterator[Mesh]:
    root = tmp_path_factory.mktemp("auth")
    cluster = Cluster(root, address_pool)
    try:
        key = cluster.new_key()
        peers = cluster.start_mesh(2, key_file=key)
        token = read_token_when_ready(cluster, peers[0])
        wait_agreed(cluster, peers)
        herald = root / "herald"
        herald.mkdir()
        (herald / "herald.py").write_text(HERALD)
        (herald / "nanoservice.toml").write_text(MANIFEST)
        for folder in (SERVICES / "counter", SERVICES / "echo", herald):
            cli_retry(cluster, "deploy", str(folder), peer=peers[0], token=token)
        wait_instances(cluster, peers, "counter", 1, timeout=WAIT)
        wait_instances(cluster, peers, "echo", 2, timeout=WAIT)
        wait_instances(cluster, peers, "herald", 1, health=None, timeout=WAIT)
        yield Mesh(cluster, peers, key, token)
    finally:
        cluster.close()


def endpoint(peer: Peer, service: str, protocol: str) -> str:
    doc: dict[str, Any] = peer.get(f"/v1/resolve/{service}?protocol={protocol}")
    [ep] = [e for e in doc["endpoints"] if e["protocol"] == protocol]
    return str(ep["address"])


async def count(mesh: Mesh) -> int:
    async with client.connect(mesh.peers[0].api, key_file=mesh.key) as m:
        return int((await m.call("counter", "count", timeout=5.0)).json()["count"])


async def test_outsiders_cannot_call_a_private_service(mesh: Mesh) -> None:
    before = await count(mesh)
    zmq_address = endpoint(mesh.peers[0], "counter", "zmq")
    strangers = (None, ServiceKeys.from_keyring(Keyring([os.urandom(32)])))
    for keys in strangers:
        with pytest.raises(RpcError):
            await zmq_call(zmq_address, Request("POST", "count"), 5.0, keys=keys)
    for peer in mesh.peers:
        reply = await coap_request(peer.ip, "s/counter/count", method="POST")
        assert reply.code == "4.01 Unauthorized", (peer.name, reply)
        listing = await coap_request(peer.ip, ".well-known/core")
        assert b"counter" not in listing.payload and b"</s/echo>" in listing.payload, listing
        for keys in strangers:  # nor through the gateway's link
            with pytest.raises(RpcError):
                await zmq_call(f"{peer.ip}:5683", Request("POST", "s/counter/count"), 5.0,
                               keys=keys)
    ip, _, port = endpoint(mesh.peers[0], "counter", "coap").rpartition(":")
    direct = await coap_request(ip, "count", method="POST", port=int(port))
    assert direct.code == "4.01 Unauthorized", direct
    async with client.connect(mesh.peers[0].api, keys=None) as outsider:
        with pytest.raises(client.ClientError):
            await outsider.call("counter", "count", method="POST", timeout=3.0, retries=1)
    assert await count(mesh) == before


async def test_members_call_everything_and_outsiders_the_public_echo(mesh: Mesh) -> None:
    before = await count(mesh)
    for peer in mesh.peers:
        async with client.connect(peer.api, key_file=mesh.key) as m:
            await m.call("counter", "count", method="POST", timeout=5.0)
        answer = await zmq_call(f"{peer.ip}:5683", Request("POST", "s/counter/count"), 10.0,
                                keys=mesh.member)  # through the gateway's link
        assert answer.status == 200, answer
        reply = await coap_request(peer.ip, "s/echo/echo/hi")
        assert reply.ok and reply.payload == b"hi", (peer.name, reply)
    assert await count(mesh) == before + 2 * len(mesh.peers)
    out = cli_ok("call", "counter", "count", "--key-file", str(mesh.key), peer=mesh.peers[1])
    assert '"count"' in out, out
    refused = cli("call", "counter", "count", "--key-file", "/nonexistent/key",
                  peer=mesh.peers[1])
    assert refused.returncode != 0 and "/nonexistent/key" in refused.stderr, refused.stderr


async def test_events_are_for_members_and_sources_cannot_be_forged(mesh: Mesh) -> None:
    member_heard: list[Event] = []
    outsider_heard: list[Event] = []

    async def listen(sub: Any, out: list[Event]) -> None:
        async for ev in sub:
            out.append(ev)

    api = mesh.peers[1].api
    async with client.connect(api, key_file=mesh.key) as member, \
            client.connect(api, keys=None) as outsider, \
            member.subscribe("herald/") as member_sub, \
            outsider.subscribe("herald/") as outsider_sub, \
            trio.open_nursery() as nursery:
        nursery.start_soon(listen, member_sub, member_heard)
        nursery.start_soon(listen, outsider_sub, outsider_heard)
        with trio.fail_after(WAIT):
            while not any(ev.topic == "herald/op" for ev in member_heard) or \
                    not any(ev.topic == "herald/honest" for ev in member_heard):
                await member.call("herald", "say/honest", method="POST", timeout=5.0)
                await member.call("herald", "forge/counter%2F0", method="POST", timeout=5.0)
                await member.publish("herald/op", "operator")
                await outsider.publish("herald/outsider", "intruder")
                await trio.sleep(0.2)
        await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    assert {(ev.topic, ev.source) for ev in member_heard} == {
        ("herald/honest", "herald/0"), ("herald/op", member.source)}, member_heard
    assert outsider_heard == []
