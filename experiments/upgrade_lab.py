"""A rolling upgrade of a real lab with ``nanomesh upgrade`` (issue 15): how long
it takes, and whether calls by name to a 2-replica service fail meanwhile.

1. Two release bundles of this checkout, versions FROM and TO (``nanomesh
   release build --platform native --set-version``), built offline from a
   wheelhouse (``--wheelhouse``; made with pip from the index when absent).
2. N peers on 127.0.17.11.. (preset ``local``, a cluster key), each with an
   install root of its own (``ROOT/versions/FROM-...``, ``ROOT/venv``,
   ``ROOT/launch`` = peers/nanomesh-launch). Each is run by the lab
   supervisor, a shell loop that starts ``ROOT/launch peer run ...`` again
   whenever it exits with 75 (what systemd's ``Restart=on-failure`` does on a
   device). FROM is installed once and shared by the roots (the starting
   point); each peer installs TO itself during the upgrade.
3. ``services/echo`` (2 replicas) is deployed; one caller per peer
   (``nanomesh.sdk.client`` connected to that peer's API, default retries)
   calls ``echo/…`` by name every ``--interval`` s during the whole upgrade.
4. ``nanomesh upgrade TO-bundle`` runs; its report, wall time, and the calls
   (failed ones by entry peer and whether that entry peer was the one
   restarting) are written to ``experiments/results/upgrade_lab.summary.json``
   and ``upgrade_lab.csv`` (one row per failed call).

    /work/main/.venv/bin/python experiments/upgrade_lab.py [--peers 5] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import trio  # noqa: E402
from _meshlib import keygen, machine_info, results_paths, write_csv, write_json  # noqa: E402

from nanomesh.sdk import client  # noqa: E402
from nanomesh.transport.apiclient import ApiError, get_json  # noqa: E402

PY = sys.executable
SUPERVISOR = 'while :; do "$@"; rc=$?; [ "$rc" -eq 0 ] && exit 0; sleep 1; done'
"""The lab supervisor, as systemd's ``Restart=on-failure`` (``RestartSec``):
start the launcher again after any failure, 75 included (the peer asks to be
restarted: `nanomesh.daemon.upgrade.RESTART_EXIT`); a clean exit (SIGTERM,
the lab stopping) ends it."""


def say(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)


def offline_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")
           and k != "PYTHONPATH"}
    env.update(PIP_INDEX_URL="http://127.0.0.1:9/", PIP_CONFIG_FILE=os.devnull)
    return env


def make_wheelhouse(house: Path) -> Path:
    if (house / "complete").exists():
        return house
    import tomllib
    deps = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    say(f"making the wheelhouse {house} (needs the package index)")
    subprocess.run([PY, "-m", "pip", "-q", "wheel", "-w", str(house), *deps], check=True)
    subprocess.run([PY, "-m", "pip", "-q", "download", "-d", str(house), "setuptools>=68",
                    "wheel"], check=True)
    (house / "complete").touch()
    return house


BREAK_AT = "        cfg = self.config\n        last_incarnation, remembered"
"""Where `broken_source` makes the daemon exit: first thing in PeerAssembly.run."""


def broken_source(work: Path) -> Path:
    """A copy of the checkout whose daemon exits at once (status 3): a release
    that installs and says its version, but cannot run."""
    src = work / "src-broken"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".venv", ".git", "build")
    for name in ("nanomesh", "peers"):
        shutil.copytree(REPO_ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, src / name)
    assemble = src / "nanomesh" / "daemon" / "assemble.py"
    text = assemble.read_text()
    assert BREAK_AT in text, "upgrade_lab --broken: PeerAssembly.run changed; update BREAK_AT"
    assemble.write_text(text.replace(BREAK_AT, '        raise SystemExit("broken on purpose '
                                                 '(upgrade_lab --broken)")\n' + BREAK_AT))
    return src


def build(version: str, work: Path, house: Path, source: Path = REPO_ROOT) -> Path:
    out = work / f"dist-{version}"
    subprocess.run([PY, "-m", "nanomesh", "release", "build", "--platform", "native",
                    "--source", str(source), "--set-version", version, "-o", str(out),
                    "--find-links", str(house), "--no-index"], check=True, capture_output=True,
                   env={**offline_env(), "PYTHONPATH": str(REPO_ROOT)})
    return out / f"nanomesh-{version}-bundle.tar"


def install_shared(bundle: Path, dest: Path, version: str) -> Path:
    """The FROM version's venv, made once; every root links to it."""
    unpacked = dest.parent / "unpacked"
    with tarfile.open(bundle) as tar:
        tar.extractall(unpacked, filter="data")
    top = next(unpacked.iterdir())
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(dest)], check=True)
    subprocess.run([str(dest / "bin" / "python"), "-m", "pip", "install", "-q", "--no-index",
                    "--find-links", str(top / "wheels"), f"nanomesh=={version}"], check=True,
                   env=offline_env())
    return dest


