"""`nanomesh demo meeting-room`: the research's smart meeting room on a local
mesh of real peers with simulated hardware (issue 10).

Four peers, each declaring its devices in ``[[devices]]``:

- ``entrance``: the corridor's entrance, PIR ``pd1`` (BCM 4), BLE radio
  ``bs1``, and the corridor's LEDs (BCM 17, 27, 22): hosts a ``pd``, a ``bs``
  and ``ug`` (the LEDs are on a peer: see ``services/meeting-room/ug``);
- ``room``: the meeting room's door, PIR ``pd2``, radio ``bs2``, the screen:
  hosts a ``pd``, a ``bs``, ``mrs``, and ``ae`` (pinned by a label);
- ``ctl-a``, ``ctl-b``: two small servers labelled ``role = controller``,
  either of which may host ``mcs``.

The demo fills the AE through its REST resources (rooms, persons, tags),
then scripts the world (the scenario file, re-read by the simulators when it
changes: who carries which tag near which radio, when each PIR sees motion)
and narrates, with the seconds since the demo started, each visit's phases
as the MCS logs them (its ``status``):

1. motion at the entrance with no tag near BS1: NOT_SCANNED;
2. a guest with an unknown tag: SCANNED, then NOT_AUTHENTICATED (ignored);
3. Bob, whose tag the AE knows: DETECTED -> SCANNED -> AUTHENTICATED ->
   GUIDED (the corridor's LEDs light in turn); then the peer hosting the MCS
   is SIGKILLed mid-meeting; the MCS starts on the other controller from its
   state blob and the visit goes on: Bob reaches the door, PD2 and BS2
   confirm his tag, PRESENTED, and the screen shows him;
4. Alice, guided, at the door without her tag reaching BS2 ("PD2 without
   BS2"): NOT_PRESENTED.

What is real: the peers, gossip, Raft, placement, the six service processes
and their calls, gpiozero's MotionSensor and LEDs, bleak's scanner, SQLite.
Simulated: the GPIO pins (gpiozero's MockFactory driven by the world) and
the radio (bleak's fake backend hearing the world's tags). Hardware times
that the simulation keeps: the PIR's hold time (the scenario's motion
spans, 2 s) and the BLE scan window (``SCAN_WINDOW_S``).
"""

from __future__ import annotations

import functools
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nanomesh.cli import lab
from nanomesh.cli.demo_patient import _PatientDemo, open_story, run_story
from nanomesh.transport.apiclient import get_json

SERVICES_DIR = Path(__file__).resolve().parents[2] / "services" / "meeting-room"
"""The services the demo deploys (a source checkout's ``services/meeting-room``)."""
SERVICES = ("ae", "mrs", "ug", "mcs", "pd", "bs")
"""Deploy order: the AE, screen and guidance before the MCS calls them, the
sensors last."""
PEERS = ("entrance", "room", "ctl-a", "ctl-b")
SCAN_WINDOW_S = 2.0
"""Seconds each BLE scan listens in the demo (the research: 5 s, its thesis 3 s)."""
LED_STEP_S = 1.0
"""Seconds each corridor LED stays lit in the demo (the research: 2.5 s)."""
PIR_HOLD_S = 2.0
"""Seconds a PIR's output stays high after motion (an HC-SR501: 2-3 s)."""
TAGS = {"bob": "b0b0b0b0-0000-4000-8000-000000000b0b",
        "alice": "a11ce000-0000-4000-8000-0000000a11ce",
        "mallory": "bad0bad0-0000-4000-8000-00000000bad0"}
"""The world's iBeacon tags; mallory's is unknown to the AE."""
DEVICES = {
    "entrance": ('[[devices]]\ntype = "pir"\nid = "pd1"\npin = 4\n\n'
                 '[[devices]]\ntype = "ble"\nid = "bs1"\n\n'
                 + "".join(f'[[devices]]\ntype = "led"\nid = "led-{i}"\npin = {p}\n\n'
                           for i, p in enumerate((17, 27, 22), 1))),
    "room": ('[[devices]]\ntype = "pir"\nid = "pd2"\npin = 4\n\n'
             '[[devices]]\ntype = "ble"\nid = "bs2"\n\n[[devices]]\ntype = "display"\n'),
}
LABELS = {"entrance": 'place = "entrance"', "room": 'place = "room"',
          "ctl-a": 'role = "controller"', "ctl-b": 'role = "controller"'}
PLACEMENT = {"ae": {"place": "room"}, "mcs": {"role": "controller"}}
"""Labels the demo adds to manifests: the AE stays with the room's peer, the
MCS on a controller (the peer the demo kills)."""
STEP_TIMEOUT = 60.0


