"""`nanomesh experiment run FILE`: a scenario (`nanomesh.cli.scenario`) on a
fresh lab, recorded.

The run starts a lab of ``peers`` in ``OUT/lab`` (so every peer's log stays
with the results), deploys the scenario's services as `nanomesh deploy`
does (waiting for them), then from t = 0 for ``duration`` seconds runs three
things side by side:

- the **steps** at their times (a step that takes time, such as `add`,
  which returns once the mesh sees the new peers, delays the ones after it;
  each step's start and end are recorded; a step still running at the end
  is waited for, and the sampler goes on until it is done);
- the **load**: calls by name at ``rate`` per second for ``duration``
  seconds, open loop (a slow call
  does not slow the rate; at most `MAX_IN_FLIGHT` at once), through one
  running peer until it stops, then through another, as a program on a
  device calls through its own peer;
- the **sampler**: every ``sample_every`` s the first running peer's view of
  the leader, term, alive members and the committed placement.

Written to OUT: ``steps.csv``, ``calls.csv``, ``timeline.csv``, ``moves.csv``
(per sampled plan change: instances moved, and how many had to because
their peer was no longer alive),
``summary.json`` (`nanomesh.cli.scenario.summarise`) and, with matplotlib,
``timeline.png`` (availability and latency over time, alive members, the
steps marked) and ``instances.png`` (instances per peer, moves per plan
change). The lab is stopped
at the end, also on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nanomesh.cli import lab, labfaults
from nanomesh.cli.scenario import (
    Call,
    Sample,
    Scenario,
    ScenarioError,
    Step,
    moves,
    summarise,
)
from nanomesh.security.auth import TOKEN_FILE, read_token_file
from nanomesh.transport.apiclient import ApiError, get_json

MAX_IN_FLIGHT = 200
"""Calls of the load running at once; a call over it is counted as failed
("overload") rather than queued, so the rate stays the scenario's."""
DEPLOY_TIMEOUT = 180.0
"""Seconds one `nanomesh deploy` of the scenario may take (it waits for healthy)."""


# trio (and the service client) are imported in the functions that run the
# timeline: every `nanomesh` command imports this module, and `--help` must
# not load them (tests/test_cli_package.py).


class Recorder:
    """What the run saw, in seconds after t = 0 (trio's clock)."""

    def __init__(self, t0: float, clock: Callable[[], float]) -> None:
        self.t0 = t0
        self._clock = clock
        self.calls: list[Call] = []
        self.samples: list[Sample] = []
        self.steps: list[tuple[float, float, str, str]] = []
        self.sample_failures = 0

    def now(self) -> float:
        return self._clock() - self.t0


def run(scenario: Scenario, out: Path, say: Callable[[str], None] = print) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    lab_dir = out / "lab"
    if scenario.world:
        # Every lab peer (and so its instances) inherits these: simulated
        # devices reading the scenario's world, whose time 0 is now.
        from nanomesh.devices.backend import ENV_MODE
        from nanomesh.devices.world import ENV_START, ENV_WORLD

        os.environ.update({ENV_MODE: "sim", ENV_WORLD: scenario.world,
                           ENV_START: repr(time.time())})
        say(f"{scenario.name}: simulated devices read {scenario.world}")
    say(f"{scenario.name}: starting {scenario.peers} peers in {lab_dir}")
    lab.up(scenario.peers, lab_dir, preset=scenario.preset, say=say)
    try:
        token = read_token_file(lab_dir / lab.FOUNDER / TOKEN_FILE)
        for path in scenario.deploy:
            say(f"deploying {path}")
            _deploy(path, lab_dir, token)
        say(f"t = 0: running {scenario.duration:g} s"
            + (f" with {scenario.load.rate:g} calls/s to {scenario.load.service}"
               if scenario.load else ""))
        import trio

        rec = trio.run(_timeline, scenario, lab_dir, token, say)
    finally:
        lab.down(lab_dir, say=say)
    summary = summarise(scenario, rec.calls, rec.samples)
    summary["sample_failures"] = rec.sample_failures
    _write(out, scenario, rec, summary)
    return summary


