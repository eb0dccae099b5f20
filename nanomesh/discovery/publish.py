"""When does a peer re-publish its capability profile? (issue 9)

Every publication bumps the profile version; gossip spreads the version and
*every* other peer then pulls the whole profile (about 1.2 kB of JSON) over
TCP, so one publication costs a transfer per peer in the mesh. Measured before
this module, 25 idle peers on one loaded machine: 3,639 B/s of gossip per
peer, most of it profiles re-published because the machine's CPU load crossed
a 10-point threshold every few samples. This pure core decides instead, from
samples and ``now`` alone (the shell, `nanomesh.daemon.membership`, samples
every ``profile_refresh`` seconds and carries the decision out):

1. **Quantise.** Live values are published as buckets (`Band`), never as the
   raw figure: CPU load in steps of 20 points, available memory in sixteenths
   of the total, ... Jitter inside a bucket changes nothing.
2. **Hysteresis.** A value leaves its published bucket only once it is
   ``margin`` beyond the bucket's edges, so a value hovering on an edge does
   not flap between two buckets. Capacities that feasibility checks (available
   memory, free storage, battery charge) are published *below* the value, by
   at least the margin (the floor of value - margin), so the margin is
   headroom: a value that falls below what is published moves down at once,
   without waiting for the rate limit, and a peer never advertises more than
   it had at its last sample; a value wobbling by less than the margin
   changes nothing.
3. **Rate limit.** Any other change of live values goes out at most once per
   `live_interval` (a minute, longer in a large mesh: the cost of a
   publication grows with the mesh); until then it waits (pending), and each later sample
   recomputes it (a value that came back to its bucket cancels it). A change of
   anything else in the sample (the power source, ...) goes out at once; and a
   publication for another reason (a Raft role, an instance, a new device)
   carries the pending live values along for free (`ProfilePublisher.take_pending`).
4. **Passengers.** Live values placement does not read (``load.load1``,
   ``load.memory_percent``, ``power.battery_health_percent``: for people)
   are bucketed too but never a reason to publish: they ride along, fresh,
   whenever something else is published. (Measured on a 12-minute trace of
   this machine under other engineers' load: with the 1-minute load average
   as a trigger, a 10-peer mesh published more often than before the fix.)

What placement reads (`nanomesh.placement.peers`): ``cpu.cores``,
``memory.available_mb``, ``storage.free_mb``, ``power.source``,
``power.battery_percent``, the network kinds, devices, labels and
``load.cpu_percent``. The live ones are bucketed here and are still there,
coarser: ranking weighs CPU load at 0.25 (a 20-point bucket moves a peer's
score by at most 0.05) and feasibility sees capacities rounded down.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nanomesh.checks import is_number


@dataclass(frozen=True)
class Band:
    """How one live value is bucketed (see `bucket`)."""

    step: float
    """Width of a bucket, in the value's unit; the published value is a
    multiple of it (the floor of the bucket the value is in)."""
    margin: float
    """How far past its bucket's edges a value must go to leave the published
    bucket (hysteresis), same unit. 0: no hysteresis."""
    falls_at_once: bool = False
    """A capacity: published at least ``margin`` below the value, and a value
    below what is published moves down at once (`bucket`), so what is
    advertised is never more than what there is."""
    passenger: bool = False
    """For people only (placement does not read it): never a reason to
    publish, carried along when something else is published."""


@dataclass(frozen=True)
class PublishPolicy:
    """The buckets and the rate limit of live profile values."""

    cpu_percent: Band = Band(step=20.0, margin=5.0)
    """``load.cpu_percent``: five buckets (0, 20, ..., 80, 100). Placement only
    ranks by it (weight 0.25), so 20 points cost at most 0.05 of a score; a
    5-point margin absorbs the swings of a shared or busy machine's sampling
    windows, which the old 10-point threshold republished on."""
    memory_percent: Band = Band(step=10.0, margin=2.0, passenger=True)
    """``load.memory_percent``: for people (placement reads available MB)."""
    load1: Band = Band(step=1.0, margin=0.5, passenger=True)
    """``load.load1`` (1-minute load average): for people only."""
    battery_percent: Band = Band(step=10.0, margin=2.0, falls_at_once=True)
    """``power.battery_percent``: a battery drains ~1 point per minute or
    slower, so a 10-point bucket republishes a draining peer every ten minutes
    at most; a capacity (a service's ``min_battery_percent`` must not land on
    a peer below it): published 2 to 12 points below the charge."""
    battery_health_percent: Band = Band(step=5.0, margin=1.0, passenger=True)
    """``power.battery_health_percent``: changes over months."""
    memory_share: float = 1 / 16
    """Bucket width of ``memory.available_mb`` as a share of ``memory.total_mb``:
    64 MiB on a 1 GiB Pi (about one small nanoservice), 1.5 GiB on 24 GiB."""
    storage_share: float = 1 / 64
    """Bucket width of ``storage.free_mb`` as a share of ``storage.total_mb``:
    500 MiB on a 32 GB SD card. Logs and journals grow steadily; placement
    only needs to know whether a service's storage request still fits."""
    min_capacity_step_mb: int = 16
    """Smallest bucket of available memory and free storage (MiB), for a tiny
    or unknown total."""
    capacity_margin: float = 0.5
    """Margin of available memory and free storage as a share of their step:
    the headroom kept below the value (`bucket`). Half a step: on a 24 GiB
    machine whose available memory swings by hundreds of MiB as other
    programs come and go, 750 MiB; a peer advertises at most 1.5 steps
    (under 10 %) less than it has."""
    min_live_interval: float = 60.0
    """Shortest time (s) between two publications when only live values
    changed (a capacity that fell below its published bucket is not held;
    static changes are not limited). See `live_interval`."""
    live_interval_per_member: float = 5.0
    """Seconds the live interval grows by per live member (`live_interval`).
    At N peers a publication costs N - 1 profile pulls of ~1.5 kB (profile,
    TCP set-up and teardown), mostly sent by peers that hold it already; if
    every peer's live values keep moving (one machine's load seen by all, as
    in a lab), each peer sends about (N - 1) * 1.5 kB per interval for
    them: 5 s per member keeps that near 300 B/s whatever N, against a goal
    of 1,500 B/s for all of an idle peer's traffic."""


