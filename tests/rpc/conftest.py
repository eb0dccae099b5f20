"""Shared setup for the service-traffic tests (ZeroMQ, CoAP, client, SDK).

Network: loopback 127.0.51.x only. ``rpc_helpers`` lives next to the tests
(this directory is put on ``sys.path``, as in tests/runtime)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


@pytest.fixture(autouse=True)
def _fresh_pool() -> Iterator[None]:
    """Each test starts and ends without pooled ZeroMQ connections."""
    from nanomesh.transport.rpc import close_pooled_connections
    close_pooled_connections()
    yield
    close_pooled_connections()
