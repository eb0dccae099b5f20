"""Request latency by service name from a remote peer, and requests per second
through one peer's CoAP gateway, on real peer daemons.

Starts N real peer daemons on loopback (127.0.60.FIRST.., default .31-.33, one
cluster key, gossip preset ``lan``), deploys ``services/echo`` with
``replicas = 1`` through the command line (``python -m nanomesh deploy``: the
folder is packed into a bundle, uploaded, and fetched by the peer that runs
it), waits until the instance runs and passes its health check, and picks as
the *caller's peer* one that hosts no instance. This script is the caller
(one process, trio; aiocoap through trio-asyncio). After 200 warm-up
requests per path, ``--requests`` sequential ``GET echo/bench`` per path, in
5 interleaved rounds (so a load change hits every path alike):

- ``coap_gateway``: ``coap://<caller's peer>:5683/s/echo/echo/bench`` with one
  aiocoap client context, as a constrained device would call by name;
- ``client_zmq``: ``nanomesh.sdk.client`` connected to the caller's peer API,
  ``Mesh.call("echo", "echo/bench")``: resolution by name (``GET
  /v1/resolve/echo``, cached 2 s, so ~1 request in a few hundred includes
  it), then ZeroMQ straight to the instance;
- ``link_gateway``: what a member's call of a *private* service through the
  gateway costs: ``GET s/echo/echo/bench`` over ZeroMQ CURVE to the caller's
  peer's gateway link (``tcp://<peer>:5683``, `nanomesh.gateway.link`), which
  forwards it over CURVE to the instance;
- baselines without naming: ``coap_direct`` (aiocoap to the instance's CoAP
  endpoint) and ``zmq_direct`` (``nanomesh.transport.rpc.zmq_call`` to its ZeroMQ
  endpoint).

ZeroMQ paths are authenticated and encrypted with CURVE keys derived from the
mesh's cluster key (`nanomesh.security.servicekeys`); echo is a public service, so its
CoAP paths are plain CoAP as before, and the link forwards it to the
instance's CoAP endpoint. ``--visibility private`` deploys it private: plain
CoAP is then refused (those paths are skipped), and the link forwards over
CURVE to the instance's ZeroMQ endpoint, the path members' calls of private
services take.

Then requests per second through the gateway: sequential (from the timed
runs above) and with ``--concurrency`` (default 16) tasks sharing the client
context, ``--requests`` requests in all; the same for the client (16 tasks
sharing one ``Mesh``). CPU time of the caller's peer daemon (the gateway)
and of the instance per gateway request (psutil).

Every process shares the machine's 2 cores (three daemons, the instance, the
caller), so the numbers include the caller's own cost.

    .venv/bin/python experiments/name_latency.py            # 2000 requests per path
    .venv/bin/python experiments/name_latency.py --quick    # 500

CSV: one row per timed request (path, round, seq, latency_ms);
summary JSON: p50 / p90 / p99 / max per path, requests per second.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import _meshlib as ml
import aiocoap
import psutil
import trio
import trio_asyncio
from control_failover import Mesh60, read_token, start_mesh

from nanomesh.sdk import client
from nanomesh.security.servicekeys import ServiceKeys
from nanomesh.transport.apiclient import ApiError
from nanomesh.transport.rpc import zmq_call
from nanomesh.wire.envelope import Keyring
from nanomesh.wire.service_traffic import Request

COAP_PORT = 5683
WARMUP = 200
ROUNDS = 5
TEXT = "bench"
SERVICE = "echo"


# --------------------------------------------------------------------------- deploying


def echo_copy(dest: Path, name: str = SERVICE, replicas: int = 1,
              visibility: str = "public") -> Path:
    """A copy of services/echo with another name, replica count and visibility."""
    shutil.copytree(ml.REPO_ROOT / "services" / "echo", dest,
                    ignore=shutil.ignore_patterns("__pycache__"))
    manifest = dest / "nanoservice.toml"
    text = manifest.read_text()
    text = re.sub(r'(?m)^name = "echo"$', f'name = "{name}"', text)
    text = re.sub(r"(?m)^replicas = \d+$", f"replicas = {replicas}", text)
    text = re.sub(r'(?m)^visibility = "public"$', f'visibility = "{visibility}"', text)
    manifest.write_text(text)
    return dest


def cli_deploy(folder: Path, peer: ml.Peer, token: str, timeout: float = 60.0) -> str:
    """``python -m nanomesh deploy FOLDER --peer API --token T``, retried while
    the mesh answers 503/504; its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NANOMESH_")}
    deadline = time.monotonic() + timeout
    while True:
        r = subprocess.run([ml.PY, "-m", "nanomesh", "deploy", str(folder), "--peer", peer.api,
                            "--token", token], capture_output=True, text=True, env=env,
                           cwd=ml.REPO_ROOT, timeout=120, stdin=subprocess.DEVNULL)
        if r.returncode == 0:
            return r.stdout
        if not re.search(r"\b50[34]\b", r.stderr) or time.monotonic() > deadline:
            raise RuntimeError(f"deploy failed: {r.stdout}{r.stderr}")
        time.sleep(0.5)