def _deploy(path: str, lab_dir: Path, token: str) -> None:
    """`nanomesh deploy PATH` against the lab, as a user runs it."""
    peer = lab.running(lab_dir)[0]
    done = subprocess.run([sys.executable, "-m", "nanomesh", "deploy", path, "--peer", peer.api,
                           "--token", token], capture_output=True, text=True,
                          timeout=DEPLOY_TIMEOUT, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise ScenarioError(f"deploying {path} failed: {done.stderr.strip() or done.stdout}")


# ------------------------------------------------------------------ the timeline


async def _timeline(scenario: Scenario, lab_dir: Path, token: str,
                    say: Callable[[str], None]) -> Recorder:
    import trio

    rec = Recorder(trio.current_time(), trio.current_time)
    rng = random.Random(scenario.seed)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_sampler, scenario, lab_dir, rec)
        if scenario.load is not None:
            nursery.start_soon(_load, scenario, lab_dir, rec)
        for step in scenario.steps:
            await trio.sleep_until(rec.t0 + step.t)
            start = rec.now()
            try:
                detail = await trio.to_thread.run_sync(_do, step, lab_dir, token, rng)
            except Exception as exc:  # a step that fails is recorded, the run goes on
                detail = f"failed: {exc}"
            rec.steps.append((start, rec.now(), step.describe(), detail))
            say(f"t = {start:6.2f} s  {step.describe()}: {detail} ({rec.now() - start:.2f} s)")
        await trio.sleep_until(rec.t0 + scenario.duration)
        nursery.cancel_scope.cancel()
    return rec


def _do(step: Step, lab_dir: Path, token: str, rng: random.Random) -> str:
    """Carry out one step (blocking; in a worker thread)."""
    if step.do == "add":
        config = Path(step.config) if step.config else None
        return "added " + ", ".join(p.name for p in lab.add(step.n, lab_dir, say=_quiet,
                                                            config=config))
    if step.do in ("partition", "heal", "loss"):
        return _fault(step, lab_dir)
    if step.do == "deploy":
        _deploy(step.path, lab_dir, token)
        return "deployed"
    if step.do == "undeploy":
        done = subprocess.run([sys.executable, "-m", "nanomesh", "undeploy", step.path, "--peer",
                               lab.running(lab_dir)[0].api, "--token", token],
                              capture_output=True, text=True, timeout=60)
        return done.stdout.strip() or done.stderr.strip()
    name = _peer(step.peer or "", lab_dir, rng)
    if step.do in ("stop", "kill"):
        lab.stop(name, lab_dir, kill=step.do == "kill")
    elif step.do == "start":
        lab.start(name, lab_dir)
    elif step.do == "restart":
        lab.stop(name, lab_dir, kill=step.kill)
        lab.start(name, lab_dir)
    elif step.do == "remove":
        lab.remove(name, lab_dir, kill=step.kill)
    return name


def _fault(step: Step, lab_dir: Path) -> str:
    ips = {p.name: p.ip for p in lab.load_state(lab_dir)}
    faults = labfaults.load(lab_dir)
    if step.do == "partition":
        faults.groups = labfaults.parse_groups(list(step.sides), list(ips))
    elif step.do == "heal":
        faults.groups = []
    else:
        faults.loss = labfaults.parse_loss(step.loss)
    labfaults.apply(lab_dir, faults, ips)
    return "ok"


def _peer(which: str, lab_dir: Path, rng: random.Random) -> str:
    """A lab peer's name for ``leader``, ``random``, ``stopped`` or a name."""
    running = lab.running(lab_dir)
    if which == "random":
        return rng.choice(running).name
    if which == "stopped":
        for p in lab.load_state(lab_dir):
            if not lab.alive(p.pid):
                return p.name
        raise ScenarioError("no lab peer is stopped")
    if which == "leader":
        for p in running:
            with contextlib.suppress(ApiError):
                leader = get_json(p.api, "/v1/status", timeout=2.0).get("leader")
                if leader:
                    ip = str(leader).rpartition(":")[0]
                    return next(q.name for q in running if q.ip == ip)
        raise ScenarioError("no running peer knows a leader")
    return which