def live_interval(policy: PublishPolicy, members: int) -> float:
    """Seconds between live-only publications in a mesh of `members` live
    peers (ourselves included): ``max(min_live_interval,
    live_interval_per_member * members)``; 60 s up to 12 peers, 125 s at
    25, 500 s at 100."""
    return max(policy.min_live_interval, policy.live_interval_per_member * members)


def bucket(value: float, band: Band, published: float | None) -> float:
    """The value to publish for ``value``, given the one published now.

    ``None`` (nothing published yet) gives the floor of ``value``'s bucket.
    Otherwise the published value stays while ``value`` is within its bucket
    widened by ``band.margin`` each side; outside, it is the floor of
    ``value``'s bucket. A capacity (``band.falls_at_once``) instead stays
    while ``value`` is at least the published value (and below the bucket's
    top plus the margin), else it is the floor of ``value - margin`` (never
    below 0): at or below the value, with the margin as headroom.
    """
    if band.falls_at_once:
        if published is not None and published <= value < published + band.step + band.margin:
            return published
        return max(0.0, math.floor((value - band.margin) / band.step) * band.step)
    floor = math.floor(value / band.step) * band.step
    if published is None:
        return floor
    if published - band.margin <= value < published + band.step + band.margin:
        return published
    return floor


def live_bands(profile: Mapping[str, Any], policy: PublishPolicy
               ) -> tuple[tuple[str, str, Band], ...]:
    """``(section, key, band)`` of every live value of ``profile``; the
    capacities' steps follow the profile's totals."""
    memory = _step(_value(profile, "memory", "total_mb"), policy.memory_share, policy)
    storage = _step(_value(profile, "storage", "total_mb"), policy.storage_share, policy)
    return (
        ("load", "cpu_percent", policy.cpu_percent),
        ("load", "memory_percent", policy.memory_percent),
        ("load", "load1", policy.load1),
        ("power", "battery_percent", policy.battery_percent),
        ("power", "battery_health_percent", policy.battery_health_percent),
        ("memory", "available_mb",
         Band(memory, policy.capacity_margin * memory, falls_at_once=True)),
        ("storage", "free_mb",
         Band(storage, policy.capacity_margin * storage, falls_at_once=True)),
    )


def quantise(profile: Mapping[str, Any], published: Mapping[str, Any] | None,
             policy: PublishPolicy = PublishPolicy()) -> dict[str, Any]:
    """A copy of ``profile`` with every live value bucketed relative to the
    value ``published`` holds (``None``: nothing published, plain floors).
    Missing or non-numeric live values are left as they are; an ``int`` stays
    an ``int``."""
    out = copy.deepcopy(dict(profile))
    for section, key, band in live_bands(profile, policy):
        value = _value(out, section, key)
        if not is_number(value):
            continue
        old = _value(published, section, key) if published is not None else None
        q = bucket(float(value), band, float(old) if is_number(old) else None)
        out[section][key] = int(q) if isinstance(value, int) else round(q, 3)
    return out


