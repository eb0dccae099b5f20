"""CoAP conformance of a real peer's gateway, checked with libcoap's
``coap-client`` (Debian ``libcoap3-bin``), as issue 13 found it: RFC 7252
(critical options, methods, Accept), RFC 6690 (``/.well-known/core`` and
its links) and RFC 7641 (Observe through the gateway, and deregistration).

One peer daemon with a public test service (``ticker``, CoAP endpoint
only). Skipped when ``coap-client`` is not installed, except where tools
are required (``NANOMESH_REQUIRE_NETNS=1``, as .ci/run sets as root, where
.ci/apt-packages.txt installs it): there its absence is a failure.
The decisions themselves are tested in tests/gateway/test_gateway_conformance.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mesh_harness import AddressPool, Cluster, Peer
from service_helpers import cli_retry, wait_instances
from test_control_plane import read_token_when_ready, wait_agreed

from nanomesh.config import DEFAULT_COAP_PORT
from nanomesh.gateway.observe import DEFAULT_OBSERVE

pytestmark = pytest.mark.integration

CLIENTS = ("coap-client", "coap-client-notls", "coap-client-gnutls", "coap-client-openssl")
"""libcoap's client under its plain name and the names Debian installs."""
TICKER = '''
from nanomesh.sdk.service import NanoService
from nanomesh.wire.service_traffic import Response

svc = NanoService()
seen = 0

@svc.route("GET", "seen")
async def count(call):
    """How many times this was asked: a value that changes on every GET."""
    global seen
    seen += 1
    return f"{seen}\\n"

@svc.route("GET", "temp")
async def temp(call):
    return "21.5"

@svc.route("GET", "health")
async def health(call):
    return "ok"

svc.run()
'''
MANIFEST = '''name = "ticker"
kind = "process"
replicas = 1
visibility = "public"
[run]
command = ["python3", "-u", "ticker.py"]
[[endpoints]]
name = "coap"
protocol = "coap"
port = "auto"
[health]
check = "coap"
path = "health"
'''


def find_coap_client() -> str:
    for name in CLIENTS:
        path = shutil.which(name)
        if path:
            return path
    reason = "libcoap's coap-client is not installed (Debian: apt install libcoap3-bin)"
    if os.environ.get("NANOMESH_REQUIRE_NETNS") == "1":
        pytest.fail(f"NANOMESH_REQUIRE_NETNS=1 (CI) but {reason}")
    pytest.skip(reason)


@dataclass
class Gateway:
    peer: Peer
    client: str

    def url(self, path: str) -> str:
        return f"coap://{self.peer.ip}:{DEFAULT_COAP_PORT}{path}"

    def run(self, *args: str, path: str, timeout: float = 30.0) -> tuple[str, str]:
        """``coap-client ARGS URL``: (stdout, stderr). libcoap prints a
        response's payload on stdout, and an error's code (``4.02 Bad
        Option``) and diagnostic payload on stderr."""
        result = subprocess.run([self.client, *args, self.url(path)], capture_output=True,
                                text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                                check=False)
        return result.stdout, result.stderr


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, address_pool: AddressPool
            ) -> Iterator[Gateway]:
    client = find_coap_client()
    root = tmp_path_factory.mktemp("coap")
    cluster = Cluster(root, address_pool)
    try:
        [peer] = cluster.start_mesh(1, key_file=cluster.new_key())
        token = read_token_when_ready(cluster, peer)
        wait_agreed(cluster, [peer])
        folder = root / "ticker"
        folder.mkdir()
        (folder / "ticker.py").write_text(TICKER)
        (folder / "nanoservice.toml").write_text(MANIFEST)
        cli_retry(cluster, "deploy", str(folder), peer=peer, token=token)
        wait_instances(cluster, [peer], "ticker", 1, timeout=60)
        yield Gateway(peer, client)
    finally:
        cluster.close()


