"""ae: the authentication engine, the meeting room's credential store.

The research's REST resources over the service's endpoints (ZeroMQ and CoAP,
so ``nanomesh call ae persons`` and ``coap://peer/s/ae/persons`` for
members): ``persons``, ``rooms``, ``tags``, ``events``, each with GET and
POST on the collection and GET and PUT on ``/{id}``. The store is SQLite
(`nanomesh.devices.credentials`, which checks every body), in ``AE_DB``
(default ``~/.nanomesh-ae/ae.sqlite``). The MCS asks ``GET tags/{uuid}``
then ``GET persons/{id}``; an unknown tag is a 4.04, and the MCS ignores
the person.

Routes: the four resources, GET health.
"""

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from nanomesh.devices.credentials import BadDocument, NotFound, Store
from nanomesh.sdk.service import Call, NanoService, ServiceError

log = logging.getLogger("ae")
svc = NanoService()
T = TypeVar("T")
DB = Path(os.environ.get("AE_DB") or Path.home() / ".nanomesh-ae" / "ae.sqlite")
store = Store(DB)
log.info("ae: SQLite store %s", DB)


def _run(fn: Callable[..., T], *args: object) -> T:
    try:
        return fn(*args)
    except NotFound as exc:
        raise ServiceError(404, str(exc)) from None
    except BadDocument as exc:
        raise ServiceError(400, str(exc)) from None


@svc.route("GET", "health")
async def health(call: Call) -> dict:
    return {"status": "ok", "db": str(DB)}


@svc.route("GET", "{resource}")
async def list_items(call: Call) -> list:
    return _run(store.list, call.params["resource"])


@svc.route("POST", "{resource}")
async def create(call: Call) -> dict:
    item = _run(store.create, call.params["resource"], call.json())
    log.info("created %s %s", call.params["resource"], item["id"])
    return item


@svc.route("GET", "{resource}/{id}")
async def get_item(call: Call) -> dict:
    return _run(store.get, call.params["resource"], call.params["id"])


@svc.route("PUT", "{resource}/{id}")
async def put_item(call: Call) -> dict:
    return _run(store.put, call.params["resource"], call.params["id"], call.json())


if __name__ == "__main__":
    svc.run()
