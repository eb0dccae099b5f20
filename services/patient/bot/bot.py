"""bot: body temperature from a DS18B20 on 1-Wire.

Bound to the peer with the thermometer; its 1-Wire id (``28-...``) comes
from that peer's ``[[devices]]`` entry. The same reader
(`nanomesh.devices.w1.W1Thermometer`) reads ``/sys/bus/w1/devices`` on a Pi,
or a fake sysfs tree that this process's world simulator writes. Readings go
to the alert rule (fever above 38 °C, hypothermia below 35 °C, for
ALERT_PERIOD_S) and, best effort, to ``dd``; alerts are kept on disk and
delivered to ``dd`` when it can be reached.

Routes: GET temperature, GET status, GET health.
"""

import logging
import os
import tempfile
import time
from pathlib import Path

import trio

from nanomesh.devices import simworld
from nanomesh.devices.alert_core import Rule
from nanomesh.devices.backend import W1, select
from nanomesh.devices.monitor import VitalsMonitor
from nanomesh.devices.peer import find_device, peer_devices
from nanomesh.devices.w1 import SYSFS_ROOT, W1Thermometer
from nanomesh.errors import NanomeshError
from nanomesh.sdk.service import Call, NanoService

log = logging.getLogger("bot")
svc = NanoService()
PERIOD = float(os.environ.get("ALERT_PERIOD_S", "1800"))
READ_PERIOD = float(os.environ.get("READ_PERIOD_S", "1"))
RULES = [Rule("celsius", low=35.0, high=38.0, period=PERIOD)]
state: dict = {"celsius": None, "at": None, "device": None, "backend": None, "error": None}
outbox_dir = Path(os.environ.get("PATIENT_OUTBOX_DIR") or Path.home() / ".nanomesh-outbox")
instance = os.environ.get("NANOMESH_INSTANCE", "bot/0").replace("/", "-")
monitor = VitalsMonitor("bot", RULES, outbox_dir / f"{instance}.json")


async def send_to_dd(item: dict) -> None:
    await svc.call("dd", "alerts", item, method="POST", retries=0)


@svc.task
async def acquire() -> None:
    device = find_device(await peer_devices(), "body-temperature", "id")
    backend = select(W1)
    state.update(device=device["id"], backend=backend.name)
    async with trio.open_nursery() as nursery:
        root = SYSFS_ROOT
        if backend.simulated:
            root = Path(tempfile.mkdtemp(prefix="w1-sim-"))
            tree = simworld.W1SimTree(root)
            sim = simworld.from_env()
            tree.update(sim.now())
            nursery.start_soon(lambda: simworld.run_world(sim, w1=tree))
        thermometer = W1Thermometer(device["id"], root)
        log.info("bot: DS18B20 %s under %s (%s)", device["id"], root, backend.name)
        await monitor.take_over(svc.load_state)
        nursery.start_soon(monitor.deliver, send_to_dd)
        while True:
            try:
                celsius = await trio.to_thread.run_sync(thermometer.read_celsius)
                state.update(celsius=celsius, at=time.time(), error=None)
            except (OSError, NanomeshError) as exc:  # unplugged, or a bad read
                celsius = None
                state.update(error=str(exc))
            if monitor.observe("celsius", celsius):
                nursery.start_soon(monitor.save, svc.save_state)
            if celsius is not None:
                with trio.move_on_after(2):
                    try:
                        await svc.call("dd", "readings", {"source": "bot", "celsius": celsius,
                                                          "at": state["at"]},
                                       method="POST", retries=0)
                    except NanomeshError as exc:  # the display is away: alerts are kept
                        log.info("display unreachable: %s", exc)
            await trio.sleep(READ_PERIOD)


@svc.route("GET", "temperature")
async def temperature(call: Call) -> dict:
    return {"celsius": state["celsius"], "at": state["at"], "error": state["error"]}


@svc.route("GET", "status")
async def status(call: Call) -> dict:
    return {"device": state["device"], "backend": state["backend"], **monitor.status()}


@svc.route("GET", "health")
async def health(call: Call) -> dict:
    return {"status": "ok"}


if __name__ == "__main__":
    svc.run()
