"""Service traffic authenticated with keys derived from the cluster key
(`nanomesh.security.servicekeys`, issue 8 item 5), on real ZeroMQ sockets: a server
and a relay admit members only, and a relay verifies event sources.

Addresses: 127.0.51.4x only."""

from __future__ import annotations

import base64
import collections
import contextlib
import functools
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import zmq
import zmq.utils.z85
from hypothesis import given, settings
from hypothesis import strategies as st
from rpc_helpers import free_port

from nanomesh.errors import ConfigError
from nanomesh.sdk.events import check_source, open_publisher, open_subscription, serve_event_relay
from nanomesh.security import servicekeys
from nanomesh.security.servicekeys import Credentials, ServiceKeys, zap_reply
from nanomesh.transport import zmqtrio
from nanomesh.transport.rpc import RpcError, serve_rpc, zmq_call
from nanomesh.wire.envelope import Keyring
from nanomesh.wire.service_traffic import Event, Request, Response, call_frames, encode_request

IP = "127.0.51.41"
K1, K2, K3 = os.urandom(32), os.urandom(32), os.urandom(32)


def keys_of(*cluster_keys: bytes) -> ServiceKeys:
    return ServiceKeys.from_keyring(Keyring(cluster_keys))


# ------------------------------------------------------------------ ZeroMQ calls


@contextlib.asynccontextmanager
async def server(nursery: trio.Nursery, keys: ServiceKeys | None) -> AsyncIterator[list[str]]:
    served: list[str] = []

    async def handler(request: Request) -> Response:
        served.append(request.path)
        return Response(200, b"ok")

    address = await nursery.start(functools.partial(serve_rpc, keys=keys),
                                  f"{IP}:{free_port(IP)}", handler)
    served.insert(0, address)
    yield served


async def test_a_server_answers_members_only(nursery: trio.Nursery) -> None:
    """A client with the mesh's key is answered; one without a key, or with
    another mesh's key, fails the CURVE handshake (RpcError, as for a server
    that is down) and its request never reaches the handler."""
    async with server(nursery, keys_of(K1)) as served:
        address = served[0]
        reply = await zmq_call(address, Request("GET", "member"), 5.0, keys=keys_of(K1))
        assert reply.status == 200 and reply.body == b"ok"
        for outsider in (None, keys_of(K2)):
            with pytest.raises(RpcError):
                await zmq_call(address, Request("POST", "outsider"), 5.0, keys=outsider)
        assert served[1:] == ["member"]


async def test_zap_refuses_a_client_that_only_knows_the_server_key(
        nursery: trio.Nursery) -> None:
    """The service *public* key is no secret (every instance's environment
    lists it): one who knows it but holds no member's secret key completes
    no handshake (ZAP refuses its own key), and its request is never served."""
    member = keys_of(K1)
    async with server(nursery, member) as served:
        own = servicekeys.CurveKey.from_secret(os.urandom(32))
        async with zmqtrio.socket(zmq.DEALER) as sock:
            sock.raw.curve_secretkey = own.secret
            sock.raw.curve_publickey = own.public
            sock.raw.curve_serverkey = member.service.public
            sock.raw.connect(f"tcp://{served[0]}")
            sock.send_multipart_nowait(call_frames(b"12345678",
                                                   encode_request(Request("POST", "x"))))
            with trio.move_on_after(1.0) as waited:
                await sock.recv_multipart()
        assert waited.cancelled_caught and served[1:] == []


async def test_calls_survive_a_rolling_key_rotation(nursery: trio.Nursery) -> None:
    """Key rotation (see `nanomesh.security.servicekeys`): a server with keys [K1, K2]
    admits clients of either key. A client whose primary is already K2 meets
    the server's K1 key, fails that handshake and tries its other installed
    key's, and remembers it; a client without K1 at all cannot get in."""
    async with server(nursery, keys_of(K1, K2)) as served:
        address = served[0]
        for client in (keys_of(K1), keys_of(K1, K2), keys_of(K1, K3), keys_of(K2, K1)):
            assert (await zmq_call(address, Request("GET", "x"), 5.0, keys=client)).ok
        assert (await zmq_call(address, Request("GET", "again"), 5.0,
                               keys=keys_of(K2, K1))).ok
        for stranger in (keys_of(K2), keys_of(K3, K2)):
            with pytest.raises(RpcError):
                await zmq_call(address, Request("GET", "y"), 5.0, keys=stranger)
    async with server(nursery, keys_of(K2, K1)) as served:  # the server moved first
        assert (await zmq_call(served[0], Request("GET", "x"), 5.0, keys=keys_of(K1, K2))).ok


