"""How fast is the CoAP gateway: request latency and requests per second.

Three processes on loopback, like a caller, a peer and an instance on
separate devices: a CoAP instance (a tiny aiocoap echo server on
127.0.51.2:5701), the gateway (`nanomesh.gateway.coap.serve_coap_gateway` on
127.0.51.1:5683, its resolver always naming that instance), and this script
as the client (one aiocoap client context, through trio-asyncio as every
nanomesh component uses it).

Measured, after 200 warm-up requests:
- latency of sequential ``POST /s/bench/echo`` (16-byte body), client-side
  wall time per request: p50 / p99 / max (nearest rank), through the gateway
  and, as the baseline, straight to the instance;
- requests per second through the gateway: sequential, and with C concurrent
  client tasks (default 16) sharing the client context;
- one 64 KiB GET (block-wise, 64 blocks of 1 KiB) through the gateway;
- CPU time per request of the gateway process and of the client (psutil).

Every process shares the machine's 2 cores, so the client's own cost is in
the numbers: they are an upper bound on what the gateway adds.

    .venv/bin/python experiments/gateway_bench.py            # 5000 requests each
    .venv/bin/python experiments/gateway_bench.py --quick    # 1000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _meshlib as ml
import aiocoap
import aiocoap.resource
import psutil
import trio
import trio_asyncio

GATEWAY = ("127.0.51.1", 5683)
INSTANCE = ("127.0.51.2", 5701)
BIG = bytes(range(256)) * 256
HERE = Path(__file__).resolve()


class _Echo(aiocoap.resource.Resource, aiocoap.resource.PathCapable):  # type: ignore[misc]
    async def render(self, request: Any) -> Any:
        if tuple(request.opt.uri_path) == ("big",):
            return aiocoap.Message(code=aiocoap.CONTENT, payload=BIG)
        return aiocoap.Message(code=aiocoap.CHANGED, payload=request.payload)


async def run_instance() -> None:
    async with trio_asyncio.open_loop():
        await trio_asyncio.aio_as_trio(aiocoap.Context.create_server_context)(
            _Echo(), bind=INSTANCE, transports=["udp6"])
        print("ready", flush=True)
        await trio.sleep_forever()


async def run_gateway() -> None:
    from nanomesh.gateway.coap import serve_coap_gateway
    from nanomesh.naming import Endpoint

    ep = Endpoint("bench", "bench/0", "instance", INSTANCE[0], "api", "coap", INSTANCE[1],
                  "healthy", "running")
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: serve_coap_gateway(
            GATEWAY, lambda service: [ep] if service == "bench" else [],
            task_status=task_status))
        print("ready", flush=True)


def spawn(role: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, str(HERE), "--role", role], stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise SystemExit(f"{role} did not start: {line!r}")
    return proc


async def client(n: int, concurrency: int) -> dict[str, Any]:
    async with trio_asyncio.open_loop():
        ctx = await trio_asyncio.aio_as_trio(aiocoap.Context.create_client_context)(
            transports=["udp6"])

        async def _send(message: Any) -> Any:
            return await ctx.request(message).response

        async def send(url: str, payload: bytes = b"x" * 16, code: Any = aiocoap.POST) -> float:
            t0 = time.perf_counter()
            resp = await trio_asyncio.aio_as_trio(_send)(
                aiocoap.Message(code=code, uri=url, payload=payload))
            elapsed = time.perf_counter() - t0
            if not resp.code.is_successful() or (code == aiocoap.POST and resp.payload != payload):
                raise SystemExit(f"bad answer from {url}: {resp.code} {resp.payload[:80]!r}")
            return elapsed

        via = f"coap://{GATEWAY[0]}:{GATEWAY[1]}/s/bench/echo"
        direct = f"coap://{INSTANCE[0]}:{INSTANCE[1]}/echo"
        for _ in range(200):
            await send(via)
            await send(direct)
        out: dict[str, Any] = {}
        for name, url in (("direct", direct), ("gateway", via)):
            t0 = time.perf_counter()
            lat = [await send(url) for _ in range(n)]
            out[name] = {"p50_ms": ml.percentile(lat, 50) * 1e3,
                         "p99_ms": ml.percentile(lat, 99) * 1e3,
                         "max_ms": max(lat) * 1e3, "rps_sequential": n / (time.perf_counter() - t0)}

        async def worker(count: int) -> None:
            for _ in range(count):
                await send(via)

        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker, n // concurrency)
        out["gateway"]["rps_concurrent"] = (n // concurrency * concurrency
                                            ) / (time.perf_counter() - t0)
        out["big_get_ms"] = await send(f"coap://{GATEWAY[0]}:{GATEWAY[1]}/s/bench/big",
                                       b"", aiocoap.GET) * 1e3
        await trio_asyncio.aio_as_trio(ctx.shutdown)()
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--role", choices=["instance", "gateway"], help=argparse.SUPPRESS)
    p.add_argument("-n", "--requests", type=int, default=5000)
    p.add_argument("-c", "--concurrency", type=int, default=16)
    p.add_argument("--quick", action="store_true", help="1000 requests")
    args = p.parse_args()
    if args.role == "instance":
        trio.run(run_instance)
        return
    if args.role == "gateway":
        trio.run(run_gateway)
        return
    ml.install_sigterm_handler()
    n = 1000 if args.quick else args.requests
    machine = ml.machine_info()
    procs = []
    try:
        procs.append(spawn("instance"))
        procs.append(spawn("gateway"))
        gw = psutil.Process(procs[1].pid)
        cpu0, me0 = gw.cpu_times(), psutil.Process().cpu_times()
        result = trio.run(client, n, args.concurrency)
        cpu1, me1 = gw.cpu_times(), psutil.Process().cpu_times()
        via_gateway = 200 + 2 * n + 1  # warm-up, sequential, concurrent (about n), big GET
        result["gateway_cpu_ms_per_request"] = (
            (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / via_gateway * 1e3)
        result["client_cpu_ms_per_request"] = (
            (me1.user + me1.system - me0.user - me0.system) / (via_gateway + 200 + n) * 1e3)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    g, d = result["gateway"], result["direct"]
    _, summary = ml.results_paths("gateway_bench")
    ml.write_json(summary, {"requests": n, "concurrency": args.concurrency, **result,
                            "machine": machine, "loadavg_at_end": list(os.getloadavg())})
    print(f"CoAP gateway, {n} requests each, 2 cores shared by client, gateway and instance:")
    print(f"  latency via gateway : p50 {g['p50_ms']:.2f} ms, p99 {g['p99_ms']:.2f} ms, "
          f"max {g['max_ms']:.2f} ms")
    print(f"  latency direct      : p50 {d['p50_ms']:.2f} ms, p99 {d['p99_ms']:.2f} ms "
          f"(baseline without the gateway)")
    print(f"  req/s via gateway   : {g['rps_sequential']:.0f} sequential, "
          f"{g['rps_concurrent']:.0f} with {args.concurrency} concurrent clients "
          f"(direct sequential: {d['rps_sequential']:.0f})")
    print(f"  64 KiB GET via gateway (block-wise): {result['big_get_ms']:.1f} ms")
    print(f"  CPU per request: gateway {result['gateway_cpu_ms_per_request']:.2f} ms, "
          f"client {result['client_cpu_ms_per_request']:.2f} ms")
    print(f"  summary: {summary}")


if __name__ == "__main__":
    main()
