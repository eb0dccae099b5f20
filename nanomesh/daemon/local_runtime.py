"""The runtime of this peer's own instances: the process driver (with its
port allocator and the launchers that work here) and the reconciler that
makes the instances match the committed plan.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

import trio

from nanomesh.config import PeerConfig, host_port
from nanomesh.runtime import HostLauncher, ProcessDriver, Reconciler
from nanomesh.runtime.container import choose_container_launcher
from nanomesh.runtime.instance_spec import RESERVED_PORTS
from nanomesh.runtime.ports import PortAllocator
from nanomesh.runtime.reconcile_shell import ReadyElsewhere

log = logging.getLogger("nanomesh.mesh")

FetchBundle = Callable[[str], Coroutine[Any, Any, Path]]
"""The extracted bundle of a sha256 (`nanomesh.daemon.bundle_service`)."""


class LocalRuntime:
    def __init__(self, cfg: PeerConfig, raft_port: int, fetch: FetchBundle,
                 instance_env: Callable[[str, str], Mapping[str, str]] | None,
                 described: Callable[[], None],
                 ready_elsewhere: ReadyElsewhere | None = None) -> None:
        self._cfg = cfg
        self._described = described
        """Called once the driver runs and `section` is known (republish)."""
        # The container launcher is added in run(): finding the engines that
        # really work (``podman info``...) blocks for a moment.
        self.driver = ProcessDriver(peer=cfg.name, launchers={"process": HostLauncher()})
        # Never hand an instance one of this peer's own ports (they may differ
        # from the defaults the allocator knows).
        self.driver.ports = PortAllocator(
            {*RESERVED_PORTS, cfg.bind[1], cfg.api_port, cfg.coap_port, cfg.events_xpub_port,
             cfg.events_xsub_port, raft_port} - {0})
        self.reconciler = Reconciler(
            cfg.name, self.driver, self.log_dir, fetch=fetch,
            host_ip=cfg.bind[0], peer_api=host_port(*cfg.api_addr),
            state_root=cfg.data_dir / "instances", credentials=instance_env,
            ready_elsewhere=ready_elsewhere)
        self.section: dict[str, Any] = {}
        """The ``runtime`` section of our profile: cgroups, container engines."""

    @property
    def log_dir(self) -> Path:
        return self._cfg.data_dir / "logs"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Find the container engines, then run the driver and the reconciler."""
        cfg = self._cfg
        self.log_dir.mkdir(parents=True, exist_ok=True)
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
            self.section = {
                "cgroups": self.driver.describe_cgroups(),
                "container_engines": containers.engines if containers is not None else []}
            self._described()
            await nursery.start(self.reconciler.run)
            task_status.started()