def service_instances(peer: ml.Peer, service: str) -> list[dict[str, Any]]:
    return [i for i in peer.get("/v1/placement")["instances"] if i["service"] == service]


def running_healthy(mesh: Mesh60, service: str, replicas: int,
                    peers: list[ml.Peer] | None = None) -> dict[str, str] | None:
    """instance -> host if every (given, running) peer sees ``replicas``
    instances running and healthy on alive peers, the same way; else None."""
    views = []
    for p in peers or [p for p in mesh.peers if p.running]:
        try:
            entries = service_instances(p, service)
        except ApiError:
            return None
        if len(entries) != replicas or any(e["state"] != "running" or e["health"] != "healthy"
                                           for e in entries):
            return None
        views.append({e["instance"]: e["peer"] for e in entries})
    if not views or any(v != views[0] for v in views):
        return None
    alive = {p.name for p in mesh.peers if p.running}
    return views[0] if set(views[0].values()) <= alive else None


def wait_running(mesh: Mesh60, service: str, replicas: int, timeout: float,
                 peers: list[ml.Peer] | None = None) -> dict[str, str]:
    found: list[dict[str, str]] = []

    def ok() -> bool:
        hosts = running_healthy(mesh, service, replicas, peers)
        if hosts:
            found[:] = [hosts]
        return hosts is not None
    mesh.wait(ok, timeout, f"{replicas} {service} instance(s) running and healthy",
              interval=0.1)
    return found[0]


def endpoints(peer: ml.Peer, service: str) -> dict[str, str]:
    """protocol -> ``ip:port`` of the (single) instance, from ``peer``'s resolve."""
    doc = peer.get(f"/v1/resolve/{service}")
    return {e["protocol"]: f"{e['host']}:{e['port']}" for e in doc["endpoints"]}


# --------------------------------------------------------------------------- measuring


class Caller:
    """The requests of each path, as awaitables returning nothing (or raising)."""

    def __init__(self, ctx: Any, mesh: client.Mesh, gateway_ip: str,
                 eps: dict[str, str], keys: ServiceKeys) -> None:
        self.ctx = ctx
        self.mesh = mesh
        self.keys = keys
        self.link = f"{gateway_ip}:{COAP_PORT}"
        self.link_request = Request("GET", f"s/{SERVICE}/echo/{TEXT}")
        self.gateway = f"coap://{gateway_ip}:{COAP_PORT}/s/{SERVICE}/echo/{TEXT}"
        self.coap_direct = f"coap://{eps['coap']}/echo/{TEXT}"
        self.zmq_address = eps["zmq"]
        self.request = Request("GET", f"echo/{TEXT}")

    async def _coap(self, url: str) -> None:
        async def send() -> Any:
            return await self.ctx.request(aiocoap.Message(code=aiocoap.GET, uri=url)).response
        reply = await trio_asyncio.aio_as_trio(send)()
        if not reply.code.is_successful() or TEXT.encode() not in reply.payload:
            raise RuntimeError(f"bad answer from {url}: {reply.code} {reply.payload[:80]!r}")

    async def coap_gateway(self) -> None:
        await self._coap(self.gateway)

    async def coap_direct_(self) -> None:
        await self._coap(self.coap_direct)

    async def client_zmq(self) -> None:
        reply = await self.mesh.call(SERVICE, f"echo/{TEXT}", timeout=5.0, retries=0)
        if TEXT.encode() not in reply.body:
            raise RuntimeError(f"bad answer: {reply}")

    async def zmq_direct(self) -> None:
        response = await zmq_call(self.zmq_address, self.request, 5.0, keys=self.keys)
        if response.status != 200 or TEXT.encode() not in response.body:
            raise RuntimeError(f"bad answer: {response}")

    async def link_gateway(self) -> None:
        response = await zmq_call(self.link, self.link_request, 5.0, keys=self.keys)
        if response.status != 200 or TEXT.encode() not in response.body:
            raise RuntimeError(f"bad answer: {response}")

    def paths(self) -> dict[str, Callable[[], Awaitable[None]]]:
        return {"coap_gateway": self.coap_gateway, "client_zmq": self.client_zmq,
                "link_gateway": self.link_gateway, "coap_direct": self.coap_direct_,
                "zmq_direct": self.zmq_direct}


