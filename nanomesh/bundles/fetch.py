"""Fetching a bundle from the peers that hold it (trio, h11 over TCP, through
the steps of `nanomesh.transport.httpio.http_request`, the daemon's one HTTP client).

`fetch_bundle` tries each source peer's API in order with
``GET /v1/bundles/{sha}``, streams the body into the store's staging
directory while hashing it (never more than MAX_BUNDLE_BYTES), and hands the
file to `BundleStore.add`, which verifies again and extracts. A source that is
down, refuses, stalls or sends bytes with the wrong hash is logged and the
next one tried: content addressing means any peer can serve any bundle and no
source has to be trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import h11
import trio

from nanomesh.bundles.errors import BundleError
from nanomesh.bundles.pack import MAX_BUNDLE_BYTES
from nanomesh.bundles.store import BundleStore, check_sha
from nanomesh.config import DEFAULT_API_PORT, parse_address
from nanomesh.errors import ConfigError
from nanomesh.transport.httpio import connect, next_event, send_request

log = logging.getLogger("nanomesh.bundles")

DEFAULT_FETCH_TIMEOUT = 10.0
"""Seconds a source may stay silent (connecting, or between two reads) before
the next source is tried. An idle limit rather than a total one, so a large
bundle over a slow link still arrives, while a stalled peer is abandoned."""

_WRITE_BATCH = 1 << 20
"""Bytes buffered before one write to disk (one thread hop per MiB, not per
TCP read)."""

_MAX_ERROR_BODY = 64 * 1024


class _SourceFailed(Exception):
    """One source did not deliver; the message says why."""


async def fetch_bundle(store: BundleStore, sha: str, sources: Sequence[str], *,
                       token: str, timeout: float = DEFAULT_FETCH_TIMEOUT) -> Path:
    """The extracted directory of bundle `sha`, fetched from the first of
    `sources` (peer APIs, ``IP:PORT``) that delivers it intact, unless already
    held. BundleError naming each source's failure if none did."""
    check_sha(sha)
    if await trio.to_thread.run_sync(store.has, sha):
        return store.path(sha)
    if not sources:
        raise BundleError(f"bundle {sha[:16]} is held by no reachable peer")
    failures = []
    for source in sources:
        try:
            return await _fetch_from(store, sha, source, token, timeout)
        except (_SourceFailed, BundleError) as exc:
            log.warning("bundle %s: source %s failed: %s", sha[:16], source, exc)
            failures.append(f"{source}: {exc}")
    raise BundleError(f"could not fetch bundle {sha[:16]} from any source: "
                      + "; ".join(failures))


async def _fetch_from(store: BundleStore, sha: str, source: str, token: str,
                      timeout: float) -> Path:
    staged = store.staging_path()
    try:
        actual = await _download(staged, sha, source, token, timeout)
        if actual != sha:
            raise _SourceFailed(f"sent bytes hashing to {actual[:16]}, not {sha[:16]}")
        return await trio.to_thread.run_sync(store.add, staged, sha)
    finally:
        staged.unlink(missing_ok=True)


async def _download(staged: Path, sha: str, source: str, token: str, timeout: float) -> str:
    """Stream the body into `staged`; its sha256."""
    try:
        host, port = parse_address(source, DEFAULT_API_PORT, "bundle source")
    except ConfigError as exc:
        raise _SourceFailed(str(exc)) from None
    try:
        with trio.fail_after(timeout):
            stream, conn = await connect(host, port)
    except (OSError, trio.TooSlowError) as exc:
        raise _SourceFailed(f"cannot connect: {exc or 'timed out'}") from None
    async with stream:
        try:
            await send_request(stream, conn, "GET", f"/v1/bundles/{sha}", headers=[
                ("host", source), ("authorization", f"Bearer {token}")])
            return await _receive(stream, conn, staged, timeout)
        except (trio.BrokenResourceError, OSError) as exc:
            raise _SourceFailed(f"connection failed: {exc}") from None
        except h11.ProtocolError as exc:
            raise _SourceFailed(f"bad HTTP reply: {exc}") from None


async def _next_event(stream: trio.SocketStream, conn: h11.Connection, timeout: float
                      ) -> h11.Event | type[h11.PAUSED]:
    try:
        return await next_event(stream, conn, timeout)
    except trio.TooSlowError:
        raise _SourceFailed(f"stalled for {timeout:g} s") from None


async def _receive(stream: trio.SocketStream, conn: h11.Connection, staged: Path,
                   timeout: float) -> str:
    event = await _next_event(stream, conn, timeout)
    if not isinstance(event, h11.Response):
        raise _SourceFailed(f"no HTTP response ({type(event).__name__})")
    if event.status_code != 200:
        detail = await _error_body(stream, conn, timeout)
        raise _SourceFailed(f"HTTP {event.status_code} {detail}".rstrip())
    length = dict(event.headers).get(b"content-length")
    if length is not None and int(length) > MAX_BUNDLE_BYTES:
        raise _SourceFailed(f"offers {int(length)} bytes, over MAX_BUNDLE_BYTES")
    f: BinaryIO = await trio.to_thread.run_sync(staged.open, "xb")
    try:
        return await _body_to_file(stream, conn, f, timeout)
    finally:
        await trio.to_thread.run_sync(f.close)


async def _body_to_file(stream: trio.SocketStream, conn: h11.Connection, f: BinaryIO,
                        timeout: float) -> str:
    digest, size, pending = hashlib.sha256(), 0, bytearray()
    while True:
        event = await _next_event(stream, conn, timeout)
        if isinstance(event, h11.Data):
            size += len(event.data)
            if size > MAX_BUNDLE_BYTES:
                raise _SourceFailed(f"sent more than {MAX_BUNDLE_BYTES} bytes")
            digest.update(event.data)
            pending += event.data
            if len(pending) >= _WRITE_BATCH:
                await trio.to_thread.run_sync(f.write, bytes(pending))
                pending.clear()
        elif isinstance(event, h11.EndOfMessage):
            await trio.to_thread.run_sync(f.write, bytes(pending))
            return digest.hexdigest()
        else:
            raise _SourceFailed(f"connection ended early, after {size} bytes")


async def _error_body(stream: trio.SocketStream, conn: h11.Connection, timeout: float) -> str:
    body = bytearray()
    while len(body) < _MAX_ERROR_BODY:
        event = await _next_event(stream, conn, timeout)
        if not isinstance(event, h11.Data):
            break
        body += event.data
    try:
        message = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        message = body[:300].decode("utf-8", "replace").strip()
    return str(message)
