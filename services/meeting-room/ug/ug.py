"""ug: user guidance, lighting the LEDs along the corridor towards the room.

Bound to a peer whose ``[[devices]]`` declare ``led`` entries (the corridor's
LED controller: a Raspberry Pi with LEDs on GPIO pins, driven through
gpiozero; gpiozero's mock pins off a Pi). The LEDs are lit one after the
other in their ``[[devices]]`` order, each for ``STEP_S`` (the research's
mobile agent: 2.5 s per LED controller), over and over, until the MCS stops
the guidance (the guest reached the door) or ``MAX_GUIDE_S`` passes.

Not (yet) through the microcontroller leaves' mobile agents (``firmware/``):
the instance's service keypair opens its peer's gateway link, where
``POST leaf/agents`` starts one; driving leaves that way is a follow-up.

Routes: POST guide {"visit", "person", "room"} -> {"ok", "leds", "detail"};
POST stop {"visit"}; GET leds (each LED's pin and level, the visit guided);
GET health.
"""

import logging
import os
import time

import trio

from nanomesh.devices.gpio import Gpio
from nanomesh.devices.peer import peer_devices
from nanomesh.sdk.service import Call, NanoService, ServiceError

log = logging.getLogger("ug")
svc = NanoService()
STEP_S = float(os.environ.get("STEP_S", "2.5"))
MAX_GUIDE_S = float(os.environ.get("MAX_GUIDE_S", "300"))
"""Seconds the LEDs guide at most without a stop (a guest who turned back)."""
state: dict = {"gpio": None, "leds": [], "pins": [], "visit": None, "person": None,
               "lit": None, "started": None, "scope": None}


async def leds() -> list:
    if state["gpio"] is None:
        pins = [int(d["pin"]) for d in await peer_devices() if d.get("type") == "led"
                and "pin" in d]
        if not pins:
            raise ServiceError(503, "this peer has no LEDs ([[devices]] type = \"led\")")
        gpio = Gpio()
        state.update(gpio=gpio, pins=pins, leds=[gpio.led(p) for p in pins])
        log.info("ug: %d LEDs on BCM %s through %s", len(pins), pins, gpio.name)
    return state["leds"]


async def guide(scope: trio.CancelScope, visit: int) -> None:
    with scope:
        scope.deadline = trio.current_time() + MAX_GUIDE_S
        while True:
            for i, led in enumerate(state["leds"]):
                led.on()
                state["lit"] = i
                await trio.sleep(STEP_S)
                led.off()
    for led in state["leds"]:
        led.off()
    state["lit"] = None
    log.info("guidance for visit %s ended", visit)


def stop() -> None:
    if state["scope"] is not None:
        state["scope"].cancel()
        state["scope"] = None


@svc.task
async def runner() -> None:
    await leds()  # fail early (and visibly) when the peer has no LEDs
    async with trio.open_nursery() as nursery:
        state["nursery"] = nursery
        await trio.sleep_forever()


@svc.route("POST", "guide")
async def start(call: Call) -> dict:
    body = call.json()
    if not isinstance(body, dict) or not isinstance(body.get("visit"), int):
        raise ServiceError(400, 'body must be {"visit": n, "person": ..., "room": ...}')
    await leds()
    nursery = state.get("nursery")
    if nursery is None:
        raise ServiceError(503, "starting up")
    stop()
    scope = trio.CancelScope()
    state.update(scope=scope, visit=body["visit"], person=body.get("person"),
                 started=time.time())
    nursery.start_soon(guide, scope, body["visit"])
    log.info("guiding %s to %s (visit %d) along %d LEDs", body.get("person"),
             body.get("room"), body["visit"], len(state["leds"]))
    return {"ok": True, "leds": len(state["leds"]),
            "detail": f"{len(state['leds'])} LEDs lit in turn, {STEP_S:g} s each"}


@svc.route("POST", "stop")
async def stop_route(call: Call) -> dict:
    body = call.json()
    visit = body.get("visit") if isinstance(body, dict) else None
    if visit is None or visit == state["visit"]:
        stop()
    return {"ok": True}


@svc.route("GET", "leds")
async def show(call: Call) -> dict:
    gpio = state["gpio"]
    levels = ([gpio.level(p) for p in state["pins"]]
              if gpio is not None and gpio.backend.simulated else None)
    return {"pins": state["pins"], "levels": levels, "lit": state["lit"],
            "guiding": state["scope"] is not None, "visit": state["visit"],
            "backend": gpio.name if gpio is not None else None}


@svc.on_stop
async def dark() -> None:
    for led in state["leds"]:
        led.off()


@svc.route("GET", "health")
async def health(call: Call) -> dict:
    return {"status": "ok"}


if __name__ == "__main__":
    svc.run()
