"""The real leaf firmware (``firmware/``, MicroPython unix port, hardware
stand-ins from ``firmware/unix``) against real peer daemons (issue 11):
it registers and reports through a peer's CoAP gateway, its devices join
that peer's gossiped profile, garbage datagrams crash neither side, it fails
over to the next peer when its peer is killed, forged answers racing its
peer's make it drop nothing, a silent leaf is marked gone,
a leaf without configured peers finds one by multicast, and a mobile agent
migrates from leaf to leaf, rerouting past a dead one."""

from __future__ import annotations

import json
import os
import random
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import trio
from mesh_harness import Cluster, Peer
from service_helpers import coap_request

from nanomesh.placement.peers import peer_view_from_profile
from nanomesh.security.servicekeys import ServiceKeys
from nanomesh.testing.leaf import LeafProcess
from nanomesh.transport.rpc import zmq_call
from nanomesh.wire import Keyring
from nanomesh.wire.leaf import seal
from nanomesh.wire.service_traffic import Request

T = TypeVar("T")
KEY = bytes(range(100, 132))
DEVICES = [{"r": "temp", "type": "body-temperature", "driver": "ds18x20", "pin": 4,
            "conversion_ms": 0},
           {"r": "motion", "type": "pir", "driver": "in", "pin": 5}]


async def eventually(probe: Callable[[], Awaitable[T]], what: str, cluster: Cluster,
                     leaf: LeafProcess | None = None, timeout: float = 30.0) -> T:
    """Poll the async `probe` until it returns something truthy; fail fast
    if a peer (or the leaf) that should run died."""
    last: Any = None
    with trio.move_on_after(timeout):
        while True:
            cluster.check_processes()
            if leaf is not None:
                assert leaf.running, "the leaf exited:\n" + "\n".join(leaf.lines()[-20:])
            try:
                last = await probe()
            except (trio.TooSlowError, OSError) as exc:
                last = exc
            else:
                if last:
                    return last
            await trio.sleep(0.1)
    leaf_log = "\n".join(leaf.lines()[-15:]) if leaf else ""
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}\n{leaf_log}")


def value_at(peer: Peer, expected: float) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        reply = await coap_request(peer.ip, "leaf/bed-1/temp", timeout=3)
        return reply.ok and json.loads(reply.payload)["value"] == expected
    return probe


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def garbage(rng: random.Random) -> list[bytes]:
    """Random bytes, and CoAP-shaped messages that belong to no exchange."""
    out = [rng.randbytes(rng.randrange(0, 80)) for _ in range(30)]
    for _ in range(10):
        mid, token = rng.randrange(65536), rng.randbytes(4)
        out.append(struct.pack("!BBH", 0x64, 0x44, mid) + token)        # ACK 2.04
        out.append(struct.pack("!BBH", 0x44, 0x45, mid) + token + b"\xff{}")  # CON 2.05
        out.append(struct.pack("!BBH", 0x70, 0, mid))                    # RST
        out.append(b"\x44\x02" + rng.randbytes(6) + b"\xbd\xff" + rng.randbytes(10))
    return out


def leaf_devices_of(observer: Peer, peer_name: str) -> list[dict[str, Any]]:
    profile = observer.members()[peer_name]["profile"]
    return [d for d in profile.get("devices", []) if d.get("source") == "leaf"]


def leaf_config(tmp_path: Path, leaves: tuple[str, ...] = ("bed-1",)) -> list[str]:
    """Peer arguments: a config whose leaf key file holds the leaves' key."""
    keys = tmp_path / "leaf.keys"
    keys.write_text("# leaves of the ward\n" + "".join(f"{leaf} {KEY.hex()}\n"
                                                      for leaf in leaves))
    config = tmp_path / "peer.toml"
    config.write_text(f'[peer]\nleaf_keys = "{keys}"\n')
    return ["--config", str(config)]


