"""The guarded Raft transport (`nanomesh.consensus._transport`) against what
an outsider sends to the Raft port, and live key rotation between voters.

Each attack is one that pysyncobj's own transport let through (issue 8,
items 1, 3 and 6): a pickle that runs code, a huge length prefix buffered
before authentication, connections that never authenticate, a flood of
connections from one source, and a key change that needed a restart."""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import socket
import struct
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import trio
from cryptography.fernet import Fernet

from nanomesh.consensus import ConsensusConfig, ConsensusNode, open_consensus
from nanomesh.consensus import _transport as transport
from nanomesh.wire import Keyring

IpFactory = Callable[[int], list[str]]
KEY_A, KEY_B, KEY_C = bytes(range(32)), bytes(range(1, 33)), bytes(range(2, 34))


class _Mkdir:
    """Unpickling this calls ``os.mkdir(path)``: the classic pickle exploit."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Callable[[str], None], tuple[str]]:
        return os.mkdir, (self.path,)


def _pysyncobj_frame(payload: bytes) -> bytes:
    """A frame as pysyncobj writes it: native int length, then the body."""
    return struct.pack("i", len(payload)) + payload


def _exploits(marker: Path) -> list[bytes]:
    evil = zlib.compress(pickle.dumps(_Mkdir(str(marker))), 3)
    wrong_key = Fernet(Fernet.generate_key()).encrypt(evil)
    return [_pysyncobj_frame(evil),          # what a key-less pysyncobj unpickles
            _pysyncobj_frame(wrong_key)]     # a valid Fernet token under another key


def _voter(ip: str, keyring: Keyring, peers: tuple[str, ...] = ()) -> ConsensusConfig:
    return ConsensusConfig(address=(ip, 7948), peers=peers, keyring=keyring)


def _closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """Does the other side close `sock` within `timeout` (EOF or reset)?"""
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except OSError:
        return True
    return True


async def _leader(node: ConsensusNode) -> None:
    await node.wait_status(lambda s: s.is_leader, timeout=5)


async def test_a_pickle_exploit_never_reaches_pickle(ips: IpFactory, tmp_path: Path) -> None:
    """Item 1: the frame that ran ``os.mkdir`` on a key-less peer, plain and
    under a foreign key, is refused at the MAC; the node keeps leading."""
    ip = ips(1)[0]
    marker = tmp_path / "pwned"
    async with open_consensus(_voter(ip, Keyring([KEY_A]))) as node:
        await _leader(node)
        term = node.term
        for frame in _exploits(marker):
            def attack(frame: bytes = frame) -> bool:
                with socket.create_connection((ip, 7948), timeout=2) as s:
                    s.sendall(frame)
                    return _closed_by_peer(s, 2)
            assert await trio.to_thread.run_sync(attack), "the link must be closed"
        assert not marker.exists(), "unauthenticated bytes reached pickle"
        assert node.dropped["unauthenticated"] == 2
        assert (await node.put_service("still", {})).applied and node.term == term


async def test_a_huge_length_prefix_is_refused_before_buffering(ips: IpFactory) -> None:
    """Item 3: a 64 MiB length prefix closes the link at once, before any of
    the body is buffered; the sender sees the close while still writing."""
    ip = ips(1)[0]
    async with open_consensus(_voter(ip, Keyring([KEY_A]))) as node:
        await _leader(node)

        def attack() -> int:
            sent = 0
            with socket.create_connection((ip, 7948), timeout=2) as s:
                s.sendall(struct.pack("<I", 64 * 1024 * 1024))
                chunk = os.urandom(64 * 1024)
                try:
                    for _ in range(1024):  # up to 64 MiB; the peer closes long before
                        s.sendall(chunk)
                        sent += len(chunk)
                except OSError:
                    return sent
            return sent

        sent = await trio.to_thread.run_sync(attack)
        assert sent < 16 * 1024 * 1024, f"the peer accepted {sent} bytes of a junk frame"
        assert node.dropped["oversized-frame"] == 1
        assert (await node.put_service("after", {})).applied


async def test_a_silent_or_dripping_connection_is_closed_after_the_handshake_timeout(
        ips: IpFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Item 3: a connection that does not authenticate within
    HANDSHAKE_TIMEOUT is closed, whether it is silent or drips bytes (which
    keeps pysyncobj's idle timer from ever firing)."""
    monkeypatch.setattr(transport, "HANDSHAKE_TIMEOUT", 0.5)
    ip = ips(1)[0]
    async with open_consensus(_voter(ip, Keyring([KEY_A]))) as node:
        await _leader(node)

        def silent() -> bool:
            with socket.create_connection((ip, 7948), timeout=2) as s:
                return _closed_by_peer(s, 3)

        def dripping() -> bool:
            with socket.create_connection((ip, 7948), timeout=2) as s:
                s.sendall(struct.pack("<I", 200))
                deadline = time.monotonic() + 3
                try:
                    while time.monotonic() < deadline:
                        s.sendall(b"x")
                        time.sleep(0.05)
                except OSError:
                    return True
                return _closed_by_peer(s, 0.5)

        assert await trio.to_thread.run_sync(silent)
        assert await trio.to_thread.run_sync(dripping)
        assert node.dropped["handshake-timeout"] == 2


