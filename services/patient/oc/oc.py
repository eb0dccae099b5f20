"""oc: the oxygen controller, a relay that opens the oxygen valve.

Bound to the peer whose ``[[devices]]`` declares the ``oxygen-controller``
and its BCM ``pin``; driven through gpiozero (``OutputDevice``), real pins on
a Pi or gpiozero's mock pins elsewhere. The valve starts closed, and closes
when the service stops: a controller that is going away must not leave
oxygen flowing unattended.

Routes: GET oxygen ({"on": bool, "pin", "backend", "level"}: level is the
pin as a meter reads it), POST oxygen ({"on": bool}), GET health.
"""

import logging

from nanomesh.devices.gpio import Gpio
from nanomesh.devices.peer import find_device, peer_devices
from nanomesh.sdk.service import Call, NanoService, ServiceError

log = logging.getLogger("oc")
svc = NanoService()
state: dict = {"relay": None, "gpio": None, "pin": None, "changes": 0}


async def relay():
    if state["relay"] is None:
        device = find_device(await peer_devices(), "oxygen-controller", "pin")
        gpio = Gpio()
        state.update(relay=gpio.relay(int(device["pin"])), gpio=gpio, pin=int(device["pin"]))
        log.info("oc: relay on BCM %d through %s", state["pin"], gpio.name)
    return state["relay"]


def describe() -> dict:
    r, gpio = state["relay"], state["gpio"]
    level = gpio.level(state["pin"]) if gpio is not None and gpio.backend.simulated else None
    return {"on": bool(r.value) if r is not None else False, "pin": state["pin"],
            "backend": gpio.name if gpio is not None else None, "level": level,
            "changes": state["changes"]}


@svc.task
async def setup() -> None:
    await relay()  # fail early (and visibly) when the peer has no controller


@svc.route("GET", "oxygen")
async def get_oxygen(call: Call) -> dict:
    await relay()
    return describe()


@svc.route("POST", "oxygen")
async def set_oxygen(call: Call) -> dict:
    body = call.json() if call.body else None
    if not isinstance(body, dict) or not isinstance(body.get("on"), bool):
        raise ServiceError(400, 'body must be {"on": true|false}')
    r = await relay()
    if bool(r.value) != body["on"]:
        r.on() if body["on"] else r.off()
        state["changes"] += 1
        log.warning("oxygen valve %s (%s)", "OPEN" if body["on"] else "closed",
                    body.get("reason", "requested"))
    return describe()


@svc.on_stop
async def close_valve() -> None:
    if state["relay"] is not None:
        state["relay"].off()


@svc.route("GET", "health")
async def health(call: Call) -> dict:
    return {"status": "ok"}


if __name__ == "__main__":
    svc.run()
