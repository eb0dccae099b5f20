"""``GET /v1/openapi.json``: an OpenAPI 3.1 document of the peer API,
generated from the daemon's own route table, so it cannot drift from what
the peer serves: every ``(method, pattern)`` route is one operation, with
its ``{param}`` segments as path parameters.

Descriptions come from the same place a reader of the code finds them: the
docstring of the module that defines the route group. The bullet that names
a route (``- ``GET /v1/members``: array of member objects ...``), else the
first paragraph that does (else in another route group's docstring), is
its description; a route served by the same
handler as a described one (``/v1/instances/{iid}/state`` and
``/v1/instances/{service}/{index}/state``) shares it; any other gets its
handler's name ("list keys"). The few routes
that answer something other than JSON are listed in `NOT_JSON` (a test
checks that each still exists).

Every operation may carry ``Authorization: Bearer TOKEN`` (the management
token, an instance's token, or a peer's signed internal token); which one a
route wants is in its description and in the 401 it answers
(`nanomesh.daemon.api_auth`). HEAD is answered wherever GET is
(`nanomesh.daemon.http`) and is not listed separately.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from nanomesh import __version__
from nanomesh.daemon.http import Handler, Request

NOT_JSON = {
    ("GET", "/v1/bundles/{name}"): "application/x-tar",
    ("GET", "/v1/instances/{service}/{index}/state"): "application/octet-stream",
    ("GET", "/v1/instances/{iid}/state"): "application/octet-stream",
    ("GET", "/v1/metrics"): "text/plain",
    ("GET", "/ui"): "text/html",
    ("GET", "/ui/app.js"): "text/javascript",
    ("GET", "/ui/app.css"): "text/css",
}
"""Routes whose 200 is not JSON, by the content type they answer."""

_TAGS = {"api": "membership", "bundle_service": "bundles"}
"""Tags of route groups whose module name says less (the rest: the name
without ``api_``)."""
_BULLET = re.compile(r"^- (.*?)(?=^- |^\S|\Z)", re.MULTILINE | re.DOTALL)
_NAMED = re.compile(r"``(GET|PUT|POST|DELETE|PATCH) (/[^`?\[ ]*)")
_PARAM = re.compile(r"\{[^}/]*\}")


def openapi_routes(routes: Mapping[tuple[str, str], Handler]) -> dict[tuple[str, str], Handler]:
    """The document's route. `routes` is the daemon's table, read when the
    document is asked for (the route added here is in it by then)."""
    document: list[dict[str, Any]] = []

    async def openapi(_: Request) -> tuple[int, Any]:
        if not document:  # the table is complete once the daemon serves
            document.append(openapi_document(routes))
        return 200, document[0]

    return {("GET", "/v1/openapi.json"): openapi}


def openapi_document(routes: Mapping[tuple[str, str], Handler]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `routes` (see the module docstring)."""
    everywhere: dict[tuple[str, str], str] = {}  # any route group's docstring
    for module in {_module(h) for h in routes.values()}:
        everywhere = {**_descriptions(module.__doc__ if module else None), **everywhere}
    texts = {route: _described(route, handler) or everywhere.get((route[0], _shape(route[1])))
             for route, handler in routes.items()}
    by_handler = {id(routes[route]): text for route, text in texts.items() if text}
    paths: dict[str, dict[str, Any]] = {}
    for (method, pattern), handler in sorted(routes.items(), key=lambda r: (r[0][1], r[0][0])):
        text = texts[method, pattern] or by_handler.get(id(handler))
        paths.setdefault(pattern, {})[method.lower()] = _operation(method, pattern, handler,
                                                                    text)
    return {
        "openapi": "3.1.0",
        "info": {"title": "nanomesh peer API", "version": __version__,
                 "description": "Every peer serves this API (default port 7947). Reads are "
                 "open (secrets redacted); writes, logs, state blobs and bundles need the "
                 "management token as `Authorization: Bearer TOKEN`."},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {"type": "object", "required": ["error"],
                                  "properties": {"error": {"type": "string"}}}}},
        # Optional everywhere: {} is "no credentials" (see the module docstring).
        "security": [{}, {"bearer": []}],
    }


def _described(route: tuple[str, str], handler: Handler) -> str | None:
    """The description of ``route`` in its handler's module docstring."""
    module = _module(handler)
    return _descriptions(module.__doc__ if module else None).get((route[0], _shape(route[1])))


def _module(handler: Handler) -> ModuleType | None:
    return sys.modules.get(getattr(handler, "__module__", "") or "")


def _operation(method: str, pattern: str, handler: Handler, text: str | None
               ) -> dict[str, Any]:
    module = (getattr(handler, "__module__", "") or "").rpartition(".")[2]
    name = getattr(handler, "__name__", "handler").strip("_").replace("_", " ")
    operation: dict[str, Any] = {
        "operationId": f"{method.lower()}{_PARAM.sub('by', pattern).replace('/', '_')}",
        "description": text or name,
        "tags": [_TAGS.get(module, module.removeprefix("api_"))],
        "responses": {
            "200": {"description": "success",
                    "content": {NOT_JSON.get((method, pattern), "application/json"): {}}},
            "default": {"description": "an error, with a message for people",
                        "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/Error"}}}}},
    }
    parameters = [{"name": p[1:-1], "in": "path", "required": True,
                   "schema": {"type": "string"}} for p in _PARAM.findall(pattern)]
    if parameters:
        operation["parameters"] = parameters
    return operation


def _shape(pattern: str) -> str:
    """A route pattern with its parameters' names left out: ``/v1/bundles/{sha}``
    in a docstring names the route ``/v1/bundles/{name}``."""
    return _PARAM.sub("{}", pattern.rstrip("/"))


def _descriptions(doc: str | None) -> dict[tuple[str, str], str]:
    """``(method, shape) -> text``: per route the docstring bullet naming it,
    else the first paragraph that does."""
    out: dict[tuple[str, str], str] = {}
    bullets = _BULLET.findall(doc or "")
    paragraphs = [p for p in (doc or "").split("\n\n") if not p.lstrip().startswith("- ")]
    for chunk in (*bullets, *paragraphs):
        for method, path in _NAMED.findall(chunk):
            out.setdefault((method, _shape(path)), " ".join(chunk.split()))
    return out
