"""The supervisor shim on its own: lifeline, exit mirroring, usage errors."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
import trio
from runtime_helpers import (
    PY,
    READY,
    SPAWNS_GRANDCHILD,
    STAYING,
    gone,
    read_pids,
    wait_for_text,
    wait_until,
)

from nanomesh.runtime.process import SHIM_ARGV


async def run_shim(args: list[str], log: Path, *, close_lifeline: bool = False,
                   ) -> tuple[trio.Process, int | None]:
    """Start the shim as the driver does (new session, lifeline on stdin, log on
    stdout/stderr); returns it and the lifeline's write end (None if closed)."""
    read_end, write_end = os.pipe()
    if close_lifeline:
        os.close(write_end)
    with open(log, "ab") as out:
        try:
            shim = await trio.lowlevel.open_process([*SHIM_ARGV, *args], stdin=read_end,
                                                    stdout=out, stderr=out,
                                                    start_new_session=True)
        finally:
            os.close(read_end)
    return shim, None if close_lifeline else write_end


async def test_a_broken_lifeline_kills_the_whole_group(tmp_path: Path) -> None:
    log, pidfile = tmp_path / "log", tmp_path / "pids"
    shim, lifeline = await run_shim(
        ["--grace", "0.3", "--", PY, "-c", SPAWNS_GRANDCHILD, str(pidfile), "ignore-term", "-"],
        log)
    assert lifeline is not None
    child, grandchild = await read_pids(pidfile)
    await wait_for_text(log, READY)
    os.close(lifeline)  # what the kernel does when the daemon dies
    with trio.fail_after(15):
        assert await shim.wait() == -signal.SIGKILL
    await wait_until(lambda: gone(child) and gone(grandchild), "child and grandchild gone")
    text = log.read_text()
    assert "the nanomesh daemon is gone" in text and STAYING in text


async def test_a_lifeline_broken_before_the_shim_starts_still_counts(tmp_path: Path) -> None:
    shim, _ = await run_shim(["--grace", "0", "--", PY, "-c", "import time; time.sleep(60)"],
                             tmp_path / "log", close_lifeline=True)
    with trio.fail_after(15):
        assert await shim.wait() == -signal.SIGKILL
    assert "the nanomesh daemon is gone" in (tmp_path / "log").read_text()


@pytest.mark.parametrize(("code", "returncode"), [
    ("pass", 0),
    ("import sys; sys.exit(5)", 5),
    ("import os, signal; os.kill(os.getpid(), signal.SIGUSR1)", -signal.SIGUSR1),
    ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", -signal.SIGKILL),
])
async def test_the_shim_ends_the_way_the_command_did(tmp_path: Path, code: str,
                                                     returncode: int) -> None:
    shim, lifeline = await run_shim(["--grace", "1", "--", PY, "-c", code], tmp_path / "log")
    with trio.fail_after(15):
        assert await shim.wait() == returncode
    assert lifeline is not None
    os.close(lifeline)


async def test_sigterm_to_the_shim_alone_does_not_end_it(tmp_path: Path) -> None:
    """The shim waits through SIGTERM: the command decides when the run ends."""
    log = tmp_path / "log"
    shim, lifeline = await run_shim(
        ["--grace", "1", "--", PY, "-c",
         "import sys, time; print('is', 'ready', flush=True); sys.stdin.read(); time.sleep(60)"],
        log)
    await wait_for_text(log, READY)
    shim.send_signal(signal.SIGTERM)
    await trio.sleep(0.3)
    assert shim.returncode is None
    os.killpg(shim.pid, signal.SIGTERM)  # the whole group, as the driver does
    with trio.fail_after(15):
        assert await shim.wait() == -signal.SIGTERM
    assert lifeline is not None
    os.close(lifeline)


