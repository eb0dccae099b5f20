"""Secure by default, against real daemons (issue 8, items 1-3).

- A peer never runs without the cluster key: a founder without one
  generates it (and says to copy it), a joiner without one refuses to start
  with a one-line error.
- The Raft port of a peer started as README's device section allows (no
  ``--key-file``) does not run an outsider's pickle.
- An unauthenticated flood of the leader's Raft port neither grows it by
  more than a few MiB nor moves leadership.
- Unauthenticated gossip streams neither grow a peer much nor, sent slowly
  from a few sources, stop other peers' push-pulls and profile pulls.
"""

from __future__ import annotations

import collections
import functools
import os
import pickle
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from mesh_harness import NO_KEY, Cluster

pytestmark = pytest.mark.integration

RAFT_PORT = 7948
FLOOD_SECONDS = 6.0
"""How long the flood lasts: many election timeouts (0.35-0.70 s) long."""
RSS_GROWTH_LIMIT = 8 * 1024 * 1024
"""What the flood may add to the leader's RSS ("a few MiB"): pysyncobj's own
transport grew by 76 MiB for one 64 MiB frame."""


class _Mkdir:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Callable[[str], None], tuple[str]]:
        return os.mkdir, (self.path,)


def test_founder_without_a_key_generates_one_and_a_keyless_joiner_refuses(
        cluster: Cluster) -> None:
    founder = cluster.add("founder", key_file=NO_KEY)
    cluster.wait_api([founder])
    key = founder.data_dir / "cluster.key"
    assert key.exists() and key.stat().st_mode & 0o777 == 0o600
    assert "Copy this file to every other device" in founder.log_path.read_text()

    joiner = cluster.add("joiner", key_file=NO_KEY, join=[founder.gossip])
    assert joiner.proc is not None
    assert joiner.proc.wait(timeout=30) != 0
    joiner.expect_running = False
    error = joiner.log_path.read_text().strip().splitlines()
    assert error[-1].startswith("nanomesh: error: a peer that joins a mesh needs"), error
    assert "--key-file" in error[-1]

    # The generated key admits a device, and the founder keeps it across a restart.
    member = cluster.add("member", key_file=key, join=[founder.gossip])
    cluster.wait_converged([founder, member])
    before = key.read_bytes()
    founder.terminate()
    founder.start()
    cluster.wait_converged([founder, member])
    assert key.read_bytes() == before


def test_the_raft_port_of_a_peer_started_without_a_key_runs_no_pickle(
        cluster: Cluster, tmp_path: Path) -> None:
    """Item 1 as reproduced: a frame whose pickle calls ``os.mkdir``, sent to
    7948 of a peer started without ``--key-file``, ran on main."""
    peer = cluster.add("device", key_file=NO_KEY)
    cluster.wait(lambda: peer.get("/v1/status").get("leader"), what="a Raft leader")
    marker = tmp_path / "pwned"
    payload = zlib.compress(pickle.dumps(_Mkdir(str(marker))), 3)
    with socket.create_connection((peer.ip, RAFT_PORT), timeout=3) as s:
        s.sendall(struct.pack("i", len(payload)) + payload)  # pysyncobj's framing
        assert _closed_by_peer(s, 3), "the peer must close the link"
    assert not marker.exists(), "an outsider's pickle ran on the peer"
    cluster.wait(lambda: peer.health()["raft_dropped"].get("unauthenticated", 0) >= 1,
                 what="the frame counted as unauthenticated")


def _closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except OSError:
        return True
    return True


def _flood(ip: str, until: float) -> dict[str, int]:
    """Junk against the Raft port until `until`: huge length prefixes with
    bodies, silent connections, and single junk frames, all from one source."""
    counts = {"connections": 0, "bytes": 0}
    chunk = os.urandom(64 * 1024)
    idle: list[socket.socket] = []
    try:
        while time.monotonic() < until:
            try:
                s = socket.create_connection((ip, RAFT_PORT), timeout=1)
            except OSError:
                continue
            counts["connections"] += 1
            try:
                s.sendall(struct.pack("<I", 64 * 1024 * 1024))
                for _ in range(64):
                    s.sendall(chunk)
                    counts["bytes"] += len(chunk)
            except OSError:
                pass
            if len(idle) < 40:
                idle.append(s)  # keep some open and silent
            else:
                s.close()
    finally:
        for s in idle:
            s.close()
    return counts


