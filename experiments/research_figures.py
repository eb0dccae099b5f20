"""nanomesh measured against the research's deployment figures (issue 10).

The research (../shared/RESEARCH.md, the Docker-Swarm nanoservice prototype on
Raspberry Pis) reports, per nanoservice, a deployment time of 52-65 s and an
initiation time of 2-4 s (multi-stage images), and for its resource-aware
deployment five steps -- (1) resource discovery on each worker (~7 s),
(2) resource reporting to the manager (CoAP block-wise), (3) service discovery
from the image registry, (4) matching, (5) deployment -- with a total
deployment latency of 6-17 s. This script measures nanomesh's counterpart of
each on a real lab on this machine.

Each run starts a fresh lab (so no peer has a bundle cached): three peer
daemons on 127.0.19.1-3 (``--subnet``, ``--first-octet``; cluster key, gossip
preset ``lan``), all with simulated hardware (NANOMESH_DEVICES=sim and a world
file with steady vitals):
``rf-1`` (the hospital server: a display), ``rf-2`` (the patient's devices: the
BerryMed oximeter, the DS18B20, the oxygen relay), ``rf-3`` (a plain peer).
Then, one after the other, it deploys every nanoservice on main with the real
CLI, ``python -m nanomesh deploy FOLDER --detach`` against ``rf-1`` (which
packs the folder into a bundle and uploads it), waits until every instance has
started and (where it has a health check) passed it, and reads the
timestamps: the CLI's own output lines as they arrive, and the daemons' log
stamps (ms, local wall time). Services: services/patient dd, oc, bot, pom
(bound by placement to the peer with their device), echo and hello (2
replicas, spread), counter, and counter-container (a busybox rootfs run by
runc; skipped without root, runc and busybox-static).

How the research's steps map onto what nanomesh does (`STEPS`):

- L1 resource discovery: ``nanomesh.discovery.discover()``, the capability
  probe a peer runs at start and on config changes (timed in this process;
  not on the deploy path: the profile is already known when a deploy comes);
- L2 resource reporting: a new peer's profile reaching the mesh: from the
  peer's ``joining via SEED`` stamp until the seed's ``/v1/members`` holds its
  profile (polled every 10 ms; gossip announces the profile's version, the
  seed pulls it over TCP); again not on the deploy path;
- L3 service discovery: the CLI reads and checks the manifest (the service's
  requirements; Docker images carried them in their description), packs the
  folder and uploads the bundle: CLI start to its ``uploaded bundle`` line;
- L4 matching: the service document committed through Raft, the leader's
  placement (the balanced planner by default; the first-fit strategy is
  Algorithm 1) and the plan committed: ``uploaded bundle`` to the leader's
  ``placement: committed plan epoch`` stamp;
- L5 deployment: the host learns the plan, fetches the bundle from the mesh
  and starts the process or container: plan commit to the host's ``started
  IID`` stamp.

Deploy (per nanoservice instance) = CLI start to ``started IID``; initiate =
``started IID`` to ``IID is healthy`` (its first successful health check:
checks poll every 20 ms until the first success). Total = L1 + L2 (medians
over all runs) + L3 + L4 + L5 of the deploy. Also timed: ``python -m nanomesh
--help`` (the CLI's start, paid inside L3) once per run.

CSV per instance and run; summary JSON; a plot (research vs nanomesh per step,
``results/research_figures.png``).

    .venv/bin/python experiments/research_figures.py            # 5 runs
    .venv/bin/python experiments/research_figures.py --quick    # 2 runs
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _meshlib as ml
from control_failover import Mesh60, read_token, wait_healthy

from nanomesh.cli.demo_patient import OXIMETER, PATIENT_DEVICES, THERMOMETER
from nanomesh.devices.world import ENV_START, ENV_WORLD
from nanomesh.transport.apiclient import ApiError

SUBNET = "127.0.19"
"""This experiment's loopback /24 (``--subnet``): 127.0.19.1-99 by default
(other ranges belong to other experiments and tests)."""

SERVICES_DIR = ml.REPO_ROOT / "services"
SERVICES: tuple[str, ...] = ("patient/dd", "patient/oc", "patient/bot", "patient/pom",
                             "echo", "hello", "counter", "counter-container")
"""Deploy order: the display and the valve first (pom and bot call them)."""
CONTAINER = "counter-container"

DEPLOY_TIMEOUT = 120.0
"""Seconds one service may take from the CLI's start to every instance started
and healthy (a loaded 2-core machine; the manifests' start_period is 30 s)."""

RESEARCH: dict[str, tuple[float, float] | None] = {
    "L1": (6.98, 7.175),
    "L2": (247.0, 247.0),
    "L3": None,
    "L4": None,
    "L5": None,
    "total": (6.0, 17.0),
    "deploy": (52.0, 65.0),
    "initiate": (2.0, 4.0),
}
"""The research's figures in seconds (low, high), None where it gives none
(../shared/RESEARCH.md): L1 6980 ms native, 7175 ms in a container; L2 247 s
for a 158 kB profile in 64-byte CoAP blocks (the only timed block size; 1024-byte
blocks took 153 blocks, untimed); total deployment latency 6-17 s; deploy and
initiate per nanoservice with multi-stage images (official images: 131-322 s
and 11-15 s)."""


@dataclass(frozen=True)
class Step:
    key: str
    short: str
    research: str
    nanomesh: str


STEPS: tuple[Step, ...] = (
    Step("L1", "L1 resource discovery", "resource discovery on each worker",
         "discovery.discover(): the capability probe (at peer start, not per deploy)"),
    Step("L2", "L2 resource reporting", "resource reporting to the manager (CoAP block-wise)",
         "a new peer's profile reaching the seed by gossip: 'joining via' until the "
         "seed's /v1/members holds it (not per deploy)"),
    Step("L3", "L3 service discovery", "service discovery from the image registry",
         "CLI: manifest read and checked, bundle packed and uploaded"),
    Step("L4", "L4 matching", "matching",
         "service committed (Raft), placement decided, plan committed"),
    Step("L5", "L5 deployment", "deployment",
         "host fetches the bundle from the mesh and starts the process/container"),
    Step("total", "total L1-L5", "total deployment latency", "L1 + L2 + L3 + L4 + L5"),
    Step("deploy", "deploy per service", "deployment time per nanoservice (Swarm, image pull)",
         "nanomesh deploy until the instance started"),
    Step("initiate", "initiate per service", "initiation time per nanoservice",
         "instance started until its first successful health check"),
)


# --------------------------------------------------------------------------- pure analysis

PLAN_RE = re.compile(r"^placement: committed plan epoch (\d+)")
STARTED_RE = re.compile(r"^started (\S+) \(pid \d+")
HEALTHY_RE = re.compile(r"^(\S+) is healthy$")
FETCHED_RE = re.compile(r"^fetched bundle ([0-9a-f]+) from the mesh")
UPLOADED_RE = re.compile(r"^uploaded bundle ([0-9a-f]+) \((\d+) bytes\)")
DEPLOYED_RE = re.compile(r"^(?:deployed|unchanged:) (\S+) \(revision")


@dataclass(frozen=True)
class CliMarks:
    """Wall times (s since the epoch) the deploy CLI reached its steps."""

    start: float
    uploaded: float
    committed: float
    bundle_sha: str
    bundle_bytes: int


def cli_marks(start: float, lines: Iterable[tuple[float, str]]) -> CliMarks:
    """The CLI's output lines (arrival time, text) -> its marks. Raises
    ValueError if the output lacks the upload or the commit line."""
    uploaded = committed = math.nan
    sha, size = "", 0
    for at, text in lines:
        if (m := UPLOADED_RE.match(text)) and uploaded != uploaded:
            uploaded, sha, size = at, m.group(1), int(m.group(2))
        elif DEPLOYED_RE.match(text) and committed != committed:
            committed = at
    if uploaded != uploaded or committed != committed:
        raise ValueError("the deploy's output has no 'uploaded bundle' or 'deployed' line")
    return CliMarks(start, uploaded, committed, sha, size)


def floor_ms(t: float) -> float:
    """A wall time as the log stamps show it (milliseconds, floored)."""
    return math.floor(t * 1000.0) / 1000.0


def plan_commit(lines: Iterable[ml.LogLine], since: float) -> float:
    """The first 'committed plan' stamp at or after `since` in any peer's log
    (only the Raft leader commits plans); NaN if none."""
    stamps = [ln.ts for ln in lines if ln.ts >= floor_ms(since) and PLAN_RE.match(ln.msg)]
    return min(stamps, default=math.nan)


@dataclass(frozen=True)
class HostMarks:
    started: float
    healthy: float
    fetched: float
    """The host's 'fetched bundle' stamp; NaN if it had the bundle (uploaded to it)."""


def host_marks(lines: Iterable[ml.LogLine], iid: str, sha: str, since: float) -> HostMarks:
    """The instance's first start, first healthy verdict, and the bundle's fetch
    in its host's log, from `since` on (NaN for what is not there)."""
    started = healthy = fetched = math.nan
    for ln in lines:
        if ln.ts < floor_ms(since):
            continue
        if (m := STARTED_RE.match(ln.msg)) and m.group(1) == iid and started != started:
            started = ln.ts
        elif (m := HEALTHY_RE.match(ln.msg)) and m.group(1) == iid and healthy != healthy:
            healthy = ln.ts
        elif (m := FETCHED_RE.match(ln.msg)) and sha and m.group(1)[:12] == sha[:12] \
                and fetched != fetched:
            fetched = ln.ts
    return HostMarks(started, healthy, fetched)


JOINING_RE = re.compile(r"^joining via ")


def joining_at(lines: Iterable[ml.LogLine]) -> float:
    """When a peer set out to join (its 'joining via SEED' stamp); NaN if never:
    L2 runs from there until the seed holds the peer's profile."""
    return next((ln.ts for ln in lines if JOINING_RE.match(ln.msg)), math.nan)


def deploy_steps(cli: CliMarks, plan: float, host: HostMarks) -> dict[str, float]:
    """The per-deploy steps in seconds (see the module docstring)."""
    return {
        "L3": cli.uploaded - cli.start,
        "L4": plan - cli.uploaded,
        "L5": host.started - plan,
        "deploy": host.started - cli.start,
        "initiate": host.healthy - host.started,
        "fetch_after_plan": host.fetched - plan,
        "committed_after_upload": cli.committed - cli.uploaded,
    }


def summarise(rows: Sequence[Mapping[str, Any]], l1: Sequence[float], l2: Sequence[float]
              ) -> dict[str, dict[str, float | int]]:
    """Statistics per step over every deploy (L1, L2 over their own samples);
    total = median L1 + median L2 + L3 + L4 + L5 of each deploy."""
    l1_med = ml.describe(l1).get("median", math.nan)
    l2_med = ml.describe(l2).get("median", math.nan)
    out: dict[str, dict[str, float | int]] = {"L1": ml.describe(l1), "L2": ml.describe(l2)}
    for key in ("L3", "L4", "L5"):
        out[key] = ml.describe([r[key] for r in rows])
    out["total"] = ml.describe([l1_med + l2_med + r["L3"] + r["L4"] + r["L5"] for r in rows])
    out["deploy"] = ml.describe([r["deploy"] for r in rows])
    out["initiate"] = ml.describe([r["initiate"] for r in rows])
    return out


def per_service(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Deploy and initiate statistics for each service."""
    names = sorted({str(r["service"]) for r in rows})
    return {n: {"deploy": ml.describe([r["deploy"] for r in rows if r["service"] == n]),
                "initiate": ml.describe([r["initiate"] for r in rows if r["service"] == n])}
            for n in names}


# --------------------------------------------------------------------------- the lab


def discovery_seconds(samples: int) -> list[float]:
    """L1: wall time of the capability probe a peer runs (`discover`), with the
    patient peer's devices declared, `samples` times."""
    from nanomesh.discovery import DiscoveryConfig, discover

    devices = ({"type": "pulse-oximeter", "address": OXIMETER},
               {"type": "body-temperature", "id": THERMOMETER},
               {"type": "oxygen-controller", "pin": 17})
    out = []
    with tempfile.TemporaryDirectory(prefix="nm-rf-disc-") as tmp:
        config = DiscoveryConfig(data_dir=Path(tmp), devices=devices, labels={})
        for _ in range(samples):
            t = time.perf_counter()
            discover(config)
            out.append(time.perf_counter() - t)
    return out


def world_file(path: Path) -> Path:
    """Steady vitals: the services start and stay quiet (no alerts)."""
    path.write_text(f'[[oximeter]]\naddress = "{OXIMETER}"\n'
                    'readings = [{at = 0, spo2 = 97, pulse = 72}]\n\n'
                    f'[[thermometer]]\nid = "{THERMOMETER}"\n'
                    'readings = [{at = 0, celsius = 36.8}]\n')
    return path


def peer_configs(root: Path, names: Sequence[str]) -> dict[str, Path]:
    """rf-1: a display (dd); rf-2: the patient's devices (pom, bot, oc); others plain."""
    out = {}
    for i, name in enumerate(names):
        devices = ('[[devices]]\ntype = "display"\n' if i == 0
                   else "\n".join(PATIENT_DEVICES) if i == 1 else "")
        path = root / f"{name}.toml"
        path.write_text(f'[peer]\nname = "{name}"\n\n{devices}')
        out[name] = path
    return out


def service_folders(root: Path, with_container: bool) -> dict[str, Path]:
    """Service name -> the folder the CLI deploys; the container service is
    copied and its rootfs built (never committed: see its build-rootfs.sh)."""
    out = {}
    for rel in SERVICES:
        name = rel.rpartition("/")[2]
        if name == CONTAINER:
            if not with_container:
                continue
            folder = root / CONTAINER
            shutil.copytree(SERVICES_DIR / CONTAINER, folder,
                            ignore=shutil.ignore_patterns("rootfs"))
            subprocess.run(["sh", str(folder / "build-rootfs.sh")], check=True,
                           capture_output=True, timeout=60)
            out[name] = folder
        else:
            out[name] = SERVICES_DIR / rel
    return out


def containers_ok() -> bool:
    return os.geteuid() == 0 and shutil.which("runc") is not None \
        and os.path.exists("/bin/busybox")


def run_cli_deploy(folder: Path, peer: ml.Peer, token: str) -> CliMarks:
    """``python -m nanomesh deploy FOLDER --detach``, timing its output lines."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.time()
    proc = subprocess.Popen([ml.PY, "-m", "nanomesh", "deploy", str(folder), "--peer", peer.api,
                             "--token", token, "--detach"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            cwd=ml.REPO_ROOT, env=env)
    assert proc.stdout is not None
    lines = [(time.time(), line.rstrip("\n")) for line in proc.stdout]
    err = proc.stderr.read() if proc.stderr else ""
    if proc.wait(timeout=DEPLOY_TIMEOUT) != 0:
        raise RuntimeError(f"deploying {folder} failed ({proc.returncode}): {err.strip()}")
    return cli_marks(start, lines)


def instances_of(peer: ml.Peer, service: str) -> list[dict[str, Any]]:
    try:
        pl = peer.get("/v1/placement", timeout=2.0)
    except ApiError:
        return []
    return [i for i in pl["instances"] if i["service"] == service]


def started_instances(mesh: Mesh60, service: str, checked: bool, cli: CliMarks
                      ) -> list[tuple[dict[str, Any], HostMarks]] | None:
    """(instance, its marks) for every instance of `service` in the plan, once
    each has started (and, if `checked`, passed its health check) in its
    host's log; None before."""
    insts = instances_of(mesh.peers[0], service)
    found = []
    for inst in insts:
        host = next((p for p in mesh.peers if p.name == inst["peer"]), None)
        if host is None:
            return None
        marks = host_marks(ml.read_log(host.log_path), inst["instance"], cli.bundle_sha,
                           cli.start)
        if marks.started != marks.started or (checked and marks.healthy != marks.healthy):
            return None
        found.append((inst, marks))
    return found or None


def wait_instances(mesh: Mesh60, service: str, checked: bool, cli: CliMarks
                   ) -> list[tuple[dict[str, Any], HostMarks]]:
    """`started_instances`, polled every 0.2 s until DEPLOY_TIMEOUT after the
    CLI started (TimeoutError then)."""
    while (found := started_instances(mesh, service, checked, cli)) is None:
        if time.time() > cli.start + DEPLOY_TIMEOUT:
            raise TimeoutError(f"{service}: not every instance started/healthy within "
                               f"{DEPLOY_TIMEOUT:.0f}s: {instances_of(mesh.peers[0], service)}")
        time.sleep(0.2)
    return found


def has_health_check(folder: Path) -> bool:
    from nanomesh.runtime.instance_spec import instance_spec_from
    from nanomesh.runtime.manifest import load_manifest

    spec = instance_spec_from(load_manifest(folder / "nanoservice.toml"))
    return bool(spec.health.check != "none")


def stop_mesh(mesh: Mesh60, root: Path) -> list[int]:
    """SIGTERM every peer (a graceful stop: their instances are stopped), then
    SIGKILL what is left; kill instance processes that outlived their peer
    (their working directory is under `root`) and return their pids."""
    for p in mesh.peers:
        if p.running and p.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                p.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    for p in mesh.peers:
        if p.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    mesh.close()
    return kill_leftovers(root)


def kill_leftovers(root: Path) -> list[int]:
    import psutil

    mine = []
    for proc in psutil.process_iter(["pid", "cwd", "cmdline"]):
        cwd = proc.info.get("cwd") or ""
        cmd = " ".join(proc.info.get("cmdline") or [])
        if cwd.startswith(str(root)) or str(root) in cmd:
            mine.append(proc.info["pid"])
    for pid in mine:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return mine


PROFILE_POLL = 0.01
"""Seconds between two reads of the seed's member list while a peer joins (L2)."""


def start_timing_profiles(mesh: Mesh60) -> tuple[dict[str, float], dict[str, int]]:
    """Start the seed, then each other peer in turn, polling the seed's
    ``/v1/members`` until it holds the newcomer's profile. Returns per peer the
    seconds from its 'joining via' stamp to that moment (L2), and its
    profile's size as JSON (the research's was a 158 kB file)."""
    import json

    seed = mesh.peers[0]
    mesh.start(seed)
    mesh.wait(seed.api_ok, 30, "the seed's API")
    delays: dict[str, float] = {}
    sizes: dict[str, int] = {}
    for p in mesh.peers[1:]:
        mesh.start(p)
        seen: dict[str, Any] = {}

        def holds(name: str = p.name, seen: dict[str, Any] = seen) -> bool:
            try:
                members = seed.get("/v1/members", timeout=1.0)
            except ApiError:
                return False
            me = next((m for m in members if m["name"] == name and m["profile"]), None)
            if me is not None:
                seen.update(at=time.time(), profile=me["profile"])
            return me is not None
        mesh.wait(holds, 60, f"the seed to hold {p.name}'s profile", interval=PROFILE_POLL)
        delays[p.name] = seen["at"] - joining_at(ml.read_log(p.log_path))
        sizes[p.name] = len(json.dumps(seen["profile"]))
    return delays, sizes


@dataclass
class RunResult:
    rows: list[dict[str, Any]]
    l2: list[float]
    profile_bytes: list[int]
    cli_start: float
    anomalies: list[str]


def cli_start_seconds() -> float:
    """Wall time of ``python -m nanomesh --help``: the interpreter and CLI start
    that every ``nanomesh deploy`` pays inside L3."""
    t = time.perf_counter()
    subprocess.run([ml.PY, "-m", "nanomesh", "--help"], check=True, capture_output=True,
                   cwd=ml.REPO_ROOT)
    return time.perf_counter() - t


def one_run(run: int, args: argparse.Namespace, tmp: Path, say: Any) -> RunResult:
    """A fresh lab, every service deployed once."""
    root = tmp / f"run{run}"
    root.mkdir()
    key = ml.keygen(root / "cluster.key")
    os.environ.update({"NANOMESH_DEVICES": "sim", ENV_WORLD: str(world_file(root / "world.toml")),
                       ENV_START: repr(time.time()), "PATIENT_OUTBOX_DIR": str(root / "outbox")})
    mesh = Mesh60(3, root, preset=args.preset, key_file=key, first_octet=args.first_octet,
                  prefix="rf", subnet=f"{args.subnet}.")
    configs = peer_configs(root, [p.name for p in mesh.peers])
    for p in mesh.peers:
        p.extra_args += ["--config", str(configs[p.name])]
    rows: list[dict[str, Any]] = []
    anomalies: list[str] = []
    l2: dict[str, float] = {}
    profile_bytes: dict[str, int] = {}
    try:
        t_up = time.monotonic()
        l2, profile_bytes = start_timing_profiles(mesh)
        wait_healthy(mesh, 90.0)
        up_s = time.monotonic() - t_up
        token = read_token(mesh)
        say(f"run {run}: 3 peers up in {up_s:.1f}s; profiles at the seed after "
            + ", ".join(f"{n} {s:.3f}s ({profile_bytes[n]} B)" for n, s in sorted(l2.items())))
        for name, folder in service_folders(root, args.containers).items():
            cli = run_cli_deploy(folder, mesh.peers[0], token)
            checked = has_health_check(folder)
            placed = wait_instances(mesh, name, checked, cli)
            logs = [ln for p in mesh.peers for ln in ml.read_log(p.log_path)]
            plan = plan_commit(logs, cli.uploaded)
            for inst, marks in placed:
                steps = deploy_steps(cli, plan, marks)
                rows.append({"run": run, "service": name, "instance": inst["instance"],
                             "host": inst["peer"], "bundle_bytes": cli.bundle_bytes,
                             "bundle_fetched": marks.fetched == marks.fetched,
                             "health_check": checked, **steps,
                             "load1": round(os.getloadavg()[0], 2)})
                say(f"  {inst['instance']:<22} on {inst['peer']}: deploy {steps['deploy']:.3f}s "
                    f"(L3 {steps['L3']:.3f} L4 {steps['L4']:.3f} L5 {steps['L5']:.3f}), "
                    f"initiate {steps['initiate']:.3f}s")
    finally:
        leftovers = stop_mesh(mesh, root)
        if args.keep_logs is not None:
            dest = args.keep_logs / f"run{run}"
            dest.mkdir(parents=True, exist_ok=True)
            for p in mesh.peers:
                if p.log_path.exists():
                    shutil.copy(p.log_path, dest / p.log_path.name)
    if leftovers:
        anomalies.append(f"run {run}: {len(leftovers)} processes outlived their peers (killed)")
    return RunResult(rows, list(l2.values()), list(profile_bytes.values()),
                     cli_start_seconds(), anomalies)


# --------------------------------------------------------------------------- output

COLUMNS = ["run", "service", "instance", "host", "bundle_bytes", "bundle_fetched",
           "health_check", "L3", "L4", "L5", "deploy", "initiate", "fetch_after_plan",
           "committed_after_upload", "load1"]


def plot(steps: Mapping[str, Mapping[str, float | int]], path: Path) -> bool:
    """Research range vs nanomesh median (whisker to p90) per step, log scale.
    False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    keys = [s.key for s in STEPS]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    y = list(range(len(keys)))
    for i, k in enumerate(keys):
        r = RESEARCH[k]
        if r is not None:
            lo, hi = r
            ax.barh(i + 0.2, hi, height=0.35, color="#c0504d",
                    label="research (RPi, Docker Swarm)" if i == 0 else None)
            if hi > lo:
                ax.plot([lo, hi], [i + 0.2, i + 0.2], color="black", lw=1)
        else:
            ax.text(1.3e-3, i + 0.2, "research: no figure", va="center", fontsize=7,
                    color="#c0504d")
        s = steps.get(k, {})
        med = float(s.get("median", math.nan))
        if med == med:
            ax.barh(i - 0.2, max(med, 1e-4), height=0.35, color="#4f81bd",
                    label="nanomesh here (median, p90)" if i == 0 else None)
            ax.plot([med, float(s.get("p90", med))], [i - 0.2, i - 0.2], color="black", lw=1)
    ax.set_yticks(y, [s.short for s in STEPS], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlim(left=1e-3)
    ax.set_xlabel("seconds (log scale)")
    ax.set_title("Deployment steps: the research vs nanomesh on this machine")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=None,
                   help="fresh labs, each deploying every service once (default 5; 2 with "
                   "--quick)")
    p.add_argument("--quick", action="store_true", help="short run: 2 labs")
    p.add_argument("--preset", default="lan", help="gossip preset of the peers (default lan)")
    p.add_argument("--discovery-samples", type=int, default=50,
                   help="L1: timed calls of the capability probe (default 50)")
    p.add_argument("--no-containers", dest="containers", action="store_false",
                   help="skip counter-container (it needs root, runc and busybox-static)")
    p.add_argument("--keep-logs", type=Path, default=None,
                   help="copy the peers' logs to this directory (one folder per run)")
    ml.add_run_options(p, name="research_figures", subnet=SUBNET, first_octet=1)
    ml.add_subnet_option(p, SUBNET)
    args = p.parse_args()
    if args.runs is None:
        args.runs = 2 if args.quick else 5
    if not 1 <= args.first_octet <= 248:
        p.error("--first-octet: the 3 peers must stay within SUBNET.1-250")
    args.containers = args.containers and containers_ok()
    return args


def main() -> int:
    args = parse_args()
    ml.install_sigterm_handler()
    csv_path, json_path = ml.results_paths(args.name)
    load = ml.wait_for_quiet(args.max_load, timeout=900)
    info = ml.machine_info()  # after the wait: its date and load are the run's
    started = time.monotonic()
    l1 = discovery_seconds(args.discovery_samples)
    rows: list[dict[str, Any]] = []
    l2: list[float] = []
    profile_bytes: list[int] = []
    cli_start: list[float] = []
    anomalies: list[str] = []
    load_during: list[float] = []
    with tempfile.TemporaryDirectory(prefix="nm-rf-") as tmp:
        for run in range(1, args.runs + 1):
            load_during.append(os.getloadavg()[0])
            res = one_run(run, args, Path(tmp), lambda s: print(s, flush=True))
            rows += res.rows
            l2 += res.l2
            profile_bytes += res.profile_bytes
            cli_start.append(res.cli_start)
            anomalies += res.anomalies
    wall = time.monotonic() - started
    ml.write_csv(csv_path, COLUMNS, ([r[c] for c in COLUMNS] for r in rows))
    steps = summarise(rows, l1, l2)
    png = ml.RESULTS_DIR / f"{args.name}.png"
    plotted = plot(steps, png)
    summary: dict[str, Any] = {
        "experiment": "research_figures",
        "peers": 3,
        "runs": args.runs,
        "quick": args.quick,
        "gossip_preset": args.preset,
        "services": sorted({r["service"] for r in rows}),
        "containers": args.containers,
        **{f"{k}_s": v for k, v in steps.items()},
        "per_service": per_service(rows),
        "cli_start_s": ml.describe(cli_start),
        "profile_json_bytes": ml.describe(profile_bytes),
        "research_s": {k: list(v) if v else None for k, v in RESEARCH.items()},
        "steps": [{"key": s.key, "research": s.research, "nanomesh": s.nanomesh}
                  for s in STEPS],
        "bundle_fetched_share": round(sum(r["bundle_fetched"] for r in rows) / len(rows), 3)
        if rows else None,
        "load1_during_runs": ml.describe(load_during + [r["load1"] for r in rows]),
        "anomalies": anomalies,
        "wall_s": round(wall, 1),
        "loadavg_when_started": round(load, 2),
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "machine": info,
        "csv": str(csv_path.relative_to(ml.REPO_ROOT)),
        "plot": str(png.relative_to(ml.REPO_ROOT)) if plotted else None,
    }
    ml.write_json(json_path, summary)
    nan = float("nan")
    print()
    print(f"Research figures, {args.runs} fresh 3-peer labs, {len(rows)} instances of "
          f"{len(summary['services'])} services deployed with `nanomesh deploy`:")
    for s in STEPS:
        st = steps[s.key]
        r = RESEARCH[s.key]
        print(f"  {s.key:<8} research {'-' if r is None else f'{r[0]:g}-{r[1]:g} s':<12} "
              f"nanomesh median {st.get('median', nan):.3f} s, p90 {st.get('p90', nan):.3f} s "
              f"(n {st.get('n', 0)})  [{s.nanomesh}]")
    print(f"Load {load:.2f} at start; run took {wall:.0f}s. Wrote {csv_path}, {json_path}"
          + (f", {png}" if plotted else "") + ".")
    for a in anomalies:
        print("anomaly:", a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