async def test_the_command_reads_dev_null_not_the_lifeline(tmp_path: Path) -> None:
    code = "import sys; print('stdin', repr(sys.stdin.read()), 'end', flush=True)"
    log = tmp_path / "log"
    shim, lifeline = await run_shim(["--grace", "1", "--", PY, "-c", code], log)
    with trio.fail_after(15):
        assert await shim.wait() == 0
    assert "stdin '' end" in log.read_text()
    assert lifeline is not None
    os.close(lifeline)


async def test_sigpipe_is_not_ignored_in_the_command(tmp_path: Path) -> None:
    """Python (the shim) ignores SIGPIPE; the command must get the default back
    (checked through a shell: a Python command would ignore it again itself)."""
    log = tmp_path / "log"
    shim, lifeline = await run_shim(
        ["--grace", "1", "--", "sh", "-c", "grep SigIgn /proc/self/status"], log)
    with trio.fail_after(15):
        assert await shim.wait() == 0
    ignored = int(log.read_text().split("SigIgn:")[1].split()[0], 16)
    assert not ignored & (1 << (signal.SIGPIPE - 1))
    assert lifeline is not None
    os.close(lifeline)


async def test_a_command_that_cannot_be_executed_exits_127(tmp_path: Path) -> None:
    log = tmp_path / "log"
    shim, lifeline = await run_shim(["--grace", "1", "--", "no-such-program-xyz"], log)
    with trio.fail_after(15):
        assert await shim.wait() == 127
    assert "cannot execute 'no-such-program-xyz'" in log.read_text()
    assert lifeline is not None
    os.close(lifeline)


@pytest.mark.parametrize("args", [[], ["--grace", "x", "--", "true"], ["--grace", "1", "true"],
                                  ["--grace", "-1", "--", "true"], ["--grace", "1", "--"]])
async def test_usage_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    shim, lifeline = await run_shim(args, tmp_path / "log")
    with trio.fail_after(15):
        assert await shim.wait() == 2
    assert "usage" in (tmp_path / "log").read_text()
    assert lifeline is not None
    os.close(lifeline)


GUARDED = """
import os, subprocess, sys, time
os.setsid()  # this wrapper leads a group the shim must NOT kill
r, w = os.pipe()
shim = subprocess.Popen(sys.argv[1:], stdin=r)  # no new session on purpose
os.close(r)
time.sleep(0.3)
os.close(w)  # break the lifeline: the shim kills its group
shim.wait()
print("wrapper survived", shim.returncode, flush=True)
"""


async def test_a_shim_started_without_its_own_session_makes_one(tmp_path: Path) -> None:
    """Otherwise its group kill would hit whoever started it."""
    result = await trio.run_process(
        [PY, "-c", GUARDED, *SHIM_ARGV, "--grace", "0", "--", "sleep", "30"],
        capture_stdout=True, check=False)
    assert result.stdout.decode().strip() == f"wrapper survived {-signal.SIGKILL}"


def test_the_shim_needs_nothing_but_the_standard_library() -> None:
    """It runs under ``-I -S``: no site-packages, no nanomesh on the path."""
    source = Path(SHIM_ARGV[-1]).read_text()
    imports = {line.split()[1].split(".")[0] for line in source.splitlines()
               if line.startswith(("import ", "from "))}
    assert imports <= set(sys.stdlib_module_names) | {"__future__"}


async def test_a_cgroup_that_cannot_be_joined_stops_the_run(tmp_path: Path) -> None:
    """Limits asked for are never silently dropped: no cgroup, no command."""
    log = tmp_path / "log"
    shim, lifeline = await run_shim(["--grace", "1", "--cgroup", str(tmp_path / "no-such"),
                                     "--", "sh", "-c", "echo ran"], log)
    with trio.fail_after(15):
        assert await shim.wait() == 125
    text = log.read_text()
    assert "cannot join the instance's cgroup" in text and "\nran\n" not in text
    assert lifeline is not None
    os.close(lifeline)


