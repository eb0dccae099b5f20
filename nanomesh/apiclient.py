"""A minimal client for a peer's HTTP JSON API (used by the CLI and the lab)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from nanomesh.errors import NanomeshError

DEFAULT_TIMEOUT = 5.0
"""Seconds to wait for a peer's API to answer."""


class ApiError(NanomeshError):
    """The peer's API could not be reached or answered with an error."""


def get_json(peer: str, path: str, timeout: float = DEFAULT_TIMEOUT) -> Any:
    """GET http://{peer}{path} and decode the JSON body; `peer` is ``IP:PORT``."""
    url = f"http://{peer}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("error", "")
        except (ValueError, AttributeError):
            detail = ""
        raise ApiError(f"{url}: HTTP {exc.code} {detail}".rstrip()) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ApiError(f"cannot reach the peer API at {url}: {reason}") from None
