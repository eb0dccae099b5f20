"""Tests for the network-namespace lab (nanomesh.testing.netns).

They need root, iproute2 and nftables. Without them they skip, unless
NANOMESH_REQUIRE_NETNS=1 (set in CI), where being unable to run is a failure.
All traffic stays inside namespaces the tests create; every send loop is
bounded in count and time.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    from nanomesh.testing import netns
except ModuleNotFoundError:  # package not installed in the venv: use this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from nanomesh.testing import netns

NETNS_DIR = netns.NETNS_DIR
NetnsLab = netns.NetnsLab
cleanup_stale = netns.cleanup_stale
netns_available = netns.netns_available

pytestmark = pytest.mark.netns

PY = sys.executable
PORT = 47000

# Each helper takes its parameters from argv and is bounded in time.
UDP_ECHO = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(0.2)
print("ready", flush=True)
deadline = time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline:
    try:
        data, peer = s.recvfrom(2048)
    except TimeoutError:
        continue
    s.sendto(data, peer)
"""

# Send argv[3] datagrams, one at a time, each waiting argv[4] s for its echo.
UDP_PROBE = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(float(sys.argv[4]))
got = 0
for k in range(int(sys.argv[3])):
    s.sendto(b"p%d" % k, (sys.argv[1], int(sys.argv[2])))
    try:
        while True:
            data, _ = s.recvfrom(2048)
            if data == b"p%d" % k:
                got += 1
                break
    except TimeoutError:
        pass
print(got)
"""

# Count datagrams until argv[3] s of silence after the first (or argv[4] s total).
UDP_COUNT = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(float(sys.argv[3]))
print("ready", flush=True)
n = 0
deadline = time.monotonic() + float(sys.argv[4])
while time.monotonic() < deadline:
    try:
        data, _ = s.recvfrom(2048)
    except TimeoutError:
        if n:
            break
        continue
    n += 1
print(n, flush=True)
"""

# Send argv[3] paced datagrams.
UDP_BLAST = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for k in range(int(sys.argv[3])):
    s.sendto(b"x%d" % k, (sys.argv[1], int(sys.argv[2])))
    time.sleep(0.0005)
"""

TCP_ECHO_ONCE = """
import socket, sys
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2])))
srv.listen(4)
srv.settimeout(float(sys.argv[3]))
print("ready", flush=True)
while True:
    try:
        conn, _ = srv.accept()
    except TimeoutError:
        break
    conn.settimeout(5)
    with conn:
        conn.sendall(conn.recv(1024).upper())
"""

TCP_CLIENT = """
import socket, sys
try:
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    c.sendall(b"hello")
    print(c.recv(1024).decode())
except OSError as e:
    print("error", type(e).__name__)
