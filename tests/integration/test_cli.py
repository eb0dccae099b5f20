"""The `nanomesh` command line, run as real subprocesses (`python -m nanomesh`)."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mesh_harness import MEMBER_KEYS, PY, UNREACHABLE_IP, Cluster, tail, wait_until

from nanomesh.cli import lab as lab_module

pytestmark = pytest.mark.integration

LAB_IPS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
"""Where `nanomesh lab up -n 3` puts its peers (fixed by nanomesh/cli/lab.py)."""


def nanomesh(*args: str, env_extra: dict[str, str] | None = None, timeout: float = 60
             ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NANOMESH_")}
    env.update(env_extra or {})
    return subprocess.run([PY, "-m", "nanomesh", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL, check=False)


def assert_clean_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Non-zero exit, a one-line `nanomesh: error:` message naming the problem."""
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    assert "nanomesh: error:" in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


# --------------------------------------------------------------------------- lab


def _answers(ip: str, port: int) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=0.5):
            return True
    except OSError:
        return False


class LabLogs:
    def __init__(self, lab_dir: Path) -> None:
        self.lab_dir = lab_dir

    def log_tails(self) -> str:
        logs = sorted(self.lab_dir.glob("*.log"))
        return "\n".join(f"===== {p} =====\n{tail(p)}" for p in logs) or "(no lab logs)"


@pytest.fixture
def lab_dir(tmp_path: Path, attach_logs: Any) -> Iterator[Path]:
    """A lab directory; whatever lab ran there is killed at teardown."""
    busy = [ip for ip in LAB_IPS if _answers(ip, 7947) or _answers(ip, 7946)]
    if busy:
        pytest.skip(f"a lab is already running on {', '.join(busy)} (the manual lab?); "
                    "`nanomesh lab` has fixed addresses, so this test cannot run beside it")
    d = tmp_path / "lab"
    attach_logs(LabLogs(d))
    pids: set[int] = set()
    try:
        yield d
    finally:
        with contextlib.suppress(lab_module.LabError):
            pids |= {p.pid for p in lab_module.load_state(d)}
        for pid in pids:
            if lab_module.alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def lab_up(lab_dir: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("NANOMESH_")}
    return subprocess.run([PY, "-m", "nanomesh", "lab", "up", "-n", "3", "--dir", str(lab_dir)],
                          capture_output=True, text=True, timeout=90, env={**environ, **env},
                          stdin=subprocess.DEVNULL, check=False)


def test_lab_up_status_down(lab_dir: Path) -> None:
    """`lab up -n 3` starts three converged peers and prints them, `lab status`
    shows each running and seeing 3 alive, `lab down` stops every process
    (their pids are gone) and forgets the lab."""
    env = {"NANOMESH_LAB_DIR": str(lab_dir)}
    up = lab_up(lab_dir, env)
    assert up.returncode == 0, (up.stdout, up.stderr)
    assert "mesh of 3 peers is up" in up.stdout
    for i, ip in enumerate(LAB_IPS, 1):
        assert f"peer-{i}" in up.stdout and f"http://{ip}:7947" in up.stdout, up.stdout
    peers = lab_module.load_state(lab_dir)
    assert [p.name for p in peers] == ["peer-1", "peer-2", "peer-3"]
    assert all(lab_module.alive(p.pid) for p in peers)

    status = nanomesh("lab", "status", "--dir", str(lab_dir), env_extra=env)
    assert status.returncode == 0, status.stderr
    rows = [line.split() for line in status.stdout.splitlines()[1:] if line.strip()]
    assert len(rows) == 3, status.stdout
    for row, p in zip(rows, peers, strict=True):
        assert row[:4] == [p.name, str(p.pid), "running", p.api], status.stdout
        assert row[4:] == ["3", "alive"], status.stdout

    # The query commands find the lab's first peer by default.
    members = nanomesh("members", "--json", env_extra=env)
    assert members.returncode == 0, members.stderr
    assert {m["name"] for m in json.loads(members.stdout)} == {p.name for p in peers}

    down = nanomesh("lab", "down", "--dir", str(lab_dir), env_extra=env)
    assert down.returncode == 0, down.stderr
    assert "stopped 3 peers" in down.stdout
    for p in peers:
        wait_until(lambda p=p: not Path(f"/proc/{p.pid}").exists() or not lab_module.alive(
            p.pid), what=f"{p.name} (pid {p.pid}) gone")
    assert "did not stop" not in down.stdout  # they left gracefully, no SIGKILL needed
    for p in peers:
        assert "left the mesh" in Path(p.log).read_text(), p.name

    again = nanomesh("lab", "status", "--dir", str(lab_dir), env_extra=env)
    assert again.returncode == 1 and "no lab in" in again.stdout


