"""echo: the smallest useful nanoservice, written with nanomesh.sdk.service.

Routes (on every endpoint, ZeroMQ ``api`` and CoAP ``coap``):
  GET  echo/{text}   -> the text
  POST echo          -> the request body, with its content format
  GET  health        -> {"status": "ok"}
  GET  whoami        -> the instance id ("echo/0")
"""

import os

from nanomesh.sdk.service import Call, NanoService
from nanomesh.wire.service_traffic import Response

svc = NanoService()


@svc.route("GET", "echo/{text}")
async def echo_text(call: Call) -> str:
    return call.params["text"]


@svc.route("POST", "echo")
async def echo_body(call: Call) -> Response:
    return Response(200, call.body, call.content_format)


@svc.route("GET", "health")
async def health(call: Call) -> dict[str, str]:
    return {"status": "ok"}


@svc.route("GET", "whoami")
async def whoami(call: Call) -> str:
    return os.environ.get("NANOMESH_INSTANCE", "?")


if __name__ == "__main__":
    svc.run()