"""


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _require_netns() -> None:
    ok, reason = netns_available()
    if ok:
        return
    if os.environ.get("NANOMESH_REQUIRE_NETNS") == "1":
        pytest.fail(f"NANOMESH_REQUIRE_NETNS=1 but the netns lab is unavailable: {reason}")
    pytest.skip(reason)


@pytest.fixture
def lab3() -> Iterator[NetnsLab]:
    with NetnsLab(3) as lab:
        yield lab


def lab_namespaces(lab: NetnsLab) -> set[str]:
    return {lab.hub, *lab.hosts}


def existing_namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def start(
    lab: NetnsLab, i: int, code: str, *args: object, mode: netns.ExecMode = "nsenter"
) -> subprocess.Popen[str]:
    """Start a helper in host i and wait for its "ready" line."""
    proc: subprocess.Popen[str] = lab.popen(
        i,
        [PY, "-c", code, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        mode=mode,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        _, err = proc.communicate(timeout=5)
        pytest.fail(f"helper in host {i} did not start: {line!r} {err}")
    return proc


def udp_echoes(lab: NetnsLab, src: int, dst: int, count: int = 5, wait: float = 0.3) -> int:
    out = lab.run(src, [PY, "-c", UDP_PROBE, lab.address(dst), str(PORT), str(count), str(wait)])
    return int(out.stdout.strip())


def tcp_reply(lab: NetnsLab, src: int, dst: int, timeout: float = 1.0) -> str:
    out = lab.run(src, [PY, "-c", TCP_CLIENT, lab.address(dst), str(PORT + 1), str(timeout)])
    return out.stdout.strip()


# --------------------------------------------------------------------------- tests


def test_udp_and_tcp_between_two_hosts() -> None:
    with NetnsLab(2) as lab:
        assert lab.address(0) != lab.address(1)
        assert all(a.startswith("10.77.") for a in lab.addresses)
        start(lab, 1, UDP_ECHO, lab.address(1), PORT, 30)
        start(lab, 1, TCP_ECHO_ONCE, lab.address(1), PORT + 1, 30)
        assert udp_echoes(lab, 0, 1, count=10) == 10
        assert tcp_reply(lab, 0, 1) == "HELLO"


def test_partition_blocks_across_groups_and_heal_restores(lab3: NetnsLab) -> None:
    lab = lab3
    for i in range(3):
        start(lab, i, UDP_ECHO, lab.address(i), PORT, 30)
        start(lab, i, TCP_ECHO_ONCE, lab.address(i), PORT + 1, 30)
    assert udp_echoes(lab, 0, 1) == 5

    lab.partition([[0], [1, 2]])
    assert udp_echoes(lab, 0, 1, count=3) == 0
    assert udp_echoes(lab, 1, 0, count=3) == 0
    assert udp_echoes(lab, 0, 2, count=3) == 0
    assert udp_echoes(lab, 1, 2) == 5
    assert udp_echoes(lab, 2, 1) == 5
    assert tcp_reply(lab, 0, 1).startswith("error")
    assert tcp_reply(lab, 1, 2) == "HELLO"

    lab.heal()
    assert udp_echoes(lab, 0, 1) == 5
    assert udp_echoes(lab, 1, 0) == 5
    assert tcp_reply(lab, 0, 1) == "HELLO"


def test_heal_keeps_loss_rules(lab3: NetnsLab) -> None:
    lab3.set_loss(1, 1.0)
    lab3.partition([[0], [1, 2]])
    lab3.heal()
    start(lab3, 1, UDP_ECHO, lab3.address(1), PORT, 30)
    assert udp_echoes(lab3, 0, 1, count=3, wait=0.2) == 0
    assert lab3.loss(1) == 1.0
    lab3.set_loss(1, 0)
    assert udp_echoes(lab3, 0, 1) == 5


def _delivered(lab: NetnsLab, count: int) -> int:
    rx = start(lab, 1, UDP_COUNT, lab.address(1), PORT + 2, 1.0, 20)
    lab.run(0, [PY, "-c", UDP_BLAST, lab.address(1), str(PORT + 2), str(count)])
    out, _err = rx.communicate(timeout=25)
    return int(out.strip())


def test_loss_drops_about_half_and_zero_restores() -> None:
    with NetnsLab(2) as lab:
        lab.set_loss(1, 0.5)
        got = _delivered(lab, 400)
        assert 0.30 * 400 <= got <= 0.70 * 400, got
        # Loss is on host 1's input only: host 0 is unaffected, and so is loopback in 1.
        assert lab.loss(0) == 0.0

        lab.set_loss(1, 0)
        got = _delivered(lab, 400)
        assert got >= 0.98 * 400, got


def test_loss_applies_to_tcp_too() -> None:
    with NetnsLab(2) as lab:
        start(lab, 1, TCP_ECHO_ONCE, lab.address(1), PORT + 1, 30)
        lab.set_loss(1, 1.0)
        assert tcp_reply(lab, 0, 1, timeout=0.5).startswith("error")
        lab.set_loss(1, 0.0)
        assert tcp_reply(lab, 0, 1) == "HELLO"


def test_udp_only_loss_spares_tcp() -> None:
    """A host that loses every inbound datagram still talks TCP (the path a
    UDP-deaf peer has, which the gossip TCP ping fallback relies on)."""
    with NetnsLab(2) as lab:
        start(lab, 1, UDP_ECHO, lab.address(1), PORT, 30)
        start(lab, 1, TCP_ECHO_ONCE, lab.address(1), PORT + 1, 30)
        lab.set_loss(1, 1.0, protocol="udp")
        assert udp_echoes(lab, 0, 1, count=3, wait=0.2) == 0
        assert tcp_reply(lab, 0, 1) == "HELLO"
        lab.set_loss(1, 0.0)
        assert udp_echoes(lab, 0, 1) == 5


def test_ip_netns_exec_python_can_bind_and_sees_own_sys() -> None:
    with NetnsLab(2) as lab:
        start(lab, 1, UDP_ECHO, lab.address(1), PORT, 30, mode="ip-netns-exec")
        assert udp_echoes(lab, 0, 1) == 5
        listing = lab.run(
            1,
            [PY, "-c", "import os; print(*sorted(os.listdir('/sys/class/net')))"],
            mode="ip-netns-exec",
        ).stdout.split()
        assert listing == ["eth0", "lo"]


def test_close_removes_namespaces_and_processes() -> None:
    lab = NetnsLab(3)
    names = lab_namespaces(lab)
    assert names <= existing_namespaces()
    sleeper = lab.popen(2, [PY, "-c", "import time; time.sleep(60)"])
    # A process not started via popen (e.g. trio.run_process with exec_prefix).
    stray = subprocess.Popen([*lab.exec_prefix(1), PY, "-c", "import time; time.sleep(60)"])
    time.sleep(0.2)
    lab.close()
    lab.close()  # idempotent
    assert lab.closed
    assert not names & existing_namespaces()
    assert sleeper.poll() is not None
    assert stray.wait(timeout=5) == -9


def test_close_on_exception_inside_with() -> None:
    names: set[str] = set()
    with pytest.raises(RuntimeError, match="boom"), NetnsLab(2) as lab:
        names = lab_namespaces(lab)
        raise RuntimeError("boom")
    assert names
    assert not names & existing_namespaces()


def test_root_namespace_untouched() -> None:
    def snapshot() -> tuple[str, str, str, str]:
        def run(*argv: str) -> str:
            return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

        return (
            run("ip", "-o", "link", "show"),
            run("ip", "-o", "addr", "show"),
            run("ip", "route", "show", "table", "all"),
            run("nft", "list", "ruleset"),
        )

    before = snapshot()
    with NetnsLab(4) as lab:
        lab.set_loss(0, 0.2)
        lab.partition([[0, 1], [2, 3]])
        assert snapshot() == before
    assert snapshot() == before


def test_two_labs_are_isolated() -> None:
    with NetnsLab(2) as a, NetnsLab(2) as b:
        assert not lab_namespaces(a) & lab_namespaces(b)
        assert a.prefix != b.prefix
        start(b, 0, UDP_ECHO, b.address(0), PORT, 30)
        if b.address(0) not in a.addresses:
            # No route from lab a to lab b (or anywhere else).
            r = a.run(
                0,
                [PY, "-c", UDP_PROBE, b.address(0), str(PORT), "1", "0.2"],
                check=False,
            )
            assert r.returncode != 0 or r.stdout.strip() == "0"


def test_cleanup_stale_removes_only_dead_labs() -> None:
    stale = f"nm{secrets.token_hex(2)}-0"
    while (NETNS_DIR / stale).exists():
        stale = f"nm{secrets.token_hex(2)}-0"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        with NetnsLab(2) as live:
            removed = cleanup_stale()
            assert stale in removed
            assert not lab_namespaces(live) & set(removed)
            assert lab_namespaces(live) <= existing_namespaces()
        assert stale not in existing_namespaces()
    finally:
        subprocess.run(["ip", "netns", "delete", stale], capture_output=True, check=False)
    with pytest.raises(ValueError):
        cleanup_stale("*")


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        NetnsLab(0)
    with pytest.raises(ValueError):
        NetnsLab(201)
    with pytest.raises(ValueError):
        NetnsLab(2, subnet="8.8")
    with NetnsLab(1) as lab:
        with pytest.raises(ValueError):
            lab.set_loss(0, 1.5)
        with pytest.raises(IndexError):
            lab.address(1)
        with pytest.raises(ValueError):
            lab.partition([[0], [0]])


def test_twenty_host_setup_time(capsys: pytest.CaptureFixture[str]) -> None:
    t0 = time.perf_counter()
    lab = NetnsLab(20)
    setup = time.perf_counter() - t0
    try:
        start(lab, 19, UDP_ECHO, lab.address(19), PORT, 30)
        assert udp_echoes(lab, 0, 19) == 5
        t1 = time.perf_counter()
        lab.set_loss_all(0.1)
        set_loss = time.perf_counter() - t1
    finally:
        t2 = time.perf_counter()
        lab.close()
        teardown = time.perf_counter() - t2
    with capsys.disabled():
        print(
            f"\n[netns] 20-host lab: setup {setup * 1000:.0f} ms, "
            f"set_loss_all {set_loss * 1000:.0f} ms, teardown {teardown * 1000:.0f} ms"
        )
    assert setup < 3.0


def test_namespace_files_of_lab_live_under_run_netns() -> None:
    with NetnsLab(1) as lab:
        assert Path(lab.netns_path(0)).exists()
        assert lab.netns(0) == f"{lab.prefix}-0"