# --------------------------------------------------------------------------- queries


def test_members_and_profile_commands(cluster: Cluster) -> None:
    """`members --json` prints the API's member array (every required key),
    `members` prints a table, `profile --json` prints the peer's capability
    profile as a dict (cpu, memory, ...), `profile` prints it readably."""
    peers = cluster.start_mesh(2, key_file=cluster.new_key())
    target = peers[1]

    for peer_arg in (target.ip, target.api):
        result = nanomesh("members", "--peer", peer_arg, "--json")
        assert result.returncode == 0, result.stderr
        members = json.loads(result.stdout)
        assert isinstance(members, list) and len(members) == 2
        for m in members:
            assert set(m) >= MEMBER_KEYS, m
            assert m["state"] == "alive"
        assert [m["name"] for m in members] == sorted(p.name for p in peers)

    table = nanomesh("members", "--peer", target.ip)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["NAME", "ADDRESS", "STATE", "INC"]
    for p in peers:
        assert any(line.split()[:3] == [p.name, p.gossip, "alive"] for line in lines[1:]), lines

    result = nanomesh("profile", "--peer", target.ip, "--json")
    assert result.returncode == 0, result.stderr
    profile = json.loads(result.stdout)
    assert isinstance(profile, dict)
    assert {"cpu", "memory", "power", "network", "storage", "devices"} <= set(profile)
    assert profile["cpu"]["cores"] >= 1
    assert profile["memory"]["total_mb"] > 0
    assert profile["peer"]["name"] == target.name

    human = nanomesh("profile", "--peer", target.ip)
    assert human.returncode == 0, human.stderr
    assert human.stdout.startswith(f"{target.name} at {target.gossip}")
    assert "cpu:" in human.stdout


def test_a_running_lab_changes_live(lab_dir: Path) -> None:
    """`lab add`, `stop --kill`, `start`, `restart`, `remove` on a running lab:
    each change is what the mesh sees, lab.json follows it (new pids), and
    `lab down` stops exactly the peers that run, restarted ones included."""
    if _answers("127.0.0.5", 7947) or _answers("127.0.0.5", 7946):
        pytest.skip("127.0.0.5 is busy (the manual lab?)")
    env = {"NANOMESH_LAB_DIR": str(lab_dir)}

    def lab(*args: str) -> str:
        result = nanomesh("lab", *args, "--dir", str(lab_dir), env_extra=env, timeout=90)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result.stdout

    def states_seen_by(name: str) -> dict[str, str]:
        api = next(p.api for p in lab_module.load_state(lab_dir) if p.name == name)
        members = json.loads(nanomesh("members", "--json", "--peer", api).stdout)
        return {m["name"]: m["state"] for m in members}

    def pid_of(name: str) -> int:
        return next(p.pid for p in lab_module.load_state(lab_dir) if p.name == name)

    assert lab_up(lab_dir, env).returncode == 0
    assert "added peer-4" in lab("add", "-n", "1")
    rows = json.loads(lab("status", "--json"))
    assert [(r["name"], r["process"], r["members"]) for r in rows] == [
        (f"peer-{i}", "running", {"alive": 4}) for i in range(1, 5)]

    killed = pid_of("peer-2")
    lab("stop", "--kill", "peer-2")
    wait_until(lambda: states_seen_by("peer-3")["peer-2"] == "dead", what="peer-2 dead")
    assert "started peer-2" in lab("start", "peer-2")  # returns once all see it alive
    assert pid_of("peer-2") != killed and lab_module.alive(pid_of("peer-2"))
    assert set(states_seen_by("peer-4").values()) == {"alive"}

    before = pid_of("peer-1")
    assert "restarted peer-1" in lab("restart", "peer-1")
    assert pid_of("peer-1") != before
    assert "left the mesh" in (lab_dir / "peer-1.log").read_text()

    last = pid_of("peer-4")
    assert "removed peer-4" in lab("remove", "peer-4")
    assert [p.name for p in lab_module.load_state(lab_dir)] == ["peer-1", "peer-2", "peer-3"]
    assert not lab_module.alive(last)
    wait_until(lambda: states_seen_by("peer-1")["peer-4"] == "left", what="peer-4 left")

    refused = nanomesh("lab", "start", "peer-9", "--dir", str(lab_dir), env_extra=env)
    assert refused.returncode == 1 and "no peer 'peer-9' in the lab" in refused.stderr
    running = [p.pid for p in lab_module.load_state(lab_dir)]
    assert "stopped 3 peers" in lab("down")
    for pid in running:
        wait_until(lambda pid=pid: not lab_module.alive(pid), what=f"pid {pid} gone")


