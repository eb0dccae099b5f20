"""How fast is a call to a nanoservice, over ZeroMQ and over CoAP?

Starts ``services/echo`` as a real process (the runtime's environment
contract, loopback 127.0.51.100) and calls ``GET echo/bench`` from this
process: sequential calls through `nanomesh.transport.rpc.zmq_call` (p50 / p99 latency
and calls per second), the same with 16 calls in flight, and sequential CoAP
calls straight to the instance's CoAP endpoint (no gateway). Prints the
numbers and writes one row per measurement to ``experiments/results/rpc.csv``.

    .venv/bin/python experiments/rpc_bench.py [--calls N] [--out PATH]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import trio

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from nanomesh.transport.coapio import open_coap_client  # noqa: E402
from nanomesh.transport.rpc import RpcError, zmq_call  # noqa: E402
from nanomesh.wire.service_traffic import Request  # noqa: E402

IP = "127.0.51.100"
REQUEST = Request("GET", "echo/bench")


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((IP, 0))
        return int(s.getsockname()[1])


def summary(name: str, seconds: list[float], wall: float) -> dict[str, object]:
    ms = sorted(s * 1000 for s in seconds)
    row = {"measure": name, "calls": len(ms), "p50_ms": round(ms[len(ms) // 2], 3),
           "p99_ms": round(ms[int(len(ms) * 0.99)], 3), "max_ms": round(ms[-1], 3),
           "calls_per_s": round(len(ms) / wall)}
    print(f"{name:<22} p50 {row['p50_ms']:>6} ms  p99 {row['p99_ms']:>6} ms  "
          f"{row['calls_per_s']:>6} calls/s  ({len(ms)} calls)")
    return row


async def sequential_zmq(address: str, n: int) -> dict[str, object]:
    times = []
    start = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        await zmq_call(address, REQUEST, 2.0)
        times.append(time.perf_counter() - t)
    return summary("zmq sequential", times, time.perf_counter() - start)


async def concurrent_zmq(address: str, n: int, width: int = 16) -> dict[str, object]:
    times: list[float] = []

    async def worker(count: int) -> None:
        for _ in range(count):
            t = time.perf_counter()
            await zmq_call(address, REQUEST, 5.0)
            times.append(time.perf_counter() - t)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(width):
            nursery.start_soon(worker, n // width)
    return summary(f"zmq {width} in flight", times, time.perf_counter() - start)


async def sequential_coap(port: int, n: int) -> dict[str, object]:
    times = []
    async with open_coap_client() as coap:
        start = time.perf_counter()
        for _ in range(n):
            t = time.perf_counter()
            await coap.call(IP, port, (), REQUEST, 2.0)
            times.append(time.perf_counter() - t)
        wall = time.perf_counter() - start
    return summary("coap sequential", times, wall)


async def main(calls: int, out: Path) -> None:
    zport, cport = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "NANOMESH_SERVICE": "echo",
           "NANOMESH_INSTANCE": "echo/0", "NANOMESH_HOST": IP,
           "NANOMESH_ENDPOINTS": json.dumps({"api": {"protocol": "zmq", "port": zport},
                                             "coap": {"protocol": "coap", "port": cport}})}
    service = REPO_ROOT / "services" / "echo" / "echo.py"
    proc = await trio.lowlevel.open_process([sys.executable, str(service)], env=env,
                                            stderr=subprocess.DEVNULL)
    address = f"{IP}:{zport}"
    try:
        with trio.fail_after(20):
            while True:
                try:
                    await zmq_call(address, Request("GET", "health"), 0.5)
                    break
                except RpcError:
                    await trio.sleep(0.05)
        await sequential_zmq(address, 200)  # warm-up
        rows = [await sequential_zmq(address, calls), await concurrent_zmq(address, calls),
                await sequential_coap(cport, max(200, calls // 5))]
    finally:
        proc.send_signal(signal.SIGTERM)
        with trio.move_on_after(5):
            await proc.wait()
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "experiments/results/rpc.csv")
    args = parser.parse_args()
    trio.run(main, args.calls, args.out)