# ------------------------------------------------------------------ events


async def hear(sub: object, out: list[Event]) -> None:
    async for ev in sub:  # type: ignore[attr-defined]
        out.append(ev)


async def test_relay_admits_members_and_verifies_event_sources(nursery: trio.Nursery) -> None:
    """Only members subscribe; a local instance's events must name it as
    their source (a forged one is dropped and counted); an operator key may
    name any source; outsiders and other peers' instances cannot publish."""
    creds = Credentials(Keyring([K1]))
    xsub, xpub = free_port(IP), free_port(IP)
    stats: collections.Counter[str] = collections.Counter()
    await nursery.start(functools.partial(serve_event_relay, stats=stats, credentials=creds),
                        IP, xsub, xpub)
    instance = ServiceKeys.from_environ(creds.instance_env("sensor/0"))
    elsewhere = ServiceKeys.from_environ(Credentials(Keyring([K1])).instance_env("far/0"))
    assert instance is not None and elsewhere is not None

    async def relays() -> list[str]:
        return [f"tcp://{IP}:{xpub}"]

    member_heard: list[Event] = []
    outsider_heard: list[Event] = []
    async with open_subscription("t/", relays, keys=keys_of(K1)) as member_sub, \
            open_subscription("t/", relays, keys=None) as outsider_sub, \
            open_subscription("t/", relays, keys=keys_of(K2)) as wrong_sub, \
            open_publisher(IP, xsub, "sensor/0", instance) as honest, \
            open_publisher(IP, xsub, "boss/0", instance) as forger, \
            open_publisher(IP, xsub, "client:ops", keys_of(K1)) as operator, \
            open_publisher(IP, xsub, "sensor/0", None) as outsider, \
            open_publisher(IP, xsub, "far/0", elsewhere) as remote_instance, \
            trio.open_nursery() as listeners:
        for sub, out in ((member_sub, member_heard), (outsider_sub, outsider_heard),
                         (wrong_sub, outsider_heard)):
            listeners.start_soon(hear, sub, out)
        with trio.fail_after(20):
            while {ev.source for ev in member_heard} != {"sensor/0", "client:ops"} \
                    or stats["dropped-forged-source"] == 0:
                for pub, topic in ((honest, "t/honest"), (forger, "t/forged"),
                                   (operator, "t/operator"), (outsider, "t/outsider"),
                                   (remote_instance, "t/remote")):
                    pub.publish(topic, b"x")
                await trio.sleep(0.05)
        await trio.sleep(0.3)  # let stragglers of the refused ones arrive, if any did
        listeners.cancel_scope.cancel()
    assert {(ev.topic, ev.source) for ev in member_heard} == {
        ("t/honest", "sensor/0"), ("t/operator", "client:ops")}
    assert outsider_heard == []


def test_check_source() -> None:
    ev = Event("t", b"", "a/0")
    assert check_source(ev, "a/0") is None
    assert check_source(ev, servicekeys.ANY_SOURCE) is None
    assert check_source(ev, "b/0") == "forged-source"
    assert check_source(ev, None) == "unauthenticated"


# ------------------------------------------------------------------ keys and ZAP (pure)


def test_instance_environment_holds_derived_material_only() -> None:
    """What an instance is given: the service keypair, the accepted keys and
    its own publisher key, none of them the cluster key, and nothing it
    could derive another instance's key or the operator key from."""
    keyring = Keyring([K1, K2])
    creds = Credentials(keyring)
    env = creds.instance_env("a/0", "public")
    assert env[servicekeys.ENV_VISIBILITY] == "public"
    text = " ".join(env.values())
    for secret in (K1, K2, keyring.derive(servicekeys.PURPOSE_INSTANCE),
                   keyring.derive(servicekeys.PURPOSE_OPERATOR)):
        assert secret.hex() not in text and servicekeys.CurveKey.from_secret(
            secret).secret.decode() not in text
    keys = ServiceKeys.from_environ(env)
    assert keys is not None and keys.service == creds.keys.service
    assert keys.accepted == creds.keys.accepted and len(keys.accepted) == 2
    assert creds.publisher_identity(keys.publisher.public) == "a/0"
    assert creds.publisher_identity(keys.service.public) is None
    assert creds.publisher_identity(creds.keys.publisher.public) == servicekeys.ANY_SOURCE
    other = ServiceKeys.from_environ(creds.instance_env("b/0"))
    assert other is not None and other.publisher != keys.publisher


def test_bad_instance_environment_is_a_clear_error() -> None:
    assert ServiceKeys.from_environ({}) is None
    with pytest.raises(ConfigError, match="NANOMESH_CURVE_SECRET"):
        ServiceKeys.from_environ({servicekeys.ENV_SECRET: "not a key"})


