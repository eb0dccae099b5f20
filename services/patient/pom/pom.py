"""pom: SpO2 and pulse rate from the BerryMed pulse oximeter (BLE).

Bound to the peer that has the oximeter (``requires.capabilities``); the
oximeter's BLE address comes from that peer's ``[[devices]]`` entry. Each
reading goes to the alert rule (`nanomesh.devices.alert_core`); an alert is
kept on disk and sent to ``dd`` (retried until it gets there), and a low SpO2
alert opens the oxygen valve through ``oc`` (closed again when it clears).

Routes: GET vitals (the latest reading), GET status (device, backend,
alerts pending), GET health.

Environment (defaults in the manifest): ALERT_PERIOD_S, seconds a value must
stay beyond its threshold (the research: 1800); PATIENT_OUTBOX_DIR, where
pending alerts are kept.
"""

import logging
import os
import time
from pathlib import Path

import trio

from nanomesh.devices import simworld
from nanomesh.devices.alert_core import AlertCleared, AlertRaised, Rule
from nanomesh.devices.backend import BLE, select
from nanomesh.devices.berrymed import OximeterReading
from nanomesh.devices.ble import PulseOximeter
from nanomesh.devices.monitor import VitalsMonitor
from nanomesh.devices.peer import find_device, peer_devices
from nanomesh.errors import NanomeshError
from nanomesh.sdk.service import Call, NanoService

log = logging.getLogger("pom")
svc = NanoService()
PERIOD = float(os.environ.get("ALERT_PERIOD_S", "1800"))
RULES = [
    Rule("spo2", low=90, period=PERIOD),          # hypoxaemia: below 90 %
    Rule("pulse", low=40, high=130, period=PERIOD),
]
state: dict = {"reading": None, "at": None, "device": None, "backend": None}
outbox_dir = Path(os.environ.get("PATIENT_OUTBOX_DIR") or Path.home() / ".nanomesh-outbox")
instance = os.environ.get("NANOMESH_INSTANCE", "pom/0").replace("/", "-")
monitor = VitalsMonitor("pom", RULES, outbox_dir / f"{instance}.json")


async def send_to_dd(item: dict) -> None:
    await svc.call("dd", "alerts", item, method="POST", retries=0)


async def oxygen(on: bool) -> None:
    try:
        await svc.call("oc", "oxygen", {"on": on, "reason": "spo2 alert"}, method="POST")
    except NanomeshError as exc:
        log.warning("could not switch oxygen %s: %s", "on" if on else "off", exc)


@svc.task
async def acquire() -> None:
    device = find_device(await peer_devices(), "pulse-oximeter", "address")
    backend = select(BLE)
    sim = simworld.from_env() if backend.simulated else None
    oximeter = PulseOximeter(device["address"], backend, sim)
    state.update(device=device["address"], backend=backend.name)
    log.info("pom: oximeter %s through %s", device["address"], backend.name)

    async with trio.open_nursery() as nursery:
        # A low SpO2 alert raised before the move: this peer's valve starts closed.
        if "spo2" in await monitor.take_over(svc.load_state):
            nursery.start_soon(oxygen, True)
        nursery.start_soon(monitor.deliver, send_to_dd)

        def on_reading(r: OximeterReading) -> None:
            state.update(reading=r, at=time.time())
            changed = False
            for metric, value in (("spo2", r.spo2), ("pulse", r.pulse)):
                for effect in monitor.observe(metric, value if r.valid else None):
                    changed = True
                    if metric == "spo2" and isinstance(effect, AlertRaised | AlertCleared):
                        nursery.start_soon(oxygen, isinstance(effect, AlertRaised))
            if changed:
                nursery.start_soon(monitor.save, svc.save_state)

        nursery.start_soon(oximeter.run, on_reading)
        while True:  # the display gets the vitals every second, best effort
            await trio.sleep(1.0)
            r = state["reading"]
            if r is not None:
                with trio.move_on_after(2):
                    try:
                        await svc.call("dd", "readings", {
                            "source": "pom", "host": os.environ.get("NANOMESH_HOST"),
                            "spo2": r.spo2, "pulse": r.pulse,
                            "finger": r.finger, "at": state["at"]}, method="POST", retries=0)
                    except NanomeshError as exc:  # the display is away: alerts are kept
                        log.info("display unreachable: %s", exc)


@svc.route("GET", "vitals")
async def vitals(call: Call) -> dict:
    r = state["reading"]
    if r is None:
        return {"spo2": None, "pulse": None, "at": None}
    return {"spo2": r.spo2, "pulse": r.pulse, "finger": r.finger, "at": state["at"]}


@svc.route("GET", "status")
async def status(call: Call) -> dict:
    return {"device": state["device"], "backend": state["backend"], **monitor.status()}


@svc.route("GET", "health")
async def health(call: Call) -> dict:
    return {"status": "ok"}


if __name__ == "__main__":
    svc.run()
