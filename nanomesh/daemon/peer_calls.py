"""The daemon's one client for calls to other peers' APIs: signed HTTP/1.1
on trio (`nanomesh.transport.httpio.http_request`, h11), cancellable without threads.

Every call is signed for the very request with a key derived from the
cluster key (`nanomesh.security.auth.internal_token`), so the receiving peer's
`nanomesh.daemon.api_auth.Access.require_member` admits it. Failures are an
`ApiError` worded as `nanomesh.transport.apiclient` words them (the CLI's blocking
client, which the daemon no longer uses): ``{url}: HTTP {status} {error}``
for an error reply, ``cannot reach the peer API at {url}: {reason}`` when the
peer cannot be reached or does not answer within the timeout.
Bundle transfers stream to disk and have their own h11 loop
(`nanomesh.bundles.fetch`).
"""

from __future__ import annotations

import json
from typing import Any

import h11
import trio

from nanomesh.config import DEFAULT_API_PORT, parse_address
from nanomesh.errors import ConfigError
from nanomesh.security.auth import internal_token
from nanomesh.transport.apiclient import ApiError
from nanomesh.transport.httpio import MAX_HTTP_MESSAGE, http_request
from nanomesh.wire import Keyring


class PeerCalls:
    """Signed calls from this peer to another peer's ``/v1/internal/`` routes.
    `source_ip`: the address calls leave from (the peer's own; None: the
    kernel's choice, which on loopback is 127.0.0.1 for every peer, so the
    callee's per-client connection limit would lump all peers together)."""

    def __init__(self, keyring: Keyring, source_ip: str | None = None) -> None:
        self._keyring = keyring
        self._source_ip = None if source_ip in (None, "", "0.0.0.0", "::") else source_ip
        """Calls leave from this peer's own address, as gossip streams and Raft
        links do: a host with several addresses (a lab on loopback, a device
        with Wi-Fi and Ethernet) is then seen, limited and accounted as the
        member it is."""

    async def call_json(self, method: str, api: str, path: str, body: bytes | None,
                        *, timeout: float, content_type: str = "application/octet-stream",
                        max_reply: int = MAX_HTTP_MESSAGE) -> Any:
        """``method path`` on the peer API at ``api`` (``IP:PORT``) with the raw
        `body`; the decoded JSON reply. ApiError on any failure (unreachable,
        no answer within `timeout` seconds, an error status, a reply that is
        not JSON: ``ValueError`` text, as `json.loads` words it)."""
        raw = await self.call(method, api, path, body, timeout=timeout,
                              content_type=content_type, max_reply=max_reply)
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise ApiError(f"http://{api}{path}: reply is not JSON: {exc}") from None

    async def call(self, method: str, api: str, path: str, body: bytes | None, *,
                   timeout: float, content_type: str = "application/octet-stream",
                   max_reply: int = MAX_HTTP_MESSAGE) -> bytes:
        """As `call_json`, the raw reply body; `max_reply`: the largest reply
        body accepted, in bytes."""
        url = f"http://{api}{path}"
        data = body or b""
        headers = [("authorization",
                    f"Bearer {internal_token(self._keyring, method, path, data)}")]
        if body is not None:
            headers.append(("content-type", content_type))
        try:
            host, port = parse_address(api, DEFAULT_API_PORT, "peer API")
            with trio.fail_after(timeout):
                reply = await http_request(host, port, method, path, data, headers,
                                           local_address=self._local_address_for(host),
                                           max_reply=max_reply)
        except trio.TooSlowError:
            raise ApiError(f"cannot reach the peer API at {url}: timed out", peer=api,
                           reason="timed out") from None
        except ConfigError as exc:
            raise ApiError(f"cannot reach the peer API at {url}: {exc}", peer=api,
                           reason=str(exc)) from None
        except (OSError, trio.BrokenResourceError, h11.ProtocolError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise ApiError(f"cannot reach the peer API at {url}: {reason}", peer=api,
                           reason=str(reason).lower()) from None
        if reply.status >= 400:
            try:
                detail = json.loads(reply.body).get("error", "")
            except (ValueError, AttributeError):
                detail = ""
            raise ApiError(f"{url}: HTTP {reply.status} {detail}".rstrip(), peer=api,
                           status=reply.status, detail=detail)
        return reply.body

    def _local_address_for(self, host: str) -> str | None:
        source = self._source_ip
        if source is None or (":" in source) != (":" in host):
            return None  # no own address, or another family than the target's
        return source