class _RunningPeers:
    """The lab's running peers, read again at most every `REFRESH` seconds
    (the load asks for every call)."""

    REFRESH = 0.5

    def __init__(self, lab_dir: Path, clock: Callable[[], float]) -> None:
        self._lab_dir = lab_dir
        self._clock = clock
        self._read_at = -self.REFRESH
        self._peers: list[lab.LabPeer] = []

    def first(self) -> lab.LabPeer:
        """IndexError when none runs."""
        return self._current()[0]

    def is_running(self, api: str) -> bool:
        return any(p.api == api for p in self._current())

    def _current(self) -> list[lab.LabPeer]:
        if self._clock() - self._read_at >= self.REFRESH:
            self._peers, self._read_at = lab.running(self._lab_dir), self._clock()
        return self._peers


def _quiet(_: str) -> None:
    pass


# ------------------------------------------------------------------ sampling and load


async def _sampler(scenario: Scenario, lab_dir: Path, rec: Recorder) -> None:
    import trio

    while True:
        t = rec.now()
        sample = await trio.to_thread.run_sync(_sample, lab_dir, t)
        if sample is None:
            rec.sample_failures += 1
        else:
            rec.samples.append(sample)
        await trio.sleep_until(rec.t0 + t + scenario.sample_every)


def _sample(lab_dir: Path, t: float) -> Sample | None:
    """The first running peer's view that knows a leader, else the first view
    at all: a peer just restarted holds the plan it had before it went down
    until it hears from the leader, and sampling that would record moves that
    never happened."""
    fallback = None
    for p in lab.running(lab_dir):
        try:
            status = get_json(p.api, "/v1/status", timeout=1.0)
            members = get_json(p.api, "/v1/members", timeout=1.0)
            plan = get_json(p.api, "/v1/placement", timeout=1.0)
        except ApiError:
            continue
        alive = frozenset(m["name"] for m in members if m["state"] == "alive")
        sample = Sample(t=t, asked=p.name, leader=status.get("leader"),
                        term=int(status.get("term") or 0), alive=len(alive),
                        placement=tuple(sorted((i["instance"], i["peer"])
                                               for i in plan.get("instances", []))),
                        alive_peers=alive)
        if sample.leader:
            return sample
        fallback = fallback or sample
    return fallback


async def _load(scenario: Scenario, lab_dir: Path, rec: Recorder) -> None:
    """Calls at the scenario's rate through one running peer, as a program on
    that device calls through its own peer; only when that peer stops do the
    calls move to another running one (a new client)."""
    import trio

    from nanomesh.sdk.client import ClientError, connect

    assert scenario.load is not None
    load = scenario.load
    period = 1.0 / load.rate
    in_flight = trio.CapacityLimiter(MAX_IN_FLIGHT)
    running = _RunningPeers(lab_dir, trio.current_time)
    tick = round(load.start * load.rate)  # the first call at t = start
    await trio.sleep_until(rec.t0 + tick * period)

    def first_api() -> str | None:
        try:
            return running.first().api
        except IndexError:
            return None

    async def one(mesh: Any, api: str, t: float) -> None:
        started = trio.current_time()
        ok, error = True, ""
        try:
            async with in_flight:
                await mesh.call(load.service, load.path, timeout=load.timeout)
        except ClientError as exc:
            ok, error = False, f"{type(exc).__name__}: {str(exc)[:160]}"
        rec.calls.append(Call(t=t, latency=trio.current_time() - started, ok=ok, error=error,
                              via=api))

    while tick * period < scenario.duration:
        api = first_api()
        if api is None:
            rec.calls.append(Call(t=tick * period, latency=0.0, ok=False,
                                  error="no running peer"))
            tick += 1
            await trio.sleep_until(rec.t0 + tick * period)
            continue
        async with connect(api, key_file=lab_dir / "cluster.key") as mesh, \
                trio.open_nursery() as calls:
            while running.is_running(api) and tick * period < scenario.duration:
                t = tick * period
                await trio.sleep_until(rec.t0 + t)
                if in_flight.borrowed_tokens >= MAX_IN_FLIGHT:
                    rec.calls.append(Call(t=t, latency=0.0, ok=False, error="overload"))
                else:
                    calls.start_soon(one, mesh, api, t)
                tick += 1