async def timed(fn: Callable[[], Awaitable[None]], n: int) -> tuple[list[float], float]:
    """``n`` sequential calls: latencies (s) and total wall time (s)."""
    lat = []
    t_start = time.perf_counter()
    for _ in range(n):
        t0 = time.perf_counter()
        await fn()
        lat.append(time.perf_counter() - t0)
    return lat, time.perf_counter() - t_start


async def concurrent(fn: Callable[[], Awaitable[None]], total: int, tasks: int
                     ) -> tuple[list[float], float]:
    """``total`` calls spread over ``tasks`` concurrent tasks: latencies, wall time."""
    lat: list[float] = []

    async def worker(count: int) -> None:
        for _ in range(count):
            t0 = time.perf_counter()
            await fn()
            lat.append(time.perf_counter() - t0)

    t_start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(tasks):
            nursery.start_soon(worker, total // tasks + (1 if i < total % tasks else 0))
    return lat, time.perf_counter() - t_start


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


async def measure(args: argparse.Namespace, caller_peer: ml.Peer, eps: dict[str, str],
                  gateway_pid: int, instance_pids: list[int], key: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"rows": []}
    async with trio_asyncio.open_loop():
        ctx = await trio_asyncio.aio_as_trio(aiocoap.Context.create_client_context)(
            transports=["udp6"])
        try:
            keys = ServiceKeys.from_keyring(Keyring.from_file(key))
            async with client.connect(caller_peer.api, keys=keys) as mesh:
                caller = Caller(ctx, mesh, caller_peer.ip, eps, keys)
                paths = caller.paths()
                if args.visibility == "private":  # plain CoAP is refused (4.01)
                    paths = {k: v for k, v in paths.items() if not k.startswith("coap")}
                for fn in paths.values():
                    for _ in range(WARMUP):
                        await fn()
                lat: dict[str, list[float]] = {k: [] for k in paths}
                wall: dict[str, float] = dict.fromkeys(paths, 0.0)
                per_round = max(1, args.requests // ROUNDS)
                cpu_gw = 0.0
                cpu_inst = 0.0
                for rnd in range(ROUNDS):
                    for name, fn in paths.items():
                        c0, i0 = cpu_seconds([gateway_pid]), cpu_seconds(instance_pids)
                        vals, w = await timed(fn, per_round)
                        if name in ("coap_gateway", "link_gateway"):
                            cpu_gw += cpu_seconds([gateway_pid]) - c0
                            cpu_inst += cpu_seconds(instance_pids) - i0
                        out["rows"] += [(name, rnd, i, v * 1e3) for i, v in enumerate(vals)]
                        lat[name] += vals
                        wall[name] += w
                    print(f"round {rnd + 1}/{ROUNDS}: " + ", ".join(
                        f"{k} p50 {ml.percentile(v[-per_round:], 50) * 1e3:.2f} ms"
                        for k, v in lat.items()), flush=True)
                for name in paths:
                    ms = ml.describe([v * 1e3 for v in lat[name]])  # 4 decimals of a ms
                    out[name] = {"requests": ms.pop("n"), **{f"{k}_ms": v for k, v in ms.items()},
                                 "rps_sequential": round(len(lat[name]) / wall[name], 1)}
                gw = "coap_gateway" if "coap_gateway" in paths else "link_gateway"
                n_gw = len(lat[gw])
                out[gw]["gateway_cpu_ms_per_request"] = round(cpu_gw / n_gw * 1e3, 3)
                out[gw]["instance_cpu_ms_per_request"] = round(cpu_inst / n_gw * 1e3, 3)
                for name in (gw, "client_zmq"):
                    vals, w = await concurrent(paths[name], args.requests, args.concurrency)
                    out["rows"] += [(f"{name}_c{args.concurrency}", ROUNDS, i, v * 1e3)
                                    for i, v in enumerate(vals)]
                    out[name][f"rps_concurrent_{args.concurrency}"] = round(len(vals) / w, 1)
                    out[name][f"p50_ms_concurrent_{args.concurrency}"] = round(
                        ml.percentile(vals, 50) * 1e3, 3)
                    out[name][f"p99_ms_concurrent_{args.concurrency}"] = round(
                        ml.percentile(vals, 99) * 1e3, 3)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await trio_asyncio.aio_as_trio(ctx.shutdown)()
    return out


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    p = ml.experiment_parser(__doc__, 3, "mesh size (default 3)")
    p.add_argument("--requests", type=int, default=None,
                   help="timed requests per path (default 2000; 500 with --quick)")
    p.add_argument("--quick", action="store_true", help="short run: 500 requests per path")
    p.add_argument("--visibility", choices=["public", "private"], default="public",
                   help="deploy echo public (default) or private (see the docstring)")
    p.add_argument("--concurrency", type=int, default=16,
                   help="concurrent tasks for the throughput runs (default 16)")
    ml.add_run_options(p, name="name_latency", subnet="127.0.60", first_octet=31)
    ml.add_subnet_option(p, "127.0.60")
    args = p.parse_args()
    if args.requests is None:
        args.requests = 500 if args.quick else 2000
    if args.peers < 2:
        p.error("need at least 2 peers (one hosts the instance, one is the caller's)")
    return args


def main() -> int:
    args = parse_args()
    ml.install_sigterm_handler()
    csv_path, json_path = ml.results_paths(args.name)
    info = ml.machine_info()
    load = ml.wait_for_quiet(args.max_load, timeout=900)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="nm-nl-") as tmp:
        root = Path(tmp)
        key = ml.keygen(root / "cluster.key")
        mesh = Mesh60(args.peers, root, preset=args.preset, key_file=key,
                      first_octet=args.first_octet, prefix="nl", subnet=f"{args.subnet}.")
        try:
            _, up_s = start_mesh(mesh)
            token = read_token(mesh)
            cli_deploy(echo_copy(root / "echo", visibility=args.visibility), mesh.peers[0],
                       token)
            [(iid, host)] = wait_running(mesh, SERVICE, 1, 60).items()
            caller = next(p for p in mesh.peers if p.name != host)
            eps = endpoints(caller, SERVICE)
            assert caller.proc is not None
            pids = instance_pids(root, iid)
            print(f"{args.peers} peers up in {up_s:.1f}s; {iid} runs on {host}; caller's peer "
                  f"{caller.name} ({caller.ip}); endpoints {eps}", flush=True)
            result = trio.run(measure, args, caller, eps, caller.proc.pid, pids, key)
        finally:
            mesh.close()
    wall = time.monotonic() - started
    rows = result.pop("rows")
    ml.write_csv(csv_path, ["path", "round", "seq", "latency_ms"], rows)
    c = args.concurrency
    summary = {
        "experiment": "name_latency",
        "peers": args.peers,
        "requests_per_path": args.requests,
        "warmup_per_path": WARMUP,
        "concurrency": c,
        "quick": args.quick,
        "gossip_preset": args.preset,
        "service": f"services/echo, replicas = 1, {args.visibility}, GET echo/bench",
        **result,
        "targets": "none set in issue 4 (report p50 / p99 and requests per second)",
        "wall_s": round(wall, 1),
        "loadavg_when_started": round(load, 2),
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "machine": info,
        "csv": str(csv_path.relative_to(ml.REPO_ROOT)),
    }
    ml.write_json(json_path, summary)
    gw = "coap_gateway" if "coap_gateway" in result else "link_gateway"
    g, z = result[gw], result["client_zmq"]
    latencies = "; ".join(f"{name} p50 {result[name]['median_ms']:.2f} ms, p99 "
                          f"{result[name]['p99_ms']:.2f} ms" for name in result
                          if isinstance(result[name], dict) and "median_ms" in result[name])
    print()
    print(f"By name from a remote peer ({args.requests} sequential requests per path, "
          f"{args.peers} loopback peers, echo {args.visibility}): {latencies}. Through one "
          f"gateway ({gw}): {g['rps_sequential']:.0f} req/s sequential, "
          f"{g[f'rps_concurrent_{c}']:.0f} req/s with {c} concurrent (client: "
          f"{z['rps_sequential']:.0f} / {z[f'rps_concurrent_{c}']:.0f}). Load {load:.2f} at "
          f"start; run took {wall:.0f}s. Wrote {csv_path} and {json_path}.")
    return 0


def instance_pids(root: Path, iid: str) -> list[int]:
    """PIDs of instance ``iid`` of the mesh under ``root`` (its working
    directory is the extracted bundle in its peer's data directory)."""
    pids = []
    for proc in psutil.process_iter(["pid", "cwd"]):
        if not (proc.info.get("cwd") or "").startswith(str(root)):
            continue
        try:
            if proc.environ().get("NANOMESH_INSTANCE") == iid:
                pids.append(proc.info["pid"])
        except psutil.Error:
            continue
    return pids


if __name__ == "__main__":
    sys.exit(main())