def make_root(root: Path, shared: Path, slot: str) -> Path:
    (root / "versions").mkdir(parents=True)
    os.symlink(shared, root / "versions" / slot)
    os.symlink(f"versions/{slot}", root / "venv")
    shutil.copy2(REPO_ROOT / "peers" / "nanomesh-launch", root / "launch")
    return root


class Lab:
    def __init__(self, work: Path, n: int, key: Path) -> None:
        self.work = work
        self.n = n
        self.key = key
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ips = {f"peer-{i}": f"127.0.17.{10 + i}" for i in range(1, n + 1)}

    def api(self, name: str) -> str:
        return f"{self.ips[name]}:7947"

    def start(self, name: str, root: Path, seed: str | None) -> None:
        data = self.work / name / "data"
        argv = [str(root / "launch"), "peer", "run", "--name", name, "--bind",
                self.ips[name], "--data-dir", str(data), "--key-file", str(self.key),
                "--install-root", str(root), "--gossip-preset", "local"]
        if seed:
            argv += ["--join", seed]
        log = (self.work / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(["sh", "-c", SUPERVISOR, "supervisor", *argv],
                                            stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                            start_new_session=True, env=offline_env(),
                                            cwd=self.work)

    def stop(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if value := predicate():
                return value
        except (ApiError, KeyError, TypeError):
            pass
        time.sleep(0.5)
    raise SystemExit(f"timed out after {timeout:g} s waiting for {what}")


class Callers:
    """One caller per entry peer, calling echo by name every `interval` s."""

    def __init__(self, apis: dict[str, str], key: Path, interval: float) -> None:
        self.apis = apis
        self.key = key
        self.interval = interval
        self.calls: list[tuple[float, str, bool, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: trio.run(self._main), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    async def _main(self) -> None:
        async with trio.open_nursery() as nursery:
            for name, api in self.apis.items():
                nursery.start_soon(self._caller, name, api)

    async def _caller(self, name: str, api: str) -> None:
        async with client.connect(api, key_file=self.key) as mesh:
            i = 0
            while not self._stop.is_set():
                i += 1
                at = time.time()
                try:
                    reply = await mesh.call("echo", f"echo/{name}-{i}")
                    ok, why = reply.body.decode().strip('"') == f"{name}-{i}", ""
                except Exception as exc:  # every failure is a result here
                    ok, why = False, f"{type(exc).__name__}: {exc}"
                self.calls.append((at, name, ok, why))
                await trio.sleep(self.interval)


def _version(api: str) -> str | None:
    try:
        version: str = get_json(api, "/v1/self")["profile"]["peer"]["nanomesh"]
    except (ApiError, KeyError, TypeError):
        return None
    return version


def restarts(log: Path) -> list[tuple[float, float]]:
    """(left, back) wall-time windows of one peer from its log: from 'restart
    requested' to the next 'listening' line."""
    windows, left = [], None
    for line in log.read_text(errors="replace").splitlines():
        stamp = _stamp(line)
        if stamp is None:
            continue
        if "restart requested" in line:
            left = stamp
        elif "listening: gossip" in line and left is not None:
            windows.append((left, stamp))
            left = None
    return windows


def _stamp(line: str) -> float | None:
    try:
        return time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")) + float(
            "0." + line[20:23])
    except ValueError:
        return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peers", type=int, default=5)
    p.add_argument("--from-version", default="0.1.1")
    p.add_argument("--to-version", default="0.1.2")
    p.add_argument("--interval", type=float, default=0.2, help="seconds between calls")
    p.add_argument("--broken", action="store_true",
                   help="upgrade to a TO version whose daemon exits at start: the first "
                        "peer's launcher must roll it back and the run must stop there")
    p.add_argument("--wheelhouse", type=Path, default=Path(tempfile.gettempdir())
                   / "nanomesh-upgrade-lab-wheelhouse")
    p.add_argument("--dir", type=Path, help="work directory (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args()
    work = args.dir or Path(tempfile.mkdtemp(prefix="upgrade-lab-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    house = make_wheelhouse(args.wheelhouse)
    say("building the FROM and TO bundles")
    t0 = time.monotonic()
    from_bundle = build(args.from_version, work, house)
    to_bundle = build(args.to_version, work, house,
                      broken_source(work) if args.broken else REPO_ROOT)
    build_s = time.monotonic() - t0
    say(f"bundles built in {build_s:.1f} s; installing {args.from_version} once")
    shared = install_shared(from_bundle, work / "shared" / "venv", args.from_version)
    key = keygen(work / "cluster.key")
    lab = Lab(work, args.peers, key)
    names = list(lab.ips)
    try:
        for i, name in enumerate(names):
            root = make_root(work / name / "root", shared, f"{args.from_version}-shared")
            lab.start(name, root, None if i == 0 else f"{lab.ips[names[0]]}:7946")
            if i == 0:
                wait(lambda: get_json(lab.api(names[0]), "/v1/health"), 60, "the seed's API")
        wait(lambda: all(len([m for m in get_json(lab.api(n), "/v1/members")
                              if m["state"] == "alive"]) == args.peers for n in names),
             120, "every peer to see every other alive")
        wait(lambda: get_json(lab.api(names[0]), "/v1/status")["leader"], 60, "a leader")
        token_file = work / names[0] / "data" / "management.token"
        wait(token_file.exists, 60, "the management token")
        token = token_file.read_text().strip()
        cli_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "NANOMESH_KEY_FILE": str(key)}
        subprocess.run([PY, "-m", "nanomesh", "deploy", str(REPO_ROOT / "services" / "echo"),
                        "--peer", lab.api(names[0]), "--token", token], check=True,
                       env=cli_env, capture_output=True)
        wait(lambda: len([i for i in get_json(lab.api(names[0]), "/v1/placement")["instances"]
                          if i["service"] == "echo" and i["state"] == "running"
                          and i["health"] == "healthy"]) == 2, 90, "2 healthy echo replicas")
        callers = Callers({n: lab.api(n) for n in names}, key, args.interval)
        callers.start()
        time.sleep(3)  # calls before the upgrade: the baseline
        say(f"nanomesh upgrade {to_bundle.name}")
        up_start = time.time()
        done = subprocess.run([PY, "-m", "nanomesh", "upgrade", str(to_bundle), "--json",
                               "--peer", lab.api(names[0]), "--token", token],
                              env=cli_env, capture_output=True, text=True)
        up_end = time.time()
        time.sleep(3)
        callers.stop()
        print(done.stderr, end="")
        print(done.stdout, end="")
        report = json.loads(done.stdout) if done.stdout.strip() else {"error": done.stderr}
        versions = {n: _version(lab.api(n)) for n in names}
        windows = {n: restarts(work / f"{n}.log") for n in names}
        during = [c for c in callers.calls if up_start <= c[0] <= up_end]
        failed = [c for c in during if not c[2]]

        def entry_restarting(call: tuple[float, str, bool, str]) -> bool:
            return any(a - 1 <= call[0] <= b + 1 for a, b in windows[call[1]])

        summary = {
            "peers": args.peers, "broken": args.broken, "from": args.from_version,
            "to": args.to_version,
            "upgrade_ok": done.returncode == 0, "upgrade_wall_s": round(up_end - up_start, 1),
            "report": report, "versions_after": versions,
            "calls_during": len(during), "failed_during": len(failed),
            "failed_via_restarting_entry_peer": sum(1 for c in failed if entry_restarting(c)),
            "failed_via_running_entry_peer": sum(1 for c in failed if not entry_restarting(c)),
            "failures": sorted({c[3][:120] for c in failed}),
            "restart_windows_s": {n: [round(b - a, 1) for a, b in w] for n, w in windows.items()},
            "bundle_build_s": round(build_s, 1), "bundle_bytes": to_bundle.stat().st_size,
            "total_wall_s": round(time.monotonic() - started, 1), "machine": machine_info(),
        }
        csv_path, json_path = results_paths("upgrade_lab_broken" if args.broken
                                            else "upgrade_lab")
        write_csv(csv_path, ["time", "entry_peer", "entry_restarting", "error"],
                  [(round(c[0], 3), c[1], entry_restarting(c), c[3]) for c in failed])
        write_json(json_path, summary)
        say(f"upgrade {'succeeded' if done.returncode == 0 else 'FAILED'} in "
            f"{summary['upgrade_wall_s']} s for {args.peers} peers; versions now "
            f"{sorted(set(map(str, versions.values())))}; calls during it: {len(during)}, failed "
            f"{len(failed)} ({summary['failed_via_running_entry_peer']} through a peer that "
            f"was up, {summary['failed_via_restarting_entry_peer']} through the peer "
            "restarting)")
        return 0 if (done.returncode == 0) != args.broken else 1
    finally:
        lab.stop()
        if not args.keep and args.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
