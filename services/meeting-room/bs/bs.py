"""bs: the BLE scanner, listening for iBeacon tags when the MCS orders it.

Bound to peers whose ``[[devices]]`` declare a ``ble`` radio (one instance
per such peer: BS1 at the entrance, BS2 at the door, told apart by the
entry's ``id``). The MCS keeps the scan orders (`nanomesh.devices.meeting_core`,
``pending_scan``); each scanner asks for its own every ``ORDER_POLL_S``
(``GET mcs orders/<radio>``), scans for ``SCAN_WINDOW_S`` through bleak
(BlueZ on a Pi, a fake backend hearing the simulated world's tags elsewhere)
and posts the UUIDs heard, strongest first, with the order's visit number
(``POST mcs scanned``). Pulling the orders means a scanner needs no address
of the MCS's instance and keeps working when the MCS moves to another peer.

Routes: GET status (radio, backend, scans, last result), GET health.
Environment: SCAN_WINDOW_S (the research: 5 s, its thesis 3 s), ORDER_POLL_S.
"""

import logging
import os
import time

import trio

from nanomesh.devices import simworld
from nanomesh.devices.backend import BLE, select
from nanomesh.devices.ble import scan_tags
from nanomesh.devices.peer import find_device, peer_devices
from nanomesh.errors import NanomeshError
from nanomesh.sdk.service import Call, NanoService

log = logging.getLogger("bs")
svc = NanoService()
SCAN_WINDOW_S = float(os.environ.get("SCAN_WINDOW_S", "3"))
ORDER_POLL_S = float(os.environ.get("ORDER_POLL_S", "0.25"))
state: dict = {"radio": None, "backend": None, "scans": 0, "last": None}


@svc.task
async def serve_orders() -> None:
    radio = str(find_device(await peer_devices(), "ble", "id")["id"])
    backend = select(BLE)
    sim = simworld.from_env() if backend.simulated else None
    state.update(radio=radio, backend=backend.name)
    log.info("bs: radio %s through %s, %g s scan window", radio, backend.name, SCAN_WINDOW_S)
    while True:
        await trio.sleep(ORDER_POLL_S)
        try:
            order = (await svc.call("mcs", f"orders/{radio}", retries=0, timeout=2.0)).json()
        except (NanomeshError, ValueError) as exc:
            log.debug("no orders from the MCS: %s", exc)
            continue
        visit = order.get("visit") if isinstance(order, dict) else None
        if not isinstance(visit, int) or isinstance(visit, bool):
            continue
        started = time.time()
        heard = await scan_tags(SCAN_WINDOW_S, backend=backend, sim=sim, radio=radio)
        tags = sorted(heard, key=lambda t: -heard[t])
        took = time.time() - started
        state.update(scans=state["scans"] + 1,
                     last={"visit": visit, "tags": tags, "started": started, "took": took})
        log.info("scan for visit %d heard %s", visit, ", ".join(tags) or "no tag")
        try:
            await svc.call("mcs", "scanned", {"radio": radio, "visit": visit, "tags": tags,
                                              "window": SCAN_WINDOW_S}, method="POST")
        except NanomeshError as exc:  # the order is still pending: scanned again next poll
            log.warning("could not report the scan to the MCS: %s", exc)


@svc.route("GET", "status")
async def status(call: Call) -> dict:
    return dict(state)


@svc.route("GET", "health")
async def health(call: Call) -> dict:
    return {"status": "ok"}


if __name__ == "__main__":
    svc.run()