async def test_leaf_registers_reports_survives_garbage_fails_over_and_goes_gone(
        cluster: Cluster, tmp_path: Path) -> None:
    extra = leaf_config(tmp_path)
    p1 = cluster.add("ward-1", extra_args=extra)
    cluster.wait_api([p1])
    p2 = cluster.add("ward-2", extra_args=extra, join=[p1.gossip])
    cluster.wait_converged([p1, p2])

    port = free_udp_port()
    leaf = LeafProcess(tmp_path, "bed-1", KEY, [f"{p1.ip}:5683", f"{p2.ip}:5683"],
                       devices=DEVICES, period=0.2, port=port)
    leaf.set("ds18x20-4", 36.6)
    leaf.set("pin5", 1)
    try:
        leaf.start()
        # Registers at its first peer and reports.
        await eventually(value_at(p1, 36.6), "ward-1 to serve the leaf's reading",
                         cluster, leaf)
        assert leaf.events("registered") == [f"{p1.ip}:5683"]
        motion = await coap_request(p1.ip, "leaf/bed-1/motion")
        assert json.loads(motion.payload) == {"value": 1, "n": json.loads(
            motion.payload)["n"], "state": "up"}

        # Its devices join ward-1's profile, as ward-2 sees it by gossip, so
        # placement binds a body-temperature service to ward-1.
        devices = cluster.wait(lambda: leaf_devices_of(p2, "ward-1"),
                               what="ward-1's leaf devices in ward-2's view")
        assert {(d["type"], d["leaf"]) for d in devices} == {
            ("body-temperature", "bed-1"), ("pir", "bed-1")}
        view = peer_view_from_profile("ward-1", p2.members()["ward-1"]["profile"], True)
        assert {"body-temperature", "pir"} <= view.capabilities
        assert not leaf_devices_of(p2, "ward-2")

        # Garbage to the leaf and to the peer: both carry on.
        rng = random.Random(11)
        print("garbage seed 11")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for datagram in garbage(rng):
                s.sendto(datagram, ("127.0.0.1", port))
                s.sendto(datagram, (p1.ip, 5683))
        forged = await coap_request(p1.ip, "leaf/register", method="POST", payload=seal(
            bytes(32), ("leaf", "register"), {"leaf": "bed-1", "n": 10**9, "period": 1,
                                              "dev": [{"r": "x", "type": "pir"}]}))
        assert forged.code.startswith("4.01"), forged
        junk = await coap_request(p1.ip, "leaf/bed-1/report", method="POST",
                                  payload=os.urandom(40))
        assert junk.code.startswith("4.00"), junk
        leaf.set("ds18x20-4", 37.5)
        await eventually(value_at(p1, 37.5), "a new reading after the garbage", cluster, leaf)
        assert leaf.stats()["ignored"] > 0
        assert leaf_devices_of(p1, "ward-1")  # the forged registration changed nothing

        # Its peer dies: the leaf fails over to the next one.
        p1.kill()
        await eventually(value_at(p2, 37.5), "ward-2 to serve the reading after failover",
                         cluster, leaf)
        assert leaf.events("failover")[0] == f"{p2.ip}:5683"
        leaf.set("ds18x20-4", 38.0)
        await eventually(value_at(p2, 38.0), "a new reading at ward-2", cluster, leaf)
        cluster.wait(lambda: leaf_devices_of(p2, "ward-2"), what="ward-2's leaf devices")
    finally:
        leaf.kill()

    # A silent leaf is gone, and its devices leave the profile.
    async def gone() -> bool:
        reply = await coap_request(p2.ip, "leaf/bed-1", timeout=3)
        return reply.ok and json.loads(reply.payload)["state"] == "gone"

    await eventually(gone, "the silent leaf to be marked gone", cluster)
    cluster.wait(lambda: not leaf_devices_of(p2, "ward-2"), what="leaf devices to leave")
    assert p2.members()["ward-2"]["profile"]["leaves"] == {"bed-1": "gone"}


FAKE_PEER_IP = "127.0.22.1"
"""The forging peer's address: this test's own loopback range (not the cluster's)."""


def forgeries(request: bytes) -> list[bytes]:
    """Answers an attacker who sees `request` sends at once: piggy-backed
    ACKs with its message id and token, untagged or with a wrong tag, that
    would say taken (a lost reading), not registered (a needless
    registration), refused (a dropped reading) or welcome (the leaf's name)."""
    first, _code, mid = struct.unpack_from("!BBH", request)
    token = request[4:4 + (first & 15)]
    codes = [0x45] if b"hello" in request else [0x41, 0x44, 0x84, 0x81]
    return [struct.pack("!BBH", 0x60 | len(token), code, mid) + token + b"\xff" + payload
            for code in codes for payload in (b'{"np": "0000000000000000"}',
                                              os.urandom(16) + b'{"np": "00"}')]