def test_a_lab_partition_cuts_the_mesh_and_heal_rejoins_it(lab_dir: Path) -> None:
    """`lab partition peer-3` (nftables on loopback, root): the others declare
    peer-3 dead and it them, while the CLI still reaches peer-3; `lab heal`
    brings every view back to all alive; `lab down` removes the rules."""
    if os.geteuid() != 0 or not shutil.which("nft"):
        if os.environ.get("NANOMESH_REQUIRE_NETNS") == "1":
            pytest.fail("NANOMESH_REQUIRE_NETNS=1 but lab faults need root and nft")
        pytest.skip("lab faults need root and nft")
    env = {"NANOMESH_LAB_DIR": str(lab_dir)}

    def lab(*args: str) -> str:
        result = nanomesh("lab", *args, "--dir", str(lab_dir), env_extra=env, timeout=90)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result.stdout

    def view(ip: str) -> dict[str, str]:
        members = json.loads(nanomesh("members", "--json", "--peer", ip).stdout)
        return {m["name"]: m["state"] for m in members}

    try:
        assert lab_up(lab_dir, env).returncode == 0
        assert "partitioned: peer-3 | peer-1,peer-2" in lab("partition", "peer-3")
        wait_until(lambda: view(LAB_IPS[0])["peer-3"] == "dead", what="peer-3 dead to peer-1")
        wait_until(lambda: view(LAB_IPS[2]) == {"peer-1": "dead", "peer-2": "dead",
                                                "peer-3": "alive"},
                   what="peer-3 sees the others dead")
        assert "partition peer-3 | peer-1,peer-2" in lab("status")
        lab("heal")
        for ip in LAB_IPS:
            wait_until(lambda ip=ip: set(view(ip).values()) == {"alive"},
                       what=f"{ip} sees all alive again")
        lab("down")
        assert subprocess.run(["nft", "list", "table", "inet", "nanomesh_lab"],
                              capture_output=True).returncode != 0
    finally:
        subprocess.run(["nft", "delete", "table", "inet", "nanomesh_lab"], capture_output=True)


def test_an_experiment_runs_its_timeline_and_records_it(lab_dir: Path) -> None:
    """`nanomesh experiment run experiments/scenarios/smoke.toml`: every step
    runs at its time (the leader killed, a peer added, the dead one started,
    a random one restarted), the load runs at its rate, the sampler sees the
    leader change, and the results are written; the lab is down at the end."""
    if _answers("127.0.0.5", 7947) or _answers("127.0.0.5", 7946):
        pytest.skip("127.0.0.5 is busy (the manual lab?)")
    out = lab_dir.parent  # the experiment's lab is OUT/lab: the fixture's lab_dir
    scenario = Path(__file__).parents[2] / "experiments" / "scenarios" / "smoke.toml"
    done = nanomesh("experiment", "run", str(scenario), "--out", str(out), timeout=240)
    assert done.returncode == 0, (done.stdout, done.stderr)
    summary = json.loads((out / "summary.json").read_text())
    assert abs(summary["calls"] - 240) <= 2, summary   # 10/s for 24 s, open loop
    assert summary["leader_changes"] >= 1, summary
    steps = list(csv.DictReader((out / "steps.csv").open()))
    assert [s["step"] for s in steps] == ["kill leader", "add 1", "start stopped",
                                          "restart random"]
    assert steps[0]["result"] == steps[2]["result"]  # the killed leader came back
    assert not any(s["result"].startswith("failed") for s in steps), steps
    assert float(steps[0]["t_start_s"]) == pytest.approx(4.0, abs=0.5)
    timeline = list(csv.DictReader((out / "timeline.csv").open()))
    assert len(timeline) >= 40 and max(int(r["alive"]) for r in timeline) == 4
    assert f"smoke: {summary['calls']} calls, {summary['failed']} failed" in done.stdout
    # every sampled plan change is counted; whether the leader also moves
    # instances onto a peer that came back (avoidable moves) is placement's
    # policy, reported rather than asserted here
    moves = list(csv.DictReader((out / "moves.csv").open()))
    assert summary["moves"] == sum(int(m["moved"]) for m in moves)
    assert summary["moves_necessary"] + summary["moves_avoidable"] == summary["moves"]
    assert lab_module.load_state(lab_dir) == []  # `lab down` ran


