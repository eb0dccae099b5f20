"""`nanomesh registry` and `nanomesh registry push` against a real server."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import trio
from bundle_helpers import TOKEN, authorize, http_server, make_service
from test_routes import FakeRegistry

from nanomesh.bundles import BundleStore
from nanomesh.cli.registry import format_size, registry_rows
from nanomesh.cli.registry import register as add_registry_commands
from nanomesh.daemon.api_bundles import bundle_routes, registry_routes

HOST = "127.0.52.20"


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="nanomesh")
    add_registry_commands(parser.add_subparsers())
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


async def test_push_then_list(tmp_path: Path, nursery: trio.Nursery,
                              capsys: pytest.CaptureFixture[str]) -> None:
    store = BundleStore(tmp_path / "bundles")
    backend = FakeRegistry()
    routes = {**bundle_routes(store, authorize),
              **registry_routes(store, backend, authorize, "peer-1")}
    folder = make_service(tmp_path / "thermo")
    async with http_server(nursery, HOST, routes) as addr:
        backend.profiles = {"peer-1": {"bundles": []}}
        push = ["registry", "push", str(folder), "--peer", addr, "--token", TOKEN]
        assert await trio.to_thread.run_sync(run_cli, push) == 0
        assert "pushed thermo@1.0.0" in capsys.readouterr().out
        [sha] = store.held()
        backend.profiles = {"peer-1": {"bundles": [sha[:16]]}}
        assert await trio.to_thread.run_sync(run_cli, push) == 0
        assert "unchanged: thermo@1.0.0" in capsys.readouterr().out
        assert await trio.to_thread.run_sync(run_cli, ["registry", "--peer", addr]) == 0
        table = capsys.readouterr().out.splitlines()
        assert table[0].split() == ["NAME", "VERSION", "KIND", "REQUIRES", "SIZE", "HOLDERS"]
        assert table[1].split()[:3] == ["thermo", "1.0.0", "process"]
        assert table[1].split()[-1] == "peer-1"
        assert await trio.to_thread.run_sync(
            run_cli, ["registry", "--peer", addr, "--json"]) == 0
        [entry] = json.loads(capsys.readouterr().out)
        assert entry["sha256"] == sha and entry["holders"] == ["peer-1"]


def test_rows_and_sizes() -> None:
    listing = [{"name": "a", "version": "1", "kind": "process", "size": 1536,
                "requires": {"capabilities": ["cam"], "cpu": 0.5, "memory_mb": 0},
                "holders": []}]
    assert registry_rows(listing)[1] == ("a", "1", "process", "cam cpu=0.5", "1.5 KiB",
                                         "(none alive)")
    assert [format_size(n) for n in (0, 1023, 1024, 20 * 2**20, 3 * 2**30)] == [
        "0 B", "1023 B", "1.0 KiB", "20.0 MiB", "3072.0 MiB"]
