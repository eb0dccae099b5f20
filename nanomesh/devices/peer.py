"""Which devices this instance's peer has: its capability profile's list.

A device-bound service (placed where its device is, by its ``requires``)
learns the device's parameters (a BLE address, a 1-Wire id, a BCM pin) from
the peer's own ``[[devices]]`` entries, as the profile shows them
(``GET /v1/self`` on the peer API in ``NANOMESH_PEER_API``), so one service
serves any peer and follows its device when the device moves.
"""

from __future__ import annotations

import os
from typing import Any

import trio

from nanomesh.errors import ConfigError
from nanomesh.transport.apiclient import get_json

PEER_TIMEOUT = 5.0
"""Seconds the local peer may take to answer (it is on the same machine)."""


async def peer_devices(peer_api: str | None = None) -> list[dict[str, Any]]:
    """The local peer's profile devices; ConfigError without a peer API."""
    api = peer_api or os.environ.get("NANOMESH_PEER_API")
    if not api:
        raise ConfigError("$NANOMESH_PEER_API is not set: run this service through nanomesh")
    me = await trio.to_thread.run_sync(lambda: get_json(api, "/v1/self", timeout=PEER_TIMEOUT))
    devices = (me.get("profile") or {}).get("devices") or []
    return [d for d in devices if isinstance(d, dict)]


def find_device(devices: list[dict[str, Any]], device_type: str, key: str) -> dict[str, Any]:
    """The first device of ``device_type``; ConfigError naming what is missing
    (no such device, or its entry lacks ``key``)."""
    for device in devices:
        if device.get("type") == device_type:
            if key not in device:
                raise ConfigError(f"the peer's {device_type} device has no {key!r} "
                                  f"in its [[devices]] entry")
            return device
    raise ConfigError(f"this peer declares no {device_type} device (placement should have "
                      f"put the service where one is: check its requires.capabilities)")