async def test_connections_over_the_per_source_limit_are_closed_on_accept(
        ips: IpFactory) -> None:
    """Item 3: at most MAX_PENDING_PER_SOURCE unauthenticated connections per
    source IP stay open; the rest are closed at once, and members still write."""
    ip = ips(1)[0]
    n = transport.MAX_PENDING_PER_SOURCE + 6
    async with open_consensus(_voter(ip, Keyring([KEY_A]))) as node:
        await _leader(node)

        def flood() -> int:
            socks = [socket.create_connection((ip, 7948), timeout=2) for _ in range(n)]
            try:
                time.sleep(0.3)
                return sum(1 for s in socks if _closed_by_peer(s, 0.2))
            finally:
                for s in socks:
                    s.close()

        closed = await trio.to_thread.run_sync(flood)
        assert closed == n - transport.MAX_PENDING_PER_SOURCE
        assert node.dropped["too-many-from-source"] == closed
        assert (await node.put_service("members-unaffected", {})).applied


async def test_a_rolling_key_rotation_never_stops_the_cluster(ips: IpFactory) -> None:
    """Item 6: install the new key on every voter, make it primary on every
    voter, remove the old one, all while running: every step commits a
    write, and a node holding only the removed key is then shut out."""
    a, b = ips(2)
    ring_a, ring_b = Keyring([KEY_A]), Keyring([KEY_A])
    peers = (f"{a}:7948", f"{b}:7948")
    async with open_consensus(_voter(a, ring_a, peers)) as first, \
            open_consensus(_voter(b, ring_b, peers)) as second:
        nodes = (first, second)

        async def write(name: str) -> None:
            with trio.fail_after(10):
                while True:
                    for node in nodes:
                        if node.status.is_leader:
                            assert (await node.put_service(name, {})).applied
                            await second.wait_state(lambda s: name in s.services, timeout=5)
                            await first.wait_state(lambda s: name in s.services, timeout=5)
                            return
                    await trio.sleep(0.05)

        await write("before")
        for ring in (ring_a, ring_b):
            ring.add(KEY_B)
        await write("installed")
        ring_a.use(KEY_B)  # a seals with B, b still with A: both open both
        await write("half-used")
        ring_b.use(KEY_B)
        await write("used")
        for ring in (ring_a, ring_b):
            ring.remove(KEY_A)
        await write("removed")
        for node in nodes:
            node.status  # noqa: B018  (still running, no exception)
        assert first.term == second.term


async def test_a_node_with_another_key_hears_nothing(ips: IpFactory) -> None:
    """A voter holding a different key never joins the other's cluster."""
    a, b = ips(2)
    peers = (f"{a}:7948", f"{b}:7948")
    async with open_consensus(_voter(a, Keyring([KEY_A]), peers)) as first, \
            open_consensus(_voter(b, Keyring([KEY_C]), peers)) as second:
        await trio.sleep(1.5)
        assert first.status.leader is None and second.status.leader is None
        assert first.dropped["unauthenticated"] + second.dropped["unauthenticated"] > 0


