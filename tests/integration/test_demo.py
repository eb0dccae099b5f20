"""`nanomesh demo failover`, run as a real subprocess (`python -m nanomesh`).

The demo uses the lab's fixed addresses (127.0.0.2..), so these tests skip
when something (the manual lab, another demo) already answers there.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest
from mesh_harness import PY

from nanomesh.cli import lab as lab_module

pytestmark = pytest.mark.integration

DEMO_IPS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
"""Where `nanomesh demo failover -n 3` puts its peers (the lab's addresses)."""


def _answers(ip: str, port: int) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def free_addresses() -> None:
    busy = [ip for ip in DEMO_IPS if _answers(ip, 7947) or _answers(ip, 7946)]
    if busy:
        pytest.skip(f"something already runs on {', '.join(busy)} (the manual lab?); the "
                    "demo uses the lab's fixed addresses, so it cannot run beside it")


def demo(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NANOMESH_")}
    return subprocess.run([PY, "-m", "nanomesh", "demo", "failover", *args],
                          capture_output=True, text=True, timeout=timeout, env=env,
                          stdin=subprocess.DEVNULL, check=False)


def processes_mentioning(text: str) -> list[str]:
    """Live (non-zombie) processes whose command line contains `text`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{proc.name}: {cmdline}")
    return found


def test_failover_demo_narrates_and_cleans_up(tmp_path: Path, free_addresses: None) -> None:
    """`demo failover -n 3` exits 0 after narrating, in order, the new leader,
    the dead leader's instances rescheduled and the mesh healthy again, with
    the seconds since the kill; it prints a summary and a successful write; it
    leaves no peer or instance process behind and removes its directory."""
    demo_dir = tmp_path / "demo"
    started = time.monotonic()
    result = demo("-n", "3", "--dir", str(demo_dir))
    took = time.monotonic() - started
    out = result.stdout
    assert result.returncode == 0, (out, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr

    def line(pattern: str) -> int:
        for i, text in enumerate(out.splitlines()):
            if re.search(pattern, text):
                return i
        raise AssertionError(f"no line matching {pattern!r} in:\n{out}")

    killed = line(r"^  \+0\.000s  killed leader peer-\d \(127\.0\.0\.\d\)$")
    new_leader = line(r"^  \+\d+\.\d{3}s  new leader peer-\d \(term \d+\)$")
    detected = line(r"^  \+\d+\.\d{3}s  failure detected: peer-\d marked dead by both survivors")
    rescheduled = line(r"^  \+\d+\.\d{3}s  instances of peer-\d rescheduled: \S+/\d -> peer-\d "
                       r"\(running\)")
    healthy = line(r"^  \+\d+\.\d{3}s  mesh healthy: 2 peers alive, leader peer-\d \(term \d+\)"
                   r".*2/3 voters alive.*all 4 instances running$")
    assert killed < min(new_leader, detected) and max(new_leader, detected) < healthy, out
    assert rescheduled < healthy, out
    assert "summary (seconds after the kill" in out and "write: deploy committed" in out, out
    stamps = [float(m) for m in re.findall(r"^  \+(\d+\.\d{3})s", out, re.MULTILINE)]
    assert stamps == sorted(stamps), out  # printed in the order they happened
    assert stamps[-1] < 30, out

    # Cleaned up: no peer (their pids are printed) and no instance left, no directory.
    pids = [int(p) for p in re.findall(r"pid (\d+)", out)]
    assert len(set(pids)) >= 3, out
    deadline = time.monotonic() + 10  # instance shims may still be finishing
    while time.monotonic() < deadline:
        left = [p for p in pids if lab_module.alive(p)] + processes_mentioning(str(demo_dir))
        if not left:
            break
        time.sleep(0.2)
    assert not left, left
    assert not demo_dir.exists(), list(demo_dir.iterdir())
    assert took < 90, f"the demo took {took:.0f} s"


def test_failover_demo_needs_three_peers(tmp_path: Path) -> None:
    """With fewer than 3 peers the demo refuses at once, saying why (a
    majority of the voters must survive), and starts nothing."""
    result = demo("-n", "2", "--dir", str(tmp_path / "demo"), timeout=30)
    assert result.returncode != 0
    assert "nanomesh: error:" in result.stderr and "majority" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "demo").exists()
    assert "majority" in demo("--help").stdout


def test_failover_demo_refuses_a_busy_address(tmp_path: Path, free_addresses: None) -> None:
    """When something answers on the demo's addresses (a lab, another demo),
    it refuses with a clear message instead of fighting over the ports."""
    with socket.create_server((DEMO_IPS[0], 7947)):
        result = demo("-n", "3", "--dir", str(tmp_path / "demo"), timeout=30)
    assert result.returncode != 0
    assert "already runs on 127.0.0.2" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_failover_demo_keeps_a_foreign_directory(tmp_path: Path, free_addresses: None) -> None:
    """--dir pointing at a non-empty directory the demo did not create is
    refused, never replaced."""
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    result = demo("-n", "3", "--dir", str(precious), timeout=30)
    assert result.returncode != 0
    assert "is not a demo directory" in result.stderr, result.stderr
    assert (precious / "notes.txt").read_text() == "keep me"
