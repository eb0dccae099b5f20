"""Live key rotation across real daemons (issue 8, item 6), as an operator
does it with ``serf keys``: install a new key, make it primary, remove the
old one, with no restart, while gossip and Raft keep working; a peer
restarted afterwards comes back with the rotated keys; the old key no
longer admits anyone."""

from __future__ import annotations

import json
import subprocess
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from mesh_harness import PY, Cluster, Peer

from nanomesh.security.auth import internal_token
from nanomesh.security.keys import fingerprint
from nanomesh.wire import Keyring

pytestmark = pytest.mark.integration


def keys_cli(peer: Peer | str, token: str, key_file: Path, *args: str) -> tuple[int, Any]:
    """(exit status, JSON reply), or (exit status, stderr) without a reply."""
    api = peer if isinstance(peer, str) else peer.api
    result = subprocess.run(
        [PY, "-m", "nanomesh", "keys", *args, "--peer", api, "--token", token,
         "--json", *(["--key-file", str(key_file)] if args[0] != "list" else [])],
        capture_output=True, text=True, timeout=60)
    if not result.stdout:
        return result.returncode, result.stderr
    return result.returncode, json.loads(result.stdout[:result.stdout.rindex("}") + 1])


def management_token(cluster: Cluster, founder: Peer, key: Path) -> str:
    """The founder's token, once committed (key operations need it)."""
    token_file = founder.data_dir / "management.token"
    cluster.wait(token_file.exists, what="the management token")
    token = token_file.read_text().strip()
    last: list[Any] = [None]

    def listed() -> bool:
        last[0] = keys_cli(founder, token, key, "list")
        return bool(last[0][0] == 0)
    cluster.wait(listed, what="the token committed (keys list answers)",
                 describe=lambda: f"last keys list: {last[0]}")
    return token


def fp(path: Path) -> str:
    return fingerprint(Keyring.from_file(path).keys[0])


def test_a_rolling_rotation_keeps_the_mesh_whole(cluster: Cluster, tmp_path: Path) -> None:
    peers = cluster.start_mesh(3)
    founder = peers[0]
    cluster.wait(lambda: len(founder.get("/v1/status").get("voters") or []) == 3,
                 what="3 voters")
    token = management_token(cluster, founder, cluster.default_key)
    old, new = cluster.default_key, cluster.new_key("new.key")
    term = founder.get("/v1/status")["term"]

    code, out = keys_cli(peers[1], token, old, "install", str(new))
    assert code == 0 and not out["failed"], out
    assert all(r["keys"] == [fp(old), fp(new)] for r in out["members"].values()), out
    code, out = keys_cli(peers[2], token, old, "use", str(new))
    assert code == 0 and all(r["keys"] == [fp(new), fp(old)] for r in out["members"].values())
    # The CLI still seals with the old key (installed everywhere): accepted.
    code, out = keys_cli(founder, token, old, "remove", fp(old))
    assert code == 0 and all(r["keys"] == [fp(new)] for r in out["members"].values()), out
    code, listing = keys_cli(founder, token, new, "list")
    assert code == 0 and listing["summary"] == {fp(new): {"installed": 3, "primary": 3}}

    # Gossip and Raft never noticed: same leader and term, everyone alive.
    cluster.wait_converged(peers)
    status = founder.get("/v1/status")
    assert status["term"] == term and len(status["voters"]) == 3, status
    # Persisted: a peer restarted with its original (now stale) --key-file
    # comes back with the rotated keyring and rejoins.
    peers[1].terminate()
    peers[1].start()
    cluster.wait_converged(peers)
    assert Keyring.from_file(peers[1].data_dir / "cluster.key").keys == \
        Keyring.from_file(new).keys
    # The removed key admits no one any more.
    outsider = cluster.add("outsider", key_file=old, join=[founder.gossip])
    cluster.wait(lambda: founder.health()["dropped"].get("decrypt", 0) > 0,
                 what="the outsider's packets dropped")
    assert "outsider" not in founder.members()
    outsider.kill()


