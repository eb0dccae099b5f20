"""Where the daemon's capability profile comes from: discovery at start, then
periodic live samples (blocking reads: run them in a thread). Whether a sample
is published is decided by `nanomesh.discovery.publish.ProfilePublisher`."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from nanomesh import __version__
from nanomesh.config import PeerConfig, host_port
from nanomesh.discovery import DiscoveryConfig, discover, refresh_live
from nanomesh.versions import THIS


class ProfileSource:
    def __init__(self, config: PeerConfig) -> None:
        self.name = config.name
        self.api = host_port(config.bind[0], config.api_port)
        self.discovery = DiscoveryConfig(
            data_dir=config.data_dir,
            devices=tuple(config.devices),
            labels=dict(config.labels),
        )
        self.discovery_ms: float | None = None

    def initial(self) -> dict[str, Any]:
        """Probe the machine (blocking; run it in a thread)."""
        started = time.perf_counter()
        profile = discover(self.discovery)
        self.discovery_ms = (time.perf_counter() - started) * 1000
        # "protocols": what this build speaks (`nanomesh.versions`); peers
        # refuse a peer whose ranges do not overlap theirs.
        profile["peer"] = {"name": self.name, "nanomesh": __version__, "api": self.api,
                           "protocols": THIS.protocols_json(),
                           "discovery_ms": round(self.discovery_ms, 2)}
        return profile

    def sample(self, published: Mapping[str, Any]) -> dict[str, Any]:
        """``published`` with its live values re-read (raw, not yet bucketed)."""
        return refresh_live(published, self.discovery)
