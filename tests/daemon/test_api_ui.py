"""The dashboard's files as the peer serves them (`nanomesh.daemon.api_ui`),
and the rules that keep the page safe with hostile strings in the mesh: a
policy that allows no inline script, and no code path that turns a peer's
text into markup. The page itself runs in a real browser in
tests/integration/test_dashboard.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nanomesh.config import build_config
from nanomesh.daemon.api_ui import UI_FILES, ui_routes
from nanomesh.daemon.http import RawBody, Request
from nanomesh.errors import ConfigError

UI = Path(__file__).parents[2] / "nanomesh" / "daemon" / "ui"


async def test_every_file_is_served_with_its_type_and_the_security_headers() -> None:
    routes = ui_routes()
    assert set(routes) == {("GET", "/ui"), ("GET", "/ui/app.js"), ("GET", "/ui/app.css")}
    for (_, path), handler in routes.items():
        status, body = await handler(Request("GET", path, "", {}, b""))
        assert status == 200 and isinstance(body, RawBody)
        name = path.rpartition("/")[2] if path != "/ui" else "index.html"
        assert body.content_type == UI_FILES[name] and body.data
        headers = dict(body.headers)
        csp = headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" \
            not in csp
        assert "frame-ancestors 'none'" in csp and headers["x-frame-options"] == "DENY"


def test_the_page_has_no_inline_script_and_loads_nothing_from_elsewhere() -> None:
    html = (UI / "index.html").read_text()
    assert re.findall(r"<script[^>]*>", html) == ['<script src="/ui/app.js" defer>']
    assert not re.search(r"\son[a-z]+\s*=", html)  # no inline event handlers
    assert "http://" not in html and "https://" not in html  # offline: no CDN


def test_the_script_never_parses_peer_text_as_markup() -> None:
    script = (UI / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function"):
        assert sink not in script, sink


def test_ui_is_on_by_default_and_off_by_flag_or_config(tmp_path: Path) -> None:
    assert build_config(name="a").ui is True
    assert build_config(name="a", ui=False).ui is False
    config = tmp_path / "peer.toml"
    config.write_text("[peer]\nui = false\n")
    assert build_config(config_file=config, name="a").ui is False
    config.write_text('[peer]\nui = "no"\n')
    with pytest.raises(ConfigError, match=r"peer\.ui must be true or false"):
        build_config(config_file=config, name="a")
