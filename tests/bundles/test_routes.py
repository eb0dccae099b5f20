"""The bundle and registry HTTP routes, over real sockets on 127.0.52.x, and
the HTTP server's raw-body extensions."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
from bundle_helpers import (
    TOKEN,
    authorize,
    bundle_server,
    entry,
    http_server,
    make_service,
    raw_tar,
)

from nanomesh.bundles import BundleStore, holders_index, pack_bundle, sha256_of
from nanomesh.daemon.api_bundles import bundle_routes, registry_routes
from nanomesh.daemon.http import MAX_REQUEST_BYTES, BodyLimit, HttpError, RawBody, Request
from nanomesh.transport.apiclient import ApiError, request_bytes, request_json

HOST = "127.0.52.10"
MGMT = "mgmt-token"


async def call(method: str, addr: str, path: str, data: bytes | None = None,
               token: str | None = TOKEN, json_body: Any = None) -> Any:
    if json_body is not None:
        return await trio.to_thread.run_sync(
            lambda: request_json(method, addr, path, json_body, token=token))
    return await trio.to_thread.run_sync(
        lambda: request_bytes(method, addr, path, data, token=token))


async def raw_request(addr: str, method: str, path: str, headers: list[tuple[str, str]],
                      chunks: list[bytes]) -> tuple[int, bytes]:
    """A hand-driven HTTP/1.1 client: the server may answer before the body ends."""
    host, port = addr.rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    conn = h11.Connection(h11.CLIENT)
    async with stream:
        await stream.send_all(conn.send(h11.Request(
            method=method, target=path, headers=[("host", addr), *headers])) or b"")
        try:
            for chunk in chunks:
                await stream.send_all(conn.send(h11.Data(data=chunk)) or b"")
            await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
        except trio.BrokenResourceError:
            pass  # the server answered early and closed
        status, body = 0, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            else:
                return status, body


# ------------------------------------------------------------------ bundles


async def test_put_get_list_bundle(tmp_path: Path, nursery: trio.Nursery) -> None:
    store = BundleStore(tmp_path / "bundles")
    bundle = pack_bundle(make_service(tmp_path / "svc"))
    async with bundle_server(nursery, HOST, store) as addr:
        path = f"/v1/bundles/{bundle.sha256}"
        reply = json.loads(await call("PUT", addr, path, bundle.data))
        assert reply == {"sha256": bundle.sha256, "size": bundle.size, "stored": True}
        again = json.loads(await call("PUT", addr, path, bundle.data))
        assert again["stored"] is False
        assert await call("GET", addr, path) == bundle.data
        listing = json.loads(await call("GET", addr, "/v1/bundles"))
        assert listing == [{"sha256": bundle.sha256, "size": bundle.size, "name": "thermo",
                            "version": "1.0.0"}]


async def test_bundle_routes_need_authorization(tmp_path: Path, nursery: trio.Nursery) -> None:
    store = BundleStore(tmp_path / "bundles")
    bundle = pack_bundle(make_service(tmp_path / "svc"))
    store.add(bundle.data, bundle.sha256)
    async with bundle_server(nursery, HOST, store) as addr:
        for method, path, data in [("GET", f"/v1/bundles/{bundle.sha256}", None),
                                   ("PUT", f"/v1/bundles/{bundle.sha256}", bundle.data),
                                   ("GET", "/v1/bundles", None)]:
            for token in (None, "wrong"):
                with pytest.raises(ApiError, match=r"HTTP 401"):
                    await call(method, addr, path, data, token=token)


async def test_bad_uploads_are_refused(tmp_path: Path, nursery: trio.Nursery) -> None:
    store = BundleStore(tmp_path / "bundles")
    bundle = pack_bundle(make_service(tmp_path / "svc"))
    hostile = raw_tar([entry("../evil")])
    async with bundle_server(nursery, HOST, store) as addr:
        with pytest.raises(ApiError, match=r"HTTP 400 .*hash to"):
            await call("PUT", addr, f"/v1/bundles/{sha256_of(b'x')}", bundle.data)
        with pytest.raises(ApiError, match=r"HTTP 400 .*canonical"):
            await call("PUT", addr, f"/v1/bundles/{sha256_of(hostile)}", hostile)
        with pytest.raises(ApiError, match=r"HTTP 400 .*not a bundle id"):
            await call("PUT", addr, "/v1/bundles/xyz", bundle.data)
        with pytest.raises(ApiError, match=r"HTTP 404"):
            await call("GET", addr, f"/v1/bundles/{bundle.sha256}")
    assert store.held() == []


async def test_oversized_upload_gets_413(tmp_path: Path, nursery: trio.Nursery) -> None:
    store = BundleStore(tmp_path / "bundles")
    sha = "a" * 64
    limits = {"/v1/bundles/": BodyLimit(10_000, 10)}
    auth = [("authorization", f"Bearer {TOKEN}")]
    async with bundle_server(nursery, HOST, store, large_bodies=limits) as addr:
        # declared too large: refused before the body is read
        status, body = await raw_request(addr, "PUT", f"/v1/bundles/{sha}",
                                         [*auth, ("content-length", "20000")], [b"x" * 20000])
        assert status == 413 and b"over 10000 bytes" in body
        # chunked, no declared length: refused once the limit is passed
        status, body = await raw_request(addr, "PUT", f"/v1/bundles/{sha}",
                                         [*auth, ("transfer-encoding", "chunked")],
                                         [b"x" * 4000] * 5)
        assert status == 413
    assert store.held() == []


async def test_large_body_spooled_beyond_json_limit(tmp_path: Path, nursery: trio.Nursery
                                                   ) -> None:
    """A bundle larger than the JSON limit goes through; JSON routes keep theirs."""
    store = BundleStore(tmp_path / "bundles")
    blob = bytes(range(256)) * (MAX_REQUEST_BYTES // 256 + 4096)
    bundle = pack_bundle(make_service(tmp_path / "svc", extra={"blob.bin": blob}))
    assert bundle.size > MAX_REQUEST_BYTES

    async def echo(request: Request) -> tuple[int, Any]:
        return 200, {"len": len(request.body)}

    routes = {**bundle_routes(store, authorize), ("POST", "/v1/echo"): echo}
    async with http_server(nursery, HOST, routes) as addr:
        await call("PUT", addr, f"/v1/bundles/{bundle.sha256}", bundle.data)
        status, _ = await raw_request(addr, "POST", "/v1/echo",
                                      [("content-length", str(MAX_REQUEST_BYTES + 1))],
                                      [b"x" * (MAX_REQUEST_BYTES + 1)])
        assert status == 413
        assert await call("GET", addr, f"/v1/bundles/{bundle.sha256}") == bundle.data
    assert (store.path(bundle.sha256) / "blob.bin").read_bytes() == blob


async def test_raw_body_response(nursery: trio.Nursery) -> None:
    async def raw(_: Request) -> tuple[int, Any]:
        return 200, RawBody(b"\x00\x01binary", "application/octet-stream")

    async with http_server(nursery, HOST, {("GET", "/raw"): raw}) as addr:
        status, body = await raw_request(addr, "GET", "/raw", [], [])
    assert (status, body) == (200, b"\x00\x01binary")


# ------------------------------------------------------------------ registry


class FakeRegistry:
    """An in-memory `RegistryBackend`."""

    def __init__(self, profiles: Mapping[str, Any] | None = None) -> None:
        self.data: dict[str, dict[str, Any]] = {}
        self.profiles = dict(profiles or {})

    def entries(self) -> Mapping[str, Mapping[str, Any]]:
        return self.data

    async def put(self, key: str, entry: dict[str, Any] | None) -> None:
        if entry is None:
            self.data.pop(key, None)
        else:
            self.data[key] = entry

    def holders(self) -> Mapping[str, list[str]]:
        return holders_index(self.profiles.items())


def authorize_mgmt(request: Request) -> None:
    if request.bearer_token() != MGMT:
        raise HttpError(401, "needs the management token")


async def test_registry_push_and_list(tmp_path: Path, nursery: trio.Nursery) -> None:
    store = BundleStore(tmp_path / "bundles")
    v1 = pack_bundle(make_service(tmp_path / "v1"))
    v1b = pack_bundle(make_service(tmp_path / "v1b", extra={"more.py": b"# more\n"}))
    store.add(v1.data, v1.sha256)
    store.add(v1b.data, v1b.sha256)
    backend = FakeRegistry({"peer-a": {"bundles": [v1.sha256[:16]]}, "peer-b": None})
    routes = {**bundle_routes(store, authorize),
              **registry_routes(store, backend, authorize_mgmt, "peer-a")}
    async with http_server(nursery, HOST, routes) as addr:
        with pytest.raises(ApiError, match=r"HTTP 401"):
            await call("POST", addr, "/v1/registry", json_body={"sha256": v1.sha256})
        reply = await call("POST", addr, "/v1/registry", token=MGMT,
                           json_body={"sha256": v1.sha256})
        assert reply["key"] == "thermo@1.0.0" and reply["changed"] is True
        entry = reply["entry"]
        assert entry["requires"]["capabilities"] == ["thermometer"]
        assert (entry["sha256"], entry["size"], entry["pushed_by"], entry["kind"]) == (
            v1.sha256, v1.size, "peer-a", "process")
        same = await call("POST", addr, "/v1/registry", token=MGMT,
                          json_body={"sha256": v1.sha256})
        assert same["changed"] is False
        with pytest.raises(ApiError, match=r"HTTP 409 .*bump the version"):
            await call("POST", addr, "/v1/registry", token=MGMT,
                       json_body={"sha256": v1b.sha256})
        replaced = await call("POST", addr, "/v1/registry", token=MGMT,
                              json_body={"sha256": v1b.sha256, "replace": True})
        assert replaced["entry"]["sha256"] == v1b.sha256
        await call("POST", addr, "/v1/registry", token=MGMT, json_body={"sha256": v1.sha256,
                                                                        "replace": True})
        listing = json.loads(await call("GET", addr, "/v1/registry", token=None))
        assert [(e["key"], e["holders"]) for e in listing] == [("thermo@1.0.0", ["peer-a"])]
        await call("DELETE", addr, "/v1/registry/thermo@1.0.0", token=MGMT)
        assert json.loads(await call("GET", addr, "/v1/registry", token=None)) == []


async def test_registry_refuses_unknown_or_bad_bundles(tmp_path: Path, nursery: trio.Nursery
                                                      ) -> None:
    store = BundleStore(tmp_path / "bundles")
    folder = make_service(tmp_path / "bad")
    (folder / "nanoservice.toml").write_text('name = "bad"\nversion = "1"\nkind = "lambda"\n')
    bad = pack_bundle(folder)
    store.add(bad.data, bad.sha256)
    noversion = make_service(tmp_path / "nov")
    text = (noversion / "nanoservice.toml").read_text().replace('version = "1.0.0"\n', "")
    (noversion / "nanoservice.toml").write_text(text)
    nov = pack_bundle(noversion)
    store.add(nov.data, nov.sha256)
    routes = registry_routes(store, FakeRegistry(), authorize_mgmt, "p")
    async with http_server(nursery, HOST, routes) as addr:
        with pytest.raises(ApiError, match=r"HTTP 404 .*PUT /v1/bundles"):
            await call("POST", addr, "/v1/registry", token=MGMT, json_body={"sha256": "b" * 64})
        with pytest.raises(ApiError, match=r"HTTP 400 .*kind"):
            await call("POST", addr, "/v1/registry", token=MGMT, json_body={"sha256": bad.sha256})
        with pytest.raises(ApiError, match=r"HTTP 400 .*version"):
            await call("POST", addr, "/v1/registry", token=MGMT, json_body={"sha256": nov.sha256})
        with pytest.raises(ApiError, match=r"HTTP 400 .*sha256"):
            await call("POST", addr, "/v1/registry", token=MGMT, json_body={"sha256": 5})
        with pytest.raises(ApiError, match=r"HTTP 404 .*name@version"):
            await call("DELETE", addr, "/v1/registry/nothing@1", token=MGMT)