def without_live(profile: Mapping[str, Any], policy: PublishPolicy = PublishPolicy(),
                 *, passengers_only: bool = False) -> dict[str, Any]:
    """``profile`` without its live values: what must go out at once if it
    changes. ``passengers_only``: without the passengers alone (what is worth
    publishing at all)."""
    out = copy.deepcopy(dict(profile))
    for section, key, band in live_bands(profile, policy):
        part = out.get(section)
        if isinstance(part, dict) and (band.passenger or not passengers_only):
            part.pop(key, None)
    return out


def capacity_fell(published: Mapping[str, Any], candidate: Mapping[str, Any],
                  policy: PublishPolicy = PublishPolicy()) -> bool:
    """True if a capacity (a band that falls at once) is lower in ``candidate``."""
    for section, key, band in live_bands(candidate, policy):
        old, new = _value(published, section, key), _value(candidate, section, key)
        if band.falls_at_once and is_number(old) and is_number(new) and new < old:
            return True
    return False


@dataclass
class PublishStats:
    """What `ProfilePublisher` decided, sample by sample (monotonic counters)."""

    quiet: int = 0
    """Samples whose bucketed values equal the published ones (passengers aside)."""
    live: int = 0
    """Live-only changes published (the rate limit allowed them)."""
    held: int = 0
    """Samples with a live-only change held back by the rate limit."""
    static: int = 0
    """Samples with a change of something not live, published at once."""
    fell: int = 0
    """Samples where a capacity fell below its published bucket, published at once."""
    carried: int = 0
    """Pending live changes carried by a publication for another reason."""


class ProfilePublisher:
    """Decides which profile this peer publishes and when (module docstring).

    ``published`` is the profile to gossip (live values bucketed). Feed it
    samples with `observe`; call `take_pending` whenever a publication goes
    out for another reason.
    """

    def __init__(self, discovered: Mapping[str, Any], now: float,
                 policy: PublishPolicy = PublishPolicy()) -> None:
        self.policy = policy
        self.published: dict[str, Any] = quantise(discovered, None, policy)
        self.latest: dict[str, Any] | None = None
        """The last sample, bucketed (what a publication now would carry)."""
        self.last_published = now
        self.stats = PublishStats()

    @property
    def pending(self) -> dict[str, Any] | None:
        """A live change waiting for the rate limit (passengers aside), or None."""
        latest = self.latest
        return latest if latest is not None and not self._same(latest) else None

    def _same(self, candidate: Mapping[str, Any]) -> bool:
        """``candidate`` equals ``published``, passengers aside."""
        return without_live(candidate, self.policy, passengers_only=True) == \
            without_live(self.published, self.policy, passengers_only=True)

    def observe(self, sample: Mapping[str, Any], now: float, members: int = 1) -> bool:
        """A fresh sample (a whole profile, live values re-read) in a mesh of
        `members` live peers. True if ``published`` changed and should go out now."""
        candidate = quantise(sample, self.published, self.policy)
        self.latest = candidate
        if self._same(candidate):
            self.stats.quiet += 1
            return False
        if without_live(candidate, self.policy) != without_live(self.published, self.policy):
            self.stats.static += 1
        elif capacity_fell(self.published, candidate, self.policy):
            self.stats.fell += 1
        elif now - self.last_published >= live_interval(self.policy, members):
            self.stats.live += 1
        else:
            self.stats.held += 1
            return False
        self.published, self.last_published = candidate, now
        return True

    def take_pending(self, now: float) -> dict[str, Any]:
        """A publication goes out now (for any reason): fold the last sample
        (pending live values, fresh passengers) into ``published``, restart
        the rate limit, return it."""
        if self.latest is not None:
            if self.pending is not None:
                self.stats.carried += 1
            self.published = self.latest
        self.last_published = now
        return self.published


def _step(total: Any, share: float, policy: PublishPolicy) -> float:
    whole = float(total) if is_number(total) and total > 0 else 0.0
    return float(max(policy.min_capacity_step_mb, math.floor(whole * share)))


def _value(profile: Mapping[str, Any], section: str, key: str) -> Any:
    """``profile[section][key]``, or ``None`` if either level is missing."""
    part = profile.get(section)
    return part.get(key) if isinstance(part, Mapping) else None