def _recorded_first_frame(keyring: Keyring) -> bytes:
    """A frame as a member sends it first on a link (its random key), sealed
    with the cluster key: what someone recording the LAN can replay."""
    cipher = transport.KeyringCipher(keyring)
    token = cipher.encrypt_at_time(zlib.compress(pickle.dumps(os.urandom(32)), 3),
                                   int(time.monotonic()))
    return struct.pack("<I", len(token)) + token


async def test_a_replayed_member_frame_does_not_authenticate_a_link(ips: IpFactory) -> None:
    """Review finding: a valid MAC is not enough. A recorded first frame,
    replayed on a new connection, passes the MAC but carries no key of this
    link: the link keeps the pre-authentication frame cap and deadline."""
    ip = ips(1)[0]
    ring = Keyring([KEY_A])
    async with open_consensus(_voter(ip, ring)) as node:
        await _leader(node)

        def attack() -> int:
            sent = 0
            with socket.create_connection((ip, 7948), timeout=2) as s:
                s.sendall(_recorded_first_frame(ring))
                s.sendall(struct.pack("<I", 16 * 1024 * 1024))
                try:
                    for _ in range(256):
                        s.sendall(bytes(64 * 1024))
                        sent += 64 * 1024
                except OSError:
                    return sent
            return sent

        sent = await trio.to_thread.run_sync(attack)
        assert sent < 8 * 1024 * 1024, f"a replayed frame lifted the cap ({sent} bytes taken)"
        assert node.dropped["oversized-frame"] == 1


async def test_a_full_table_of_pending_links_makes_room_for_newcomers(
        ips: IpFactory) -> None:
    """Review finding: outsiders holding MAX_PENDING silent links from several
    sources must not lock a member out: the oldest pending link is closed."""
    ip = ips(1)[0]
    async with open_consensus(_voter(ip, Keyring([KEY_A]))) as node:
        await _leader(node)
        sources = [f"127.0.33.{i}" for i in range(1, 9)]

        def flood_then_newcomer() -> tuple[int, bool]:
            socks = []
            for src in sources:
                for _ in range(transport.MAX_PENDING_PER_SOURCE):
                    s = socket.socket()
                    s.bind((src, 0))
                    s.connect((ip, 7948))
                    socks.append(s)
            time.sleep(0.3)
            newcomer = socket.socket()
            newcomer.bind(("127.0.33.100", 0))
            newcomer.connect((ip, 7948))
            time.sleep(0.3)
            try:
                # The newcomer first: checking 64 sockets takes longer than
                # the handshake deadline, which then closes every link.
                newcomer_open = not _closed_by_peer(newcomer, 0.3)
                closed = sum(1 for s in socks if _closed_by_peer(s, 0.01))
                return closed, newcomer_open
            finally:
                for s in [*socks, newcomer]:
                    s.close()

        closed, newcomer_open = await trio.to_thread.run_sync(flood_then_newcomer)
        assert newcomer_open, f"newcomer refused with the table full: {dict(node.dropped)}"
        assert closed >= 1 and node.dropped["evicted-pending"] >= 1


def _links(node: ConsensusNode) -> dict[str, transport.GuardedConnection]:
    """The node's established links by the other node's address (pysyncobj's
    internals: read for the test only, between ticks that may change them)."""
    conns = dict(node._raft._obj._SyncObj__transport._connections)  # type: ignore[union-attr]
    return {str(getattr(n, "address", n)): c for n, c in conns.items()
            if c.state == transport.CONNECTION_STATE.CONNECTED}


