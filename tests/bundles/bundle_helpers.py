"""Helpers for the bundle tests (imported via conftest's sys.path entry)."""

from __future__ import annotations

import io
import tarfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from nanomesh.bundles import BundleStore
from nanomesh.daemon.api_bundles import BUNDLE_BODY_LIMITS, bundle_routes
from nanomesh.daemon.http import BodyLimit, Handler, HttpError, Request, serve_http

TOKEN = "test-token"
"""The token every test server accepts."""

MANIFEST = """\
name = "{name}"
version = "{version}"
description = "a test service"
kind = "process"

[run]
command = ["python3", "-u", "main.py"]

[requires]
capabilities = ["thermometer"]
memory_mb = 16
"""


def make_service(folder: Path, name: str = "thermo", version: str = "1.0.0",
                 extra: Mapping[str, bytes] | None = None) -> Path:
    """A small valid service folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "nanoservice.toml").write_text(MANIFEST.format(name=name, version=version))
    (folder / "main.py").write_text("print('hello')\n")
    (folder / "lib").mkdir(exist_ok=True)
    (folder / "lib" / "util.py").write_text("X = 1\n")
    for rel, data in (extra or {}).items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return folder


def raw_tar(entries: list[tarfile.TarInfo], data: Mapping[str, bytes] | None = None) -> bytes:
    """A tar built entry by entry, for hostile-input tests."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info in entries:
            payload = (data or {}).get(info.name)
            if payload is not None:
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            else:
                tar.addfile(info)
    return buf.getvalue()


def entry(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info


def authorize(request: Request) -> None:
    if request.bearer_token() != TOKEN:
        raise HttpError(401, "needs the management token or the mesh secret")


@asynccontextmanager
async def http_server(nursery: trio.Nursery, host: str,
                      routes: Mapping[tuple[str, str], Handler],
                      large_bodies: Mapping[str, BodyLimit] | None = None
                      ) -> AsyncIterator[str]:
    """Serve `routes` on host:ephemeral-port; yields ``"host:port"``."""
    listeners = await trio.open_tcp_listeners(0, host=host)
    port = listeners[0].socket.getsockname()[1]
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await serve_http(routes, listeners,
                             large_bodies=BUNDLE_BODY_LIMITS if large_bodies is None
                             else large_bodies, task_status=task_status)

    await nursery.start(run)
    try:
        yield f"{host}:{port}"
    finally:
        scope.cancel()


@asynccontextmanager
async def bundle_server(nursery: trio.Nursery, host: str, store: BundleStore,
                        **extra: Any) -> AsyncIterator[str]:
    """A peer API serving `store`'s bundles."""
    async with http_server(nursery, host, bundle_routes(store, authorize), **extra) as addr:
        yield addr


def free_port(host: str) -> int:
    """A port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