@dataclass
class MeetingDemo(_PatientDemo):
    """The demo's steps; the mesh plumbing is the patient demo's."""

    motions: dict[str, list[tuple[float, float]]] = field(
        default_factory=lambda: {"pd1": [], "pd2": []})
    near: dict[str, list[tuple[float, str]]] = field(
        default_factory=lambda: {t: [(0.0, "")] for t in TAGS})
    seen: set[tuple[Any, Any, Any]] = field(default_factory=set)
    """Journal entries of the MCS already narrated (visit, phase, time): the
    journal keeps only the last 100."""
    timings: list[dict[str, Any]] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)
    """Peer names by IP (kept after a peer is killed), for the narration."""

    @property
    def api(self) -> str:
        return self.peers["entrance"].api

    def write_world(self) -> None:
        lines = ['description = "nanomesh demo meeting-room"\n']
        for pir, spans in self.motions.items():
            motion = ", ".join(f"{{from = {a:.2f}, to = {b:.2f}}}" for a, b in spans)
            lines.append(f'[[pir]]\nid = "{pir}"\nmotion = [{motion}]\n')
        for name, steps in self.near.items():
            near = ", ".join(f'{{at = {t:.2f}, radio = "{r}"}}' for t, r in steps)
            lines.append(f'[[tag]]\nuuid = "{TAGS[name]}"\nname = "{name}"\nnear = [{near}]\n')
        path = self.dir / "world.toml"
        tmp = path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines))
        tmp.replace(path)  # a simulator never reads half a file

    def world_now(self) -> float:
        return time.time() - self.world_start + 0.3

    def walk(self, who: str | None, radio: str, pir: str, why: str) -> float:
        """``who``'s tag near ``radio`` (None: nobody's), then motion at ``pir``;
        the world time (Unix) the motion starts."""
        at = self.world_now()
        if who is not None:
            self.near[who].append((at, radio))
        self.motions[pir].append((at + 0.2, at + 0.2 + PIR_HOLD_S))
        self.write_world()
        self.log(f"world: {why}")
        return self.world_start + at + 0.2

    def leave(self, who: str) -> None:
        self.near[who].append((self.world_now(), ""))
        self.write_world()

    def peer_config(self, name: str) -> Path:
        path = self.dir / f"{name}.toml"
        path.write_text(f'[peer]\nname = "{name}"\nlabels = {{ {LABELS[name]} }}\n\n'
                        + DEVICES.get(name, ""))
        return path

    # ------------------------------------------------------------ steps

    def start_mesh(self) -> None:
        self.log(f"starting 4 peers on {self.base_ip}.. (simulated hardware): "
                 + ", ".join(PEERS))
        first = self.start_peer(PEERS[0], 0)
        lab.wait_bootstrapped(first, self.dir / PEERS[0], self.procs)
        for i, name in enumerate(PEERS[1:], 1):
            self.start_peer(name, i)
        self.names = {p.ip: n for n, p in self.peers.items()}
        self.read_token(PEERS[0])
        self.log(f"mesh up; room's profile shows {self.devices_of('room')}")

    def deploy(self) -> None:
        def adapt(name: str, raw: dict[str, Any]) -> None:
            raw["run"].setdefault("env", {}).update({
                "ae": {"AE_DB": str(self.dir / "ae.sqlite")},
                "bs": {"SCAN_WINDOW_S": f"{SCAN_WINDOW_S:g}"},
                "ug": {"STEP_S": f"{LED_STEP_S:g}"}}.get(name, {}))
            if name in PLACEMENT:
                raw.setdefault("placement", {})["labels"] = PLACEMENT[name]

        self.deploy_all(SERVICES_DIR, SERVICES, adapt)
        placed = self.wait("every service running", self.all_running)
        self.log("deployed " + "; ".join(f"{s} on {', '.join(p)}" for s, p in
                                         sorted(placed.items())))

    def all_running(self) -> dict[str, list[str]] | None:
        pl = get_json(self.api, "/v1/placement", timeout=2.0)
        where: dict[str, list[str]] = {}
        for i in pl["instances"]:
            if i["state"] != "running":
                return None
            where.setdefault(i["instance"].split("/")[0], []).append(i["peer"])
        want = {"ae": 1, "mrs": 1, "ug": 1, "mcs": 1, "pd": 2, "bs": 2}
        return ({s: sorted(p) for s, p in where.items()}
                if {s: len(p) for s, p in where.items()} == want else None)

    def send(self, method: str, service: str, path: str, body: object) -> Any:
        """A POST or PUT through the entrance peer; its JSON answer, None if it failed."""
        from nanomesh.errors import NanomeshError
        from nanomesh.sdk.client import call_sync

        try:
            return call_sync(service, path, body, peer=self.api, method=method, timeout=3.0,
                             key_file=self.dir / "cluster.key").json()
        except (NanomeshError, OSError, ValueError) as exc:
            self.last_error = f"{method} {service}/{path}: {exc}"
            return None

    def store(self, resource: str, body: dict[str, Any]) -> Any:
        """POST on the AE's collection; a POST that ran but whose answer was
        lost is found by its id (a second POST would be refused: it exists)."""
        return (self.send("POST", "ae", resource, body)
                or self.call("ae", f"{resource}/{body['id']}"))

    def fill_ae(self) -> None:
        """The research's REST resources: POST on the collections, PUT and GET
        on an item, GET on a collection."""
        t0 = time.monotonic()
        items: list[tuple[str, dict[str, Any]]] = [
                 ("rooms", {"id": "aurora", "name": "Aurora (room 101)"}),
                 ("persons", {"id": "alice", "name": "alice", "room": None}),
                 ("persons", {"id": "bob", "name": "bob", "room": "aurora"}),
                 ("tags", {"id": TAGS["alice"], "person": "alice"}),
                 ("tags", {"id": TAGS["bob"], "person": "bob"})]
        for resource, body in items:
            self.wait(f"the AE to store {resource} {body['id']}",
                      functools.partial(self.store, resource, body))
        self.wait("the AE to update alice", functools.partial(
            self.send, "PUT", "ae", "persons/alice", {"name": "alice", "room": "aurora"}))
        alice = self.call("ae", "persons/alice") or {}
        tags = self.call("ae", "tags") or []
        self.log(f"AE (SQLite) knows {len(tags)} tags: "
                 + ", ".join(f"{t['id'][:8]}.. -> {t['person']}" for t in tags)
                 + f"; alice (PUT persons/alice) is invited to {alice.get('room')}", t0)

    def events_logged(self) -> None:
        """The AE's ``events`` hold every transition the MCS made (it posts
        them as it goes, best effort, so wait for the last ones)."""
        made = {(e["visit"], e["phase"]) for e in self.narrate()}

        def check() -> list[dict[str, Any]] | None:
            events = self.call("ae", "events")
            got = {(e["visit"], e["phase"]) for e in events or []}
            return events if events and made <= got else None

        events = self.wait("the AE to log every transition", check)
        phases = [e["phase"] for e in events]
        self.log(f"AE events (GET events): {len(events)} transitions logged, "
                 f"{phases.count('PRESENTED')} PRESENTED, "
                 f"{sum(p.startswith('NOT_') for p in phases)} NOT-states")

    def status(self) -> dict[str, Any] | None:
        s = self.call("mcs", "status")
        return s if isinstance(s, dict) else None

    def where(self, by: object) -> str:
        """``mcs/0@IP`` (how the MCS names itself) as ``mcs/0 on PEER``."""
        inst, _, ip = str(by).partition("@")
        return f"{inst} on {self.names.get(ip, ip)}"

    def narrate(self) -> list[dict[str, Any]]:
        """New journal entries of the MCS, logged; all of them returned."""
        s = self.status()
        journal = (s or {}).get("journal") or []
        for e in journal:
            key = (e.get("visit"), e.get("phase"), e.get("at"))
            if key in self.seen:
                continue
            self.seen.add(key)
            self.log(f"MCS visit {e['visit']}: {e['phase']:<17} {e['why']}  "
                     f"[{self.where(e.get('by'))}]")
        return journal

    def until_phase(self, visit: int, phases: tuple[str, ...],
                    timeout: float = STEP_TIMEOUT) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            for e in self.narrate():
                if e["visit"] == visit and e["phase"] in phases:
                    return e
            return None
        return self.wait(f"visit {visit} to reach {' or '.join(phases)}", check, timeout)

    def next_visit(self) -> int:
        s = self.wait("the MCS's status", self.status)
        return int(s["next_id"])

    def visit(self, who: str | None, why: str, end: tuple[str, ...]) -> tuple[int, float]:
        self.say("")
        v = self.next_visit()
        motion = self.walk(who, "bs1", "pd1", why)
        self.until_phase(v, end)
        return v, motion

    def no_tag(self) -> None:
        self.visit(None, "someone without a tag walks in at the entrance (PD1)",
                   ("NOT_SCANNED",))

    def unknown_tag(self) -> None:
        self.visit("mallory", "mallory, with a tag the AE does not know, walks in",
                   ("NOT_AUTHENTICATED",))
        self.leave("mallory")

    def bob_with_failover(self) -> None:
        v, motion = self.visit("bob", "bob walks in at the entrance with his tag",
                               ("GUIDED", "NOT_GUIDED"))
        detected = self.until_phase(v, ("DETECTED",))
        authenticated = self.until_phase(v, ("AUTHENTICATED",))
        scanned = self.until_phase(v, ("SCANNED",))
        self.timings.append({"visit": v, "detection_s": detected["at"] - motion,
                             "authentication_s": authenticated["at"] - detected["at"],
                             "scan_s": scanned["at"] - detected["at"],
                             "total_s": authenticated["at"] - motion})
        leds = self.wait("a corridor LED lit", lambda: led if (led := self.call("ug", "leds"))
                         and led.get("lit") is not None else None)
        self.log(f"UG: corridor LED {leds['lit'] + 1} of {len(leds['pins'])} lit (BCM "
                 f"{leds['pins'][leds['lit']]}, {leds['backend']}, levels {leds['levels']})")
        self.kill_mcs_host()
        self.until_phase(v, ("GUIDED",))  # narrated before; the new MCS resumes it
        self.walk("bob", "bs2", "pd2", "bob reaches the meeting room's door")
        self.until_phase(v, ("PRESENTED", "NOT_PRESENTED"))
        screen = self.wait("the screen to show bob", lambda: s if (s := self.call(
            "mrs", "screen")) and any(p["person"] == "bob" for p in s["present"]) else None)
        self.log(f"MRS screen in {screen['room']}: present "
                 f"{', '.join(p['person'] for p in screen['present'])}; {screen['content']}")
        leds = self.call("ug", "leds") or {}
        self.log(f"UG: guidance stopped (guiding {leds.get('guiding')}, LED levels "
                 f"{leds.get('levels')})")

    def kill_mcs_host(self) -> None:
        host = self.placement()["mcs"][0]
        t0 = time.monotonic()
        self.log(f"killing {host}, the peer hosting the MCS, with SIGKILL (mid-meeting: "
                 "bob is being guided)")
        proc = self.procs.pop(host)
        self.peers.pop(host)
        lab.save_state(self.dir, list(self.peers.values()), "local")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        other = self.wait("the MCS running on another peer", lambda: p if (
            p := self.placement().get("mcs")) and p[0] != host and p[1] == "running"
            else None, STEP_TIMEOUT)
        self.log(f"MCS placed on {other[0]}", t0)
        s = self.wait("the new MCS to answer", lambda: s if (s := self.status())
                      and s.get("resumed") else None)
        cur = s.get("current") or {}
        self.log(f"the new MCS ({self.where(s.get('instance'))}) resumed from its state "
                 f"blob: visit {cur.get('id')} in {cur.get('phase')} ({cur.get('person')} to "
                 f"{cur.get('room')})", t0)

    def pd2_without_bs2(self) -> None:
        v, _ = self.visit("alice", "alice walks in at the entrance with her tag",
                          ("GUIDED", "NOT_GUIDED"))
        self.leave("alice")  # her tag's battery dies on the way: BS2 will not hear it
        self.walk(None, "bs2", "pd2", "alice reaches the door, but her tag is silent")
        self.until_phase(v, ("NOT_PRESENTED", "PRESENTED"))


