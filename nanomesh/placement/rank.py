"""The placement score: how good a feasible peer is for one more instance.

    score = weight_fill  * fill
          + weight_load  * (1 - cpu_load_percent / 100)
          + weight_power * power

* ``u`` = planned utilisation of the peer: the larger of reserved CPU / cores
  and reserved memory / available memory (the scarcer resource dominates, as
  in DRF). Storage is left out: it is plentiful on every device class we
  target and would only dilute the signal. ``fill = 1 - u`` in spread mode
  (emptier is better) and ``fill = u`` in binpack mode (fuller is better).
* the live CPU load prefers idle peers; it already includes what instances
  running there use.
* ``power`` is 1 on mains, ``battery_percent / 200`` on battery (a full
  battery is worth half of mains, an empty one nothing), 0 when unknown.

Default weights (:class:`~nanomesh.placement.config.PlacementConfig`): fill
1, load 0.25, power 0.25, so the live preferences shift a peer by at most 50
points of utilisation in total and utilisation dominates.

Higher is better. Ties are broken by the injected RNG's candidate order, after
instance count (fewer first in spread mode, more first in binpack), so
services that reserve nothing still spread out. The score depends on the
peer and its planned use only, never on the service: one number per peer
serves every service, which is what makes the balanced strategy's indexes
cheap (:mod:`nanomesh.placement.balanced`).
"""

from __future__ import annotations

from nanomesh.placement.config import Mode, PlacementConfig
from nanomesh.placement.peers import PeerView


def share(used: float, capacity: float) -> float:
    """used / capacity clipped to 0..1; a peer with no capacity and nothing
    used is empty, with something used full."""
    if capacity <= 0:
        return 0.0 if used <= 0 else 1.0
    return min(1.0, max(0.0, used / capacity))


def utilisation(peer: PeerView, cpu_used: float, memory_used: int) -> float:
    """Planned utilisation u (module docstring)."""
    return max(share(cpu_used, peer.cpu_cores), share(memory_used, peer.memory_mb))


def power_preference(peer: PeerView) -> float:
    """1 on mains, half the battery charge (as a fraction) on battery, 0 unknown."""
    if peer.power == "ac":
        return 1.0
    if peer.power == "battery":
        return max(0.0, min(100.0, peer.battery_percent)) / 200.0
    return 0.0


def score(peer: PeerView, cpu_used: float, memory_used: int, mode: Mode,
          config: PlacementConfig) -> float:
    """The score of ``peer`` with ``cpu_used`` cores and ``memory_used`` MB
    reserved on it (module docstring)."""
    u = utilisation(peer, cpu_used, memory_used)
    fill = u if mode == "binpack" else 1.0 - u
    idle = 1.0 - max(0.0, min(100.0, peer.cpu_load_percent)) / 100.0
    return (config.weight_fill * fill + config.weight_load * idle
            + config.weight_power * power_preference(peer))
