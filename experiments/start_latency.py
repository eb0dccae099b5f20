"""How long from placement handing an instance to the runtime to it answering
its health check, for a small Python TCP server?

``--runs`` times: :func:`nanomesh.runtime.execute` gets a ``StartInstance``
(what the reconcile loop does once the committed plan puts the instance
here); the clock runs until the driver reports the instance ``healthy``
(its tcp check, polled every ``START_POLL`` = 20 ms until the first success).
A second clock, a client polling the port every 2 ms, shows when the server
itself first accepted (the check's polling adds at most one poll period).
Then the instance is stopped and forgotten. The driver runs as the daemon
runs it: supervisor shim, cgroup (with a 64 MiB memory limit when root),
auto port, log file. Target (issue 4): median <= 150 ms.

    .venv/bin/python experiments/start_latency.py [--runs N] [--csv PATH]
"""

from __future__ import annotations

import argparse
import csv
import socket
import statistics
import sys
import tempfile
from pathlib import Path

import trio

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from nanomesh.runtime import ProcessDriver, StartContext, execute, open_process_driver  # noqa: E402
from nanomesh.runtime.reconcile_core import StartInstance, spec_digest  # noqa: E402

HOST = "127.0.53.61"
"""A loopback address of its own, so the experiment meets nothing else."""
SERVER = """
import os, socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((os.environ["NANOMESH_HOST"], int(os.environ["NANOMESH_PORT"])))
s.listen()
while True:
    c, _ = s.accept()
    c.close()
"""
POLL = 0.002


def service(n: int) -> dict[str, object]:
    return {"name": "tcp", "version": str(n),
            "run": {"command": [sys.executable, "-c", SERVER]},
            "endpoints": [{"name": "api", "protocol": "http", "port": "auto"}],
            "health": {"check": "tcp"}, "limits": {"memory_mb": 64}}


async def first_accept(driver: ProcessDriver, iid: str) -> float:
    """When a plain client could first connect to the instance's port."""
    while True:
        status = driver.status().get(iid)
        if status is not None and status.endpoints:
            port = status.endpoints[0][2]
            with socket.socket() as probe:
                if probe.connect_ex((HOST, port)) == 0:
                    return trio.current_time()
        await trio.sleep(POLL)


async def one_run(driver: ProcessDriver, log_dir: Path, n: int) -> tuple[float, float]:
    doc = service(n)
    iid = "tcp/0"
    accepted: list[float] = []

    async def watch_port() -> None:
        accepted.append(await first_accept(driver, iid))

    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        nursery.start_soon(watch_port)
        await execute(driver, StartInstance(iid, "tcp", doc, spec_digest(doc), 0),
                      StartContext(log_dir=log_dir, host_ip=HOST))
        seen = 0
        with trio.fail_after(10):
            while driver.status()[iid].health != "healthy":
                status = driver.status()[iid]
                if status.state not in ("starting", "running"):
                    raise RuntimeError(f"run {n}: {status.state}: {status.message}")
                seen = await driver.wait_changed(seen)
        healthy = trio.current_time() - t0
        with trio.fail_after(10):
            while not accepted:
                await trio.sleep(POLL)
    await driver.stop(iid)
    driver.forget(iid)
    return healthy, accepted[0] - t0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


async def main(runs: int, csv_path: Path | None) -> None:
    rows: list[tuple[int, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        async with open_process_driver(peer="latency") as driver:
            print(f"cgroups: {driver.describe_cgroups()}")
            await one_run(driver, Path(tmp), -1)  # warm the page cache; not counted
            for n in range(runs):
                healthy, accepted = await one_run(driver, Path(tmp), n)
                rows.append((n, healthy * 1000, accepted * 1000))
    healthy_ms = [r[1] for r in rows]
    accept_ms = [r[2] for r in rows]
    for label, values in (("StartInstance -> healthy", healthy_ms),
                          ("StartInstance -> port accepts", accept_ms)):
        print(f"{label:32s} median {statistics.median(values):6.1f} ms   "
              f"p90 {pct(values, 0.9):6.1f} ms   min {min(values):6.1f}   "
              f"max {max(values):6.1f}   (n={len(values)})")
    met = statistics.median(healthy_ms) <= 150
    print(f"target: median <= 150 ms: {'met' if met else 'MISSED'}")
    if csv_path is not None:
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        with open(csv_path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["run", "healthy_ms", "accepts_ms"])
            writer.writerows(rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--csv", type=Path, default=None)
    args = parser.parse_args()
    trio.run(main, args.runs, args.csv)