async def _write_and_see(nodes: tuple[ConsensusNode, ...], name: str) -> None:
    with trio.fail_after(10):
        while not any(n.status.is_leader for n in nodes):
            await trio.sleep(0.05)
        leader = next(n for n in nodes if n.status.is_leader)
        assert (await leader.put_service(name, {"replicas": 1})).applied
        for n in nodes:
            await n.wait_state(lambda s: name in s.services, timeout=5)


@contextlib.asynccontextmanager
async def _three_voters(ips: list[str]) -> AsyncIterator[tuple[ConsensusNode, ...]]:
    """Three voters of one cluster, with a leader, a committed write and every
    link between them established."""
    ring = Keyring([KEY_A])
    peers = tuple(f"{ip}:7948" for ip in ips)
    async with open_consensus(_voter(ips[0], ring, peers)) as na, \
            open_consensus(_voter(ips[1], ring, peers)) as nb, \
            open_consensus(_voter(ips[2], ring, peers)) as nc:
        nodes = (na, nb, nc)
        await _write_and_see(nodes, "first")
        with trio.fail_after(5):
            while not all(len(_links(n)) == 2 for n in nodes):
                await trio.sleep(0.05)
        yield nodes


async def test_established_links_speak_compact_frames(ips: IpFactory) -> None:
    """Rule 5 (issue 9): once the handshake is over, both ends of every link
    send compact frames, and replication runs over them."""
    async with _three_voters(ips(3)) as nodes:
        await _write_and_see(nodes, "over-compact-frames")
        # Followers send each other nothing between elections: a transfer
        # makes one campaign, so its vote request crosses a follower link.
        leader = next(n for n in nodes if n.status.is_leader)
        await leader.transfer_leadership()
        await _write_and_see(nodes, "after-the-transfer")
        for n in nodes:
            for addr, conn in _links(n).items():
                assert conn.compact, f"{addr} not compact"
                sealed, opened = conn._link.frames if conn._link else (0, 0)
                assert sealed > 0 and opened > 0, f"{addr}: {sealed} sealed, {opened} opened"
        assert not any(n.dropped for n in nodes), [dict(n.dropped) for n in nodes]


