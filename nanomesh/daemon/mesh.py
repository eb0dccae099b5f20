"""The control plane of one peer, above membership: its Raft role, the
leader's placement loop, and the reconciliation of its own instances.

Rules it keeps (ARCHITECTURE.md §3):

- Only committed state takes effect. Instances start and stop from the
  committed plan (`_follow_committed`); the leader commits plans with a
  compare-and-set on the epoch, so a deposed leader's plan is refused.
- The leader plans (`nanomesh.control.decide`) whenever membership or the
  desired state changes, and at least every `PLAN_PERIOD`; it commits only a
  plan that changes what runs where (`worth_committing`).
- A peer whose consensus node is down keeps its instances running as last
  committed: local services survive a lost leader or a partition.

Peer-to-peer calls of the promotion protocol (`nanomesh.consensus.roles`) go
over the peer API under ``/v1/internal/``, authenticated with a key derived
from the cluster key (every peer has it; the management token only the
operator has).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from nanomesh.apiclient import ApiError, request_bytes
from nanomesh.auth import (
    TOKEN_META_KEY,
    ensure_token_file,
    internal_token,
    token_digest,
    token_matches,
)
from nanomesh.bundles import (
    BUNDLES_SECTION,
    BundleError,
    BundleStore,
    fetch_bundle,
    holders_index,
    holders_of,
)
from nanomesh.config import api_address, host_port
from nanomesh.consensus import ConsensusError, ConsensusNode, RaftTiming, StalePlanError
from nanomesh.consensus.role_manager import (
    RaftRoleManager,
    RoleConfig,
    epoch_from_profiles,
    voters_from_profiles,
)
from nanomesh.consensus.voters import PeerInfo, peer_info
from nanomesh.control import VIEW_GRACE, decide, unknown_hosts, worth_committing
from nanomesh.daemon.api_auth import is_member, require_management_token, require_member
from nanomesh.daemon.api_bundles import BUNDLE_BODY_LIMITS, bundle_routes, registry_routes
from nanomesh.daemon.api_mesh import _consensus_call, _reported_instances, running_node
from nanomesh.daemon.deployments import DeploymentWatcher
from nanomesh.daemon.http import BodyLimit, Handler, HttpError, Request, bearer_token
from nanomesh.disk import retry_delay
from nanomesh.placement import PlacementConfig
from nanomesh.reconcile import InstanceStatus
from nanomesh.runtime import HostLauncher, ProcessDriver, Reconciler
from nanomesh.runtime.container import choose_container_launcher
from nanomesh.runtime.ports import PortAllocator
from nanomesh.runtime.spec import RESERVED_PORTS
from nanomesh.wire import MemberState

if TYPE_CHECKING:
    from nanomesh.daemon.peer import PeerDaemon

log = logging.getLogger("nanomesh.mesh")

PLAN_PERIOD = 1.0
"""Seconds between two placement runs on the leader when nothing triggers one.
Membership and desired-state changes trigger a run at once; the period only
catches slow drifts (a peer's live capacity) and retries failed commits."""
INTERNAL_CALL_TIMEOUT = 10.0
"""Seconds a promotion or removal call to another peer may take."""
BUNDLE_FETCH_TIMEOUT = 10.0
"""Seconds a bundle source may stay silent before the next holder is tried
(an idle timeout, so a large bundle on a slow link still arrives)."""
HOLDER_WAIT = 5.0
"""Seconds a peer waits for gossip to name a holder of a bundle it must fetch
(profiles reach every peer in well under a second; see README)."""
HAND_OVER_TIMEOUT = 3.0
"""Seconds a leaving peer spends giving up its Raft membership before it
leaves anyway (the leader then removes it when gossip reports it left; cut
short, it stays a voter on disk, see `RaftRoleManager.hand_over`). Bounded
so that SIGTERM always ends the peer promptly."""


class MeshControl:
    def __init__(self, peer: PeerDaemon, placement: PlacementConfig | None = None,
                 roles: RoleConfig | None = None, timing: RaftTiming | None = None) -> None:
        self.peer = peer
        cfg = peer.config
        self.placement = placement or PlacementConfig()
        # The container launcher is added in run(): finding the engines that
        # really work (``podman info``...) blocks for a moment.
        role_config = roles or RoleConfig()
        self.driver = ProcessDriver(peer=cfg.name, launchers={"process": HostLauncher()})
        # Never hand an instance one of this peer's own ports (they may differ
        # from the defaults the allocator knows).
        self.driver.ports = PortAllocator(
            {*RESERVED_PORTS, cfg.bind[1], cfg.api_port, cfg.coap_port, cfg.events_xpub_port,
             cfg.events_xsub_port, role_config.raft_port} - {0})
        self.reconciler = Reconciler(
            cfg.name, self.driver, cfg.data_dir / "logs", fetch=self.fetch_bundle,
            host_ip=cfg.bind[0], peer_api=host_port(*cfg.api_addr),
            state_root=cfg.data_dir / "instances",
            credentials=None if peer.credentials is None else peer.credentials.instance_env)
        self._runtime_section: dict[str, Any] = {}
        self.roles = RaftRoleManager(
            cfg.bind[0], cfg.data_dir / "consensus",
            keyring=peer.keyring,
            timing=timing or RaftTiming.lan(), founder=not cfg.join,
            voters_hint=self._voters_hint, config=role_config, view=self._view,
            ask_promote=self._ask_promote, ask_remove=self._ask_remove,
            epoch_hint=self._epoch_hint)
        self._plan_wanted = trio.Event()
        self._unknown_since: dict[str, float] = {}
        self.bundles = BundleStore(cfg.data_dir / "bundles")
        self._held_bundles: list[str] = []

    # ------------------------------------------------------------ reads

    @property
    def consensus(self) -> ConsensusNode | None:
        return self.roles.node

    def profile_sections(self) -> dict[str, Any]:
        """What this peer adds to its gossiped profile: its Raft role, the
        state of the instances it runs, and the bundles it can serve."""
        return {"raft": self.roles.profile_section(),
                "instances": instances_section(self.driver.status()),
                BUNDLES_SECTION: self._held_bundles, "runtime": self._runtime_section}

    # ------------------------------------------------------------ bundles

    async def fetch_bundle(self, sha: str) -> Path:
        """The extracted bundle ``sha``: from the local store, else fetched from
        a peer that gossips it (sha256-verified), then served by us too."""
        if await trio.to_thread.run_sync(self.bundles.has, sha):
            return self.bundles.path(sha)
        holders = await self._bundle_holders(sha)
        assert self.peer.core is not None
        apis = {m.name: api_address(m.profile, m.addr[0]) for m in self.peer.core.members()}
        path = await fetch_bundle(self.bundles, sha, [apis[h] for h in holders if h in apis],
                                  token=internal_token(self.peer.keyring, "GET",
                                                       f"/v1/bundles/{sha}"),
                                  timeout=BUNDLE_FETCH_TIMEOUT)
        log.info("fetched bundle %s from the mesh", sha[:12])
        await self.bundles_changed()
        return path

    async def _bundle_holders(self, sha: str) -> list[str]:
        """Alive peers that gossip bundle ``sha``. A deploy commits the service
        as soon as the bundle is uploaded to one peer, and Raft is faster than
        gossip: wait up to HOLDER_WAIT for the holder's profile to arrive."""
        assert self.peer.core is not None
        deadline = trio.current_time() + HOLDER_WAIT
        while True:
            alive = [(m.name, m.profile) for m in self.peer.core.members()
                     if m.state is MemberState.ALIVE and m.name != self.peer.config.name]
            holders = holders_of(sha, holders_index(alive))
            if holders:
                return holders
            if trio.current_time() >= deadline:
                raise BundleError(f"no alive peer holds bundle {sha[:12]}")
            await trio.sleep(0.1)

    async def bundles_changed(self) -> None:
        self._held_bundles = await trio.to_thread.run_sync(self.bundles.profile_section)
        self.peer.republish_profile()

    def bundle_body_limits(self) -> dict[str, BodyLimit]:
        """The large-body rules for bundle uploads, refusing a caller without
        credentials before a byte of the body is read."""
        return {prefix: dataclasses.replace(rule, admit=self._may_upload)
                for prefix, rule in BUNDLE_BODY_LIMITS.items()}

    def _may_upload(self, headers: Mapping[str, str]) -> bool:
        """Only the operator uploads bundles (peers fetch them with GET)."""
        token = bearer_token(headers)
        node = self.roles.node
        digest = node.state.meta.get(TOKEN_META_KEY) if node is not None else None
        return isinstance(digest, str) and token_matches(token, digest)

    def bundle_and_registry_routes(self) -> dict[tuple[str, str], Handler]:
        def authorize(request: Request) -> None:
            """The operator (management token) or another peer (internal secret)."""
            if not is_member(self.peer, request):
                require_management_token(self.peer, request)

        routes = bundle_routes(self.bundles, authorize)
        put = routes[("PUT", "/v1/bundles/{name}")]

        async def put_and_publish(request: Request) -> tuple[int, Any]:
            reply = await put(request)
            await self.bundles_changed()
            return reply

        routes[("PUT", "/v1/bundles/{name}")] = put_and_publish
        def authorize_management(request: Request) -> None:
            require_management_token(self.peer, request)

        routes.update(registry_routes(self.bundles, _RegistryBackend(self), authorize_management,
                                      self.peer.config.name))
        return routes

    # ------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        self.peer.config.data_dir.joinpath("logs").mkdir(parents=True, exist_ok=True)
        await trio.to_thread.run_sync(self.bundles.check_all)
        self._held_bundles = await trio.to_thread.run_sync(self.bundles.profile_section)
        cfg = self.peer.config
        containers = await trio.to_thread.run_sync(lambda: choose_container_launcher(
            cfg.container_engine, state_root=cfg.data_dir / "containers", peer=cfg.name))
        if containers is not None:
            await containers.sweep()  # containers a SIGKILLed daemon left behind
            self.driver.launchers["container"] = containers
        else:
            log.info("no container engine works here (runc as root, podman, docker): "
                     "container services cannot run on this peer")
        async with trio.open_nursery() as nursery:
            await nursery.start(self.driver.run)
            self._runtime_section = {
                "cgroups": self.driver.describe_cgroups(),
                "container_engines": containers.engines if containers is not None else []}
            self.peer.republish_profile()
            await nursery.start(self.reconciler.run)
            await nursery.start(self.roles.run)
            nursery.start_soon(self._follow_committed)
            nursery.start_soon(self._plan_loop)
            nursery.start_soon(DeploymentWatcher(lambda: self.roles.node,
                                                 lambda: _reported_instances(self.peer)).run)
            nursery.start_soon(self._publish_changes)
            if not self.peer.config.join:
                nursery.start_soon(self._commit_token)
            task_status.started()

    async def hand_over(self) -> None:
        """Before a graceful leave: give up Raft membership (leadership first)."""
        with trio.move_on_after(HAND_OVER_TIMEOUT):
            await self.roles.hand_over()

    def membership_changed(self) -> None:
        """Gossip saw a peer join, fail, leave or change its profile."""
        self._plan_wanted.set()

    # ------------------------------------------------------------ committed state

    async def _follow_committed(self) -> None:
        """Committed plan and services → this peer's reconciler, for whichever
        consensus node the role manager runs now."""
        while True:
            node = await self.roles.wait_ready()
            async for state in node.watch():
                self.reconciler.set_desired(state.plan.get("assignments", {}), state.services)
                self._plan_wanted.set()
            await trio.sleep(0.1)  # the node stopped (role change): wait for the next

    async def _plan_loop(self) -> None:
        while True:
            with trio.move_on_after(PLAN_PERIOD):
                await self._plan_wanted.wait()
            self._plan_wanted = trio.Event()
            node = self.roles.node
            if node is None or not node.is_leader or not node.status.has_quorum \
                    or self.roles.restoring:
                continue
            await self._plan_once(node)

    async def _plan_once(self, node: ConsensusNode) -> None:
        assert self.peer.core is not None
        state = node.state
        if self._view_incomplete(state.plan):
            return  # the plan loop comes back within PLAN_PERIOD
        decision = decide(state.services, state.plan, self.peer.core.members(), self.placement)
        if not worth_committing(state.plan, decision.plan):
            return
        try:
            await node.set_plan(decision.plan.to_dict(), state.plan_epoch)
        except StalePlanError:
            self._plan_wanted.set()  # someone committed first: plan again from theirs
            return
        except ConsensusError as exc:
            log.warning("placement: could not commit plan: %s", exc)
            return
        s = decision.plan.stats
        log.info("placement: committed plan epoch %d (%d placed, %d unplaced, %d moved, "
                 "%d rebalanced)", state.plan_epoch + 1, len(decision.plan.assignments),
                 len(decision.plan.unplaced), s.moved, s.rebalanced)

    def _view_incomplete(self, committed: Mapping[str, Any]) -> bool:
        """Hosts of the committed plan unknown to gossip for less than
        VIEW_GRACE: wait for them rather than move their instances away."""
        assert self.peer.core is not None
        now = trio.current_time()
        unknown = unknown_hosts(committed, self.peer.core.members())
        self._unknown_since = {h: self._unknown_since.get(h, now) for h in unknown}
        waiting = [h for h, since in self._unknown_since.items() if now - since < VIEW_GRACE]
        if waiting:
            log.debug("placement: waiting for gossip to show %s", ", ".join(sorted(waiting)))
        return bool(waiting)

    async def _commit_token(self) -> None:
        """The founder commits the management token's hash once a leader exists.
        A token file that cannot be written (a full disk) is retried with
        back-off; the peer is degraded meanwhile."""
        attempt = 0
        while True:
            try:
                token = await trio.to_thread.run_sync(ensure_token_file,
                                                      self.peer.config.data_dir)
            except OSError as exc:
                problem = self.peer.disk.failed("token", "create the management token", exc)
                if problem is not None:
                    log.error("%s; retrying with back-off", problem)
                await trio.sleep(retry_delay(attempt))
                attempt += 1
                continue
            if self.peer.disk.succeeded("token"):
                log.warning("management token written")
            break
        while True:
            node = await self.roles.wait_ready()
            if TOKEN_META_KEY in node.state.meta:
                return
            try:
                await node.init_meta(TOKEN_META_KEY, token_digest(token))
                log.info("mesh bootstrapped: management token in %s",
                         self.peer.config.data_dir / "management.token")
                return
            except ConsensusError:
                await trio.sleep(0.5)

    async def _publish_changes(self) -> None:
        """Re-gossip the profile when the Raft role or an instance changes."""
        seen_raft: Mapping[str, Any] = {}
        seen_version = -1
        while True:
            async with trio.open_nursery() as nursery:
                async def raft_changed() -> None:
                    nonlocal seen_raft
                    seen_raft = await self.roles.wait_profile_change(seen_raft)
                    nursery.cancel_scope.cancel()

                async def instances_changed() -> None:
                    nonlocal seen_version
                    seen_version = await self.driver.wait_changed(seen_version)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(raft_changed)
                nursery.start_soon(instances_changed)
            self.peer.republish_profile()

    # ------------------------------------------------------------ the role manager's view

    def _voters_hint(self) -> frozenset[str]:
        assert self.peer.core is not None
        return voters_from_profiles(
            (m.profile or {}).get("raft") for m in self.peer.core.members()
            if m.state in (MemberState.ALIVE, MemberState.SUSPECT))

    def _epoch_hint(self) -> int:
        assert self.peer.core is not None
        return epoch_from_profiles(
            (m.profile or {}).get("raft") for m in self.peer.core.members()
            if m.state in (MemberState.ALIVE, MemberState.SUSPECT))

    def _view(self) -> list[PeerInfo]:
        assert self.peer.core is not None
        return [peer_info(m.name, m.addr[0], m.state, m.state_since, m.profile)
                for m in self.peer.core.members()]

    async def _ask_promote(self, name: str, voters: frozenset[str]) -> bool:
        return await self._internal_call(name, "/v1/internal/raft/promote",
                                         {"voters": sorted(voters)})

    async def _ask_remove(self, raft_addr: str) -> bool:
        """Ask the leader (else any voter) to remove us."""
        node = self.roles.node
        leader = node.leader if node is not None else None
        target = self._name_of_raft_addr(leader) if leader else None
        names = [target] if target else self._voter_names()
        for name in names:
            if name != self.peer.config.name and await self._internal_call(
                    name, "/v1/internal/raft/remove", {"addr": raft_addr}):
                return True
        return False

    def _name_of_raft_addr(self, addr: str) -> str | None:
        assert self.peer.core is not None
        for m in self.peer.core.members():
            raft = (m.profile or {}).get("raft")
            if isinstance(raft, dict) and raft.get("addr") == addr:
                return m.name
        return None

    def _voter_names(self) -> list[str]:
        voters = self._voters_hint()
        return [n for a in sorted(voters) if (n := self._name_of_raft_addr(a))]

    async def _internal_call(self, name: str, path: str, body: Any) -> bool:
        assert self.peer.core is not None
        member = self.peer.core.member(name)
        if member is None:
            return False
        api = api_address(member.profile, member.addr[0])
        try:
            # abandon_on_cancel: a leaving peer's hand-over deadline must be able
            # to cut a call that blocks on an unresponsive peer.
            data = json.dumps(body).encode()
            token = internal_token(self.peer.keyring, "POST", path, data)
            raw = await trio.to_thread.run_sync(
                lambda: request_bytes("POST", api, path, data, token=token,
                                      timeout=INTERNAL_CALL_TIMEOUT,
                                      content_type="application/json"),
                abandon_on_cancel=True)
            reply = json.loads(raw)
        except (ApiError, ValueError) as exc:
            log.warning("raft roles: %s on %s failed: %s", path, name, exc)
            return False
        return bool(reply.get("ok"))

    # ------------------------------------------------------------ internal API

    def internal_routes(self) -> dict[tuple[str, str], Handler]:
        def check(request: Request) -> None:
            require_member(self.peer, request)

        async def promote(request: Request) -> tuple[int, Any]:
            check(request)
            body = request.json()
            voters = body.get("voters") if isinstance(body, dict) else None
            if not isinstance(voters, list) or not all(isinstance(v, str) for v in voters):
                raise HttpError(400, "voters must be a list of raft addresses")
            return 200, {"ok": await self.roles.become_joining_voter(voters)}

        async def remove(request: Request) -> tuple[int, Any]:
            check(request)
            body = request.json()
            addr = body.get("addr") if isinstance(body, dict) else None
            if not isinstance(addr, str):
                raise HttpError(400, "addr must be a raft address")
            return 200, {"ok": await self.roles.handle_remove(addr)}

        return {("POST", "/v1/internal/raft/promote"): promote,
                ("POST", "/v1/internal/raft/remove"): remove}


def instances_section(statuses: Mapping[str, InstanceStatus]) -> dict[str, dict[str, Any]]:
    """The compact instance states this peer gossips: state, restart count,
    health, the digest of the spec it runs (so anyone can tell an instance
    still running an older version) and the endpoints it serves (what
    `nanomesh.naming` resolves names with). No times: clocks differ between peers, and an age would
    change the profile (and make every peer pull it) on every publish."""
    return {iid: {"state": s.state, "restarts": s.restarts, "health": s.health,
                  "digest": s.spec_digest,
                  "endpoints": {name: {"protocol": protocol, "port": port}
                                for name, protocol, port in s.endpoints}}
            for iid, s in sorted(statuses.items())}



class _RegistryBackend:
    """The registry routes' view of the replicated state."""

    def __init__(self, mesh: MeshControl) -> None:
        self._mesh = mesh

    def entries(self) -> Mapping[str, Mapping[str, Any]]:
        return running_node(self._mesh.peer).state.registry

    async def put(self, key: str, entry: dict[str, Any] | None) -> None:
        node = running_node(self._mesh.peer)
        outcome = await _consensus_call(lambda: node.put_registry(key, entry))
        if not outcome.applied:
            raise HttpError(404 if outcome.reason == "not-found" else 400,
                            f"registry {key!r}: {outcome.reason}")

    def holders(self) -> Mapping[str, list[str]]:
        core = self._mesh.peer.core
        assert core is not None
        return holders_index((m.name, m.profile) for m in core.members()
                             if m.state is MemberState.ALIVE)
