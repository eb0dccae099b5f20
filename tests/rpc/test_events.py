"""Publish/subscribe through two real event relays (`nanomesh.sdk.events`):
a subscriber hears publishers on either peer; relays drop garbage."""

from __future__ import annotations

import collections
import functools

import pytest
import trio
import zmq
from rpc_helpers import fake_peer_api, free_port

from nanomesh.errors import ConfigError
from nanomesh.sdk.client import connect
from nanomesh.sdk.events import relay_changes, serve_event_relay
from nanomesh.transport import zmqtrio
from nanomesh.wire.service_traffic import Event

IP_A, IP_B = "127.0.51.31", "127.0.51.32"


async def publish_until_heard(mesh: object, topic: str, data: object,
                              heard: list[Event], count: int) -> None:
    """Pub/sub is best effort (a new connection may miss the first events):
    publish again every 50 ms until the subscriber has `count` events."""
    for _ in range(200):
        await mesh.publish(topic, data)  # type: ignore[attr-defined]
        await trio.sleep(0.05)
        if len(heard) >= count:
            return
    raise AssertionError(f"no event on {topic} heard")


async def test_pub_sub_through_two_relays(nursery: trio.Nursery) -> None:
    xpub, xsub = free_port(IP_A), free_port(IP_A)
    stats: collections.Counter[str] = collections.Counter()
    for ip in (IP_A, IP_B):
        await nursery.start(functools.partial(serve_event_relay, stats=stats), ip, xsub, xpub)
    ports = {"events_xpub_port": xpub, "events_xsub_port": xsub}
    async with fake_peer_api(IP_A) as api_a, fake_peer_api(IP_B) as api_b:
        members = [{"name": "a", "address": f"{IP_A}:7946", "state": "alive"},
                   {"name": "b", "address": f"{IP_B}:7946", "state": "alive"},
                   {"name": "gone", "address": "127.0.51.39:7946", "state": "dead"}]
        api_a.members = api_b.members = members
        heard: list[Event] = []
        async with connect(api_a.address, **ports) as sub_mesh, \
                connect(api_a.address, **ports) as pub_a, \
                connect(api_b.address, **ports) as pub_b, \
                sub_mesh.subscribe("sensors/") as events:
            assert len(events.relays) == 2          # every live peer, not the dead one

            async def listen() -> None:
                async for ev in events:
                    heard.append(ev)

            async with trio.open_nursery() as inner:
                inner.start_soon(listen)
                with trio.fail_after(20):
                    await pub_a.publish("other/topic", "not for us")
                    await publish_until_heard(pub_a, "sensors/a", {"t": 1}, heard, 1)
                    await publish_until_heard(pub_b, "sensors/b", b"\x01", heard,
                                              len(heard) + 1)
                inner.cancel_scope.cancel()
    topics = {ev.topic for ev in heard}
    assert topics == {"sensors/a", "sensors/b"}
    from_b = next(ev for ev in heard if ev.topic == "sensors/b")
    assert from_b.data == b"\x01" and from_b.source.startswith("client:")
    assert next(ev for ev in heard if ev.topic == "sensors/a").data == b'{"t":1}'
    assert stats["relayed"] >= 2


async def test_relay_drops_garbage_and_carries_on(nursery: trio.Nursery) -> None:
    xpub, xsub = free_port(IP_A), free_port(IP_A)
    stats: collections.Counter[str] = collections.Counter()
    await nursery.start(functools.partial(serve_event_relay, stats=stats), IP_A, xsub, xpub)
    sub = zmqtrio.socket(zmq.SUB)
    sub.raw.setsockopt(zmq.SUBSCRIBE, b"")
    sub.raw.connect(f"tcp://{IP_A}:{xpub}")
    pub = zmqtrio.socket(zmq.PUB)
    pub.raw.connect(f"tcp://{IP_A}:{xsub}")
    async with sub, pub:
        with trio.fail_after(20):
            while stats["dropped-malformed"] < 3:
                pub.send_multipart_nowait([b"t", b"\xc1not msgpack"])
                pub.send_multipart_nowait([b"one frame"])
                pub.send_multipart_nowait([b"\xff\xfe", b"x"])
                await trio.sleep(0.05)
            # A good event still goes through after the garbage.
            from nanomesh.wire.service_traffic import encode_event
            got: list[list[bytes]] = []
            while not got:
                pub.send_multipart_nowait(encode_event("ok", "tester", b"1"))
                with trio.move_on_after(0.1):
                    got.append(await sub.recv_multipart())
    assert got[0][0] == b"ok"