def test_query_without_a_peer_fails_cleanly() -> None:
    """`members`/`profile` against an address where nothing listens exit
    non-zero with a "cannot reach" message and no traceback; a malformed
    --peer is rejected by name."""
    for cmd in ("members", "profile"):
        assert_clean_error(nanomesh(cmd, "--peer", UNREACHABLE_IP), "cannot reach",
                           UNREACHABLE_IP)
    assert_clean_error(nanomesh("members", "--peer", "not-an-ip"), "not an IP address")


def test_peer_run_rejects_bad_configuration(tmp_path: Path, cluster: Cluster) -> None:
    """`peer run` with a bad --bind, an address it cannot bind (not local, or
    its gossip port taken), a missing key file or an API port equal to the
    gossip port exits non-zero with a message naming the problem, no traceback."""
    data = ["--data-dir", str(tmp_path / "data")]
    assert_clean_error(nanomesh("peer", "run", "--bind", "not-an-ip", *data),
                       "--bind", "not an IP address")
    assert_clean_error(nanomesh("peer", "run", "--bind", "127.0.10.251:99999", *data),
                       "port must be 1-65535")
    assert_clean_error(nanomesh("peer", "run", "--bind", "203.0.113.9", *data),
                       "cannot listen for gossip (UDP) on 203.0.113.9:7946")
    assert_clean_error(nanomesh("peer", "run", "--bind", "127.0.10.251", "--key-file",
                                str(tmp_path / "missing.key"), *data),
                       "cannot read key file")
    assert_clean_error(nanomesh("peer", "run", "--bind", "127.0.10.251:7000",
                                "--api-port", "7000", *data), "gossip port")
    running = cluster.add("busy")
    cluster.wait(running.health, what="the peer's API")
    assert_clean_error(nanomesh("peer", "run", "--bind", running.ip, "--api-port", "7960",
                                *data), f"cannot listen for gossip (UDP) on {running.ip}:7946",
                       "Address already in use")
    assert running.running
    # A second daemon on a running peer's data directory (another address).
    assert_clean_error(nanomesh("peer", "run", "--bind", "127.0.10.251",
                                "--data-dir", str(running.data_dir)),
                       "a peer is running on", "stop it first")
    assert running.running


def test_peer_run_with_api_port_in_use_fails_cleanly(tmp_path: Path, cluster: Cluster) -> None:
    """A peer whose gossip port is free but whose API port is taken exits
    non-zero with a clear one-line message, like a taken gossip port does."""
    running = cluster.add("busy")
    cluster.wait(running.health, what="the peer's API")
    result = nanomesh("peer", "run", "--bind", f"{running.ip}:7960",
                      "--data-dir", str(tmp_path / "data"))
    assert_clean_error(result, f"cannot listen for HTTP API on {running.ip}:7947",
                       "Address already in use")


def test_help_exits_zero() -> None:
    """`--help` and `peer run --help` print usage and exit 0; no command at
    all prints the help and exits 2."""
    for args in (["--help"], ["peer", "run", "--help"], ["members", "--help"],
                 ["lab", "up", "--help"]):
        result = nanomesh(*args)
        assert result.returncode == 0, (args, result.stderr)
        assert result.stdout.startswith("usage: nanomesh"), (args, result.stdout)
    assert "--join" in nanomesh("peer", "run", "--help").stdout
    bare = nanomesh()
    assert bare.returncode == 2 and "usage: nanomesh" in bare.stdout
