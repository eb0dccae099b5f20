"""mcs: the meeting control service, the meeting room's main controller.

The state machine is `nanomesh.devices.meeting_core` (DETECTED -> SCANNED ->
AUTHENTICATED -> GUIDED -> PRESENTED, and the NOT-states); this shell feeds
it and carries out its effects by calling the other nanoservices by name:
``ae`` (GET tags/{uuid}, persons/{id}; POST events, the log), ``ug`` (POST
guide, stop), ``mrs`` (POST present). PD instances post motion here; BS
instances fetch their scan orders here and post what they heard.

After every transition the core's state goes into the instance's state blob
(committed through Raft by the peer), so when the peer hosting the MCS dies
and placement starts the MCS elsewhere, the new instance loads it and
resumes the visit: scan orders are still pending for the scanners, and
`MeetingControl.resume` asks the AE or UG again for what the visit waited on.

Routes: POST motion {"pir"}; GET orders/{radio} -> {"visit": n | null};
POST scanned {"radio", "visit", "tags"}; GET status (current visit,
finished visits, the log); GET health.
Environment: SCAN_TIMEOUT_S, GUIDE_TIMEOUT_S (`meeting_core.Config`).
"""

import json
import logging
import os
import time

import trio

from nanomesh.devices import meeting_core as mc
from nanomesh.errors import NanomeshError
from nanomesh.sdk.client import RemoteError
from nanomesh.sdk.service import Call, NanoService, ServiceError

log = logging.getLogger("mcs")
svc = NanoService()
CONFIG = mc.Config(scan_timeout=float(os.environ.get("SCAN_TIMEOUT_S", "15")),
                   guide_timeout=float(os.environ.get("GUIDE_TIMEOUT_S", "300")))
TICK_S = 0.5
"""Seconds between two timeout checks."""
LOG_LEN = 100
control = mc.MeetingControl(CONFIG)
journal: list = []
"""The transitions this instance made or resumed, newest last (GET status)."""
ctx: dict = {"nursery": None, "resumed": False,
             "instance": f"{os.environ.get('NANOMESH_INSTANCE')}@{os.environ.get('NANOMESH_HOST')}",
             "changed": trio.Event()}


def feed(event: mc.Event) -> None:
    """One event into the core; its effects carried out in order."""
    for effect in control.step(event, time.time()):
        if isinstance(effect, mc.Entered):
            log.info("visit %d: %s (%s)", effect.visit, effect.phase.value, effect.why)
            journal.append({"visit": effect.visit, "phase": effect.phase.value,
                            "at": effect.at, "why": effect.why, "by": ctx["instance"]})
            del journal[:-LOG_LEN]
            ctx["changed"].set()  # the saver writes the blob, one save at a time
        ctx["nursery"].start_soon(carry_out, effect)


async def carry_out(effect: mc.Effect) -> None:
    match effect:
        case mc.Entered(visit, phase, at, why):
            await best_effort("ae", "events", {"visit": visit, "phase": phase.value,
                                               "detail": why, "at": at})
        case mc.Ignored(why):
            log.info("%s", why)
        case mc.Authenticate(visit, tag):
            feed(await authenticate(visit, tag))
        case mc.Guide(visit, person, room):
            try:
                reply = (await svc.call("ug", "guide", {"visit": visit, "person": person,
                                                        "room": room}, method="POST")).json()
                feed(mc.GuideResult(visit, bool(reply.get("ok")), str(reply.get("detail"))))
            except (NanomeshError, ValueError, AttributeError) as exc:
                feed(mc.GuideResult(visit, False, str(exc)))
        case mc.StopGuidance(visit):
            await best_effort("ug", "stop", {"visit": visit})
        case mc.Present(visit, person, room):
            await best_effort("mrs", "present", {"visit": visit, "person": person, "room": room})


async def authenticate(visit: int, tag: str) -> mc.AuthResult:
    try:
        owner = (await svc.call("ae", f"tags/{tag}")).json()
        person = (await svc.call("ae", f"persons/{owner['person']}")).json()
        return mc.AuthResult(visit, str(person.get("name") or owner["person"]),
                             person.get("room"))
    except RemoteError as exc:
        if exc.status == 404:
            return mc.AuthResult(visit, None)
        return mc.AuthResult(visit, None, error=str(exc))
    except (NanomeshError, ValueError, KeyError, TypeError) as exc:
        return mc.AuthResult(visit, None, error=str(exc) or type(exc).__name__)


async def best_effort(service: str, path: str, body: dict) -> None:
    try:
        await svc.call(service, path, body, method="POST")
    except NanomeshError as exc:
        log.warning("%s %s: %s", service, path, exc)


async def saver() -> None:
    """Saves the state blob after transitions, in order: a later state is
    never overwritten by an earlier one."""
    while True:
        await ctx["changed"].wait()
        ctx["changed"] = trio.Event()
        await save()


async def save() -> None:
    try:
        await svc.save_state(json.dumps({"control": control.to_json(),
                                         "journal": journal}).encode())
    except NanomeshError as exc:  # kept in memory; the next transition saves again
        log.warning("could not save the state blob: %s", exc)


@svc.task
async def run() -> None:
    global control
    blob = await svc.load_state()
    if blob:
        try:
            doc = json.loads(blob)
            control = mc.MeetingControl.from_json(doc.get("control"), CONFIG)
            saved = doc.get("journal")
            if isinstance(saved, list):
                journal.extend(e for e in saved if isinstance(e, dict))
            v = control.current
            ctx["resumed"] = True
            log.info("resumed from the state blob: visit %s in %s", v and v.id,
                     v and v.phase.value)
        except (ValueError, AttributeError, NanomeshError) as exc:
            # A blob this service cannot read (another version's?) must not
            # crash-loop the MCS: start afresh, and say what was lost.
            log.error("ignoring an unreadable state blob (%s): starting with no visit", exc)
    async with trio.open_nursery() as nursery:
        ctx["nursery"] = nursery
        nursery.start_soon(saver)
        for effect in control.resume():
            nursery.start_soon(carry_out, effect)
        while True:
            await trio.sleep(TICK_S)
            feed(mc.Tick())


def ready() -> None:
    if ctx["nursery"] is None:
        raise ServiceError(503, "the MCS is loading its state")


@svc.route("POST", "motion")
async def motion(call: Call) -> dict:
    ready()
    body = call.json()
    if not isinstance(body, dict) or not isinstance(body.get("pir"), str):
        raise ServiceError(400, 'body must be {"pir": "<id>"}')
    feed(mc.Motion(body["pir"]))
    return {"ok": True}


@svc.route("GET", "orders/{radio}")
async def orders(call: Call) -> dict:
    ready()
    return {"visit": control.pending_scan(call.params["radio"])}


@svc.route("POST", "scanned")
async def scanned(call: Call) -> dict:
    ready()
    b = call.json()
    if (not isinstance(b, dict) or not isinstance(b.get("radio"), str)
            or not isinstance(b.get("visit"), int) or not isinstance(b.get("tags"), list)
            or not all(isinstance(t, str) for t in b["tags"])):
        raise ServiceError(400, 'body must be {"radio": str, "visit": int, "tags": [str]}')
    feed(mc.ScanResult(b["radio"], b["visit"], tuple(t.lower() for t in b["tags"])))
    return {"ok": True}


@svc.route("GET", "status")
async def status(call: Call) -> dict:
    doc = control.to_json()
    return {**doc, "journal": journal, "instance": ctx["instance"], "resumed": ctx["resumed"]}


@svc.route("GET", "health")
async def health(call: Call) -> dict:
    return {"status": "ok"}


if __name__ == "__main__":
    svc.run()