def test_unknown_critical_option_is_4_02_and_elective_is_ignored(gateway: Gateway) -> None:
    out, err = gateway.run("-O", "2049,0x01", path="/s/ticker/temp")
    assert err.startswith("4.02") and "2049" in err and not out, (out, err)
    out, err = gateway.run("-O", "1,0x01", path="/s/ticker/temp")  # If-Match
    assert err.startswith("4.02") and "If-Match" in err, (out, err)
    out, err = gateway.run("-O", "35,coap://example.org/x", path="/s/ticker/temp")  # Proxy-Uri
    assert err.startswith("5.05"), (out, err)
    out, err = gateway.run("-O", "2048,0x01", path="/s/ticker/temp")
    assert out.strip() == "21.5" and not err, (out, err)


def test_accept_that_cannot_be_met_is_4_06(gateway: Gateway) -> None:
    out, err = gateway.run("-A", "50", path="/s/ticker/temp")  # the service answers text
    assert err.startswith("4.06") and not out, (out, err)
    out, err = gateway.run("-A", "0", path="/s/ticker/temp")
    assert out.strip() == "21.5" and not err, (out, err)
    out, err = gateway.run("-A", "50", path="/.well-known/core")
    assert err.startswith("4.06"), (out, err)


@pytest.mark.parametrize("method", ["fetch", "patch", "ipatch"])
def test_fetch_and_patch_are_4_05(gateway: Gateway, method: str) -> None:
    out, err = gateway.run("-m", method, "-e", "{}", path="/s/ticker/temp")
    assert err.startswith("4.05") and not out, (out, err)


def test_well_known_core_links_carry_attributes_and_answer(gateway: Gateway) -> None:
    out, err = gateway.run("-A", "40", path="/.well-known/core")
    assert not err, err
    links = out.strip().split(",")
    assert '</s/ticker>;rt="nanomesh.service";ct=50;obs' in links, out
    for link in links:
        path = re.match(r"<([^>]*)>", link)
        assert path is not None, link
        body, err = gateway.run(path=path.group(1))
        assert not err and json.loads(body)["paths"].startswith(path.group(1)), (link, err)
    filtered, _ = gateway.run(path="/.well-known/core?rt=nanomesh.service")
    assert filtered.strip() == out.strip()
    nothing, err = gateway.run(path="/.well-known/core?rt=core.rd")
    assert nothing.strip() == "" and not err, (nothing, err)
    body, _ = gateway.run(path="/s/ticker")
    assert json.loads(body) == {"service": "ticker", "visibility": "public",
                                "instances": ["ticker/0"], "protocols": ["coap"],
                                "paths": "/s/ticker/<path>"}


def read_seen(gateway: Gateway) -> int:
    out, err = gateway.run(path="/s/ticker/seen")
    assert not err, err
    return int(out)


def test_observe_gets_notifications_and_ends_when_the_client_goes(gateway: Gateway) -> None:
    """``coap-client -s`` observes /s/ticker/seen (it changes on every poll)
    for a little over two poll periods: the first answer and at least two
    notifications, each a new value. When the client is done (libcoap
    deregisters, or its port is gone and the next confirmable notification
    fails), the gateway stops polling: the count moves only by our reads."""
    period = DEFAULT_OBSERVE.period
    duration = int(2 * period + 4)
    out, err = gateway.run("-s", str(duration), path="/s/ticker/seen",
                           timeout=duration + 30)
    values = [int(v) for v in out.split()]
    assert len(values) >= 3 and values == sorted(set(values)), (out, err)
    time.sleep(2)  # libcoap's deregistration (a GET with Observe=1) is a GET too
    before = read_seen(gateway)
    time.sleep(2 * period + 1)
    assert read_seen(gateway) == before + 1


def test_apt_package_list_names_libcoap() -> None:
    """CI installs coap-client (.ci/run reads this list)."""
    packages = (Path(__file__).resolve().parents[2] / ".ci" / "apt-packages.txt").read_text()
    assert "libcoap3-bin" in packages.split()
