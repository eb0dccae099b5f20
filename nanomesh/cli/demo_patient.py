"""`nanomesh demo patient`: the patient moves home -> ambulance -> hospital
ward, and the monitoring services follow the patient's devices.

The research's remote patient-monitoring scenario on a local mesh of real
peer processes with simulated hardware (`nanomesh.devices`, NANOMESH_DEVICES=sim):

- ``hospital``: the hospital's server, with a display; hosts ``dd``;
- ``home``, then ``ambulance``, then ``ward``: the peer the patient's devices
  (the BerryMed oximeter, the DS18B20 thermometer, the oxygen relay) are
  attached to. Each declares them in its ``[[devices]]``; placement binds
  ``pom``, ``bot`` and ``oc`` to whichever peer has them.

A hop adds the next peer live (the devices now reach it) and removes the one
the patient left (a graceful leave); the leader's placement moves the three
device-bound services, and the demo times each: the peer joining, the
previous one gone, each service running on the new peer, and the first vital
signs from there on the display. During the ride the simulated world (the
scenario file, re-read by the simulators when it changes) lowers the
patient's SpO2 and raises the temperature while the display is unreachable
(``dd`` idled, as if the ambulance lost its link): after ``ALERT_PERIOD_S``
(the research used 30 minutes; the demo seconds) ``pom`` and ``bot`` raise
alerts, kept on disk until ``dd`` is back and has them, and ``pom`` opens the
oxygen valve through ``oc``. In the ward the SpO2 recovers: the alert clears and
the valve closes.

Every line carries the seconds since the demo started (and a hop's own
clock); timings are what the demo observed, polling every `POLL_PERIOD`.
What is real: the peers, gossip, Raft, placement, the service processes,
their calls, bleak's client and gpiozero's devices, the w1 file reader and
the alert outbox on disk. What is simulated: the radio link and oximeter
(bleak's backend), the GPIO pins (gpiozero's MockFactory) and sysfs (a
temporary tree).
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import signal
import subprocess
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from nanomesh.cli import lab
from nanomesh.cli.demo import DemoError, answers, default_dir, wait_for
from nanomesh.cli.runtime import upload_bundle
from nanomesh.config import DEFAULT_API_PORT, DEFAULT_GOSSIP_PORT
from nanomesh.devices.world import ENV_START, ENV_WORLD
from nanomesh.security.auth import TOKEN_FILE, read_token_file
from nanomesh.transport.apiclient import ApiError, get_json, request_json
from nanomesh.wire import generate_key

T = TypeVar("T")

SERVICES_DIR = Path(__file__).resolve().parents[2] / "services" / "patient"
"""The services the demo deploys (a source checkout's ``services/patient``)."""
SERVICES = ("dd", "oc", "bot", "pom")
"""Deploy order: the display and the valve first, so the first readings and
alerts find them."""
DEVICE_BOUND = ("pom", "bot", "oc")
PLACES = ("home", "ambulance", "ward")
ALERT_PERIOD_S = 3.0
"""Seconds a vital sign must stay beyond its threshold before an alert in the
demo (the research: 1800)."""
STEP_TIMEOUT = 60.0
"""Seconds each step may take (start-up, deploy, a hop) on a loaded machine."""
POLL_PERIOD = 0.2
"""Seconds between two polls of the mesh while a step runs."""
REQUEST_TIMEOUT = 2.0
MARKER = ".nanomesh-demo"
OXIMETER = "00:1C:05:00:00:12"
THERMOMETER = "28-0000000a0012"
VALVE_PIN = 17
PATIENT_DEVICES = (
    f'[[devices]]\ntype = "pulse-oximeter"\naddress = "{OXIMETER}"\n',
    f'[[devices]]\ntype = "body-temperature"\nid = "{THERMOMETER}"\n',
    f'[[devices]]\ntype = "oxygen-controller"\npin = {VALVE_PIN}\n',
)


def ip_at(base: str, offset: int) -> str:
    """``base`` + ``offset`` in the last octet (127.0.15.2 + 1 = 127.0.15.3)."""
    head, _, last = base.rpartition(".")
    n = int(last) + offset
    if not head or not 1 <= n <= 254:
        raise DemoError(f"--base-ip {base}: the demo needs 4 addresses from it up, within .254")
    return f"{head}.{n}"


def world_toml(vitals: list[tuple[float, int, int]], temps: list[tuple[float, float]]) -> str:
    """The scenario file (`nanomesh.devices.world`) for these steps."""
    readings = ", ".join(f"{{at = {t:.1f}, spo2 = {s}, pulse = {p}}}" for t, s, p in vitals)
    celsius = ", ".join(f"{{at = {t:.1f}, celsius = {c}}}" for t, c in temps)
    return ('description = "nanomesh demo patient: the patient\'s vitals over time"\n\n'
            f'[[oximeter]]\naddress = "{OXIMETER}"\nreadings = [{readings}]\n\n'
            f'[[thermometer]]\nid = "{THERMOMETER}"\nreadings = [{celsius}]\n')


@dataclass
class _PatientDemo:
    dir: Path
    base_ip: str
    say: Callable[[str], None]
    started: float = field(default_factory=time.monotonic)
    world_start: float = field(default_factory=time.time)
    peers: dict[str, lab.LabPeer] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    token: str = ""
    vitals: list[tuple[float, int, int]] = field(default_factory=lambda: [(0.0, 97, 72)])
    temps: list[tuple[float, float]] = field(default_factory=lambda: [(0.0, 36.8)])
    hops: list[tuple[str, float]] = field(default_factory=list)
    last_error: str = ""
    """The last failed service call, for a timeout's message."""

    # -------------------------------------------------------------- small tools

    def t(self) -> float:
        return time.monotonic() - self.started

    def log(self, text: str, since: float | None = None) -> None:
        hop = f" (+{time.monotonic() - since:6.3f}s)" if since is not None else ""
        self.say(f"[{self.t():7.3f}s]{hop} {text}")

    def wait(self, what: str, check: Callable[[], T | None],
             timeout: float = STEP_TIMEOUT) -> T:
        return wait_for(what, check, timeout, self.hint, POLL_PERIOD)

    def hint(self) -> str:
        last = f"the last failed call: {self.last_error}; " if self.last_error else ""
        return (f"{last}the peers' logs are {self.dir}/NAME.log, the services' "
                f"{self.dir}/NAME/logs/")

    @property
    def api(self) -> str:
        return self.peers["hospital"].api

    def call(self, service: str, path: str) -> Any:
        """A service's JSON answer through the hospital peer, None if it fails."""
        from nanomesh.errors import NanomeshError
        from nanomesh.sdk.client import call_sync

        try:
            return call_sync(service, path, peer=self.api, timeout=REQUEST_TIMEOUT, retries=0,
                             key_file=self.dir / "cluster.key").json()
        except (NanomeshError, OSError, ValueError) as exc:
            self.last_error = f"calling {service}/{path}: {exc}"
            return None

    # -------------------------------------------------------------- the world

    def write_world(self) -> None:
        path = self.dir / "world.toml"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(world_toml(self.vitals, self.temps))
        tmp.replace(path)  # a simulator never reads half a file

    def change_world(self, spo2: int, pulse: int, celsius: float, why: str) -> None:
        at = time.time() - self.world_start + 0.5
        self.vitals.append((at, spo2, pulse))
        self.temps.append((at, celsius))
        self.write_world()
        self.log(f"world: {why}: SpO2 {spo2} %, pulse {pulse}/min, {celsius} °C")

    # -------------------------------------------------------------- peers

    def prepare_dir(self) -> None:
        ips = [ip_at(self.base_ip, i) for i in range(4)]
        busy = [ip for ip in ips if answers(ip, DEFAULT_API_PORT)
                or answers(ip, DEFAULT_GOSSIP_PORT)]
        if busy:
            raise DemoError(f"something already runs on {', '.join(busy)}; choose other "
                            "addresses with --base-ip, or stop it first")
        if self.dir.exists():
            if any(lab.alive(p.pid) for p in lab.load_state(self.dir)):
                raise DemoError(f"peers of an earlier demo still run from {self.dir}; stop "
                                f"them with `nanomesh lab down --dir {self.dir}`")
            if not (self.dir / MARKER).exists() and any(self.dir.iterdir()):
                raise DemoError(f"{self.dir} exists and is not a demo directory; choose "
                                "another --dir")
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        (self.dir / MARKER).write_text("created by `nanomesh demo patient`\n")
        (self.dir / "cluster.key").write_text(generate_key() + "\n")
        (self.dir / "cluster.key").chmod(0o600)
        self.write_world()

    def peer_config(self, name: str) -> Path:
        devices = ('[[devices]]\ntype = "display"\n' if name == "hospital"
                   else "\n".join(PATIENT_DEVICES))
        path = self.dir / f"{name}.toml"
        path.write_text(f'[peer]\nname = "{name}"\nlabels = {{ place = "{name}" }}\n\n'
                        + devices)
        return path

    def start_peer(self, name: str, index: int) -> lab.LabPeer:
        seeds = [f"{p.ip}:{p.gossip_port}" for p in self.peers.values()]
        env = {"NANOMESH_DEVICES": "sim", ENV_WORLD: str(self.dir / "world.toml"),
               ENV_START: repr(self.world_start),
               "PATIENT_OUTBOX_DIR": str(self.dir / name / "outbox")}
        peer, proc = lab.spawn_peer(name, ip_at(self.base_ip, index), self.dir, seeds, "local",
                                    self.dir / "cluster.key", config=self.peer_config(name),
                                    env=env)
        self.peers[name], self.procs[name] = peer, proc
        lab.save_state(self.dir, list(self.peers.values()), "local")
        lab.wait_converged(list(self.peers.values()), len(self.peers), self.procs)
        return peer

    def stop_peer(self, name: str) -> None:
        """A graceful leave (SIGTERM); SIGKILL after lab.STOP_TIMEOUT."""
        proc = self.procs.pop(name)
        self.peers.pop(name)
        lab.save_state(self.dir, list(self.peers.values()), "local")
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(lab.STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop_all(self) -> None:
        for name in list(self.procs):
            with contextlib.suppress(ProcessLookupError):
                self.procs[name].send_signal(signal.SIGTERM)
        deadline = time.monotonic() + lab.STOP_TIMEOUT
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
        (self.dir / lab.STATE_FILE).unlink(missing_ok=True)

    # -------------------------------------------------------------- steps

    def start_mesh(self) -> None:
        self.log(f"starting the hospital server and the patient's home peer on "
                 f"{ip_at(self.base_ip, 0)}-{ip_at(self.base_ip, 1)} (simulated hardware)")
        hospital = self.start_peer("hospital", 0)
        lab.wait_bootstrapped(hospital, self.dir / "hospital", self.procs)
        self.start_peer("home", 1)
        self.read_token("hospital")
        self.log(f"mesh up: hospital + home; home's profile shows {self.devices_of('home')}")

    def read_token(self, founder: str) -> None:
        """The management token, once the founder has committed it."""
        token_file = self.dir / founder / TOKEN_FILE
        self.token = self.wait("the management token", lambda: read_token_file(token_file)
                               if token_file.exists() else None)

    def devices_of(self, peer: str) -> str:
        """A peer's profile devices with their backends, as text."""
        me = get_json(self.peers[peer].api, "/v1/self", timeout=REQUEST_TIMEOUT)
        return ", ".join(f"{d['type']} ({d.get('backend', d['driver'])})"
                         for d in me["profile"]["devices"])

    def deploy_all(self, services_dir: Path, names: tuple[str, ...],
                   adapt: Callable[[str, dict[str, Any]], None]) -> None:
        """Upload and deploy each service folder, its manifest changed by
        ``adapt(name, raw)`` first (the demo's timings, labels)."""
        from nanomesh.runtime.manifest import load_manifest

        for name in names:
            folder = services_dir / name
            load_manifest(folder)
            with (folder / "nanoservice.toml").open("rb") as f:
                raw = tomllib.load(f)
            adapt(name, raw)
            raw["bundle"] = upload_bundle(folder, self.api, self.token)
            self.wait(f"the mesh to accept {name}", functools.partial(self._post, raw))

    def deploy(self) -> None:
        def adapt(name: str, raw: dict[str, Any]) -> None:
            if "ALERT_PERIOD_S" in raw["run"].get("env", {}):
                raw["run"]["env"]["ALERT_PERIOD_S"] = f"{ALERT_PERIOD_S:g}"

        self.deploy_all(SERVICES_DIR, SERVICES, adapt)
        placed = self.wait("every service running", lambda: self.running_on(
            {"dd": "hospital", **{s: "home" for s in DEVICE_BOUND}}))
        self.log("deployed " + ", ".join(f"{s} on {p}" for s, p in sorted(placed.items())))
        pom = self.wait("vitals from home", lambda: self.vitals_from("home"))
        self.log(f"display shows vitals from home: SpO2 {pom['spo2']} %, pulse "
                 f"{pom['pulse']}/min")

    def _post(self, raw: Mapping[str, Any]) -> bool | None:
        try:
            request_json("POST", self.api, "/v1/services", dict(raw), self.token, timeout=10.0)
            return True
        except ApiError as exc:
            if exc.status in (503, 504):
                return None
            raise DemoError(f"deploying {raw['name']} failed: {exc.operator_message()}") from None

    def placement(self) -> dict[str, tuple[str, str]]:
        """service -> (peer, state) of its instance 0."""
        pl = get_json(self.api, "/v1/placement", timeout=REQUEST_TIMEOUT)
        return {i["instance"].split("/")[0]: (i["peer"], i["state"]) for i in pl["instances"]}

    def running_on(self, want: Mapping[str, str]) -> dict[str, str] | None:
        where = self.placement()
        ok = all(where.get(s) == (p, "running") for s, p in want.items())
        return dict(want) if ok else None

    def vitals_from(self, place: str) -> dict[str, Any] | None:
        """pom's latest reading on the display, if it came from ``place``'s peer."""
        shown = self.call("dd", "display")
        pom = (shown or {}).get("vitals", {}).get("pom")
        return pom if pom and pom.get("host") == self.peers[place].ip else None

    def hop(self, src: str, dst: str, index: int) -> None:
        t0 = time.monotonic()
        self.say("")
        self.log(f"the patient leaves the {src}: the devices now reach the {dst}")
        self.start_peer(dst, index)
        self.log(f"{dst} joined the mesh (its profile offers the patient's devices)", t0)
        self.stop_peer(src)
        self.log(f"{src} left the mesh (graceful leave: its instances stopped)", t0)
        pending = set(DEVICE_BOUND)
        while pending:
            if time.monotonic() - t0 > STEP_TIMEOUT:
                raise DemoError(f"timed out: {', '.join(sorted(pending))} not running on "
                                f"{dst} {STEP_TIMEOUT:.0f} s after the hop")
            with contextlib.suppress(ApiError):
                where = self.placement()
                for s in sorted(pending):
                    if where.get(s) == (dst, "running"):
                        pending.discard(s)
                        self.log(f"{s} placed on {dst} (placement says running; the "
                                 "process still has to start)", t0)
            time.sleep(POLL_PERIOD)
        pom = self.wait(f"vitals from the {dst}", lambda: self.vitals_from(dst))
        self.log(f"display shows vitals from the {dst}: SpO2 {pom['spo2']} %, pulse "
                 f"{pom['pulse']}/min", t0)
        self.hops.append((f"{src} -> {dst}", time.monotonic() - t0))

    def alerts(self, want: Callable[[list[dict[str, Any]]], bool], what: str
               ) -> list[dict[str, Any]]:
        def check() -> list[dict[str, Any]] | None:
            shown = self.call("dd", "display")
            got = (shown or {}).get("alerts")
            return got if isinstance(got, list) and want(got) else None
        return self.wait(what, check)

    def valve(self, on: bool) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            state = self.call("oc", "oxygen")
            return state if isinstance(state, dict) and state.get("on") is on else None
        return self.wait(f"the oxygen valve {'open' if on else 'closed'}", check)

    def set_mode(self, service: str, verb: str) -> None:
        """``idle`` (stop its instances) or ``activate`` a service."""
        def post() -> bool | None:
            try:
                request_json("POST", self.api, f"/v1/services/{service}/{verb}",
                             token=self.token, timeout=10.0)
                return True
            except ApiError as exc:
                if exc.status in (503, 504):
                    return None
                raise DemoError(f"{verb} {service} failed: {exc.operator_message()}") from None
        self.wait(f"the mesh to {verb} {service}", post)

    def pending(self) -> dict[str, int] | None:
        """Alerts pom and bot keep on disk, once both have one."""
        counts = {s: (self.call(s, "status") or {}).get("alerts_pending") for s in ("pom", "bot")}
        return ({s: int(n) for s, n in counts.items() if n is not None}
                if all(isinstance(n, int) and n >= 1 for n in counts.values()) else None)

    def deteriorate(self) -> None:
        """In the ambulance: the display is unreachable when the vitals get
        worse; the alerts wait on disk and arrive when it is back."""
        t0 = time.monotonic()
        self.set_mode("dd", "idle")
        self.wait("the display to be unreachable",
                  lambda: True if self.call("dd", "health") is None else None)
        self.log("the ambulance loses its link to the hospital display (dd idled: its "
                 "instance stopped)", t0)
        self.change_world(86, 124, 38.6, "the patient's SpO2 drops and fever rises")
        kept = self.wait("the alerts kept on disk", self.pending)
        self.log("alerts raised while the display is unreachable, kept on disk: "
                 + ", ".join(f"{s} {n} pending" for s, n in sorted(kept.items())), t0)
        state = self.valve(True)
        self.log(f"oxygen valve OPEN (oc on the {self.placement()['oc'][0]}, BCM "
                 f"{state['pin']} via {state['backend']}, pin level {state['level']})", t0)
        self.set_mode("dd", "activate")
        self.log("the link is back (dd activated)", t0)
        got = self.alerts(lambda a: {("pom", "spo2"), ("bot", "celsius")} <= {
            (x["source"], x["metric"]) for x in a if x["event"] == "raised"},
            "the SpO2 and fever alerts on the display")
        for a in got:
            if a["event"] == "raised":
                self.log(f"ALERT on the display: {a['source']} {a['metric']} {a['kind']} "
                         f"({a['value']}), beyond its threshold for {a['at'] - a['since']:.1f} "
                         f"s, delivered {a['received'] - a['at']:.1f} s after it was raised", t0)

    def recover(self) -> None:
        t0 = time.monotonic()
        self.change_world(95, 88, 37.4, "in the ward, on oxygen, the patient recovers")
        self.alerts(lambda a: any(x["event"] == "cleared" and x["metric"] == "spo2"
                                  for x in a), "the SpO2 alert to clear")
        self.log("SpO2 alert cleared on the display", t0)
        self.valve(False)
        self.log("oxygen valve closed", t0)


def open_story(what: str, services: Path, default_name: str, demo_dir: Path | None,
               say: Callable[[str], None] | None) -> tuple[Callable[[str], None], Path]:
    """What a story demo starts with: where it narrates, and its directory;
    DemoError when its services are not there (not a source checkout)."""
    out = say or (lambda text: print(text, flush=True))
    if not services.is_dir():
        raise DemoError(f"the {what} services are not in {services}: run the demo from a "
                        "source checkout of nanomesh")
    return out, (demo_dir or default_dir().with_name(default_name)).expanduser().absolute()


def patient(demo_dir: Path | None = None, base_ip: str = "127.0.0.2", keep: bool = False,
            say: Callable[[str], None] | None = None) -> int:
    """Run the patient demo (module docstring); 0 on success. DemoError when
    a step fails or times out (the directory is kept for its logs)."""
    out, folder = open_story("patient", SERVICES_DIR, "demo-patient", demo_dir, say)
    demo = _PatientDemo(folder, base_ip, out)
    out(f"nanomesh demo patient: directory {demo.dir}, alert period {ALERT_PERIOD_S:g} s "
        "(the research: 30 min)")
    demo.prepare_dir()

    def story() -> None:
        demo.start_mesh()
        demo.deploy()
        demo.hop("home", "ambulance", 2)
        demo.deteriorate()
        demo.hop("ambulance", "ward", 3)
        demo.recover()
        out("\nsummary (seconds from the hop's start to the first vitals from the new peer):")
        for what, seconds in demo.hops:
            out(f"  {what:<20} {seconds:7.3f}")

    return run_story(demo, story, keep)


def run_story(demo: _PatientDemo, story: Callable[[], None], keep: bool) -> int:
    """Run ``story`` on the demo's mesh, then stop every peer (also on an
    error or Ctrl-C) and remove the directory, unless ``keep`` or the story
    failed (its logs are there); 0 when the story ran through, 130 on Ctrl-C."""
    outcome = "failed"
    try:
        story()
        outcome = "ok"
    except KeyboardInterrupt:
        outcome = "interrupted"
        raise
    finally:
        demo.say("\nstopping the mesh...")
        demo.stop_all()
        if keep or outcome == "failed":
            demo.say(f"kept {demo.dir} (logs: NAME.log, NAME/logs/)")
        else:
            shutil.rmtree(demo.dir, ignore_errors=True)
            demo.say(f"removed {demo.dir}")
    return 0 if outcome == "ok" else 130