def test_zap_reply_admits_only_what_a_policy_names() -> None:
    key = keys_of(K1).service
    raw = servicekeys.z85_decode(key.public)
    policies = {"d": lambda public: "who" if public == key.public else None}

    def ask(domain: bytes, mechanism: bytes, *creds: bytes, version: bytes = b"1.0"
            ) -> list[bytes]:
        return zap_reply([version, b"7", domain, b"1.2.3.4", b"", mechanism, *creds], policies)

    assert ask(b"d", b"CURVE", raw)[1:5] == [b"7", b"200", b"OK", b"who"]
    assert ask(b"d", b"CURVE", bytes(32))[2] == b"400"         # another key
    assert ask(b"other", b"CURVE", raw)[2] == b"400"           # a domain without policy
    assert ask(b"d", b"NULL")[2] == b"400"                     # no CURVE: never admitted
    assert ask(b"d", b"PLAIN", b"u", b"p")[2] == b"400"
    assert ask(b"d", b"CURVE", raw, version=b"2.0")[2] == b"500"
    assert ask(b"\xff", b"CURVE", raw)[2] == b"400"
    assert zap_reply([b"1.0"], policies)[2] == b"500"

    def buggy(public: bytes) -> str | None:
        raise RuntimeError("bug")
    assert zap_reply([b"1.0", b"8", b"d", b"", b"", b"CURVE", raw], {"d": buggy})[2] == b"400"


def test_a_client_finds_the_key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--key-file, else $NANOMESH_KEY_FILE, else the running lab's key (not
    the key a stopped lab left behind); an
    instance of a mesh without a key looks for none; an unreadable file is
    a ConfigError naming it."""
    lab_dir, named = tmp_path / "lab", tmp_path / "named.key"
    lab_dir.mkdir()
    (lab_dir / "cluster.key").write_text(base64.b64encode(K1).decode() + "\n")
    named.write_text(base64.b64encode(K2).decode() + "\n")
    monkeypatch.setattr(servicekeys, "_installed", None)
    monkeypatch.setenv("NANOMESH_LAB_DIR", str(lab_dir))
    monkeypatch.delenv("NANOMESH_KEY_FILE", raising=False)
    monkeypatch.delenv("NANOMESH_INSTANCE", raising=False)
    monkeypatch.setattr(servicekeys, "INSTALLED_KEY_FILE", tmp_path / "no-installed.key")
    # A lab that ran once left its key: not used once the lab is down.
    assert servicekeys.client_keys() is None
    (lab_dir / "lab.json").write_text('{"peers": []}')  # a lab runs there
    assert servicekeys.client_keys() == keys_of(K1)
    monkeypatch.setenv("NANOMESH_KEY_FILE", str(named))
    assert servicekeys.client_keys() == keys_of(K2)
    assert servicekeys.client_keys(lab_dir / "cluster.key") == keys_of(K1)
    with pytest.raises(ConfigError, match="nonexistent"):
        servicekeys.client_keys(tmp_path / "nonexistent")
    monkeypatch.delenv("NANOMESH_KEY_FILE")
    monkeypatch.setenv("NANOMESH_INSTANCE", "x/0")
    assert servicekeys.client_keys() is None


@settings(max_examples=200)
@given(st.binary(min_size=32, max_size=32))
def test_keys_without_pyzmq_match_libzmq(secret: bytes) -> None:
    """servicekeys derives CURVE keys and Z85 without pyzmq (a peer that hosts
    no service never loads it); they must be libzmq's own."""
    z85 = zmq.utils.z85.encode(secret)
    assert servicekeys.z85_encode(secret) == z85
    assert servicekeys.z85_decode(z85) == secret
    assert servicekeys.curve_public(secret) == zmq.curve_public(z85)


@pytest.mark.parametrize("text", [b"abcd", b"abcd~", b"%%%%%", "é".encode() * 5])
def test_z85_decode_refuses_what_is_not_z85(text: bytes) -> None:
    with pytest.raises(ValueError):
        servicekeys.z85_decode(text)


def test_a_peer_daemon_imports_no_zmq_nor_urllib() -> None:
    """What `nanomesh peer run` imports before it starts leaves pyzmq (and
    asyncio, which pyzmq brings) and urllib.request to the services that use them."""
    code = ("import sys, trio, nanomesh.config, nanomesh.consensus.recovery, "
            "nanomesh.daemon.assemble, nanomesh.daemon.profile, nanomesh.security.keys; "
            "print(' '.join(m for m in ('zmq', 'asyncio', 'urllib.request', 'aiocoap') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == []
