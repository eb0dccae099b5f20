"""Bundles on this peer: the store, fetching a bundle from the peers that
gossip it, publishing what we hold, and the bundle and registry routes with
their consensus-backed registry (`nanomesh.daemon.api_bundles`).

A deploy commits the service as soon as the bundle is uploaded to one peer;
every peer that must run it fetches it from a holder (`fetch_bundle`),
verifies it (content addressing) and then serves it too.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import trio

from nanomesh.bundles import (
    BundleError,
    BundleStore,
    fetch_bundle,
    holders_index,
    holders_of,
)
from nanomesh.config import api_address
from nanomesh.daemon.api_auth import Access, running_node
from nanomesh.daemon.api_bundles import BUNDLE_BODY_LIMITS, bundle_routes, registry_routes
from nanomesh.daemon.api_mesh import consensus_call
from nanomesh.daemon.http import BodyLimit, HttpError, Request
from nanomesh.daemon.views import Members, NodeSource, Routes
from nanomesh.security.auth import internal_token
from nanomesh.wire import Keyring, MemberState

log = logging.getLogger("nanomesh.mesh")

BUNDLE_FETCH_TIMEOUT = 10.0
"""Seconds a bundle source may stay silent before the next holder is tried
(an idle timeout, so a large bundle on a slow link still arrives)."""
HOLDER_WAIT = 5.0
"""Seconds a peer waits for gossip to name a holder of a bundle it must fetch
(profiles reach every peer in well under a second; see README)."""


class BundleService:
    def __init__(self, name: str, data_dir: Path, keyring: Keyring, members: Members,
                 republish: Callable[[], None]) -> None:
        self.name = name
        """This peer's name."""
        self._keyring = keyring
        self.members = members
        self._republish = republish
        """Re-gossip our profile if it changed (`GossipShell.republish_profile`)."""
        self.store = BundleStore(data_dir / "bundles")
        self.held: list[str] = []
        """The bundles section of our profile (`nanomesh.bundles.BUNDLES_SECTION`)."""

    async def prepare(self) -> None:
        """Check every stored bundle (dropping corrupt ones) and learn what we hold."""
        await trio.to_thread.run_sync(self.store.check_all)
        self.held = await trio.to_thread.run_sync(self.store.profile_section)

    async def fetch_bundle(self, sha: str) -> Path:
        """The extracted bundle ``sha``: from the local store, else fetched from
        a peer that gossips it (sha256-verified), then served by us too."""
        if await trio.to_thread.run_sync(self.store.has, sha):
            return self.store.path(sha)
        holders = await self._bundle_holders(sha)
        apis = {m.name: api_address(m.profile, m.addr[0]) for m in self.members()}
        path = await fetch_bundle(self.store, sha, [apis[h] for h in holders if h in apis],
                                  token=internal_token(self._keyring, "GET",
                                                       f"/v1/bundles/{sha}"),
                                  timeout=BUNDLE_FETCH_TIMEOUT)
        log.info("fetched bundle %s from the mesh", sha[:12])
        await self.bundles_changed()
        return path

    async def _bundle_holders(self, sha: str) -> list[str]:
        """Alive peers that gossip bundle ``sha``. A deploy commits the service
        as soon as the bundle is uploaded to one peer, and Raft is faster than
        gossip: wait up to HOLDER_WAIT for the holder's profile to arrive."""
        deadline = trio.current_time() + HOLDER_WAIT
        while True:
            alive = [(m.name, m.profile) for m in self.members()
                     if m.state is MemberState.ALIVE and m.name != self.name]
            holders = holders_of(sha, holders_index(alive))
            if holders:
                return holders
            if trio.current_time() >= deadline:
                raise BundleError(f"no alive peer holds bundle {sha[:12]}")
            await trio.sleep(0.1)

    async def bundles_changed(self) -> None:
        self.held = await trio.to_thread.run_sync(self.store.profile_section)
        self._republish()


def bundle_body_limits(access: Access) -> dict[str, BodyLimit]:
    """The large-body rules for bundle uploads, refusing a caller without
    credentials before a byte of the body is read (`Access.may_upload`)."""
    return {prefix: dataclasses.replace(rule, admit=access.may_upload)
            for prefix, rule in BUNDLE_BODY_LIMITS.items()}


def bundle_and_registry_routes(service: BundleService, access: Access, consensus: NodeSource
                               ) -> Routes:
    """The bundle routes (the operator or another peer) and the registry
    routes (reads open, writes with the management token)."""
    def authorize(request: Request) -> None:
        access.require_member_or_operator(request)

    routes = bundle_routes(service.store, authorize)
    put = routes[("PUT", "/v1/bundles/{name}")]

    async def put_and_publish(request: Request) -> tuple[int, Any]:
        reply = await put(request)
        await service.bundles_changed()
        return reply

    routes[("PUT", "/v1/bundles/{name}")] = put_and_publish

    def authorize_management(request: Request) -> None:
        access.require_management_token(request)

    routes.update(registry_routes(service.store, _RegistryBackend(consensus, service),
                                  authorize_management, service.name))
    return routes


class _RegistryBackend:
    """The registry routes' view of the replicated state."""

    def __init__(self, consensus: NodeSource, service: BundleService) -> None:
        self._consensus = consensus
        self._service = service

    def entries(self) -> Mapping[str, Mapping[str, Any]]:
        return running_node(self._consensus()).state.registry

    async def put(self, key: str, entry: dict[str, Any] | None) -> None:
        node = running_node(self._consensus())
        outcome = await consensus_call(lambda: node.put_registry(key, entry))
        if not outcome.applied:
            raise HttpError(404 if outcome.reason == "not-found" else 400,
                            f"registry {key!r}: {outcome.reason}")

    def holders(self) -> Mapping[str, list[str]]:
        return holders_index((m.name, m.profile) for m in self._service.members()
                             if m.state is MemberState.ALIVE)
