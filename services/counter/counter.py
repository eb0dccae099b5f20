"""counter: a nanoservice with state, to show the runtime's state hand-off.

Routes (ZeroMQ ``api`` and CoAP ``coap``):
  GET  count       -> {"count": N}
  POST count       -> adds 1 (or the JSON body's "by"), returns {"count": N}
  GET  health      -> {"status": "ok"}

The count is handed to the runtime (``save_state``) after every change, so
it survives the instance, its peer and a leader change, and it is read back
(``load_state``) by the first request of a new instance: a service restored
from a seed file (`nanomesh deploy --from-seed`) continues where it stopped.
"""

import json

import trio

from nanomesh.sdk.service import Call, NanoService, ServiceError

svc = NanoService()
_state: dict[str, int] = {}
_loaded = trio.Lock()


async def _count() -> int:
    async with _loaded:
        if "count" not in _state:
            blob = await svc.load_state()
            _state["count"] = json.loads(blob)["count"] if blob else 0
    return _state["count"]


@svc.route("GET", "count")
async def get_count(call: Call) -> dict[str, int]:
    return {"count": await _count()}


@svc.route("POST", "count")
async def add(call: Call) -> dict[str, int]:
    by = 1
    if call.body:
        try:
            by = int(json.loads(call.body).get("by", 1))
        except (ValueError, AttributeError, TypeError):
            raise ServiceError(400, 'body must be {"by": <integer>}') from None
    _state["count"] = await _count() + by
    await svc.save_state(json.dumps({"count": _state["count"]}).encode())
    return {"count": _state["count"]}


@svc.route("GET", "health")
async def health(call: Call) -> dict[str, str]:
    return {"status": "ok"}


if __name__ == "__main__":
    svc.run()
