"""dd: the data display; the patient's vitals and alerts, as staff see them.

Takes readings (POST readings, best effort, the latest per source) and
alerts (POST alerts; an alert's ``id`` makes a repeat harmless: senders retry
until they hear back, so the same alert may come twice) and shows them: each
change is a line in its log (the "screen"), and GET display answers the
whole picture. Bound to a peer with a ``display`` device.
"""

import logging
import time

from nanomesh.sdk.service import Call, NanoService, ServiceError

log = logging.getLogger("dd")
svc = NanoService()
MAX_ALERTS = 200
"""Alerts kept for the display (the newest)."""
latest: dict[str, dict] = {}
alerts: list[dict] = []
seen: set[str] = set()


@svc.route("POST", "readings")
async def reading(call: Call) -> dict:
    body = call.json() if call.body else None
    if not isinstance(body, dict) or not isinstance(body.get("source"), str):
        raise ServiceError(400, "a reading is a JSON object with a source")
    body["received"] = time.time()
    latest[body["source"]] = body
    return {"ok": True}


@svc.route("POST", "alerts")
async def alert(call: Call) -> dict:
    body = call.json() if call.body else None
    if not isinstance(body, dict) or not isinstance(body.get("id"), str):
        raise ServiceError(400, "an alert is a JSON object with an id")
    if body["id"] in seen:
        return {"ok": True, "duplicate": True}
    seen.add(body["id"])
    body["received"] = time.time()
    alerts.append(body)
    del alerts[:-MAX_ALERTS]
    delay = body["received"] - float(body.get("at", body["received"]))
    log.warning("DISPLAY ALERT %s: %s %s %s = %s (raised %.1f s ago)", body.get("event"),
                body.get("source"), body.get("metric"), body.get("kind", ""), body.get("value"),
                delay)
    return {"ok": True, "duplicate": False}


@svc.route("GET", "display")
async def display(call: Call) -> dict:
    return {"vitals": latest, "alerts": alerts}


@svc.route("GET", "health")
async def health(call: Call) -> dict:
    return {"status": "ok"}


if __name__ == "__main__":
    svc.run()
