"""The CLI's API client: what an error says to scripts and to a person."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from nanomesh.cli.main import main
from nanomesh.transport.apiclient import ApiError, get_json


class _NotFound(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"error": "no service named 'nosuch'"}).encode()
        self.send_response(404)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_DELETE = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def peer() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_error_reply_keeps_url_and_status_for_scripts_and_tells_a_person_the_reason(
        peer: str) -> None:
    with pytest.raises(ApiError) as caught:
        get_json(peer, "/v1/services/nosuch")
    exc = caught.value
    assert str(exc) == f"http://{peer}/v1/services/nosuch: HTTP 404 no service named 'nosuch'"
    assert (exc.status, exc.peer) == (404, peer)
    assert exc.operator_message() == f"no service named 'nosuch' (peer {peer})"


def test_an_unreachable_peer_is_named_with_the_reason_in_words() -> None:
    api = f"127.0.0.1:{_closed_port()}"
    with pytest.raises(ApiError) as caught:
        get_json(api, "/v1/self")
    exc = caught.value
    assert exc.status is None and "[Errno" not in exc.operator_message()
    assert exc.operator_message().startswith(
        f"cannot reach the nanomesh peer at {api}: connection refused; is its daemon running?")


def test_the_cli_prints_the_person_s_message(peer: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["undeploy", "nosuch", "--peer", peer, "--token", "t"]) == 1
    err = capsys.readouterr().err
    assert err == f"nanomesh: error: no service named 'nosuch' (peer {peer})\n"


def test_a_transient_refusal_says_try_again_with_its_status() -> None:
    exc = ApiError("http://10.0.0.1:7947/v1/services: HTTP 503 no leader", peer="10.0.0.1:7947",
                   status=503, detail="no leader")
    assert exc.operator_message() == ("no leader (peer 10.0.0.1:7947, HTTP 503: the mesh is "
                                      "busy or electing a leader; try again)")
