"""The control plane of one peer, above membership: the leader's placement
loop, following the committed state, committing the management token,
re-gossiping the profile, and the Raft role manager's view of the mesh.

Rules it keeps (ARCHITECTURE.md §3):

- Only committed state takes effect. Instances start and stop from the
  committed plan (`ControlLoop._follow_committed`); the leader commits plans
  with a compare-and-set on the epoch, so a deposed leader's plan is refused.
- The leader plans (`nanomesh.placement.decide.decide`) whenever membership or the
  desired state changes, and at least every `PLAN_PERIOD`; it commits only a
  plan that changes what runs where (`worth_committing`).
- A peer whose consensus node is down keeps its instances running as last
  committed: local services survive a lost leader or a partition.

Peer-to-peer calls of the promotion protocol (`nanomesh.consensus.role_manager`,
made by `RoleCalls`) go over the peer API under ``/v1/internal/``
(`nanomesh.daemon.api_raft`), authenticated with a key derived from the
cluster key (every peer has it; the management token only the operator has).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import trio

from nanomesh.config import api_address
from nanomesh.consensus import ConsensusError, ConsensusNode, StalePlanError
from nanomesh.consensus.role_manager import (
    RaftRoleManager,
    epoch_from_profiles,
    leads_with_quorum,
    voter_evidence,
)
from nanomesh.consensus.voters import PeerInfo, peer_info
from nanomesh.daemon.api_mesh import reported_instances
from nanomesh.daemon.deployment_watcher import DeploymentWatcher
from nanomesh.daemon.peer_calls import PeerCalls
from nanomesh.daemon.views import Members, NodeSource
from nanomesh.disk import DiskHealth, retry_delay
from nanomesh.durations import FAST_BUCKETS, Durations
from nanomesh.placement import PlacementConfig
from nanomesh.placement.decide import VIEW_GRACE, decide, unknown_hosts, worth_committing
from nanomesh.runtime import ProcessDriver, Reconciler
from nanomesh.runtime.reconcile_core import InstanceStatus
from nanomesh.security.auth import TOKEN_META_KEY, ensure_token_file, token_digest
from nanomesh.transport.apiclient import ApiError
from nanomesh.versions import mesh_raft_version
from nanomesh.wire import MemberState

log = logging.getLogger("nanomesh.mesh")

PLAN_PERIOD = 1.0
"""Seconds between two placement runs on the leader when nothing triggers one.
Membership and desired-state changes trigger a run at once; the period only
catches slow drifts (a peer's live capacity) and retries failed commits."""
INTERNAL_CALL_TIMEOUT = 10.0
"""Seconds a promotion or removal call to another peer may take."""
HAND_OVER_TIMEOUT = 3.0
"""Seconds a leaving peer spends giving up its Raft membership before it
leaves anyway (the leader then removes it when gossip reports it left; cut
short, it stays a voter on disk, see `RaftRoleManager.hand_over`). Bounded
so that SIGTERM always ends the peer promptly."""


class ControlLoop:
    """Plans (as the leader), follows the committed state, publishes changes."""

    def __init__(self, name: str, data_dir: Path, *, founder: bool, roles: RaftRoleManager,
                 driver: ProcessDriver, reconciler: Reconciler, members: Members,
                 disk: DiskHealth, republish: Callable[[], None],
                 placement: PlacementConfig | None = None,
                 committed: Callable[[Mapping[str, Any], Mapping[str, Any]], None] | None = None
                 ) -> None:
        self._name = name
        self._data_dir = data_dir
        self._founder = founder
        """Without --join: this peer commits the management token."""
        self.roles = roles
        self._driver = driver
        self._reconciler = reconciler
        self._members = members
        self._disk = disk
        self._republish = republish
        """Re-gossip our profile if it changed (`GossipShell.republish_profile`)."""
        self.placement = placement or PlacementConfig()
        self._committed = committed
        """Hears each committed (plan, services) followed (the event hub's
        `PlanWatcher`)."""
        self._plan_wanted = trio.Event()
        self._unknown_since: dict[str, float] = {}
        self.placement_durations = Durations(FAST_BUCKETS)
        """Seconds each placement run (`decide`) took on this peer as leader."""
        self.plans_committed = 0
        """Plans this peer committed as leader."""

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """The loops, once the role manager runs (started by the root)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._follow_committed)
            nursery.start_soon(self._plan_loop)
            nursery.start_soon(DeploymentWatcher(lambda: self.roles.node,
                                                 lambda: reported_instances(self._members()),
                                                 self.roles.wait_leading).run)
            nursery.start_soon(self._publish_changes)
            if self._founder:
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
                self._reconciler.set_desired(state.plan.get("assignments", {}), state.services)
                if self._committed is not None:
                    self._committed(state.plan, state.services)
                self._plan_wanted.set()
            await trio.sleep(0.1)  # the node stopped (role change): wait for the next

    async def _plan_loop(self) -> None:
        while True:
            await self.roles.wait_leading()  # a trigger set meanwhile runs at once below
            with trio.move_on_after(PLAN_PERIOD):
                await self._plan_wanted.wait()
            self._plan_wanted = trio.Event()
            node = self.roles.node
            if not leads_with_quorum(node) or self.roles.restoring:
                continue
            await self._plan_once(node)

    async def _plan_once(self, node: ConsensusNode) -> None:
        state = node.state
        if self._view_incomplete(state.plan):
            return  # the plan loop comes back within PLAN_PERIOD
        start = trio.current_time()
        decision = decide(state.services, state.plan, self._members(), self.placement)
        self.placement_durations.observe(trio.current_time() - start)
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
        self.plans_committed += 1
        s = decision.plan.stats
        log.info("placement: committed plan epoch %d (%d placed, %d unplaced, %d moved, "
                 "%d rebalanced)", state.plan_epoch + 1, len(decision.plan.assignments),
                 len(decision.plan.unplaced), s.moved, s.rebalanced)

    def _view_incomplete(self, committed: Mapping[str, Any]) -> bool:
        """Hosts of the committed plan unknown to gossip for less than
        VIEW_GRACE: wait for them rather than move their instances away."""
        now = trio.current_time()
        unknown = unknown_hosts(committed, self._members())
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
                token = await trio.to_thread.run_sync(ensure_token_file, self._data_dir)
            except OSError as exc:
                problem = self._disk.failed("token", "create the management token", exc)
                if problem is not None:
                    log.error("%s; retrying with back-off", problem)
                await trio.sleep(retry_delay(attempt))
                attempt += 1
                continue
            if self._disk.succeeded("token"):
                log.warning("management token written")
            break
        while True:
            node = await self.roles.wait_ready()
            if TOKEN_META_KEY in node.state.meta:
                return
            try:
                await node.init_meta(TOKEN_META_KEY, token_digest(token))
                log.info("mesh bootstrapped: management token in %s",
                         self._data_dir / "management.token")
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
                    seen_version = await self._driver.wait_changed(seen_version)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(raft_changed)
                nursery.start_soon(instances_changed)
            self._republish()


class RoleCalls:
    """The Raft role manager's view of the mesh (gossip) and its calls to other
    peers (promote, remove), handed to `RaftRoleManager` as callbacks."""

    def __init__(self, name: str, members: Members, calls: PeerCalls, node: NodeSource
                 ) -> None:
        self._name = name
        self._members = members
        self._calls = calls
        self._node = node
        """The role manager's current node (to find the leader to ask)."""

    def voters_hint(self) -> frozenset[str]:
        return voter_evidence(self._raft_sections())[0]

    def voters_term_hint(self) -> int:
        return voter_evidence(self._raft_sections())[1]

    def _raft_sections(self) -> list[Any]:
        return [(m.profile or {}).get("raft") for m in self._members()
                if m.state in (MemberState.ALIVE, MemberState.SUSPECT)]

    def epoch_hint(self) -> int:
        return epoch_from_profiles(self._raft_sections())

    def mesh_raft_version(self) -> int:
        """The newest command set every live member applies (the leader's
        version gate, `nanomesh.versions`)."""
        return mesh_raft_version(m.profile for m in self._members()
                                 if m.state in (MemberState.ALIVE, MemberState.SUSPECT))

    def view(self) -> list[PeerInfo]:
        return [peer_info(m.name, m.addr[0], m.state, m.state_since, m.profile)
                for m in self._members()]

    async def ask_promote(self, name: str, voters: frozenset[str]) -> bool:
        return await self._internal_call(name, "/v1/internal/raft/promote",
                                         {"voters": sorted(voters)})

    async def ask_remove(self, raft_addr: str) -> bool:
        """Ask the leader (else any voter) to remove us."""
        node = self._node()
        leader = node.leader if node is not None else None
        target = self._name_of_raft_addr(leader) if leader else None
        names = [target] if target else self._voter_names()
        for name in names:
            if name != self._name and await self._internal_call(
                    name, "/v1/internal/raft/remove", {"addr": raft_addr}):
                return True
        return False

    def _name_of_raft_addr(self, addr: str) -> str | None:
        for m in self._members():
            raft = (m.profile or {}).get("raft")
            if isinstance(raft, dict) and raft.get("addr") == addr:
                return m.name
        return None

    def _voter_names(self) -> list[str]:
        voters = self.voters_hint()
        return [n for a in sorted(voters) if (n := self._name_of_raft_addr(a))]

    async def _internal_call(self, name: str, path: str, body: Any) -> bool:
        member = next((m for m in self._members() if m.name == name), None)
        if member is None:
            return False
        api = api_address(member.profile, member.addr[0])
        try:
            # Async, not a thread: a leaving peer's hand-over deadline must be
            # able to cut a call that blocks on an unresponsive peer.
            reply = await self._calls.call_json("POST", api, path, json.dumps(body).encode(),
                                                timeout=INTERNAL_CALL_TIMEOUT,
                                                content_type="application/json")
        except ApiError as exc:
            log.warning("raft roles: %s on %s failed: %s", path, name, exc)
            return False
        return bool(reply.get("ok")) if isinstance(reply, dict) else False


def _last_exit(s: InstanceStatus) -> int | None:
    return s.exit_code if s.exit_code is not None else s.last_exit


def instances_section(statuses: Mapping[str, InstanceStatus]) -> dict[str, dict[str, Any]]:
    """The compact instance states this peer gossips: state, restart count,
    health, the digest of the spec it runs (so anyone can tell an instance
    still running an older version) and the endpoints it serves (what
    `nanomesh.naming` resolves names with). No times: clocks differ between peers, and an age would
    change the profile (and make every peer pull it) on every publish."""
    return {iid: {"state": s.state, "restarts": s.restarts, "health": s.health,
                  "digest": s.spec_digest,
                  "endpoints": {name: {"protocol": protocol, "port": port}
                                for name, protocol, port in s.endpoints},
                  # how the last run ended, so a failed deploy can say why
                  **({"exit": code} if (code := _last_exit(s)) is not None else {})}
            for iid, s in sorted(statuses.items())}
