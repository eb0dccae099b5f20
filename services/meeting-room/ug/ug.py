"""ug: user guidance, lighting the LEDs along the corridor towards the room.

Bound to a peer that has ``led`` devices (``requires``). Two kinds of LED
controller, chosen from the peer's profile when guidance starts:

- **leaves** (the research's way: its LED controllers were ATmega boards
  carrying a mobile agent): microcontroller leaves behind this peer
  (``firmware/``) whose registered devices include an ``led``. UG starts a
  mobile agent on the peer's gateway (``POST leaf/agents`` over the gateway
  link, with the instance's service keys): the agent visits the leaves in
  name order, and on each sets the LED, reads it back (the agent's output),
  waits ``STEP_S`` and clears it; a
  dead leaf is skipped (``on_dead = "skip"``). When an agent has walked its
  path, UG starts the next, until stopped;
- **GPIO** LEDs on the peer itself (``[[devices]] type = "led"`` with a
  ``pin``), through gpiozero (mock pins off a Pi), lit one after the other in
  their ``[[devices]]`` order, each for ``STEP_S``, over and over.

Leaves win when both exist. Guidance ends when the MCS stops it (the guest
reached the door) or after ``MAX_GUIDE_S``.

Routes: POST guide {"visit", "person", "room"} -> {"ok", "leds", "detail"};
POST stop {"visit"}; GET leds (mode, pins and levels or the leaves' path and
the last agent, the visit guided); GET health.
"""

import json
import logging
import os
import time

import trio

from nanomesh.devices.gpio import Gpio
from nanomesh.devices.peer import peer_devices
from nanomesh.errors import NanomeshError
from nanomesh.sdk.client import DEFAULT_COAP_PORT
from nanomesh.sdk.service import Call, NanoService, ServiceError
from nanomesh.transport.rpc import zmq_call
from nanomesh.wire.service_traffic import Request

log = logging.getLogger("ug")
svc = NanoService()
STEP_S = float(os.environ.get("STEP_S", "2.5"))
MAX_GUIDE_S = float(os.environ.get("MAX_GUIDE_S", "300"))
"""Seconds the LEDs guide at most without a stop (a guest who turned back)."""
AGENT_POLL_S = 0.3
"""Seconds between two looks at the travelling agent."""
LINK_TIMEOUT = 5.0
FINISHED_KEPT = 5
"""Finished agents shown by GET leds (the newest)."""
state: dict = {"mode": None, "gpio": None, "leds": [], "pins": [], "path": [],
               "resource": None, "agent": None, "agents": 0, "finished": [], "visit": None,
               "person": None, "lit": None, "started": None, "scope": None}


async def controllers() -> int:
    """Find the LED controllers (leaves first, module docstring); how many."""
    devices = await peer_devices()
    on_leaves = sorted((d for d in devices if d.get("source") == "leaf"
                        and d.get("type") == "led" and d.get("leaf")), key=lambda d: d["leaf"])
    if on_leaves:
        state.update(mode="leaf-agents", path=[d["leaf"] for d in on_leaves],
                     resource=on_leaves[0].get("resource", "led"))
        return len(on_leaves)
    if state["gpio"] is None:
        pins = [int(d["pin"]) for d in devices if d.get("type") == "led" and "pin" in d
                and d.get("source") != "leaf"]
        if not pins:
            raise ServiceError(503, "this peer has no LEDs (no leaf with an led, no "
                               "[[devices]] type = \"led\" with a pin)")
        gpio = Gpio()
        state.update(gpio=gpio, pins=pins, leds=[gpio.led(p) for p in pins])
        log.info("ug: %d LEDs on BCM %s through %s", len(pins), pins, gpio.name)
    state["mode"] = "gpio"
    return len(state["leds"])


async def link(method: str, path: str, body: object = None) -> dict:
    """A request to this peer's gateway over its link (the instance's keys)."""
    address = f"{os.environ.get('NANOMESH_HOST', '127.0.0.1')}:{DEFAULT_COAP_PORT}"
    payload = json.dumps(body).encode() if body is not None else b""
    keys = svc.env.keys if svc.env is not None else None  # the instance's service keys
    reply = await zmq_call(address, Request(method, path, payload), LINK_TIMEOUT, keys=keys)
    if reply.status >= 300:
        raise NanomeshError(f"{method} {path}: {reply.status} {reply.error}")
    return json.loads(reply.body)


async def start_agent() -> str:
    """A mobile agent along the leaves: LED on, STEP_S, LED off on each."""
    res = state["resource"]
    # read: the LED's level goes into the agent's output, proof it was lit
    program = [["set", res, 1], ["read", res], ["wait", int(STEP_S * 1000)], ["set", res, 0]]
    started = await link("POST", "leaf/agents", {"path": state["path"], "prog": program,
                                                 "on_dead": "skip"})
    state["agents"] += 1
    state["agent"] = started
    return str(started["id"])


async def follow_agents(first: str) -> None:
    """Follow each agent to its end, then start the next along the path."""
    agent = first
    while True:
        while True:
            await trio.sleep(AGENT_POLL_S)
            with trio.move_on_after(LINK_TIMEOUT):
                try:
                    state["agent"] = {"id": agent, **await link("GET", f"leaf/agents/{agent}")}
                except NanomeshError as exc:
                    log.warning("following agent %s: %s", agent, exc)
            if state["agent"].get("phase") in ("done", "failed"):
                break
        log.info("agent %s %s: visited %s, skipped %s", agent, state["agent"].get("phase"),
                 state["agent"].get("visited"), state["agent"].get("skipped"))
        state["finished"] = [*state["finished"], state["agent"]][-FINISHED_KEPT:]
        agent = await start_agent()


async def light_in_turn() -> None:
    while True:
        for i, led in enumerate(state["leds"]):
            led.on()
            state["lit"] = i
            await trio.sleep(STEP_S)
            led.off()


async def guide(scope: trio.CancelScope, visit: int, first_agent: str | None) -> None:
    with scope:
        scope.deadline = trio.current_time() + MAX_GUIDE_S
        if first_agent is not None:
            await follow_agents(first_agent)
        else:
            await light_in_turn()
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
    async with trio.open_nursery() as nursery:
        state["nursery"] = nursery
        await trio.sleep_forever()


@svc.route("POST", "guide")
async def start(call: Call) -> dict:
    body = call.json()
    if not isinstance(body, dict) or not isinstance(body.get("visit"), int):
        raise ServiceError(400, 'body must be {"visit": n, "person": ..., "room": ...}')
    count = await controllers()
    nursery = state.get("nursery")
    if nursery is None:
        raise ServiceError(503, "starting up")
    stop()
    first = None
    if state["mode"] == "leaf-agents":
        try:
            first = await start_agent()
        except NanomeshError as exc:
            raise ServiceError(503, f"could not start the guidance agent: {exc}") from None
        detail = (f"a mobile agent along leaves {', '.join(state['path'])}, "
                  f"{STEP_S:g} s each")
    else:
        detail = f"{count} LEDs lit in turn, {STEP_S:g} s each"
    scope = trio.CancelScope()
    state.update(scope=scope, visit=body["visit"], person=body.get("person"),
                 started=time.time())
    nursery.start_soon(guide, scope, body["visit"], first)
    log.info("guiding %s to %s (visit %d): %s", body.get("person"), body.get("room"),
             body["visit"], detail)
    return {"ok": True, "leds": count, "detail": detail}


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
    return {"mode": state["mode"], "pins": state["pins"], "levels": levels,
            "lit": state["lit"], "path": state["path"], "agent": state["agent"],
            "agents": state["agents"], "finished": state["finished"],
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