# ------------------------------------------------------------------ output


def _write(out: Path, scenario: Scenario, rec: Recorder, summary: dict[str, Any]) -> None:
    _csv(out / "steps.csv", ["t_start_s", "t_end_s", "step", "result"], rec.steps)
    _csv(out / "calls.csv", ["t_s", "latency_s", "ok", "via", "error"],
         [(f"{c.t:.3f}", f"{c.latency:.4f}", int(c.ok), c.via, c.error)
          for c in sorted(rec.calls, key=lambda c: c.t)])
    _csv(out / "timeline.csv", ["t_s", "asked", "leader", "term", "alive", "instances_per_peer"],
         [(f"{s.t:.3f}", s.asked, s.leader or "", s.term, s.alive,
           json.dumps(dict(Counter(peer for _, peer in s.placement)), sort_keys=True))
          for s in rec.samples])
    _csv(out / "moves.csv", ["t_s", "moved", "necessary", "avoidable"],
         [(f"{m.t:.3f}", m.moved, m.necessary, m.avoidable) for m in moves(rec.samples)])
    (out / "summary.json").write_text(json.dumps(
        {"scenario": scenario.name, "peers": scenario.peers, "duration_s": scenario.duration,
         **summary, "recorded": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
         "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]}, indent=2) + "\n")
    _plot(out, rec)


def _csv(path: Path, header: list[str], rows: Any) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _plot(out: Path, rec: Recorder) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, (avail, lat, alive) = plt.subplots(3, 1, figsize=(10, 7), sharex=True)
    seconds = Counter(int(c.t) for c in rec.calls)
    good = Counter(int(c.t) for c in rec.calls if c.ok)
    xs = sorted(seconds)
    avail.plot(xs, [good[x] / seconds[x] for x in xs], drawstyle="steps-post")
    avail.set_ylabel("calls OK (per s)")
    avail.set_ylim(-0.05, 1.05)
    oks = [c for c in rec.calls if c.ok]
    lat.scatter([c.t for c in oks], [c.latency * 1000 for c in oks], s=3)
    lat.set_ylabel("latency (ms)")
    lat.set_yscale("log")
    alive.plot([s.t for s in rec.samples], [s.alive for s in rec.samples],
               drawstyle="steps-post")
    alive.set_ylabel("alive members")
    alive.set_xlabel("seconds")
    for ax in (avail, lat, alive):
        for start, *_ in rec.steps:
            ax.axvline(start, color="grey", lw=0.7, ls="--")
    for start, _, step, _ in rec.steps:
        avail.annotate(step, (start, 1.02), fontsize=7, rotation=30)
    fig.tight_layout()
    fig.savefig(out / "timeline.png", dpi=110)
    plt.close(fig)
    peers = sorted({peer for s in rec.samples for _, peer in s.placement})
    if peers:
        fig, (ax, moved) = plt.subplots(2, 1, figsize=(10, 5.5), sharex=True)
        for peer in peers:
            ax.plot([s.t for s in rec.samples],
                    [sum(1 for _, p in s.placement if p == peer) for s in rec.samples],
                    drawstyle="steps-post", label=peer)
        ax.set_ylabel("instances")
        ax.legend(fontsize=7, ncol=4)
        changes = moves(rec.samples)
        moved.bar([m.t for m in changes], [m.necessary for m in changes], width=0.4,
                  label="necessary (peer gone)")
        moved.bar([m.t for m in changes], [m.avoidable for m in changes], width=0.4,
                  bottom=[m.necessary for m in changes], label="avoidable")
        moved.set_ylabel("moves per plan change")
        moved.set_xlabel("seconds")
        moved.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "instances.png", dpi=110)
        plt.close(fig)


def default_out(scenario: Scenario) -> Path:
    return Path("experiment-results") / f"{scenario.name}-{time.strftime('%Y%m%d-%H%M%S')}"


