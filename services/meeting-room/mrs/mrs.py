"""mrs: the meeting room service, what the room's screen presents.

Bound to the peer with the room's ``display``. The MCS posts each guest it
confirmed at the door (``POST present``); the screen then lists who is in
the room and, once anyone besides the room's organiser is there, hides the
organiser's personal content (the research: "the screen shows content
depending on who is present"). ``POST end`` closes the meeting and keeps its
minutes (who came, when) in the state blob, so they survive the instance.

Routes: POST present {"visit", "person", "room"}; GET screen; POST end;
GET minutes; GET health. ORGANISER (env): whose personal content is shown
while alone (default "alice").
"""

import json
import logging
import os
import time

from nanomesh.sdk.service import Call, NanoService, ServiceError

log = logging.getLogger("mrs")
svc = NanoService()
ORGANISER = os.environ.get("ORGANISER", "alice")
screen: dict = {"room": None, "present": [], "since": None}
minutes: list = []


def content() -> str:
    guests = [p for p in screen["present"] if p["person"] != ORGANISER]
    if not screen["present"]:
        return "idle"
    return "shared content only (personal content hidden)" if guests else \
        f"{ORGANISER}'s personal content"


@svc.route("POST", "present")
async def present(call: Call) -> dict:
    body = call.json()
    if not isinstance(body, dict) or not all(isinstance(body.get(k), str)
                                             for k in ("person", "room")):
        raise ServiceError(400, 'body must be {"visit": n, "person": ..., "room": ...}')
    if not any(p["person"] == body["person"] for p in screen["present"]):
        screen["present"].append({"person": body["person"], "visit": body.get("visit"),
                                  "at": time.time()})
    screen.update(room=body["room"], since=screen["since"] or time.time())
    log.info("presenting to %s in %s: %s", body["person"], body["room"], content())
    return {"ok": True, "content": content()}


@svc.route("GET", "screen")
async def show(call: Call) -> dict:
    return {**screen, "content": content()}


@svc.route("POST", "end")
async def end(call: Call) -> dict:
    record = {"room": screen["room"], "present": screen["present"], "ended": time.time()}
    minutes.append(record)
    await svc.save_state(json.dumps(minutes[-50:]).encode())
    screen.update(room=None, present=[], since=None)
    return record


@svc.route("GET", "minutes")
async def get_minutes(call: Call) -> list:
    if not minutes:
        saved = await svc.load_state()
        if saved:
            minutes.extend(json.loads(saved))
    return minutes


@svc.route("GET", "health")
async def health(call: Call) -> dict:
    return {"status": "ok"}


if __name__ == "__main__":
    svc.run()
