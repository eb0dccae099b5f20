"""How long from launching a runc container to it answering HTTP?

Builds the ``services/counter-container`` busybox rootfs into a temp dir and,
``--runs`` times, prepares the run with :class:`nanomesh.runtime.container.RuncLauncher`
(OCI bundle, config.json), starts ``runc run`` in a new session (directly,
and through the runtime's supervisor shim as the ProcessDriver does) and
polls ``GET /count`` on loopback 127.0.53.60 until it answers; then stops it
with SIGTERM to the group and runs the cleanup. The first run of each mode
also copies the rootfs into the instance's state dir (``cold``); later runs
reuse it (``warm``, an instance's restart). Target (issue 4): median <= 300 ms.

    .venv/bin/python experiments/container_start.py [--runs N] [--out PATH]

Needs root, runc and busybox-static.
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from nanomesh.runtime.container import RuncLauncher  # noqa: E402
from nanomesh.runtime.instance_spec import instance_spec_from  # noqa: E402
from nanomesh.runtime.launch import LaunchContext  # noqa: E402
from nanomesh.runtime.manifest import load_manifest  # noqa: E402
from nanomesh.runtime.process import SHIM_ARGV  # noqa: E402

SERVICE = REPO_ROOT / "services" / "counter-container"
HOST = "127.0.53.60"
POLL = 0.002
"""Seconds between connection attempts (a health check polls every 20 ms;
we poll faster to see the container's own start time)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


async def answered(port: int) -> bool:
    try:
        with trio.fail_after(1):
            stream = await trio.open_tcp_stream(HOST, port)
            async with stream:
                await stream.send_all(b"GET /count HTTP/1.0\r\n\r\n")
                return (await stream.receive_some(4096)).startswith(b"HTTP/1.")
    except (OSError, trio.TooSlowError):
        return False


async def one_run(launcher: RuncLauncher, bundle: Path, state: Path, via_shim: bool,
                  ) -> dict[str, float]:
    spec = instance_spec_from(load_manifest(SERVICE / "nanoservice.toml"))
    port = free_port()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NANOMESH_HOST": HOST,
           "NANOMESH_PORT_HTTP": str(port), "NANOMESH_INSTANCE": "counter-container/0",
           "NANOMESH_SERVICE": "counter-container"}
    ctx = LaunchContext(iid="counter-container/0", env=env, workdir=bundle, state_dir=state,
                        host_ip=HOST)
    t0 = time.perf_counter()
    launch = await launcher.prepare(spec, ctx)
    t_prepared = time.perf_counter()
    argv = list(launch.argv)
    read_end, write_end = os.pipe()
    if via_shim:
        argv = [*SHIM_ARGV, "--grace", "5", "--", *argv]
    process = await trio.lowlevel.open_process(
        argv, stdin=read_end if via_shim else subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, env=dict(launch.env), cwd=launch.cwd,
        start_new_session=True)
    os.close(read_end)
    try:
        with trio.fail_after(10):
            while not await answered(port):
                await trio.sleep(POLL)
        t_answered = time.perf_counter()
        os.killpg(process.pid, signal.SIGTERM)
        with trio.fail_after(10):
            await process.wait()
        t_stopped = time.perf_counter()
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
            os.close(write_end)
            await trio.run_process(list(launch.cleanup), capture_stdout=True,
                                   capture_stderr=True, check=False)
    return {"prepare_ms": (t_prepared - t0) * 1e3, "answer_ms": (t_answered - t0) * 1e3,
            "stop_ms": (t_stopped - t_answered) * 1e3}


def summary(name: str, values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return (f"{name}: median {statistics.median(values):.1f} ms, p90 {p90:.1f}, "
            f"min {ordered[0]:.1f}, max {ordered[-1]:.1f}")


async def main(runs: int, out: Path) -> None:
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="nm-ctr-bench-") as tmp:
        bundle = Path(tmp) / "bundle"
        subprocess.run(["sh", str(SERVICE / "build-rootfs.sh"), str(bundle / "rootfs")],
                       check=True, capture_output=True)
        launcher = RuncLauncher(Path(tmp) / "data", peer="bench")
        for mode in ("direct", "shim"):
            state = Path(tmp) / f"state-{mode}"
            state.mkdir()
            results = [await one_run(launcher, bundle, state, mode == "shim")
                       for _ in range(runs)]
            for i, r in enumerate(results):
                rows.append({"mode": mode, "run": i, "cold": i == 0, **r})
            warm = results[1:]
            print(f"runc via {mode} ({runs} runs; the first, cold, copied the rootfs: "
                  f"{results[0]['answer_ms']:.1f} ms to answer)")
            for key in ("prepare_ms", "answer_ms", "stop_ms"):
                print("  " + summary(key, [r[key] for r in warm]))
        await launcher.sweep()
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--out", type=Path,
                        default=REPO_ROOT / "experiments" / "results" / "container_start.csv")
    args = parser.parse_args()
    trio.run(main, args.runs, args.out)
