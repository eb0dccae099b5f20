"""``GET /ui/``: the web dashboard every peer serves on its API port
(``nanomesh peer run --no-ui``, or ``ui = false`` under ``[peer]``, turns it
off).

- ``GET /ui``: the page (HTML; ``/ui/`` too).
- ``GET /ui/app.js``: the page's script.
- ``GET /ui/app.css``: the page's styles.

One static page shipped inside the package (``nanomesh/daemon/ui/``: HTML,
JavaScript, CSS; no build step and nothing from a CDN, since a mesh may run
where there is no Internet). It reads the same API as the CLI from the same
origin: ``/v1/members``, ``/v1/status``, ``/v1/services``, ``/v1/placement``
and ``/v1/events`` (followed with an EventSource, polled when streams are
refused). With the management token typed into the page (kept in the tab's
sessionStorage, sent as ``Authorization: Bearer``) it deploys, undeploys,
idles and activates services through the existing write endpoints, which
check the token as for the CLI. Without it the page is read-only.

The page renders whatever peers gossip (names, labels, messages) as text,
never as markup, and its Content-Security-Policy allows scripts and styles
from this origin only (no inline script, no eval), so a hostile string in a
profile cannot run in an operator's browser.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from nanomesh.daemon.http import RawBody, Request
from nanomesh.daemon.views import Routes

UI_FILES = {"index.html": "text/html; charset=utf-8",
            "app.js": "text/javascript; charset=utf-8",
            "app.css": "text/css; charset=utf-8"}
"""The page's files (in ``nanomesh/daemon/ui/``) and their content types."""
SECURITY_HEADERS = (
    ("content-security-policy",
     "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
     "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-cache"),
)
"""Sent with every file of the page: only this origin's scripts, styles and
API; no framing (clickjacking of the write buttons); no referrer."""


def ui_routes() -> Routes:
    """The dashboard's routes, its files read once (a few tens of KB)."""
    folder = resources.files("nanomesh.daemon").joinpath("ui")
    bodies = {name: RawBody(folder.joinpath(name).read_bytes(), kind, SECURITY_HEADERS)
              for name, kind in UI_FILES.items()}

    def serve(name: str) -> Any:
        async def handler(_: Request) -> tuple[int, Any]:
            return 200, bodies[name]
        return handler

    # The router strips a trailing slash: "/ui/" and "/ui" are the page.
    return {("GET", "/ui"): serve("index.html"),
            **{("GET", f"/ui/{name}"): serve(name) for name in UI_FILES if name != "index.html"}}
