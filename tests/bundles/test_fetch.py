"""Fetching bundles from real HTTP servers on 127.0.52.x."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from bundle_helpers import TOKEN, bundle_server, free_port, http_server, make_service

from nanomesh.bundles import BundleError, BundleStore, fetch_bundle, pack_bundle
from nanomesh.daemon.http import RawBody, Request

A, B, C = "127.0.52.1", "127.0.52.2", "127.0.52.3"


def stores(tmp_path: Path, *names: str) -> list[BundleStore]:
    return [BundleStore(tmp_path / n / "bundles") for n in names]


async def test_fetch_from_a_good_source(tmp_path: Path, nursery: trio.Nursery) -> None:
    src, dst = stores(tmp_path, "src", "dst")
    bundle = pack_bundle(make_service(tmp_path / "svc"))
    src.add(bundle.data, bundle.sha256)
    async with bundle_server(nursery, A, src) as addr:
        with trio.fail_after(10):
            path = await fetch_bundle(dst, bundle.sha256, [addr], token=TOKEN, timeout=5)
    assert path == dst.path(bundle.sha256)
    assert (path / "main.py").read_text() == "print('hello')\n"
    assert list((dst.root / ".tmp").iterdir()) == []


async def test_already_held_needs_no_source(tmp_path: Path) -> None:
    [dst] = stores(tmp_path, "dst")
    bundle = pack_bundle(make_service(tmp_path / "svc"))
    dst.add(bundle.data, bundle.sha256)
    assert await fetch_bundle(dst, bundle.sha256, [], token=TOKEN) == dst.path(bundle.sha256)


async def test_source_with_wrong_bytes_is_skipped(tmp_path: Path, nursery: trio.Nursery,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    src, dst = stores(tmp_path, "src", "dst")
    bundle = pack_bundle(make_service(tmp_path / "svc"))
    src.add(bundle.data, bundle.sha256)
    liar_body = pack_bundle(make_service(tmp_path / "evil", name="evil")).data

    async def liar(_: Request) -> tuple[int, Any]:
        return 200, RawBody(liar_body, "application/x-tar")

    routes = {("GET", "/v1/bundles/{name}"): liar}
    async with http_server(nursery, B, routes) as bad, bundle_server(nursery, A, src) as good:
        with trio.fail_after(10):
            path = await fetch_bundle(dst, bundle.sha256, [bad, good], token=TOKEN, timeout=5)
    assert (path / "nanoservice.toml").read_text().startswith('name = "thermo"')
    assert f"source {bad} failed" in caplog.text and "hashing to" in caplog.text
    assert dst.held() == [bundle.sha256]


async def test_all_sources_failing_names_each(tmp_path: Path, nursery: trio.Nursery) -> None:
    src, dst = stores(tmp_path, "src", "dst")
    bundle = pack_bundle(make_service(tmp_path / "svc"))
    down = f"{C}:{free_port(C)}"
    async with bundle_server(nursery, A, src) as empty:  # up, but does not hold it
        with trio.fail_after(10), pytest.raises(BundleError) as err:
            await fetch_bundle(dst, bundle.sha256, [down, empty, "not-an-ip:1"],
                               token=TOKEN, timeout=5)
    text = str(err.value)
    assert f"{down}: cannot connect" in text
    assert f"{empty}: HTTP 404" in text and "not held" in text
    assert "not-an-ip:1" in text
    assert dst.held() == [] and list((dst.root / ".tmp").iterdir()) == []


async def test_wrong_token_is_a_failed_source(tmp_path: Path, nursery: trio.Nursery) -> None:
    src, dst = stores(tmp_path, "src", "dst")
    bundle = pack_bundle(make_service(tmp_path / "svc"))
    src.add(bundle.data, bundle.sha256)
    async with bundle_server(nursery, A, src) as addr:
        with trio.fail_after(10), pytest.raises(BundleError, match=r"HTTP 401"):
            await fetch_bundle(dst, bundle.sha256, [addr], token="wrong", timeout=5)


async def test_stalled_source_times_out(tmp_path: Path, nursery: trio.Nursery) -> None:
    """A source that accepts and then says nothing is abandoned after the idle
    timeout (a real clock: an autojump clock could also expire the connect)."""
    [dst] = stores(tmp_path, "dst")
    bundle = pack_bundle(make_service(tmp_path / "svc"))
    listeners = await trio.open_tcp_listeners(0, host=B)
    port = listeners[0].socket.getsockname()[1]

    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    nursery.start_soon(trio.serve_listeners, silent, listeners)
    with trio.fail_after(10), pytest.raises(BundleError, match=r"stalled for 1 s"):
        await fetch_bundle(dst, bundle.sha256, [f"{B}:{port}"], token=TOKEN, timeout=1)
    nursery.cancel_scope.cancel()


async def test_no_sources(tmp_path: Path) -> None:
    [dst] = stores(tmp_path, "dst")
    with pytest.raises(BundleError, match=r"held by no reachable peer"):
        await fetch_bundle(dst, "a" * 64, [], token=TOKEN)
