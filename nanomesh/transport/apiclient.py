"""A minimal client for a peer's HTTP JSON API (used by the CLI and the lab).

- `get_json(peer, path, token=None)`, `request_json(method, peer, path,
  body, token)`: JSON in and out. A read with the management token shows
  what the peer withholds from others (state blobs, environments).
- `request_bytes(method, peer, path, data, token, content_type)`: raw bytes
  in and out (bundles); the reply body as bytes.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any

from nanomesh.errors import NanomeshError

DEFAULT_TIMEOUT = 5.0
"""Seconds to wait for a peer's API to answer."""

_STATUS_CODES = {s.value for s in HTTPStatus}


class ApiError(NanomeshError):
    """The peer's API could not be reached or answered with an error.

    ``str()`` is the full technical account (URL, HTTP status: logs and
    scripts parse it); `operator_message` is what the CLI says to a person."""

    def __init__(self, message: str, *, peer: str | None = None, status: int | None = None,
                 detail: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.peer = peer
        self.status = status
        """The HTTP status of an error reply; None if no reply came."""
        self.detail = detail
        """The peer's own error message (its JSON ``error``)."""
        self.reason = reason
        """Why the peer could not be reached (no reply at all)."""

    def operator_message(self) -> str:
        """The peer's own words and which peer it was, no URL; the status code
        only where it says "try again" (503, 504; scripts retry on it)."""
        where = f" (peer {self.peer})" if self.peer else ""
        if self.status is not None:
            text = self.detail or HTTPStatus(self.status).phrase.lower() \
                if self.status in _STATUS_CODES else self.detail or f"error {self.status}"
            if self.status in (503, 504):  # no leader yet, an election: it passes
                return f"{text} ({'peer ' + self.peer + ', ' if self.peer else ''}HTTP " \
                       f"{self.status}: the mesh is busy or electing a leader; try again)"
            return f"{text}{where}"  # (a 401 says itself how to give the token)
        if self.reason:
            return (f"cannot reach the nanomesh peer at {self.peer}: {self.reason}; is its "
                    "daemon running? (`--peer IP` asks another peer)")
        return str(self)


def get_json(peer: str, path: str, timeout: float = DEFAULT_TIMEOUT,
             token: str | None = None) -> Any:
    """GET http://{peer}{path} and decode the JSON body; `peer` is ``IP:PORT``."""
    return request_json("GET", peer, path, token=token, timeout=timeout)


def request_json(method: str, peer: str, path: str, body: Any = None,
                 token: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> Any:
    """One API call; the decoded JSON reply. ApiError with the peer's own
    error message on a 4xx/5xx, or when the peer cannot be reached."""
    data = json.dumps(body).encode() if body is not None else None
    reply = request_bytes(method, peer, path, data, token=token, timeout=timeout,
                          content_type="application/json")
    try:
        return json.loads(reply)
    except ValueError as exc:
        raise ApiError(f"http://{peer}{path}: reply is not JSON: {exc}") from None


def request_bytes(method: str, peer: str, path: str, data: bytes | None = None,
                  token: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                  content_type: str = "application/octet-stream") -> bytes:
    """One API call with a raw body; the raw reply body. Errors as `request_json`."""
    # Here, not at the top: the peer daemon imports this module for `ApiError`
    # and never calls it; urllib.request brings http.client and email (~1.3 MiB).
    import urllib.error
    import urllib.request

    url = f"http://{peer}{path}"
    headers = {"content-type": content_type} if data is not None else {}
    if token:
        headers["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body: bytes = resp.read()
            return body
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read()).get("error", "")
        except (ValueError, AttributeError):
            detail = ""
        raise ApiError(f"{url}: HTTP {exc.code} {detail}".rstrip(), peer=peer,
                       status=exc.code, detail=detail) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        reason = getattr(reason, "strerror", None) or reason  # "[Errno 111] ..." -> words
        raise ApiError(f"cannot reach the peer API at {url}: {reason}", peer=peer,
                       reason=str(reason).lower()) from None