async def test_a_peer_without_compact_frames_still_replicates(
        ips: IpFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """An older peer never offers compact frames and ignores the offer: its
    links stay on Fernet frames both ways, the others' between them do not."""
    a, b, old = ips(3)
    real = transport.GuardedConnection._link_seal

    def no_compact_on_old(self: transport.GuardedConnection) -> object:
        return None if self._source_ip == old else real(self)
    monkeypatch.setattr(transport.GuardedConnection, "_link_seal", no_compact_on_old)
    async with _three_voters([a, b, old]) as nodes:
        na, nb, nold = nodes
        await _write_and_see(nodes, "mixed-again")
        assert _links(na)[f"{b}:7948"].compact and _links(nb)[f"{a}:7948"].compact
        assert not _links(na)[f"{old}:7948"].compact
        assert not _links(nb)[f"{old}:7948"].compact
        assert not any(c.compact for c in _links(nold).values())
        assert not any(n.dropped for n in nodes), [dict(n.dropped) for n in nodes]


class _Poller:
    """What `GuardedConnection` asks of pysyncobj's poller; the tests call
    the event handler themselves."""

    def subscribe(self, fd: int, callback: object, mask: int) -> None:
        pass

    def unsubscribe(self, fd: int) -> None:
        pass


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@contextlib.contextmanager
def _link(monkeypatch: pytest.MonkeyPatch, timeout: float = 0.6
          ) -> Iterator[tuple[transport.GuardedConnection, socket.socket, _Clock, list[bool]]]:
    """A connected `GuardedConnection` on one end of a socket pair (the
    other end is returned), on a fake clock; the list records each
    disconnect callback's `closed_by_peer`."""
    clock = _Clock()
    monkeypatch.setattr(transport, "_monotonic", clock)
    with socket.create_server(("127.0.0.1", 0)) as server:
        theirs = socket.create_connection(server.getsockname())
        ours, _ = server.accept()
    ours.setblocking(False)
    conn = transport.GuardedConnection(_Poller(), transport.KeyringCipher(Keyring([KEY_A])),
                                       sock=ours, timeout=timeout)
    closed: list[bool] = []
    conn.setOnDisconnectedCallback(lambda: closed.append(conn.closed_by_peer))
    try:
        yield conn, theirs, clock, closed
    finally:
        conn.disconnect()
        theirs.close()


def _read_event(conn: transport.GuardedConnection) -> None:
    conn._on_event(conn.fileno(), transport.POLL_EVENT_TYPE.READ)  # type: ignore[arg-type]


def test_a_quiet_link_is_not_dead(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 9: followers send each other nothing between elections; the
    first vote request after a quiet spell must go out, not close the link
    (pysyncobj's rule, nothing read for connection_timeout, closed it)."""
    with _link(monkeypatch) as (conn, theirs, clock, closed):
        clock.now += 60.0
        conn.send({"type": "request_vote", "term": 7})
        assert conn.state == transport.CONNECTION_STATE.CONNECTED and closed == []
        assert theirs.recv(4096)  # it arrived


def test_sending_for_the_timeout_without_an_answer_closes_the_link(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer that went silent under traffic is still found: a write after
    connection_timeout of sends without a byte back closes the link."""
    with _link(monkeypatch) as (conn, _theirs, clock, closed):
        for _ in range(5):  # heartbeats every 0.1 s for 0.5 s: still alive
            conn.send({"type": "append_entries"})
            clock.now += 0.1
        assert closed == []
        clock.now += 0.2  # 0.7 s of sends, nothing read
        conn.send({"type": "append_entries"})
        assert conn.state == transport.CONNECTION_STATE.DISCONNECTED
        assert closed == [False]


def test_any_bytes_read_answer_what_was_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    with _link(monkeypatch) as (conn, theirs, clock, closed):
        for _ in range(5):
            conn.send({"type": "append_entries"})
            clock.now += 0.1
        theirs.sendall(b"\x00\x01")  # part of a frame: the peer is alive
        _read_event(conn)
        for _ in range(5):  # 1 s of sends, never 0.6 s without a read
            conn.send({"type": "append_entries"})
            clock.now += 0.1
        assert conn.state == transport.CONNECTION_STATE.CONNECTED and closed == []


def test_a_link_the_other_side_closes_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """A killed process's kernel closes its connections: the disconnect
    callback sees `closed_by_peer` (what starts an early election)."""
    with _link(monkeypatch) as (conn, theirs, _clock, closed):
        theirs.close()
        _read_event(conn)
        assert conn.state == transport.CONNECTION_STATE.DISCONNECTED
        assert closed == [True]


class _EventPoller:
    """Keeps what `PortProbe` subscribes, so the test can deliver the event."""

    def __init__(self) -> None:
        self.watched: dict[int, Callable[[int, int], None]] = {}

    def subscribe(self, fd: int, callback: Callable[[int, int], None], mask: int) -> None:
        self.watched[fd] = callback

    def unsubscribe(self, fd: int) -> None:
        self.watched.pop(fd, None)

    def deliver(self) -> None:
        for fd, callback in list(self.watched.items()):
            select.select([], [fd], [fd], 2.0)
            callback(fd, transport.POLL_EVENT_TYPE.WRITE)


@pytest.mark.parametrize("listening", [True, False])
def test_a_port_probe_says_refused_only_when_nothing_listens(listening: bool) -> None:
    """What tells a dead leader's process from a live leader that closed a
    link on purpose (`nanomesh.consensus.leader_loss`)."""
    server = socket.create_server(("127.0.0.1", 0))
    address = f"127.0.0.1:{server.getsockname()[1]}"
    if not listening:
        server.close()
    poller, calls = _EventPoller(), []
    probe = transport.PortProbe(poller, address, "127.0.0.1", lambda: calls.append(1))
    immediate = probe.refused  # a refusal may come from connect() itself
    poller.deliver()
    assert probe.refused is (not listening) and not probe.pending and not poller.watched
    assert len(calls) == int(probe.refused and not immediate)  # else the caller saw it
    server.close()
