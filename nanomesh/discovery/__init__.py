"""Capability discovery: what this peer is and what it can do.

Every peer builds a *capability profile* from the machine itself (CPU,
memory, storage, power, networks, sensors and actuators, live load), and
gossip spreads it so that placement can put each nanoservice on a peer that
has what it needs. The shape of the profile is fixed in
:mod:`nanomesh.discovery.profile`; it is a plain dict so it crosses the wire
and the HTTP API unchanged.

Where each part comes from:

* files under ``/proc`` and ``/sys`` through pure parsers that take text or a
  root path (:mod:`.cpu`, :mod:`.power`, :mod:`.network`, :mod:`.hat`), so each
  rule is tested against fixture trees;
* psutil for what it does portably (CPU count, memory, disk usage, interface
  state and addresses, CPU percent, the battery on non-Linux systems);
* the peer config for devices that cannot be probed (:mod:`.devices`).

Static parts are read once (:func:`discover`); live parts are re-read by
:func:`refresh_live` / :func:`sample_load`, and :class:`ProfilePublisher`
decides when they are worth a new profile version: bucketed, with hysteresis
and a rate limit (:mod:`.publish`).
"""

from nanomesh.discovery.config import DiscoveryConfig
from nanomesh.discovery.devices import KNOWN_DEVICE_TYPES, SIMULATED_DRIVER
from nanomesh.discovery.errors import DiscoveryConfigError
from nanomesh.discovery.hat import KNOWN_HATS
from nanomesh.discovery.probe import discover, refresh_live, sample_load
from nanomesh.discovery.profile import PROFILE_KEYS
from nanomesh.discovery.publish import ProfilePublisher, PublishPolicy, quantise

__all__ = [
    "KNOWN_DEVICE_TYPES",
    "KNOWN_HATS",
    "PROFILE_KEYS",
    "SIMULATED_DRIVER",
    "DiscoveryConfig",
    "DiscoveryConfigError",
    "ProfilePublisher",
    "PublishPolicy",
    "discover",
    "quantise",
    "refresh_live",
    "sample_load",
]
