"""The profile publisher (`nanomesh.discovery.publish`): buckets, hysteresis,
the rate limit of live-only changes, and static changes at once. Pure: every
test passes ``now`` explicitly."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from nanomesh.discovery.publish import (
    Band,
    ProfilePublisher,
    PublishPolicy,
    bucket,
    capacity_fell,
    live_interval,
    quantise,
    without_live,
)
from nanomesh.placement.peers import peer_view_from_profile

BASE: dict[str, Any] = {
    "cpu": {"cores": 4, "arch": "aarch64"},
    "memory": {"total_mb": 1024, "available_mb": 700},
    "storage": {"path": "/var/lib/nanomesh", "total_mb": 32000, "free_mb": 19900},
    "power": {"source": "battery", "battery_percent": 73.0, "battery_health_percent": 91.0,
              "detected_by": "sysfs"},
    "network": {"wifi": True, "ethernet": False, "bluetooth": True, "interfaces": []},
    "devices": [{"type": "pir", "source": "config", "driver": "simulated"}],
    "labels": {"room": "kitchen"},
    "load": {"cpu_percent": 33.0, "memory_percent": 31.6, "load1": 0.42},
}
"""A 1 GiB, 4-core battery Pi: memory step 64 MiB, storage step 500 MiB."""


def sample(base: dict[str, Any] = BASE, **live: float) -> dict[str, Any]:
    """``base`` with live values replaced: ``cpu=..``, ``avail=..``, ``battery=..``."""
    out = copy.deepcopy(base)
    paths = {"cpu": ("load", "cpu_percent"), "mem_pct": ("load", "memory_percent"),
             "load1": ("load", "load1"), "avail": ("memory", "available_mb"),
             "free": ("storage", "free_mb"), "battery": ("power", "battery_percent")}
    for name, value in live.items():
        section, key = paths[name]
        out[section][key] = value
    return out


CPU = Band(step=20.0, margin=5.0)
CAPACITY = Band(step=64.0, margin=32.0, falls_at_once=True)


@pytest.mark.parametrize(("value", "band", "published", "expected"), [
    (33.0, CPU, None, 20.0),          # nothing published: the bucket's floor
    (0.0, CPU, None, 0.0),
    (100.0, CPU, None, 100.0),
    (39.9, CPU, 20.0, 20.0),          # inside the bucket
    (44.9, CPU, 20.0, 20.0),          # past the edge, within the margin
    (45.0, CPU, 20.0, 40.0),          # margin passed: the new bucket's floor
    (15.1, CPU, 20.0, 20.0),          # below the bucket, within the margin
    (14.9, CPU, 20.0, 0.0),
    (97.0, CPU, 20.0, 80.0),          # a jump lands on its own bucket
    (100.0, CAPACITY, None, 64.0),    # a capacity: the floor of value - margin
    (90.0, CAPACITY, None, 0.0),
    (10.0, CAPACITY, None, 0.0),      # never below 0
    (63.9, CAPACITY, 64.0, 0.0),      # below what is published: down at once
    (64.0, CAPACITY, 64.0, 64.0),
    (159.9, CAPACITY, 64.0, 64.0),    # up only past the bucket's top plus the margin,
    (160.0, CAPACITY, 64.0, 128.0),   # ... to a value the margin below it
    (300.0, CAPACITY, 64.0, 256.0),
])
def test_bucket_table(value: float, band: Band, published: float | None,
                      expected: float) -> None:
    assert bucket(value, band, published) == expected


def test_quantise_buckets_live_values_only_and_keeps_types() -> None:
    q = quantise(BASE, None)
    assert q["load"] == {"cpu_percent": 20.0, "memory_percent": 30.0, "load1": 0.0}
    assert q["memory"] == {"total_mb": 1024, "available_mb": 640}   # 64 MiB steps, floor
    assert isinstance(q["memory"]["available_mb"], int)
    assert q["storage"]["free_mb"] == 19500                          # 500 MiB steps
    assert q["power"]["battery_percent"] == 70.0
    assert q["power"]["battery_health_percent"] == 90.0
    assert without_live(q) == without_live(BASE)                     # static parts untouched
    assert BASE["load"]["cpu_percent"] == 33.0                       # input not modified


def test_quantise_leaves_missing_and_garbage_live_values_alone() -> None:
    odd = copy.deepcopy(BASE)
    odd["power"]["battery_percent"] = None
    odd["load"]["cpu_percent"] = "busy"
    del odd["storage"]
    q = quantise(odd, None)
    assert q["power"]["battery_percent"] is None
    assert q["load"]["cpu_percent"] == "busy"
    assert "storage" not in q


def test_quantised_profile_keeps_what_placement_reads() -> None:
    """Placement still sees every capability, and capacities never above the raw figures."""
    raw, q = peer_view_from_profile("p", BASE, True), \
        peer_view_from_profile("p", quantise(BASE, None), True)
    assert (q.capabilities, q.cpu_cores, q.power, q.networks, q.labels) == \
        (raw.capabilities, raw.cpu_cores, raw.power, raw.networks, raw.labels)
    # Capacities: at least the margin (half a step) below, at most 1.5 steps.
    assert raw.memory_mb - 96 <= q.memory_mb <= raw.memory_mb - 32
    assert raw.storage_mb - 750 <= q.storage_mb <= raw.storage_mb - 250
    assert raw.battery_percent - 12 <= q.battery_percent <= raw.battery_percent - 2
    assert abs(q.cpu_load_percent - raw.cpu_load_percent) < 20


def run(publisher: ProfilePublisher, steps: list[tuple[float, dict[str, Any]]]
        ) -> list[float]:
    """Feed (now, sample) pairs; the times at which a publication went out."""
    return [now for now, s in steps if publisher.observe(s, now)]


def test_jitter_inside_the_buckets_publishes_nothing() -> None:
    p = ProfilePublisher(BASE, now=0.0)
    jitter = [(5.0 * i, sample(cpu=c, avail=a, mem_pct=m, load1=ld))
              for i, (c, a, m, ld) in enumerate([(25, 690, 33, 0.9), (38, 660, 29, 0.1),
                                                (16, 700, 31, 1.3), (44, 641, 38, 0.5)], 1)]
    assert run(p, jitter) == []
    assert p.stats.quiet == 4 and p.published == quantise(BASE, None)


def test_a_value_hovering_on_an_edge_does_not_flap() -> None:
    """CPU between 38 and 43 around the 40 edge: without hysteresis every
    sample would cross it; with a 5-point margin none does."""
    p = ProfilePublisher(sample(cpu=38.0), now=0.0)
    hover = [(70.0 * i, sample(cpu=38.0 if i % 2 else 43.0)) for i in range(1, 9)]
    assert run(p, hover) == []


def test_live_only_changes_wait_for_the_rate_limit() -> None:
    """Published at 0; a CPU change at 5 s waits, the first sample at or after
    60 s publishes it; the next change waits 60 s from there."""
    p = ProfilePublisher(BASE, now=0.0)
    busy, idle = sample(cpu=90.0), sample(cpu=5.0)
    steps = [(5.0, busy), (30.0, busy), (55.0, busy), (60.0, busy), (65.0, idle),
             (100.0, idle), (120.0, idle), (125.0, idle)]
    assert run(p, steps) == [60.0, 120.0]
    assert p.published["load"]["cpu_percent"] == 0.0
    assert (p.stats.held, p.stats.live, p.stats.quiet) == (5, 2, 1)


def test_a_held_change_that_goes_back_is_never_published() -> None:
    p = ProfilePublisher(BASE, now=0.0)
    assert run(p, [(5.0, sample(cpu=90.0)), (10.0, sample(cpu=30.0)),
                   (65.0, sample(cpu=30.0))]) == []
    assert p.pending is None


def test_static_change_goes_out_at_once_with_the_live_values() -> None:
    p = ProfilePublisher(BASE, now=0.0)
    unplugged = sample(cpu=90.0)
    unplugged["power"]["source"] = "ac"
    assert run(p, [(1.0, sample(cpu=90.0)), (2.0, unplugged)]) == [2.0]
    assert p.published["power"]["source"] == "ac"
    assert p.published["load"]["cpu_percent"] == 80.0
    assert p.stats.static == 1
    # ... and it restarted the rate limit.
    on_ac = sample(unplugged, cpu=10.0)
    assert run(p, [(3.0, on_ac), (61.0, on_ac), (62.0, on_ac)]) == [62.0]


def test_a_capacity_falling_below_its_bucket_goes_out_at_once() -> None:
    p = ProfilePublisher(BASE, now=0.0)                         # 640 MiB published
    assert run(p, [(5.0, sample(avail=639)), (10.0, sample(avail=639, battery=68.0))]) == \
        [5.0, 10.0]
    assert p.published["memory"]["available_mb"] == 576
    assert p.published["power"]["battery_percent"] == 60.0
    assert p.stats.fell == 2
    # Rising again is an ordinary live change: rate-limited (and with a margin).
    assert run(p, [(15.0, sample(avail=700, battery=68.0)),
                   (70.0, sample(avail=700, battery=68.0))]) == [70.0]
    assert p.published["memory"]["available_mb"] == 640


def test_capacity_fell_only_counts_capacities() -> None:
    q = quantise(BASE, None)
    assert not capacity_fell(q, quantise(sample(cpu=0.0), q))   # CPU is no capacity
    assert capacity_fell(q, quantise(sample(free=19499), q))
    assert not capacity_fell(q, quantise(sample(free=22000), q))


def test_another_publication_carries_the_pending_live_values() -> None:
    """A Raft role or an instance changes at 20 s: that publication takes the
    held CPU change along, and the rate limit restarts from 20 s."""
    p = ProfilePublisher(BASE, now=0.0)
    assert run(p, [(5.0, sample(cpu=90.0))]) == []
    carried = p.take_pending(20.0)
    assert carried["load"]["cpu_percent"] == 80.0 and p.pending is None
    assert p.stats.carried == 1
    assert run(p, [(25.0, sample(cpu=90.0)), (30.0, sample(cpu=5.0)),
                   (75.0, sample(cpu=5.0)), (80.0, sample(cpu=5.0))]) == [80.0]


def test_take_pending_without_pending_returns_the_published_profile() -> None:
    p = ProfilePublisher(BASE, now=0.0)
    assert p.take_pending(1.0) == quantise(BASE, None)
    assert p.stats.carried == 0


def test_a_longer_interval_is_honoured() -> None:
    p = ProfilePublisher(BASE, now=0.0, policy=PublishPolicy(min_live_interval=300.0))
    steps = [(60.0 * i, sample(cpu=90.0)) for i in range(1, 6)]
    assert run(p, steps) == [300.0]


@pytest.mark.parametrize(("members", "seconds"), [(1, 60.0), (10, 60.0), (12, 60.0),
                                                  (25, 125.0), (100, 500.0)])
def test_the_live_interval_grows_with_the_mesh(members: int, seconds: float) -> None:
    assert live_interval(PublishPolicy(), members) == seconds


def test_a_large_mesh_waits_longer_for_live_changes() -> None:
    p = ProfilePublisher(BASE, now=0.0)
    busy = sample(cpu=90.0)
    assert [t for t in (60.0, 100.0, 125.0) if p.observe(busy, t, members=25)] == [125.0]


def test_passengers_never_publish_but_ride_along() -> None:
    """The load average and memory percent are for people: a jump alone
    publishes nothing; the next publication for any reason carries them."""
    p = ProfilePublisher(BASE, now=0.0)
    jumped = sample(load1=9.3, mem_pct=77.0)
    assert run(p, [(5.0, jumped), (300.0, jumped)]) == []
    assert p.pending is None and p.stats.quiet == 2
    assert p.published["load"]["load1"] == 0.0
    assert p.take_pending(301.0)["load"] == {"cpu_percent": 20.0, "memory_percent": 70.0,
                                              "load1": 9.0}
    assert p.stats.carried == 0                     # no live change was held
    # ... and with a publication of its own (a capacity fell):
    assert run(p, [(302.0, sample(load1=2.2, avail=500))]) == [302.0]
    assert p.published["load"]["load1"] == 2.0
