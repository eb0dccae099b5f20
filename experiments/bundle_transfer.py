"""How long do packing, storing and fetching a service bundle take?

For each bundle size (default 1 MiB and 20 MiB of incompressible data plus a
small manifest and code file) and each run: `pack_bundle` (walk, deterministic
tar, sha256), `BundleStore.add` on the source peer (verify, extract, atomic
rename) and `fetch_bundle` by a second store from a real HTTP server
(`serve_http` + the bundle routes) on 127.0.52.200 over loopback: GET, stream
to a staging file while hashing, verify again, extract, rename. Server and
client share one process and one trio loop (and so one GIL), which makes the
fetch numbers conservative. CSV per run: size_mib, run, pack_ms, add_ms,
fetch_ms, fetch_mib_s; summary JSON with medians and p99 per size.

    .venv/bin/python experiments/bundle_transfer.py [--runs N] [--sizes 1,20] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from _meshlib import describe, machine_info, results_paths, write_csv, write_json  # noqa: E402

from nanomesh.bundles import BundleStore, fetch_bundle, pack_bundle  # noqa: E402
from nanomesh.daemon.api_bundles import BUNDLE_BODY_LIMITS, bundle_routes  # noqa: E402
from nanomesh.daemon.http import HttpError, Request, serve_http  # noqa: E402

HOST = "127.0.52.200"
"""Loopback address of the serving peer (the bundle work's own range)."""
TOKEN = "bench"


def make_folder(root: Path, size: int) -> Path:
    root.mkdir(parents=True)
    (root / "nanoservice.toml").write_text(
        'name = "bench"\nversion = "1"\n[run]\ncommand = ["python3", "main.py"]\n')
    (root / "main.py").write_text("print('bench')\n")
    (root / "data.bin").write_bytes(os.urandom(size))
    return root


def authorize(request: Request) -> None:
    if request.bearer_token() != TOKEN:
        raise HttpError(401, "token")


async def one_size(work: Path, size_mib: int, runs: int) -> list[list[float]]:
    folder = make_folder(work / f"svc-{size_mib}", size_mib << 20)
    src = BundleStore(work / f"src-{size_mib}")
    rows = []
    listeners = await trio.open_tcp_listeners(0, host=HOST)
    addr = f"{HOST}:{listeners[0].socket.getsockname()[1]}"
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: serve_http(
            bundle_routes(src, authorize), listeners, large_bodies=BUNDLE_BODY_LIMITS,
            task_status=task_status))
        for run in range(runs):
            t0 = time.perf_counter()
            bundle = pack_bundle(folder)
            t1 = time.perf_counter()
            src.remove(bundle.sha256)
            t2 = time.perf_counter()
            src.add(bundle.data, bundle.sha256)
            t3 = time.perf_counter()
            dst = BundleStore(work / f"dst-{size_mib}-{run}")
            t4 = time.perf_counter()
            await fetch_bundle(dst, bundle.sha256, [addr], token=TOKEN, timeout=30)
            t5 = time.perf_counter()
            fetch_s = t5 - t4
            rows.append([size_mib, run, (t1 - t0) * 1e3, (t3 - t2) * 1e3, fetch_s * 1e3,
                         bundle.size / 2**20 / fetch_s])
        nursery.cancel_scope.cancel()
    return rows


async def main_async(sizes: list[int], runs: int) -> list[list[float]]:
    rows: list[list[float]] = []
    with tempfile.TemporaryDirectory(prefix="nanomesh-bundle-bench-") as tmp:
        for size in sizes:
            rows += await one_size(Path(tmp), size, runs)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--sizes", default="1,20", help="bundle payload sizes in MiB")
    p.add_argument("--quick", action="store_true", help="3 runs per size")
    args = p.parse_args()
    runs = 3 if args.quick else args.runs
    sizes = [int(s) for s in args.sizes.split(",")]
    info = machine_info()
    started = time.perf_counter()
    rows = trio.run(main_async, sizes, runs)
    csv_path, json_path = results_paths("bundle_transfer")
    write_csv(csv_path, ["size_mib", "run", "pack_ms", "add_ms", "fetch_ms", "fetch_mib_s"],
              rows)
    summary: dict[str, Any] = {"machine": info, "runs": runs,
                               "wall_s": round(time.perf_counter() - started, 1)}
    for size in sizes:
        mine = [r for r in rows if r[0] == size]
        summary[f"{size}MiB"] = {k: describe([r[i] for r in mine]) for i, k in
                                 ((2, "pack_ms"), (3, "add_ms"), (4, "fetch_ms"),
                                  (5, "fetch_mib_s"))}
    write_json(json_path, summary)
    for size in sizes:
        s = summary[f"{size}MiB"]
        print(f"{size} MiB: pack {s['pack_ms']['median']:.1f} ms, add {s['add_ms']['median']:.1f}"
              f" ms, fetch {s['fetch_ms']['median']:.1f} ms (p99 {s['fetch_ms']['p99']:.1f} ms, "
              f"{s['fetch_mib_s']['median']:.0f} MiB/s) median of {runs}")
    print(f"results: {csv_path}, {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