def test_an_unauthenticated_flood_neither_grows_the_leader_nor_moves_leadership(
        cluster: Cluster) -> None:
    """Item 3: 64 MiB frames, silent connections and connection floods
    against the leader's Raft port for several seconds."""
    peers = cluster.start_mesh(3)
    cluster.wait(lambda: len(peers[0].get("/v1/status").get("voters") or []) == 3,
                 what="3 voters")
    status = peers[0].get("/v1/status")
    leader = next(p for p in peers if f"{p.ip}:{RAFT_PORT}" == status["leader"])
    term = status["term"]
    assert leader.pid is not None
    proc = psutil.Process(leader.pid)
    rss_before = proc.memory_info().rss
    counts = _flood(leader.ip, time.monotonic() + FLOOD_SECONDS)
    rss_after = proc.memory_info().rss
    after = leader.get("/v1/status")
    print(f"flood: {counts}, leader RSS {rss_before / 2**20:.1f} -> {rss_after / 2**20:.1f} MiB, "
          f"term {term} -> {after['term']}")
    assert counts["connections"] > 10 and counts["bytes"] > 0
    assert after["term"] == term and after["leader"] == status["leader"], (
        f"leadership moved under the flood: {status} -> {after}")
    assert rss_after - rss_before < RSS_GROWTH_LIMIT, (
        f"the leader grew by {(rss_after - rss_before) / 2**20:.1f} MiB")
    dropped = leader.health()["raft_dropped"]
    assert dropped.get("oversized-frame", 0) >= 1, dropped
    for p in peers:
        p.check_alive()


