"""The HTTP API of a real peer daemon under hostile clients (issue 8, item 4)
and what it shows to readers without the management token (item 5).

Client sockets bind distinct loopback addresses (127.0.40-43.x), so that the
daemon sees distinct clients, as it would on a LAN."""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mesh_harness import API_PORT, Cluster, Peer
from service_helpers import cli, cli_retry, copy_service
from test_control_plane import read_token_when_ready

from nanomesh.daemon.http_limits import ServerLimits
from nanomesh.transport.apiclient import ApiError

pytestmark = pytest.mark.integration

LIMITS = ServerLimits()


def get(peer: Peer, path: str, token: str | None = None, source: str = "127.0.42.1",
        timeout: float = 10.0) -> tuple[int, Any, dict[str, str]]:
    """(status, JSON body, headers) of one GET from ``source``."""
    return call(peer, "GET", path, token=token, source=source, timeout=timeout)


def call(peer: Peer, method: str, path: str, data: bytes | None = None,
         token: str | None = None, source: str = "127.0.42.1", timeout: float = 10.0
         ) -> tuple[int, Any, dict[str, str]]:
    """(status, JSON body, headers) of one request from ``source``."""
    req = urllib.request.Request(f"http://{peer.api}{path}", data=data, method=method)
    if token is not None:
        req.add_header("authorization", f"Bearer {token}")
    handler = _SourceHandler(source)
    opener = urllib.request.build_opener(handler)
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read()), _lower(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null"), _lower(exc.headers)
    except (urllib.error.URLError, OSError) as exc:
        raise ApiError(f"cannot reach {peer.name} from {source}: {exc}") from None


def _lower(headers: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


class _SourceHandler(urllib.request.HTTPHandler):
    """Connects from a chosen source address."""

    def __init__(self, source: str) -> None:
        super().__init__()
        self.source = source

    def http_open(self, req: Any) -> Any:
        import http.client

        source = self.source

        class Conn(http.client.HTTPConnection):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                kwargs["source_address"] = (source, 0)
                super().__init__(*args, **kwargs)

        return self.do_open(Conn, req)


def open_socket(peer: Peer, source: str) -> socket.socket:
    s = socket.socket()
    s.bind((source, 0))
    s.settimeout(10.0)
    s.connect((peer.ip, API_PORT))
    return s


def closed_by_server(s: socket.socket) -> bytes | None:
    """What the server sent before closing ``s`` (None if still open)."""
    s.settimeout(0.05)
    data = b""
    try:
        while chunk := s.recv(65536):
            data += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return data


@contextlib.contextmanager
def dripping(sockets: list[socket.socket], interval: float = 0.5) -> Iterator[None]:
    """Slowloris: send one more header byte on every socket each interval."""
    stop = threading.Event()

    def drip() -> None:
        while not stop.wait(interval):
            for s in sockets:
                with contextlib.suppress(OSError):
                    s.send(b"x")

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@pytest.fixture
def founder(cluster: Cluster) -> Peer:
    """One peer that leads its own mesh, its status answering."""
    peer = cluster.add("api-1", key_file=cluster.new_key())
    cluster.wait(lambda: get(peer, "/v1/status")[1].get("leader"), 60,
                 what="a Raft leader on api-1")
    return peer


def test_health_and_status_answer_while_idle_and_slowloris_clients_hold_the_api(
        cluster: Cluster, founder: Peer) -> None:
    """Before the fix, 70 idle sockets made most /v1/health calls answer 503.
    Now 200 idle sockets (10 clients) and 20 clients dripping their headers
    leave health and status answering 200, and the dripping ones are cut off
    (408) once the head deadline passes."""
    idle = [open_socket(founder, f"127.0.40.{1 + i // 20}") for i in range(200)]
    slow = [open_socket(founder, f"127.0.41.{1 + i}") for i in range(20)]
    for s in slow:
        s.send(b"GET /v1/health HTTP/1.1\r\n")
    latencies: list[float] = []
    try:
        with dripping(slow):
            started = time.monotonic()
            while time.monotonic() - started < 3.0:
                for path in ("/v1/health", "/v1/status"):
                    t0 = time.monotonic()
                    code, body, _ = get(founder, path)
                    latencies.append(time.monotonic() - t0)
                    assert code == 200, (path, code, body)
            # Each dripping socket is closed with a 408 after the deadline.
            cluster.wait(lambda: all(closed_by_server(s) is not None for s in slow),
                         LIMITS.head_timeout + 20, what="the slowloris sockets to be closed")
        health = get(founder, "/v1/health")[1]
        assert health["api"]["head_timeouts"] >= len(slow), health["api"]
        latencies.sort()
        print(f"health/status during the attack: {len(latencies)} calls, p50 "
              f"{latencies[len(latencies) // 2] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")
    finally:
        for s in idle + slow:
            s.close()


def test_a_client_over_its_limit_is_refused_and_others_are_not(
        cluster: Cluster, founder: Peer) -> None:
    held = [open_socket(founder, "127.0.43.1") for _ in range(LIMITS.max_per_client)]
    try:
        cluster.wait(lambda: get(founder, "/v1/health")[1]["api"]["open"]
                     >= LIMITS.max_per_client, what="the daemon to hold the client's sockets")
        code, body, headers = get(founder, "/v1/health", source="127.0.43.1")
        assert code == 429 and "127.0.43.1" in body["error"], (code, body)
        assert headers.get("retry-after") == "1"
        assert get(founder, "/v1/health", source="127.0.43.2")[0] == 200
        assert get(founder, "/v1/status", source="127.0.43.2")[0] == 200
        assert get(founder, "/v1/health")[1]["api"]["refused_per_client"] >= 1
    finally:
        for s in held:
            s.close()


# --------------------------------------------------------------------------- item 5


def test_state_and_environment_are_shown_with_the_token_only(
        cluster: Cluster, founder: Peer, tmp_path: Path) -> None:
    """Before the fix, GET /v1/services showed every saved state blob and
    every run environment to anyone, although /v1/instances/*/state needs
    the token."""
    token = read_token_when_ready(cluster, founder)
    folder = copy_service("counter", tmp_path / "counter", replace={
        r'command = \["python3", "-u", "counter.py"\]':
        'command = ["python3", "-u", "counter.py"]\nenv = { API_KEY = "s3cret-key" }'})
    cli_retry(cluster, "deploy", str(folder), "--detach", peer=founder, token=token)
    blob = b"count=3 secret-state"
    code, reply, _ = cluster.wait(
        lambda: (r := call(founder, "PUT", "/v1/instances/counter/0/state", blob,
                           token=token))[0] not in (503, 504) and r,
        what="the state to be saved")
    assert code == 200, reply

    code, docs, _ = get(founder, "/v1/services")
    counter = next(d for d in docs if d["name"] == "counter")
    assert code == 200 and "state" not in counter, counter
    assert counter["run"]["env"] == {"API_KEY": "(redacted)"}
    assert counter["redacted"] == ["state", "run.env"]
    wrong = next(d for d in get(founder, "/v1/services", token="not-the-token")[1]
                 if d["name"] == "counter")
    assert "state" not in wrong and "s3cret-key" not in json.dumps(wrong)

    counter = cluster.wait(lambda: next(
        (d for d in get(founder, "/v1/services", token=token)[1]
         if d["name"] == "counter" and "state" in d), None), what="the state committed")
    assert base64.b64decode(counter["state"]) == blob
    assert counter["run"]["env"] == {"API_KEY": "s3cret-key"} and "redacted" not in counter

    # The CLI passes the token it has, so operators still see everything.
    shown = cli("services", "--json", peer=founder, token=token)
    assert shown.returncode == 0 and "s3cret-key" in shown.stdout, shown
    assert base64.b64encode(blob).decode() in shown.stdout
    hidden = cli("services", "--json", peer=founder, token="not-the-token")
    assert hidden.returncode == 0 and "s3cret-key" not in hidden.stdout
    assert "withheld" in hidden.stderr and "not accepted" in hidden.stderr


def test_every_401_says_what_it_needs_and_names_the_bearer_scheme(
        cluster: Cluster, founder: Peer) -> None:
    read_token_when_ready(cluster, founder)
    cases = [("GET", "/v1/instances/counter/0/logs", "reading the log of counter/0 needs "
              "the mesh's management token"),
             ("GET", "/v1/instances/counter/0/state", "may read its state"),
             ("GET", "/v1/bundles", "reading /v1/bundles needs"),
             ("POST", "/v1/services", "this call changes the mesh")]
    for method, path, text in cases:
        code, body, headers = cluster.wait(
            lambda m=method, p=path: (r := call(founder, m, p, b"{}" if m == "POST" else None)
                                      )[0] != 503 and r, what=f"{method} {path} answered")
        assert code == 401 and text in body["error"], (method, path, code, body)
        assert "--token" in body["error"]
        assert headers.get("www-authenticate") == 'Bearer realm="nanomesh"', headers
