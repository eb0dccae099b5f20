"""The CoAP gateway every peer runs: ``coap://<any peer>/s/<service>/<path>``
reaches a healthy instance of ``<service>`` wherever it runs.

- `nanomesh.gateway.forward`: routes, target choice, limits (pure);
- `nanomesh.gateway.core`: `Gateway`, resolution and fail-over (trio);
- `nanomesh.gateway.upstream`: calls to zmq and http instances;
- `nanomesh.gateway.coap`: aiocoap through trio-asyncio, `serve_coap_gateway`;
- `nanomesh.gateway.link`: the members' authenticated way in (ZeroMQ CURVE on
  TCP at the gateway's port), for private services;
- `nanomesh.gateway.leaf_core`: microcontroller leaves (``firmware/``) register
  and report at ``/leaf/...``, authenticated with per-leaf keys (pure).

Plain CoAP reaches public services only (`nanomesh.runtime.manifest.VISIBILITIES`).

The port is `nanomesh.config.DEFAULT_COAP_PORT` (5683) unless configured.
Importing this package does not import aiocoap; import
`nanomesh.gateway.coap` for `serve_coap_gateway`.
"""

from nanomesh.config import DEFAULT_COAP_PORT
from nanomesh.gateway.core import Gateway, Resolver, Services
from nanomesh.gateway.forward import GatewayConfig

__all__ = ["DEFAULT_COAP_PORT", "Gateway", "GatewayConfig", "Resolver", "Services"]
