"""A test nanoservice: state hand-off and the on_stop hook."""

import os
from pathlib import Path

from nanomesh.sdk.service import Call, NanoService, ServiceError

svc = NanoService()


@svc.route("GET", "health")
async def health(call: Call) -> str:
    return "ok"


@svc.route("PUT", "state")
async def save(call: Call) -> None:
    await svc.save_state(call.body)


@svc.route("GET", "state")
async def load(call: Call) -> bytes:
    blob = await svc.load_state()
    if blob is None:
        raise ServiceError(404, "no saved state")
    return blob


@svc.route("GET", "items/{a}/sub/{b}")
async def params(call: Call) -> dict[str, object]:
    return {"params": dict(call.params), "args": call.args}


@svc.on_stop
async def bye() -> None:
    await svc.save_state(b"saved on stop")
    Path(os.environ["MARKER"]).write_text("stopped")


if __name__ == "__main__":
    svc.run()
