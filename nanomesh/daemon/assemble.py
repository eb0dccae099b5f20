"""The composition root of the peer daemon: the one module that builds every
part and runs them. No other module under `nanomesh.daemon` imports it;
parts see each other only through the narrow views it hands them
(`nanomesh.daemon.views`, each route group's context).

Parts, built in `PeerAssembly.run` once the gossip core exists:

- the membership shell (`membership.GossipShell`) around the SWIM core;
- the runtime of our instances (`local_runtime.LocalRuntime`: driver, port
  allocator, reconciler);
- the Raft role manager (`nanomesh.consensus.role_manager`) with its view of the
  mesh and its calls to other peers (`control_loop.RoleCalls`);
- the bundle store and its service (`bundle_service`);
- the control loop (`control_loop.ControlLoop`);
- who may do what (`api_auth.Access`);
- the event hub (`events.EventHub`): recent mesh events, fed by the gossip
  shell, the control loop and the watchers of Raft and the instances;
- the HTTP API with every route group (and the dashboard, `api_ui`, unless
  the config turns it off).

Start order (all tasks in one nursery):

1. prepare the data directory, read the previous life's incarnation and
   peers, discover this machine's profile, build the core and the parts;
2. open every socket (gossip UDP and TCP, the API, the CoAP gateway's UDP
   and link ports, the event relay's ports) before starting anything, so
   that a port in use or an address this host does not have is one clear error;
3. signals first: a SIGTERM during start-up must still mean "leave";
4. the gossip shell, then the HTTP API; the CoAP gateway and the event relay
   wait for their first use on their bound sockets (`on_demand`);
5. the control plane (bundles checked, runtime, Raft roles, control loop):
   it may wait seconds for gossip before it bootstraps Raft, while
   membership and the API are up;
6. the profile refresher, the disk watcher, and joining the seeds.

Graceful leave (SIGINT/SIGTERM): mark the peer as leaving (``/v1/health``
says so), hand Raft membership over (bounded, `control_loop.HAND_OVER_TIMEOUT`),
then announce the leave by gossip and give it time to spread; then exit.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from nanomesh.bundles import BUNDLES_SECTION
from nanomesh.config import PeerConfig
from nanomesh.consensus import RaftTiming
from nanomesh.consensus.role_manager import RaftRoleManager, Replica, RoleConfig
from nanomesh.daemon.api import HealthContext, api_routes
from nanomesh.daemon.api_auth import Access
from nanomesh.daemon.api_events import event_routes
from nanomesh.daemon.api_keyring import KeyringContext, keyring_routes
from nanomesh.daemon.api_mesh import MeshContext, mesh_routes
from nanomesh.daemon.api_naming import (
    NamingContext,
    naming_routes,
    service_names,
    service_visibility,
)
from nanomesh.daemon.api_openapi import openapi_routes
from nanomesh.daemon.api_raft import FollowCalls, raft_routes
from nanomesh.daemon.api_runtime import RuntimeContext, runtime_routes
from nanomesh.daemon.api_ui import ui_routes
from nanomesh.daemon.bundle_service import (
    BundleService,
    bundle_and_registry_routes,
    bundle_body_limits,
)
from nanomesh.daemon.control_loop import ControlLoop, RoleCalls, instances_section
from nanomesh.daemon.events import EventHub, PlanWatcher, watch_instances, watch_raft
from nanomesh.daemon.http import serve_http
from nanomesh.daemon.http_limits import ServerStats
from nanomesh.daemon.local_runtime import LocalRuntime
from nanomesh.daemon.membership import GossipShell, prepare_data_dir, rejoin_targets
from nanomesh.daemon.metrics import metrics_routes
from nanomesh.daemon.metrics_context import MetricsContext
from nanomesh.daemon.on_demand import bind_udp_dual_stack, listen_tcp, serve_on_first_use
from nanomesh.daemon.peer_calls import PeerCalls
from nanomesh.daemon.profile import ProfileSource
from nanomesh.daemon.upgrade import RESTART_EXIT, InstallRoot, UpgradeContext, upgrade_routes
from nanomesh.daemon.views import Routes, Traffic
from nanomesh.discovery.publish import ProfilePublisher
from nanomesh.disk import DiskHealth
from nanomesh.errors import ConfigError
from nanomesh.gateway.leaf_core import LeafEndpoint
from nanomesh.gossip.machine import Membership
from nanomesh.naming import ready_on
from nanomesh.security import servicekeys
from nanomesh.security.auth import InternalCalls
from nanomesh.wire import Address, Keyring
from nanomesh.wire.leaf import parse_leaf_keys

if TYPE_CHECKING:  # the gateway's modules load only when it runs (--coap-port)
    from nanomesh.gateway.core import Gateway

log = logging.getLogger("nanomesh.peer")
T = TypeVar("T")


class PeerAssembly:
    """One peer daemon: `run` builds its parts and runs them until a signal."""

    def __init__(self, config: PeerConfig, keyring: Keyring, profiles: ProfileSource, *,
                 key_path: Path | None = None, roles: RoleConfig | None = None,
                 timing: RaftTiming | None = None) -> None:
        if not keyring.enabled:
            raise ConfigError("a peer never runs without the cluster key (see --key-file)")
        self.config = config
        self.keyring = keyring
        self.key_path = key_path
        """The key file, rewritten on a live key rotation (None: not kept)."""
        self.profiles = profiles
        self._role_config = roles or RoleConfig()
        self._timing = timing or RaftTiming.lan()
        # Service traffic (instances' ZeroMQ, the event relay, the gateway
        # link) is authenticated with keys derived from the cluster key.
        self.credentials = servicekeys.Credentials(keyring)
        servicekeys.install(self.credentials.keys)
        self.started_wall = time.time()
        self.stopping = False
        """True once a graceful leave began (``/v1/health`` says "leaving")."""
        self.exit_code = 0
        """What ``nanomesh peer run`` exits with: `RESTART_EXIT` after an
        upgrade or rollback asked for a restart (`nanomesh.daemon.upgrade`)."""
        self._restart = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        cfg = self.config
        last_incarnation, remembered = prepare_data_dir(cfg.data_dir)
        # The configured seeds, then the peers we last saw alive (Serf's
        # snapshot rejoin): a mesh restarted while its seeds stay down still
        # finds itself, and a founder without --join rejoins its old peers.
        seeds = rejoin_targets(cfg.join, remembered, cfg.bind)
        discovered = await trio.to_thread.run_sync(self.profiles.initial)
        live = ProfilePublisher(discovered, trio.current_time())
        # One above our previous life's incarnation: what we say now outranks
        # anything the mesh remembers about us, profile version included.
        core = Membership(cfg.name, cfg.bind, cfg.gossip,
                          random.Random(int.from_bytes(os.urandom(8), "big")),
                          trio.current_time(), profile=live.published,
                          incarnation=last_incarnation + 1)
        parts = self._build(core, live, remembered)
        # Open every socket before starting anything, so that a port in use or
        # an address this host does not have is one clear error.
        udp = _listening("gossip (UDP)", cfg.bind, lambda: _bind_udp(cfg.bind))
        listeners = await _open_tcp("gossip (TCP)", cfg.bind)
        api_listeners = await _open_tcp("HTTP API", cfg.api_addr)
        ip = cfg.bind[0]
        gateway = (bind_udp_dual_stack((ip, cfg.coap_port), "the CoAP gateway (UDP)"),
                   listen_tcp((ip, cfg.coap_port), "the gateway link (TCP)")
                   ) if cfg.coap_port else None
        relay = tuple(listen_tcp((ip, port), f"events ({what})",
                                 f"; choose another port (peer.events_{what.lower()}_port, "
                                 "0 disables)")
                      for what, port in (("XSUB", cfg.events_xsub_port),
                                         ("XPUB", cfg.events_xpub_port))
                      ) if cfg.events_xpub_port and cfg.events_xsub_port else None
        async with trio.open_nursery() as nursery:
            # Signals first: a SIGTERM during start-up must still mean "leave".
            await nursery.start(self._watch_signals, parts, nursery.cancel_scope)
            await nursery.start(parts.shell.serve, udp, listeners)
            await nursery.start(functools.partial(
                serve_http, large_bodies=bundle_body_limits(parts.access),
                stats=parts.api_stats), parts.routes, api_listeners)
            if gateway is not None:
                start_gateway = functools.partial(self._start_coap_gateway, parts, *gateway)
                if parts.leaves is not None:
                    # Microcontroller leaves find the gateway by multicast and
                    # silent ones must expire: no first use to wait for.
                    await nursery.start(start_gateway)
                else:
                    await nursery.start(serve_on_first_use, "CoAP gateway", gateway,
                                        start_gateway)
            if relay is not None:
                await nursery.start(serve_on_first_use, "event relay", relay,
                                    functools.partial(self._serve_event_relay, *relay))
            # The control plane may wait seconds for gossip before it bootstraps
            # Raft; membership and the API are up meanwhile.
            nursery.start_soon(_run_control_plane, parts)
            nursery.start_soon(parts.shell.refresh_profile)
            nursery.start_soon(watch_raft, parts.roles, parts.events, core.members)
            nursery.start_soon(watch_instances, parts.runtime.driver, parts.events)
            nursery.start_soon(parts.shell.watch_disk)
            log.info("peer %s listening: gossip %s:%d (udp+tcp), api http://%s:%d, "
                     "encryption %s, preset probe_interval=%.2fs", cfg.name, *cfg.bind,
                     cfg.bind[0], cfg.api_port, "on" if self.keyring.enabled else "OFF",
                     cfg.gossip.probe_interval)
            if seeds:
                nursery.start_soon(parts.shell.join_until_joined, seeds)
            task_status.started()

    def _build(self, core: Membership, live: ProfilePublisher,
               remembered: tuple[Address, ...] = ()) -> _Parts:
        """Every part, wired through callables and narrow contexts. The
        closures below name parts built after them (``shell``, ``roles``):
        they are only called once everything is built and running."""
        cfg = self.config
        members = core.members
        disk = DiskHealth()
        events = EventHub(cfg.name)
        calls = PeerCalls(self.keyring, source_ip=cfg.bind[0])

        def consensus() -> Replica | None:
            return roles.node

        def republish() -> None:
            shell.republish_profile()

        bundles = BundleService(cfg.name, cfg.data_dir, self.keyring, members, republish)
        runtime = LocalRuntime(cfg, self._role_config.raft_port, bundles.fetch_bundle,
                               self.credentials.instance_env, republish,
                               ready_elsewhere=lambda iid, peer: ready_on(members(), peer, iid))
        role_calls = RoleCalls(cfg.name, members, calls, consensus)
        roles = RaftRoleManager(
            cfg.bind[0], cfg.data_dir / "consensus", keyring=self.keyring,
            timing=self._timing, founder=not cfg.join,
            voters_hint=role_calls.voters_hint, config=self._role_config,
            view=role_calls.view, ask_promote=role_calls.ask_promote,
            ask_remove=role_calls.ask_remove, epoch_hint=role_calls.epoch_hint,
            voters_term_hint=role_calls.voters_term_hint,
            follow=FollowCalls(members, calls), mesh_raft_version=role_calls.mesh_raft_version)
        control = ControlLoop(cfg.name, cfg.data_dir, founder=not cfg.join, roles=roles,
                              driver=runtime.driver, reconciler=runtime.reconciler,
                              members=members, disk=disk, republish=republish,
                              committed=PlanWatcher(events, members).committed)

        leaves = leaf_endpoint(cfg)
        own_devices = list(live.published.get("devices") or [])
        """This machine's devices (config and HAT: fixed while the peer runs)."""

        def profile_sections() -> dict[str, Any]:
            """What the control plane adds to our gossiped profile: the Raft
            role, our instances' states, the bundles we serve, the runtime;
            and our leaves (their devices count as ours for placement)."""
            sections: dict[str, Any] = {
                "raft": roles.profile_section(),
                "instances": instances_section(runtime.driver.status()),
                BUNDLES_SECTION: bundles.held, "runtime": runtime.section}
            if leaves is not None and leaves.registry.leaves:
                sections["leaves"] = leaves.registry.summary()
                sections["devices"] = [*own_devices, *leaves.registry.devices()]
            return sections

        def storage_problems() -> tuple[str, ...]:
            node = roles.node
            return tuple(node.storage_problems) if node is not None else ()

        def gossip_changed() -> None:
            control.membership_changed()
            roles.gossip_changed()  # a learner looks for a newer announced state

        traffic = Traffic()
        shell = GossipShell(cfg, self.keyring, core, self.profiles, live,
                            disk=disk, traffic=traffic, sections=profile_sections,
                            membership_changed=gossip_changed,
                            storage_problems=storage_problems, remembered=remembered,
                            notify=events.membership)
        access = Access(self.keyring, InternalCalls(), consensus,
                        runtime.driver.instance_token,
                        metrics_need_token=cfg.metrics_need_token)
        api_stats = ServerStats()
        """What the HTTP API refused or cut off (``/v1/health`` shows it)."""
        routes: Routes = {
            **api_routes(HealthContext(
                core, f"{cfg.bind[0]}:{cfg.api_port}", self.started_wall,
                shell.disk_problems, lambda: self.stopping, consensus, traffic, api_stats,
                live.stats)),
            **mesh_routes(MeshContext(cfg.name, access, consensus, members, roles)),
            **raft_routes(roles, access),
            **keyring_routes(KeyringContext(cfg.name, self.keyring, self.key_path, access,
                                            members, calls)),
            **naming_routes(NamingContext(cfg.name, members, consensus)),
            **runtime_routes(RuntimeContext(cfg.name, runtime.log_dir, access)),
            **bundle_and_registry_routes(bundles, access, consensus),
            **event_routes(events),
            **upgrade_routes(UpgradeContext(
                access, InstallRoot(cfg.install_root) if cfg.install_root else None,
                bundles.fetch_bundle, self.request_restart))}
        if cfg.ui:
            routes.update(ui_routes())
        parts = _Parts(core, shell, bundles, runtime, roles, control, access, routes,
                       api_stats, events, leaves)
        routes.update(metrics_routes(MetricsContext(
            core, traffic, consensus, lambda: roles.role, lambda: roles.epoch,
            control.placement_durations, lambda: control.plans_committed,
            runtime.driver.status, runtime.reconciler.restarts, lambda: parts.gateway,
            api_stats, access, gateway_configured=bool(cfg.coap_port))))
        routes.update(openapi_routes(routes))  # last: it documents the whole table
        return parts

    async def _serve_coap_gateway(
            self, parts: _Parts, udp: socket.socket, link: socket.socket, *,
            task_status: trio.TaskStatus[Gateway] = trio.TASK_STATUS_IGNORED) -> None:
        """``coap://<our IP>:<coap_port>/s/<service>/<path>``, resolved
        through our gossip view (our own instances first), on the sockets
        bound at start (imported and started on first use)."""
        from nanomesh.gateway.coap import serve_coap_gateway
        from nanomesh.naming import resolve
        core, me, roles = parts.core, self.config.name, parts.roles
        await serve_coap_gateway((self.config.bind[0], self.config.coap_port),
                                 lambda service: resolve(core.members(), service, me=me),
                                 services=lambda: service_names(roles.node, core.members()),
                                 visibility=lambda service: service_visibility(roles.node,
                                                                               service),
                                 me=me, keys=self.credentials.keys, leaves=parts.leaves,
                                 leaves_changed=parts.shell.republish_profile, udp=udp,
                                 link_fd=link.detach(), task_status=task_status)

    async def _start_coap_gateway(
            self, parts: _Parts, udp: socket.socket, link: socket.socket, *,
            task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the gateway on the bound sockets; `parts.gateway` once it listens."""
        async with trio.open_nursery() as nursery:
            parts.gateway = await nursery.start(self._serve_coap_gateway, parts, udp, link)
            task_status.started()

    async def _serve_event_relay(self, xsub: socket.socket, xpub: socket.socket) -> None:
        """Pub/sub between nanoservices, on the sockets bound at start."""
        from nanomesh.sdk.events import serve_event_relay
        await serve_event_relay(self.config.bind[0], self.config.events_xsub_port,
                                self.config.events_xpub_port, credentials=self.credentials,
                                fds=(xsub.detach(), xpub.detach()))

    def request_restart(self) -> None:
        """Leave gracefully and exit with `RESTART_EXIT`, for the supervisor
        to start us again (from the install root's switched venv)."""
        self.exit_code = RESTART_EXIT
        self._restart.set()

    async def _watch_signals(self, parts: _Parts, scope: trio.CancelScope, *,
                             task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                             ) -> None:
        """Leave on SIGINT/SIGTERM or when a restart is requested, whichever first."""
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async with trio.open_nursery() as first:
                async def on_signal() -> None:
                    async for signum in signals:
                        log.info("received %s: leaving the mesh",
                                 signal.Signals(signum).name)
                        break
                    first.cancel_scope.cancel()

                async def on_restart() -> None:
                    await self._restart.wait()
                    log.info("restart requested: leaving the mesh, then exiting with %d "
                             "for the supervisor to start us again", RESTART_EXIT)
                    first.cancel_scope.cancel()

                first.start_soon(on_signal)
                first.start_soon(on_restart)
            await self._leave(parts)
            scope.cancel()

    async def _leave(self, parts: _Parts) -> None:
        """Hand Raft membership over, then announce the leave by gossip."""
        self.stopping = True
        await parts.control.hand_over()
        await parts.shell.leave()


class _Parts:
    """Everything `PeerAssembly._build` made (kept together for `run`)."""

    def __init__(self, core: Membership, shell: GossipShell, bundles: BundleService,
                 runtime: LocalRuntime, roles: RaftRoleManager, control: ControlLoop,
                 access: Access, routes: Routes, api_stats: ServerStats,
                 events: EventHub, leaves: LeafEndpoint | None) -> None:
        self.core = core
        self.shell = shell
        self.bundles = bundles
        self.runtime = runtime
        self.roles = roles
        self.control = control
        self.access = access
        self.routes = routes
        self.api_stats = api_stats
        self.events = events
        self.leaves = leaves
        self.gateway: Gateway | None = None
        """The CoAP gateway once it listens (None without one)."""


def leaf_endpoint(cfg: PeerConfig) -> LeafEndpoint | None:
    """The leaves' endpoint if the config names a leaf key file (read now:
    ConfigError before anything starts), else None."""
    if cfg.leaf_keys is None:
        return None
    if not cfg.coap_port:
        raise ConfigError("peer.leaf_keys needs the CoAP gateway (coap_port is 0)")
    try:
        text = cfg.leaf_keys.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the leaf key file {cfg.leaf_keys}: "
                          f"{exc.strerror or exc}") from None
    return LeafEndpoint(parse_leaf_keys(text, str(cfg.leaf_keys)))


async def _run_control_plane(parts: _Parts) -> None:
    """Bundles checked, then the runtime (it republishes our profile once it
    knows its cgroups and engines), the Raft role manager, the control loop."""
    await parts.bundles.prepare()
    async with trio.open_nursery() as nursery:
        await nursery.start(parts.runtime.run)
        await nursery.start(parts.roles.run)
        await nursery.start(parts.control.run)


def _listening(what: str, addr: Address, open_: Callable[[], T]) -> T:
    try:
        return open_()
    except OSError as exc:
        raise ConfigError(f"cannot listen for {what} on {addr[0]}:{addr[1]}: "
                          f"{exc.strerror or exc}") from None


async def _open_tcp(what: str, addr: Address) -> list[trio.SocketListener]:
    try:
        return await trio.open_tcp_listeners(addr[1], host=addr[0])
    except OSError as exc:
        raise ConfigError(f"cannot listen for {what} on {addr[0]}:{addr[1]}: "
                          f"{exc.strerror or exc}") from None


def _bind_udp(addr: Address) -> socket.socket:
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setblocking(False)
    # Room for bursts of acks and gossip while the event loop is busy.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind(addr)
    return sock