async def test_relay_drops_oversize_events_and_carries_on(nursery: trio.Nursery) -> None:
    """An event over MAX_EVENT never reaches a subscriber, whether one frame is
    over it (ZeroMQ drops the publisher's connection, which comes back) or
    only the whole event is; normal events keep flowing after each."""
    from nanomesh.sdk.events import MAX_EVENT
    from nanomesh.wire.service_traffic import encode_event
    xpub, xsub = free_port(IP_A), free_port(IP_A)
    stats: collections.Counter[str] = collections.Counter()
    await nursery.start(functools.partial(serve_event_relay, stats=stats), IP_A, xsub, xpub)
    sub = zmqtrio.socket(zmq.SUB)
    sub.raw.setsockopt(zmq.SUBSCRIBE, b"")
    sub.raw.connect(f"tcp://{IP_A}:{xpub}")
    pub = zmqtrio.socket(zmq.PUB)
    pub.raw.setsockopt(zmq.RECONNECT_IVL, 50)
    pub.raw.connect(f"tcp://{IP_A}:{xsub}")
    got: list[list[bytes]] = []

    async def until_heard(topic: str) -> None:
        for _ in range(400):
            pub.send_multipart_nowait(encode_event(topic, "tester", b"1"))
            with trio.move_on_after(0.05):
                while True:
                    got.append(await sub.recv_multipart())
                    if got[-1][0] == topic.encode():
                        return
        raise AssertionError(f"{topic} never relayed")

    huge = encode_event("huge", "tester", bytes(200 * 1024))        # one frame over the cap
    just_over = encode_event("t" * 200, "tester", bytes(MAX_EVENT - 100))  # only the sum
    assert len(just_over[1]) < MAX_EVENT < sum(map(len, just_over))
    async with sub, pub:
        with trio.fail_after(30):
            await until_heard("ok/0")
            pub.send_multipart_nowait(huge)
            await until_heard("ok/1")
            pub.send_multipart_nowait(just_over)
            await until_heard("ok/2")
    assert all(sum(map(len, frames)) <= MAX_EVENT for frames in got)
    assert stats["dropped-oversize"] == 1 and stats["relayed"] >= 3


def test_publisher_refuses_an_oversize_event() -> None:
    from nanomesh.sdk.events import MAX_EVENT, Publisher
    sock = zmqtrio.socket(zmq.PUB)
    try:
        publisher = Publisher(sock, "me")
        publisher.publish("small", bytes(MAX_EVENT // 2))
        with pytest.raises(ValueError, match="exceeds the 65536-byte limit"):
            publisher.publish("big", bytes(MAX_EVENT))
    finally:
        sock.close()


async def test_relay_port_in_use_is_a_config_error(nursery: trio.Nursery) -> None:
    xpub, xsub = free_port(IP_B), free_port(IP_B)
    await nursery.start(serve_event_relay, IP_B, xsub, xpub)
    with pytest.raises(ConfigError, match=f"{IP_B}:{xsub}"):
        await serve_event_relay(IP_B, xsub, xpub)


def test_relay_changes() -> None:
    assert relay_changes({"a", "b"}, {"b", "c"}) == (["c"], ["a"])
    assert relay_changes(set(), set()) == ([], [])


def test_config_events_ports(tmp_path: object) -> None:
    from pathlib import Path

    from nanomesh.config import build_config
    assert isinstance(tmp_path, Path)
    cfg = build_config(bind="127.0.51.33")
    assert (cfg.events_xpub_port, cfg.events_xsub_port) == (7950, 7951)
    for table, message in [("events_xpub_port = 7947", "api port"),
                           ("events_xsub_port = 7950", "must differ"),
                           ("events_xsub_port = 70000", "events_xsub_port must be a port")]:
        path = tmp_path / "peer.toml"
        path.write_text(f"[peer]\n{table}\n")
        with pytest.raises(ConfigError, match=message):
            build_config(config_file=path, bind="127.0.51.33")
    path = tmp_path / "off.toml"
    path.write_text("[peer]\nevents_xpub_port = 0\n")
    assert build_config(config_file=path, bind="127.0.51.33").events_xsub_port == 0
