"""pd: presence detection, a PIR on a GPIO pin (the research: BCM 4).

Bound to peers whose ``[[devices]]`` declare a ``pir`` (``requires``); one
instance per such peer (``replicas = 2``, spread): PD1 at the corridor's
entrance, PD2 at the meeting room's door, told apart by the entry's ``id``
(``pd1``, ``pd2``), which is what the MCS is configured with. The PIR is read
through gpiozero (``MotionSensor``: real pins on a Pi, gpiozero's mock pins
driven by the simulated world elsewhere). Each rising edge (motion starts) is
posted to the MCS as ``{"pir": id, "at": unix seconds}``; the PIR module's own
hold time (2-3 s on an HC-SR501) keeps one passer-by from making many edges.

Routes: GET status (device, backend, motion, edges), GET health.
"""

import logging
import os
import time

import trio

from nanomesh.devices import simworld
from nanomesh.devices.gpio import Gpio
from nanomesh.devices.peer import find_device, peer_devices
from nanomesh.errors import NanomeshError
from nanomesh.sdk.service import Call, NanoService

log = logging.getLogger("pd")
svc = NanoService()
POLL_S = float(os.environ.get("PD_POLL_S", "0.05"))
"""Seconds between two looks at the sensor (gpiozero samples it at 20 Hz)."""
state: dict = {"id": None, "pin": None, "backend": None, "motion": False, "edges": 0,
               "last_edge": None}


async def notify(pir: str, at: float) -> None:
    try:
        await svc.call("mcs", "motion", {"pir": pir, "at": at}, method="POST", retries=3)
    except NanomeshError as exc:  # the MCS is away (moving): the next edge tries again
        log.warning("could not tell the MCS about motion at %s: %s", pir, exc)


@svc.task
async def watch() -> None:
    device = find_device(await peer_devices(), "pir", "pin")
    pir_id, pin = str(device.get("id") or "pd"), int(device["pin"])
    gpio = Gpio()
    sensor = gpio.motion_sensor(pin)
    state.update(id=pir_id, pin=pin, backend=gpio.name)
    log.info("pd: PIR %s on BCM %d through %s", pir_id, pin, gpio.name)
    async with trio.open_nursery() as nursery:
        if gpio.backend.simulated:  # the world drives the mock pin
            nursery.start_soon(lambda: simworld.run_world(simworld.from_env(), gpio=gpio,
                                                          pirs={pir_id: pin}))
        while True:
            now_motion = bool(sensor.motion_detected)
            if now_motion and not state["motion"]:
                state["edges"] += 1
                state["last_edge"] = time.time()
                log.info("motion at %s", pir_id)
                nursery.start_soon(notify, pir_id, state["last_edge"])
            state["motion"] = now_motion
            await trio.sleep(POLL_S)


@svc.route("GET", "status")
async def status(call: Call) -> dict:
    return dict(state)


@svc.route("GET", "health")
async def health(call: Call) -> dict:
    return {"status": "ok"}


if __name__ == "__main__":
    svc.run()
