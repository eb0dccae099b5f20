"""A running peer survives garbage on every port it listens on.

Every send loop is bounded in count; all traffic goes to loopback addresses
127.0.10.x that the harness handed out.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from mesh_harness import API_PORT, GOSSIP_PORT, Cluster, Peer

from nanomesh.transport.apiclient import ApiError, get_json
from nanomesh.wire import Ack, Keyring, frame, seal

pytestmark = pytest.mark.integration

RNG_SEED = 20240611
UDP_DATAGRAMS = 500
IDLE_CONNECTIONS = 20

HEADER_ENCRYPTED = b"NM\x01\x01"
HEADER_PLAIN = b"NM\x01\x00"


def _key(path: Path) -> bytes:
    return base64.b64decode(path.read_text().strip())


def seal_raw(body: bytes, key: bytes) -> bytes:
    """An envelope that authenticates with the cluster key but carries `body`
    (any bytes) instead of a valid message compound: reaches the decoder."""
    nonce = os.urandom(12)
    return HEADER_ENCRYPTED + nonce + AESGCM(key).encrypt(nonce, body, HEADER_ENCRYPTED)


def authenticated_junk(rng: random.Random) -> list[bytes]:
    """msgpack bodies that are not valid compounds: wrong shapes, unknown
    types, wrong field types, bad addresses, over-deep profiles."""
    deep: object = {"a": 1}
    for _ in range(40):
        deep = {"x": deep}
    objs: list[object] = [
        None, 1, "x", b"\x00", {}, [], [[]], [[None]], [["1"]], [[True]], [[2**63]],
        [[999]], [[-1, 2]], [[1]], [[1, -5, "t", "s", ["127.0.0.1", 1]]],
        [[1, 1, "t", "s", ["not-an-ip", 1]]], [[1, 1, "t", "s", ["127.0.0.1", 70000]]],
        [[1, 1, "", "s", ["127.0.0.1", 1]]], [[1, 1, "t\x00", "s", ["127.0.0.1", 1]]],
        [[1, 1, "t" * 500, "s", ["127.0.0.1", 1]]], [[3, "seq"]], [[4, 1.5]],
        [[5, "n", "inc", "by"]], [[6, "n", ["127.0.0.1"], 1, 1]], [[7, 1, 2, 3]],
        [[8, "s", "notbool", []]], [[9, "s", [[1, 2, 3]]]], [[10, [1, 2]]],
        [[11, [["n", 1, deep]]]], [[11, [["n", 1, {"k": float("nan")}]]]],
        [[6, {"k": "v"}, 1, 1, 1]], [[3, 1]] * 70_000,
    ]
    bodies = [msgpack.packb(o, use_bin_type=True) for o in objs]
    bodies.append(b"\xc1")  # never-used msgpack byte
    bodies.append(b"\xdd\xff\xff\xff\xff")  # array32 claiming 4 billion items
    bodies.append(b"\x91" * 5000)  # nested arrays far past the stack limit
    bodies += [rng.randbytes(rng.randint(0, 300)) for _ in range(40)]
    return bodies


# --------------------------------------------------------------------------- senders


def blast_udp(target: Peer, key: bytes, rng: random.Random) -> int:
    """Send UDP_DATAGRAMS garbage datagrams; return how many were sent."""
    junk = authenticated_junk(rng)
    datagrams: list[bytes] = []
    datagrams += [rng.randbytes(rng.randint(0, 1400)) for _ in range(150)]
    datagrams += [HEADER_ENCRYPTED + rng.randbytes(rng.randint(0, 1400)) for _ in range(80)]
    datagrams += [HEADER_PLAIN + rng.randbytes(rng.randint(0, 1400)) for _ in range(40)]
    datagrams += [b"NM" + bytes([rng.choice([0, 2, 9, 255]), 0]) + rng.randbytes(64)
                  for _ in range(40)]
    datagrams += [b"N", b"NM", b"NM\x01", b""]
    datagrams += [b"\x00" * 65_507, HEADER_ENCRYPTED + b"\x00" * 65_503]  # largest UDP payload
    datagrams += [d for d in (seal_raw(b, key) for b in junk) if len(d) <= 65_507]
    while len(datagrams) < UDP_DATAGRAMS:
        datagrams.append(seal_raw(rng.choice(junk[:-45]), key))
    datagrams = datagrams[:UDP_DATAGRAMS]
    rng.shuffle(datagrams)
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i, d in enumerate(datagrams):
            s.sendto(d, (target.ip, GOSSIP_PORT))
            sent += 1
            if i % 25 == 24:
                time.sleep(0.005)  # stay well inside the peer's receive buffer
    return sent


def _tcp_send(ip: str, port: int, data: bytes, *, read: bool = True) -> bytes:
    """Connect, send, half-close, read what comes back (bounded by timeouts)."""
    with socket.create_connection((ip, port), timeout=5) as s:
        with contextlib.suppress(OSError):  # the peer may reset a big unread request
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        out = b""
        if read:
            with contextlib.suppress(OSError):
                while len(out) < 1 << 20:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    out += chunk
        return out


def tcp_gossip_garbage(target: Peer, key: bytes, rng: random.Random) -> None:
    keyring = Keyring([key])
    junk = authenticated_junk(rng)
    payloads = [
        rng.randbytes(4096),                                   # random bytes
        b"\xff\xff\xff\xff" + rng.randbytes(100),              # 4 GiB length prefix
        struct.pack(">I", 8 * 1024 * 1024 + 1),                # one byte over MAX_FRAME
        struct.pack(">I", 1000) + rng.randbytes(10),           # frame cut short
        struct.pack(">I", 8 * 1024 * 1024) + rng.randbytes(4096),  # huge, then gone
        b"\x00\x00",                                           # half a prefix
        frame(HEADER_ENCRYPTED + rng.randbytes(200)),          # bad ciphertext
        frame(HEADER_PLAIN + msgpack.packb([[8, "x", True, []]])),  # plaintext push-pull
        frame(seal([Ack(1)], keyring)),                        # a datagram message
        frame(seal([Ack(1), Ack(2)], keyring)),                # two messages
    ]
    payloads += [frame(seal_raw(b, key)) for b in junk]
    for p in payloads:
        reply = _tcp_send(target.ip, GOSSIP_PORT, p)
        assert reply == b"", f"peer answered garbage {p[:40]!r} with {reply[:80]!r}"


@contextlib.contextmanager
def idle_connections(ip: str, port: int, n: int) -> Iterator[None]:
    """n connections that send nothing (or half a request) and stay open."""
    socks = []
    try:
        for i in range(n):
            s = socket.create_connection((ip, port), timeout=5)
            if i % 2:
                s.sendall(b"GET /v1/health HTTP/1.1\r\nHo" if port == API_PORT else b"\x00\x00")
            socks.append(s)
        yield
    finally:
        for s in socks:
            s.close()


MALFORMED_HTTP = [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",  # no Host header
    b"\x00\xff" * 100,
    b"GET /v1/health HTTP/9.9\r\nHost: x\r\n\r\n",
    b"GET /v1/health HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    b"GET /v1/health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST /v1/members HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\nabc",
    b"GET /" + b"a" * (1 << 20) + b" HTTP/1.1\r\nHost: x\r\n\r\n",  # over the size bound
    b"GET /v1/health HTTP/1.1\r\nHost: x\r\n" + b"X-Junk: y\r\n" * 100_000 + b"\r\n",
]


def http_garbage(target: Peer) -> None:
    for request in MALFORMED_HTTP:
        _tcp_send(target.ip, API_PORT, request)
    # Unknown paths and methods: a JSON error with the right status.
    for path in ["/", "/v1", "/v1/nope", "/v2/members", "/v1/members/x", "/%00", "/v1/../etc"]:
        with pytest.raises(ApiError, match="HTTP 404"):
            get_json(target.api, path, timeout=5)
        raw = _tcp_send(target.ip, API_PORT,
                        f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 404"), raw[:200]
        assert b"application/json" in head
        assert "error" in json.loads(body)
    raw = _tcp_send(target.ip, API_PORT,
                    b"DELETE /v1/members HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 405"), raw[:200]
    assert "error" in json.loads(raw.partition(b"\r\n\r\n")[2])


# --------------------------------------------------------------------------- the test


def test_peer_survives_garbage_on_every_port(cluster: Cluster) -> None:
    """Random and crafted UDP datagrams (incl. authenticated junk that reaches
    the decoder and largest-possible datagrams), random bytes and huge length
    prefixes on the gossip TCP port, idle connections, malformed HTTP requests
    and unknown API paths: the target peer keeps running, answers /v1/health,
    counts the drops per reason, logs no traceback, and the mesh stays
    converged."""
    key_file = cluster.new_key()
    key = _key(key_file)
    peers = cluster.start_mesh(3, key_file=key_file)
    target = peers[0]
    rng = random.Random(RNG_SEED)

    sent = blast_udp(target, key, rng)
    tcp_gossip_garbage(target, key, rng)
    http_garbage(target)
    with idle_connections(target.ip, GOSSIP_PORT, IDLE_CONNECTIONS), \
            idle_connections(target.ip, API_PORT, IDLE_CONNECTIONS):
        assert target.health()["status"] == "ok"
        cluster.wait_converged(peers)

    assert target.running
    dropped = cluster.wait(
        lambda: (d := target.health()["dropped"]) and sum(d.values()) >= sent // 2 and d,
        what="the garbage to be counted as dropped")
    for reason in ("malformed", "decrypt", "version", "oversized"):
        assert dropped.get(reason, 0) > 0, (reason, dropped)
    # Nothing hostile-but-authenticated made the core declare anything.
    cluster.wait_converged(peers)
    for p in peers:
        health = p.health()
        assert health["status"] == "ok"
        assert health["members"] == {"alive": 3}
        assert health["counters"]["deaths_declared"] == 0
        log = p.log_path.read_text(errors="replace")
        assert "Traceback" not in log, f"{p.name} logged a traceback:\n{log[-4000:]}"


def test_malformed_http_request_gets_a_4xx_json_error(cluster: Cluster) -> None:
    """The API module's contract: a bad request is answered with a 4xx status
    and a JSON ``{"error": ...}`` body, not a silently closed connection."""
    peer = cluster.add("solo")
    cluster.wait(peer.health, what="the peer's API")
    for request in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n"):
        raw = _tcp_send(peer.ip, API_PORT, request)
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head[:10] == b"HTTP/1.1 4", (request, raw[:200])
        assert "error" in json.loads(body)
