"""The shared mesh harness (`nanomesh.testing.cluster`) without peer daemons:
address sources, names and command lines, the waits' failure messages, and
the process handling of `PeerProcess` and `Cluster` on small stand-in
processes (a starter hook runs them instead of ``peer run``). Addresses are
from 127.0.80.0/24, the range of this work on the shared machine."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from nanomesh.testing import cluster as harness
from nanomesh.testing.cluster import (
    NO_KEY,
    AddressBusy,
    AddressPool,
    AddressRange,
    Cluster,
    LoopbackCluster,
    PeerExited,
    PeerProcess,
    WaitTimeout,
    numbered_names,
    resolve_key,
    starts_in_log,
    wait_until,
)
from nanomesh.transport.apiclient import ApiError

SUBNET = "127.0.80"


def runs(code: str) -> harness.Starter:
    """A starter that runs python `code` instead of the peer's argv."""
    def start(argv: list[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, start_new_session=True)
    return start


SLEEPER = runs("import time; time.sleep(60)")


@pytest.fixture
def bound_udp() -> Iterator[str]:
    """127.0.80.201 with its gossip port taken, as by a stray process."""
    ip = f"{SUBNET}.201"
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((ip, harness.GOSSIP_PORT))
    try:
        yield ip
    finally:
        s.close()


# --------------------------------------------------------------------------- addresses


def test_address_range_hands_out_the_fixed_range_in_order_and_then_refuses() -> None:
    r = AddressRange("127.0.80.", 11, 3)  # a trailing dot is allowed
    assert [r.take(), r.take(), r.take()] == ["127.0.80.11", "127.0.80.12", "127.0.80.13"]
    with pytest.raises(RuntimeError, match=re.escape("all 3 addresses from 127.0.80.11")):
        r.take()
    r.release("127.0.80.11")  # the range is the caller's: nothing to give back
    assert r.address(1) == "127.0.80.12"


@pytest.mark.parametrize(("subnet", "first", "count", "error"), [
    (SUBNET, 0, 1, "within 127.0.80.1-250"),
    (SUBNET, 249, 3, "within 127.0.80.1-250"),
    ("127.0", 1, 1, "three octets"),
    ("127.0.x", 1, 1, "three octets"),
    ("127.0.300", 1, 1, "three octets"),
])
def test_address_range_rejects_what_leaves_its_subnet(subnet: str, first: int, count: int,
                                                      error: str) -> None:
    with pytest.raises(ValueError, match=error):
        AddressRange(subnet, first, count)


def test_address_pool_skips_addresses_another_pool_holds_until_released(
        tmp_path: Path) -> None:
    a = AddressPool(1, 3, prefix="127.0.80.", lock_dir=tmp_path)
    b = AddressPool(1, 3, prefix="127.0.80.", lock_dir=tmp_path)
    first = a.take()
    assert first == "127.0.80.1"
    assert b.take() == "127.0.80.2", "b took the address a holds"
    a.release(first)
    c = AddressPool(1, 3, prefix="127.0.80.", lock_dir=tmp_path)
    assert c.take() == first


def test_address_pool_skips_an_address_whose_ports_are_taken(tmp_path: Path,
                                                             bound_udp: str) -> None:
    pool = AddressPool(201, 202, prefix="127.0.80.", lock_dir=tmp_path)
    assert pool.take() == "127.0.80.202"
    with pytest.raises(RuntimeError, match=re.escape("no free address left in 127.0.80.201-202")):
        pool.take()


# --------------------------------------------------------------------------- names and argv


def test_numbered_names_pad_to_one_width_only_when_asked() -> None:
    assert numbered_names("peer", 3) == ["peer-1", "peer-2", "peer-3"]
    assert numbered_names("p", 10, pad=True)[::9] == ["p-01", "p-10"]


def test_a_peer_gets_the_named_key_else_the_clusters_and_none_for_no_key() -> None:
    default, mine = Path("/k/default"), Path("/k/mine")
    assert resolve_key(None, default) == default
    assert resolve_key(mine, default) == mine
    assert resolve_key(NO_KEY, default) is None


def test_peer_argv_binds_the_gossip_port_and_passes_every_option(tmp_path: Path) -> None:
    p = PeerProcess("n-1", f"{SUBNET}.5", tmp_path / "d", tmp_path / "n-1.log",
                    key_file=Path("/k"), join=[f"{SUBNET}.4:7946"], preset="lan",
                    log_level="INFO", extra_args=["--config", "c.toml"])
    argv = p.argv()
    assert argv[1:5] == ["-m", "nanomesh", "peer", "run"]
    pairs = dict(zip(argv[5::2], argv[6::2], strict=False))
    assert pairs["--name"] == "n-1" and pairs["--bind"] == f"{SUBNET}.5:7946"
    assert pairs["--data-dir"] == str(tmp_path / "d") and pairs["--gossip-preset"] == "lan"
    assert pairs["--join"] == f"{SUBNET}.4:7946" and pairs["--key-file"] == "/k"
    assert pairs["--log-level"] == "INFO" and argv[-2:] == ["--config", "c.toml"]
    assert (p.api, p.raft) == (f"{SUBNET}.5:7947", f"{SUBNET}.5:7948")
    bare = PeerProcess("b", "127.0.80.6", tmp_path, tmp_path / "b.log", key_file=None).argv()
    assert not {"--key-file", "--join", "--gossip-preset", "--log-level"} & set(bare)


# --------------------------------------------------------------------------- waits


def test_a_wait_that_runs_out_says_what_it_waited_for_and_what_it_saw() -> None:
    calls = []

    def never() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise ApiError("connection refused")
        return 0

    with pytest.raises(WaitTimeout) as info:
        wait_until(never, 0.05, interval=0.01, what="the seed's API",
                   describe=lambda: "views: none")
    text = str(info.value)
    assert text.startswith("timed out after 0.05s waiting for the seed's API")
    assert "last value 0" in text and "connection refused" in text
    assert text.endswith("\nviews: none")
    # pytest sees an assertion, the experiments a TimeoutError
    assert isinstance(info.value, AssertionError) and isinstance(info.value, TimeoutError)


def test_a_wait_returns_the_first_truthy_value_and_lets_check_fail_fast() -> None:
    values = iter([None, ApiError("not yet"), {"ok": 1}])

    def poll() -> Any:
        v = next(values)
        if isinstance(v, Exception):
            raise v
        return v

    assert wait_until(poll, 5, interval=0.001) == {"ok": 1}

    def check() -> None:
        raise PeerExited("peer x exited")

    t0 = time.monotonic()
    with pytest.raises(PeerExited):
        wait_until(lambda: False, 30, check=check)
    assert time.monotonic() - t0 < 1


# --------------------------------------------------------------------------- processes


def test_restarts_append_to_the_log_after_a_numbered_marker(tmp_path: Path) -> None:
    log = tmp_path / "p.log"
    p = PeerProcess("p", f"{SUBNET}.7", tmp_path, log, key_file=None,
                    starter=runs("print('run', flush=True)"))
    assert starts_in_log(log) == 0
    for _ in range(3):
        p.start()
        assert p.proc is not None
        p.proc.wait(timeout=30)
    lines = log.read_text().splitlines()
    assert lines == ["run", "---- harness: start #2 of p ----", "run",
                     "---- harness: start #3 of p ----", "run"]
    assert starts_in_log(log) == 3


def test_an_exit_while_it_should_run_fails_with_the_log_tail(tmp_path: Path) -> None:
    c = Cluster(tmp_path)
    p = c.new_peer("crasher", f"{SUBNET}.8",
                   starter=runs("print('bind failed: address in use'); raise SystemExit(3)"))
    p.start()
    try:
        with pytest.raises(PeerExited, match=r"(?s)crasher exited unexpectedly with status 3"
                                             r".*bind failed: address in use"):
            c.wait(lambda: False, 30, what="something that never comes")
        assert "exited 3" in c.log_tails()
    finally:
        c.close()


def test_kill_and_terminate_are_expected_exits_and_close_reaps_everything(
        tmp_path: Path) -> None:
    c = Cluster(tmp_path)
    a, b, d = (c.new_peer(n, f"{SUBNET}.{9 + i}", starter=SLEEPER)
               for i, n in enumerate("abd"))
    for p in (a, b, d):
        p.start()
    a.kill()
    assert b.terminate() == -15
    c.check_processes()  # neither exit is a failure
    assert c.running_peers() == [d]
    c.close()
    c.close()  # idempotent
    assert not d.running and d.proc is not None and d.proc.returncode == -9


def test_start_names_the_busy_address_before_starting_anything(tmp_path: Path,
                                                                bound_udp: str) -> None:
    c = LoopbackCluster(tmp_path, AddressRange(SUBNET, 201, 1))
    with pytest.raises(AddressBusy, match=re.escape("already in use on 127.0.80.201")):
        c.add("busy", starter=SLEEPER)
    assert c.peers[0].proc is None
    c.close()


def test_api_calls_go_through_the_getter_hook(tmp_path: Path) -> None:
    seen = []

    def getter(api: str, path: str, timeout: float) -> Any:
        seen.append((api, path, timeout))
        if path == "/v1/health":
            raise ApiError("down")
        return [{"name": "a", "state": "alive"}, {"name": "b", "state": "suspect"}]

    p = PeerProcess("a", f"{SUBNET}.12", tmp_path, tmp_path / "a.log", key_file=None,
                    getter=getter)
    assert p.states() == {"a": "alive", "b": "suspect"}
    assert not p.api_ok(timeout=0.5)
    assert seen == [(f"{SUBNET}.12:7947", "/v1/members", harness.API_TIMEOUT),
                    (f"{SUBNET}.12:7947", "/v1/health", 0.5)]