def meeting_room(demo_dir: Path | None = None, base_ip: str = "127.0.0.2",
                 keep: bool = False, say: Callable[[str], None] | None = None) -> int:
    """Run the meeting-room demo (module docstring); 0 on success. DemoError
    when a step fails or times out (the directory is kept for its logs)."""
    out, folder = open_story("meeting-room", SERVICES_DIR, "demo-meeting-room", demo_dir, say)
    demo = MeetingDemo(folder, base_ip, out)
    out(f"nanomesh demo meeting-room: directory {demo.dir}, BLE scan window "
        f"{SCAN_WINDOW_S:g} s, PIR hold {PIR_HOLD_S:g} s, {LED_STEP_S:g} s per LED")
    demo.prepare_dir()

    def story() -> None:
        demo.start_mesh()
        demo.deploy()
        demo.fill_ae()
        demo.no_tag()
        demo.unknown_tag()
        demo.bob_with_failover()
        demo.pd2_without_bs2()
        demo.events_logged()
        out("\nsummary (seconds; PIR hold and scan window are hardware, the rest software):")
        for t in demo.timings:
            out(f"  visit {t['visit']}: presence detection {t['detection_s']:.3f}, "
                f"BLE authentication {t['authentication_s']:.3f}, detection + "
                f"authentication {t['total_s']:.3f}")

    return run_story(demo, story, keep)