async def test_forged_answers_racing_the_real_peer_lose_no_reading(
        cluster: Cluster, tmp_path: Path) -> None:
    """Issue 11: an attacker on the path (here a relay on the leaf's way to
    its peer) answers every message of the leaf at once with forged ACKs
    (2.01/2.04, 4.04, 4.01, a welcome) and drops the first transmission;
    it relays the rest and the real peer's answers. The leaf believes none
    of the forgeries: it retransmits, registers, and every reading is
    delivered, none dropped or refused. (A leaf that took a forged 2.04
    would never retransmit: its reading would be lost.)"""
    real = cluster.add("ward-4", extra_args=leaf_config(tmp_path))
    cluster.wait_api([real])
    relay = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await relay.bind((FAKE_PEER_IP, 0))
    upstream = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await upstream.bind((FAKE_PEER_IP, 0))
    forged = 0
    seen: set[bytes] = set()
    leaf_addr: list[Any] = []

    async def from_leaf() -> None:
        nonlocal forged
        while True:
            data, src = await relay.recvfrom(2048)
            leaf_addr[:] = [src]
            if data[1] and data not in seen:
                # A request's first transmission: answer it with forgeries
                # and drop it, so only a leaf that ignores them retransmits
                # and gets its message through (the next copy is relayed).
                seen.add(data)
                for answer in forgeries(data):
                    await relay.sendto(answer, src)
                    forged += 1
                continue
            await upstream.sendto(data, (real.ip, 5683))

    async def from_peer() -> None:
        while True:
            data, _src = await upstream.recvfrom(2048)
            await relay.sendto(data, leaf_addr[0])

    via = f"{FAKE_PEER_IP}:{relay.getsockname()[1]}"
    leaf = LeafProcess(tmp_path, "bed-1", KEY, [via],
                       devices=DEVICES, period=0.2, coap={"ack_timeout": 0.5,
                                                          "max_retransmit": 2})
    leaf.set("ds18x20-4", 36.6)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(from_leaf)
            nursery.start_soon(from_peer)
            leaf.start()
            await eventually(value_at(real, 36.6), "the real peer to serve the reading",
                             cluster, leaf)
            leaf.set("ds18x20-4", 37.0)
            await eventually(value_at(real, 37.0), "a second reading", cluster, leaf)
            nursery.cancel_scope.cancel()
    finally:
        leaf.kill()
        relay.close()
        upstream.close()
    stats = leaf.stats()
    assert leaf.events("registered") == [via]
    assert not leaf.events("failover"), leaf.lines()[-10:]
    assert stats["delivered"] >= 2 and stats["dropped"] == 0 and stats["refused"] == 0, stats
    assert stats["ignored"] >= forged - 8 > 0, (stats, forged)  # all but the last in flight


async def test_a_leaf_without_configured_peers_finds_one_by_multicast(
        cluster: Cluster, tmp_path: Path) -> None:
    peer = cluster.add("ward-3", extra_args=leaf_config(tmp_path))
    cluster.wait_api([peer])
    leaf = LeafProcess(tmp_path, "bed-1", KEY, [], devices=DEVICES, period=0.2,
                       discover=1.0)
    leaf.set("ds18x20-4", 35.0)
    try:
        leaf.start()
        await eventually(value_at(peer, 35.0), "the discovered peer to serve the reading",
                         cluster, leaf)
        assert f"{peer.ip}:5683" in leaf.events("peers")[0].split(",")
    finally:
        leaf.kill()


async def test_a_mobile_agent_migrates_across_leaves_and_reroutes_past_a_dead_one(
        cluster: Cluster, tmp_path: Path, cluster_key_for_clients: Path) -> None:
    """The user-guidance agent of the meeting-room scenario: light each LED
    along the path in turn; the LED controller in the middle is dead, so the
    agent skips it (rerouting) and its service sees where it went."""
    leds = ("led-1", "led-2", "led-3")
    peer = cluster.add("corridor", extra_args=leaf_config(tmp_path, leds))
    cluster.wait_api([peer])
    controllers = {name: LeafProcess(tmp_path, name, KEY, [f"{peer.ip}:5683"], period=0.2,
                                     devices=[{"r": "led", "type": "led-strip",
                                               "driver": "out", "pin": 15}])
                   for name in leds}
    try:
        for leaf in controllers.values():
            leaf.start()

        async def all_up() -> bool:
            reply = await coap_request(peer.ip, "leaf", timeout=3)
            return reply.ok and all(
                json.loads(reply.payload).get(n, {}).get("state") == "up" for n in leds)

        await eventually(all_up, "three LED controllers up", cluster)
        controllers["led-2"].kill()
        program = [["set", "led", 1], ["wait", 300], ["read", "led"], ["set", "led", 0]]
        keys = ServiceKeys.from_keyring(Keyring.from_file(cluster_key_for_clients))
        started = await zmq_call(f"{peer.ip}:5683", Request(
            "POST", "leaf/agents", json.dumps({"path": list(leds), "prog": program}).encode()),
            10.0, keys=keys)
        assert started.status == 201, started
        agent = json.loads(started.body)["id"]
        # Plain CoAP (not a member) may not start one.
        outsider = await coap_request(peer.ip, "leaf/agents", method="POST",
                                      payload=json.dumps({"path": ["led-1"],
                                                          "prog": program}).encode())
        assert outsider.code.startswith("4.01"), outsider

        async def finished() -> dict[str, Any] | None:
            reply = await coap_request(peer.ip, f"leaf/agents/{agent}", timeout=3)
            state = json.loads(reply.payload) if reply.ok else {}
            return state if state.get("phase") in ("done", "failed") else None

        final = await eventually(finished, "the agent to finish its path", cluster)
        assert final["phase"] == "done", final
        assert final["visited"] == ["led-1", "led-3"] and final["skipped"] == ["led-2"]
        assert final["output"] == {"led-1": [1], "led-3": [1]}  # the LED was on
        for name in ("led-1", "led-3"):
            assert controllers[name].events("agent") == [f"{agent} ok"]
            assert (controllers[name].hw / "pin15").read_text() == "0"  # and off again
    finally:
        for leaf in controllers.values():
            leaf.kill()
