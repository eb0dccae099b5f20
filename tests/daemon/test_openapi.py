"""``GET /v1/openapi.json`` is generated from the daemon's route table: the
table of a really assembled daemon and the document list the same
operations, in both directions."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import pytest

from nanomesh.config import build_config
from nanomesh.daemon.api_openapi import NOT_JSON, openapi_document
from nanomesh.daemon.assemble import PeerAssembly
from nanomesh.daemon.http import Request
from nanomesh.daemon.profile import ProfileSource
from nanomesh.daemon.views import Routes
from nanomesh.discovery.publish import ProfilePublisher
from nanomesh.gossip.machine import Membership
from nanomesh.security import servicekeys
from nanomesh.wire import Keyring

PARAM = re.compile(r"\{([^}/]*)\}")


@pytest.fixture(scope="module")
def routes(tmp_path_factory: pytest.TempPathFactory) -> Routes:
    """The route table exactly as `PeerAssembly` builds it for a peer (no
    socket is opened: the parts are built, not run)."""
    data = tmp_path_factory.mktemp("peer")
    cfg = build_config(name="doc", bind="127.0.13.60", data_dir=Path(data))
    # A PeerAssembly installs the mesh's service keys process-wide (a daemon
    # is one per process); put back what was there, or every later test's
    # ZeroMQ calls would use this made-up key (they failed their handshakes).
    before = servicekeys.installed()
    try:
        daemon = PeerAssembly(cfg, Keyring([bytes(32)]), ProfileSource(cfg))
        core = Membership("doc", cfg.bind, cfg.gossip, random.Random(1), 0.0)
        return daemon._build(core, ProfilePublisher({}, now=0.0)).routes
    finally:
        servicekeys.install(before)


def operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}


async def served(routes: Routes) -> dict[str, Any]:
    status, body = await routes["GET", "/v1/openapi.json"](
        Request("GET", "/v1/openapi.json", "", {}, b""))
    assert status == 200
    return json.loads(json.dumps(body))  # what the HTTP server sends: plain JSON


async def test_every_route_is_documented_and_every_operation_is_a_route(routes: Routes
                                                                        ) -> None:
    doc = await served(routes)
    assert doc["openapi"] == "3.1.0"
    assert operations(doc) == set(routes)
    assert ("GET", "/v1/openapi.json") in routes and ("GET", "/v1/metrics") in routes
    assert doc == openapi_document(routes)  # served as generated from the live table


async def test_path_parameters_match_each_pattern(routes: Routes) -> None:
    doc = await served(routes)
    ids = []
    for path, ops in doc["paths"].items():
        for op in ops.values():
            ids.append(op["operationId"])
            declared = [p["name"] for p in op.get("parameters", []) if p["in"] == "path"]
            assert declared == PARAM.findall(path), (path, declared)
            assert all(p["required"] for p in op.get("parameters", []))
    assert len(ids) == len(set(ids)), "operationIds must be unique"
    # OpenAPI 3.1: paths differing only in their parameters' names are the
    # same path (and would be an ambiguous route table too).
    shapes = [PARAM.sub("{}", path) for path in doc["paths"]]
    assert len(shapes) == len(set(shapes))


async def test_public_routes_are_described_by_their_modules_docstrings(routes: Routes
                                                                       ) -> None:
    """A route added without a word in its module's docstring fails here,
    which keeps the document (and the code's own documentation) complete."""
    doc = await served(routes)
    undescribed = []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if path.startswith("/v1/internal/"):
                continue  # peer-to-peer calls, not for people
            text = op["description"]
            shapes = {PARAM.sub("{}", p) for p in re.findall(
                rf"``{method.upper()} (/[^`?\[ ]*)", text)}
            # A route served under two patterns (an instance id as one escaped
            # segment) shares the description of its other pattern.
            if PARAM.sub("{}", path) not in shapes and not shapes:
                undescribed.append(f"{method.upper()} {path}")
    assert not undescribed, undescribed


def test_the_non_json_routes_still_exist(routes: Routes) -> None:
    assert set(NOT_JSON) <= set(routes)
    doc = openapi_document(routes)
    metrics = doc["paths"]["/v1/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]