def test_the_old_public_internal_secret_opens_nothing(cluster: Cluster) -> None:
    """Item 2: on main the internal secret of a key-less peer was
    ``sha256(b"nanomesh-internal-v1")``, which anyone can compute; it listed
    and uploaded bundles and removed Raft voters. Now the secret derives from
    the cluster key only."""
    import hashlib
    import urllib.error
    import urllib.request

    peer = cluster.add("device", key_file=NO_KEY)
    cluster.wait(lambda: peer.get("/v1/status").get("leader"), what="a Raft leader")
    public = hashlib.sha256(b"nanomesh-internal-v1").hexdigest()

    def refusal(method: str, path: str, body: bytes) -> int | None:
        """The HTTP error code, or None while the founder has not yet
        committed its management token (503: the leader is elected a few
        milliseconds before that commit)."""
        request = urllib.request.Request(
            f"http://{peer.api}{path}", data=body, method=method,
            headers={"authorization": f"Bearer {public}",
                     "content-type": "application/octet-stream"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=5)
        return None if err.value.code == 503 else err.value.code

    for method, path, body in (("POST", "/v1/internal/raft/remove", b'{"addr": "x:1"}'),
                               ("POST", "/v1/internal/keyring", b"x" * 40),
                               ("PUT", "/v1/bundles/" + "0" * 64, b"junk")):
        code = cluster.wait(functools.partial(refusal, method, path, body),
                            what=f"{method} {path} to be judged (not 503)")
        assert code == 401, (path, code)


def test_unauthenticated_gossip_streams_cannot_make_a_peer_buffer_much(
        cluster: Cluster) -> None:
    """The gossip TCP port reads a whole sealed frame (up to 8 MiB) before it
    can authenticate it: 120 connections that each announce 8 MiB and send
    most of it must not grow the peer by more than a few MiB, and the mesh
    stays whole meanwhile."""
    peers = cluster.start_mesh(2)
    target = peers[0]
    assert target.pid is not None
    proc = psutil.Process(target.pid)
    rss_before = proc.memory_info().rss
    socks: list[socket.socket] = []
    chunk = os.urandom(256 * 1024)
    try:
        for _ in range(120):
            try:
                s = socket.create_connection((target.ip, 7946), timeout=1)
                s.settimeout(0.2)
                s.sendall(struct.pack(">I", 8 * 1024 * 1024 - 1))
                for _ in range(24):
                    s.sendall(chunk)
            except OSError:
                pass
            else:
                socks.append(s)
        rss_after = proc.memory_info().rss
        print(f"gossip stream flood: RSS {rss_before / 2**20:.1f} -> "
              f"{rss_after / 2**20:.1f} MiB, dropped {target.health()['dropped']}")
        assert rss_after - rss_before < RSS_GROWTH_LIMIT, (
            f"the peer grew by {(rss_after - rss_before) / 2**20:.1f} MiB")
        dropped = target.health()["dropped"]
        refused = sum(dropped.get(k, 0) for k in ("stream-limit", "busy", "oversized"))
        assert refused > 0, dropped
    finally:
        for s in socks:
            s.close()
    cluster.wait_converged(peers)


SLOW_SOURCES = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
"""Attacker source IPs, outside the harness's 127.0.10.x pool."""


def _slow_announcer(source: str, target: str, length: int, stop: threading.Event,
                    counts: dict[str, int]) -> None:
    """The confirmed attack: announce a large frame, send 1 KB, then one byte
    every 0.5 s until the peer hangs up; then do it again."""
    while not stop.is_set():
        try:
            s = socket.create_connection((target, 7946), timeout=2,
                                         source_address=(source, 0))
        except OSError:
            stop.wait(0.1)
            continue
        counts["connections"] += 1
        with s:
            try:
                s.sendall(struct.pack(">I", length) + os.urandom(1024))
                while not stop.wait(0.5):
                    s.sendall(b"x")
            except OSError:
                pass  # the peer hung up: reconnect
        stop.wait(0.1)


def test_slow_large_announces_from_a_few_sources_do_not_stop_push_pull(
        cluster: Cluster) -> None:
    """Connections from three outsider IPs announce 8 MiB (refused outright
    now) or 1 MiB (read as it trickles in, one byte every 0.5 s) while a
    member joins by push-pull and both pull each other's profiles. On main
    one such connection reserved the whole 4 MiB budget for up to
    ``stream_timeout`` and every other stream was refused as "busy"."""
    key = cluster.new_key()
    founder = cluster.add("founder", key_file=key)
    cluster.wait_api([founder])
    stop = threading.Event()
    counts: dict[str, int] = collections.Counter()
    threads = [threading.Thread(target=_slow_announcer, daemon=True,
                                args=(source, founder.ip, length, stop, counts))
               for source in SLOW_SOURCES
               for length in (8 * 1024 * 1024 - 16, 1024 * 1024, 1024 * 1024)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)  # the attack is under way before the member joins
        member = cluster.add("member", key_file=key, join=[founder.gossip])
        peers = [founder, member]
        cluster.wait_converged(peers)

        def profiles_held() -> bool:
            return all(m["profile"] is not None
                       for p in peers for m in p.members().values())

        cluster.wait(profiles_held, what="each peer holding the other's profile")
        dropped = founder.health()["dropped"]
        print(f"slow announces: {dict(counts)}, founder dropped {dropped}")
        assert counts["connections"] >= len(threads), counts
        assert dropped.get("oversized", 0) >= 1, dropped
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=5)
    for p in peers:
        p.check_alive()


def test_a_recorded_internal_call_cannot_be_replayed_or_reused(cluster: Cluster) -> None:
    """Review finding: the internal secret was a fixed bearer token on plain
    HTTP; whoever recorded one call had member rights. Now each call carries
    a token that signs that very request, once."""
    import urllib.error
    import urllib.request

    from nanomesh.security.auth import INTERNAL_PURPOSE, internal_token
    from nanomesh.wire import Keyring

    peer = cluster.add("device")
    cluster.wait(lambda: peer.get("/v1/status").get("leader"), what="a Raft leader")
    keyring = Keyring.from_file(cluster.default_key)

    def call(method: str, path: str, token: str, body: bytes | None = None) -> int:
        request = urllib.request.Request(
            f"http://{peer.api}{path}", data=body, method=method,
            headers={"authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=5) as reply:
                return int(reply.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    recorded = internal_token(keyring, "GET", "/v1/internal/keyring")
    assert call("GET", "/v1/internal/keyring", recorded) == 200, "a member's own call"
    assert call("GET", "/v1/internal/keyring", recorded) == 401, "the same call replayed"
    other = internal_token(keyring, "GET", "/v1/internal/keyring")
    assert call("POST", "/v1/internal/raft/remove", other, b'{"addr": "x:1"}') == 401, \
        "a recorded token used for another request"
    static = keyring.derive(INTERNAL_PURPOSE).hex()
    assert call("GET", "/v1/internal/keyring", static) == 401, "the old static bearer"