def test_a_key_operation_sealed_under_a_foreign_key_changes_nothing(
        cluster: Cluster) -> None:
    peers = cluster.start_mesh(2)
    token = management_token(cluster, peers[0], cluster.default_key)
    foreign = cluster.new_key("foreign.key")
    result = subprocess.run(
        [PY, "-m", "nanomesh", "keys", "install", str(foreign), "--peer", peers[0].api,
         "--token", token, "--key-file", str(foreign)], capture_output=True, text=True,
        timeout=60)
    assert result.returncode != 0 and "key operation refused" in result.stderr, result
    for p in peers:
        assert Keyring.from_file(p.data_dir / "cluster.key").keys == \
            Keyring.from_file(cluster.default_key).keys
    # Without the management token nothing is even opened.
    result = subprocess.run(
        [PY, "-m", "nanomesh", "keys", "install", str(foreign), "--peer", peers[0].api,
         "--key-file", str(cluster.default_key)], capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"})
    assert result.returncode != 0 and "needs its management token" in result.stderr, result


def test_private_service_calls_survive_the_documented_rotation(
        cluster: Cluster, tmp_path: Path) -> None:
    """README's procedure for service traffic, whose endpoints keep the keys
    they started with: install and use the new key, restart the peers one at
    a time with clients still on the old key, then move clients to the new
    key and remove the old one. A private service answers at every step."""
    from service_helpers import SERVICES, cli_retry, wait_instances

    peers = cluster.start_mesh(3)
    token = management_token(cluster, peers[0], cluster.default_key)
    cli_retry(cluster, "deploy", str(SERVICES / "counter"), peer=peers[0], token=token)
    wait_instances(cluster, peers, "counter", 1, timeout=60)
    old, new = cluster.default_key, cluster.new_key("new.key")
    both = tmp_path / "old-then-new.key"
    both.write_text(old.read_text() + new.read_text())

    def count(key_file: Path) -> int:
        last = [""]

        def once() -> int | None:
            result = subprocess.run(
                [PY, "-m", "nanomesh", "call", "counter", "count", "--data", '{"by": 1}',
                 "--peer", peers[1].api, "--key-file", str(key_file)],
                capture_output=True, text=True, timeout=60)
            last[0] = result.stderr
            # A key problem fails the handshake: at once, and for good. Right
            # after a restart other errors are the mesh settling (an election,
            # a consensus node starting, a catalog or endpoint catching up with
            # the placement view), waited out within the harness's timeout.
            assert "handshake" not in result.stderr, (key_file.name, result.stderr)
            return int(json.loads(result.stdout)["count"]) if result.returncode == 0 else None
        counted: int = cluster.wait(once, what=f"a counter call with {key_file.name}",
                                    describe=lambda: f"last error: {last[0]}")
        return counted

    first = count(old)
    assert keys_cli(peers[0], token, old, "install", str(new))[0] == 0
    assert keys_cli(peers[0], token, old, "use", str(new))[0] == 0
    assert count(both) == first + 1, "clients on the old key, before any restart"
    # The limitation README documents: endpoints started before the rotation
    # do not admit a client holding only the new key. When service keys follow
    # a rotation live, this check fails: drop it and README's restart step.
    refused = subprocess.run(
        [PY, "-m", "nanomesh", "call", "counter", "count", "--peer", peers[1].api,
         "--key-file", str(new)], capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "handshake failed" in refused.stderr, refused
    for p in peers:
        p.terminate()
        p.start()
        cluster.wait_converged(peers)
        cluster.wait(lambda: all(len(q.get("/v1/status").get("voters") or []) == 3
                                 and q.get("/v1/status").get("leader") for q in peers),
                     timeout=60, what="a leader and 3 voters again")
        wait_instances(cluster, peers, "counter", 1, timeout=60)
        count(both)
    assert count(new) > first, "clients on the new key only, after every restart"
    assert keys_cli(peers[0], token, new, "remove", fp(old))[0] == 0
    count(new)


def post_raw(api: str, path: str, body: bytes, token: str) -> tuple[int, str]:
    """POST `body` as recorded, bypassing the CLI: (status, reply text)."""
    req = urllib.request.Request(f"http://{api}{path}", data=body, method="POST", headers={
        "authorization": f"Bearer {token}", "content-type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class Recorder:
    """An HTTP forwarder in front of a peer's API that keeps a copy of every
    request body: what anyone on the LAN can capture (the API is plain HTTP)."""

    def __init__(self, target: str) -> None:
        self.bodies: list[tuple[str, bytes]] = []
        recorder = self

        class Forward(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                recorder.bodies.append((self.path, body))
                status, text = post_raw(target, self.path, body,
                                        self.headers["authorization"].split()[-1])
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(text.encode())))
                self.end_headers()
                self.wfile.write(text.encode())

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Forward)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Recorder:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def test_a_recorded_key_operation_cannot_be_replayed(cluster: Cluster) -> None:
    """The security review's attack: the operator installs K2 and removes it;
    a recorded install body, replayed (to the operator route with the
    recorded token, or to a member's internal route with the recorded
    internal secret), must not bring K2 back; nor may a sealed install be
    passed off as another action."""
    peers = cluster.start_mesh(2)
    token = management_token(cluster, peers[0], cluster.default_key)
    old, new = cluster.default_key, cluster.new_key("k2.key")
    with Recorder(peers[0].api) as recorder:
        code, out = keys_cli(recorder.address, token, old, "install", str(new))
    assert code == 0 and not out["failed"], out
    [(path, install)] = recorder.bodies
    assert path == "/v1/keyring/install"
    code, out = keys_cli(peers[0], token, old, "remove", fp(new))
    assert code == 0 and all(r["keys"] == [fp(old)] for r in out["members"].values()), out

    # Even a freshly signed internal call (a recorded one is refused by its
    # nonce: test_secure_by_default) cannot replay the sealed operation.
    signed = internal_token(Keyring.from_file(old), "POST", "/v1/internal/keyring", install)
    status, reply = post_raw(peers[1].api, "/v1/internal/keyring", install, signed)
    assert status == 409 and "already received" in reply, (status, reply)
    status, reply = post_raw(peers[0].api, "/v1/keyring/install", install, token)
    assert status == 409 and "already received" in reply, (status, reply)
    status, reply = post_raw(peers[0].api, "/v1/keyring/use", install, token)
    assert status == 400 and "sent to /v1/keyring/use" in reply, (status, reply)
    for p in peers:
        assert Keyring.from_file(p.data_dir / "cluster.key").keys == \
            Keyring.from_file(old).keys, p.name


def wait_not_alive(cluster: Cluster, seen_by: Peer, gone: Peer) -> None:
    cluster.wait(lambda: seen_by.states().get(gone.name) in ("suspect", "dead"),
                 what=f"{gone.name} seen as down by {seen_by.name}")


def test_use_and_remove_refuse_to_cut_a_member_off_unless_forced(cluster: Cluster) -> None:
    """A member that missed an install must not be cut off by ``use``; one
    down during ``use`` must not be stranded by ``remove`` (it would come
    back sealing with the removed key and never rejoin), unless forced."""
    peers = cluster.start_mesh(3)
    a, b, c = peers
    token = management_token(cluster, a, cluster.default_key)
    old, new = cluster.default_key, cluster.new_key("new.key")

    c.kill()
    wait_not_alive(cluster, a, c)
    assert keys_cli(a, token, old, "install", str(new))[0] == 0
    c.start()
    cluster.wait_converged(peers)
    code, err = keys_cli(b, token, old, "use", str(new))
    assert code != 0 and "refused" in err and f"{c.name} (does not have key {fp(new)})" \
        in err and a.name + " (" not in err, err
    assert all(Keyring.from_file(p.data_dir / "cluster.key").keys[0] ==
               Keyring.from_file(old).keys[0] for p in peers), "nothing switched"

    code, out = keys_cli(a, token, old, "install", str(new))
    assert code == 0 and not out["failed"], out
    c.kill()
    wait_not_alive(cluster, a, c)
    code, out = keys_cli(a, token, old, "use", str(new))
    assert code == 0 and set(out["members"]) == {a.name, b.name}, out
    code, err = keys_cli(b, token, new, "remove", fp(old))
    assert code != 0 and "refused" in err and f"{c.name} (did not answer" in err, err
    for p in (a, b):
        assert Keyring.from_file(p.data_dir / "cluster.key").keys == \
            Keyring.from_file(new).keys + Keyring.from_file(old).keys, "nothing removed"

    code, out = keys_cli(b, token, new, "remove", fp(old), "--force")
    assert code == 0 and all(r["keys"] == [fp(new)] for r in out["members"].values()), out
    assert set(out["members"]) == {a.name, b.name}, out