async def test_the_shim_copies_output_and_rotates_the_log(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    code = "import sys\nfor i in range(50): print('n', i, 'x' * 40, flush=True)"
    shim, lifeline = await run_shim(["--grace", "1", "--log", str(log), "--rotate-bytes", "500",
                                     "--keep", "1", "--", PY, "-c", code], log)
    with trio.fail_after(15):
        assert await shim.wait() == 0
    old, new = Path(f"{log}.1").read_text(), log.read_text()
    assert not Path(f"{log}.2").exists()
    assert len(old) <= 500 and len(new) <= 500
    assert new.rstrip().endswith("n 49 " + "x" * 40)
    assert (old + new).count("\n") == len((old + new).splitlines())  # whole lines only
    assert lifeline is not None
    os.close(lifeline)


def test_the_shim_finds_processes_in_nested_cgroups(tmp_path: Path) -> None:
    """runc nests a container's cgroup in the instance's on v1 layouts; the
    shim, orphaned, must see (and kill) what is in there too."""
    from nanomesh.runtime import shim

    top = tmp_path / "instance"
    (top / "ctr" / "deeper").mkdir(parents=True)
    (top / "cgroup.procs").write_text(f"{os.getpid()}\n11\n")
    (top / "ctr" / "cgroup.procs").write_text("22\n23\n")
    (top / "ctr" / "deeper" / "cgroup.procs").write_text("33\n")
    assert shim._cgroup_pids([str(top)]) == {11, 22, 23, 33}


def test_the_nested_cgroup_walk_is_bounded(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from nanomesh.runtime import shim

    deep = tmp_path
    for i in range(12):
        deep = deep / f"l{i}"
    deep.mkdir(parents=True)
    for i in range(5):
        (tmp_path / f"w{i}").mkdir()
    tree = shim._cgroup_tree(str(tmp_path))
    assert len(tree) == 1 + 5 + shim.CGROUP_WALK_DEPTH  # depth-bounded
    monkeypatch.setattr(shim, "CGROUP_WALK_DIRS", 4)
    assert len(shim._cgroup_tree(str(tmp_path))) == 4  # count-bounded


V1_PIDS = Path("/sys/fs/cgroup/pids")
MOVES_GRANDCHILD = """
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
if os.fork() == 0:
    os.setsid()  # out of the group: only the cgroup walk can find it
    with open(sys.argv[1], "w") as f:
        f.write(str(os.getpid()))
    tmp = sys.argv[2] + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(os.getpid()))
    os.rename(tmp, sys.argv[2])
    time.sleep(60)
    sys.exit(0)
time.sleep(60)
"""


@pytest.mark.skipif(os.geteuid() != 0 or not (V1_PIDS / "cgroup.procs").exists(),
                    reason="needs root and a cgroup v1 pids hierarchy")
async def test_an_orphaned_shim_kills_a_process_in_a_nested_v1_cgroup(tmp_path: Path) -> None:
    top = V1_PIDS / f"nanomesh-test-nested-{os.getpid()}"
    sub = top / "ctr"
    sub.mkdir(parents=True)
    pidfile = tmp_path / "gc.pid"
    try:
        shim, lifeline = await run_shim(
            ["--grace", "0.2", "--cgroup", str(top), "--", PY, "-c", MOVES_GRANDCHILD,
             str(sub / "cgroup.procs"), str(pidfile)], tmp_path / "log")
        (grandchild,) = await read_pids(pidfile)
        assert f":pids:/{top.name}/ctr" in Path(f"/proc/{grandchild}/cgroup").read_text()
        assert lifeline is not None
        os.close(lifeline)  # the daemon dies (SIGKILL): no cgroup.kill in v1
        with trio.fail_after(15):
            await shim.wait()
        await wait_until(lambda: gone(grandchild), "the process in the nested cgroup gone")
    finally:
        for pid in (sub / "cgroup.procs").read_text().split() + \
                (top / "cgroup.procs").read_text().split():
            os.kill(int(pid), signal.SIGKILL)
        await wait_until(lambda: not (sub / "cgroup.procs").read_text().strip(), "empty")
        sub.rmdir()
        top.rmdir()
