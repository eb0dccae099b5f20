"""Table tests of the feasibility filters and the reasons they give."""

from __future__ import annotations

import pytest
from placement_helpers import peer, spec

from nanomesh.placement import ServiceSpec, Usage, first_failure, why_not
from nanomesh.placement.feasible import (
    check_alive,
    check_capabilities,
    check_cpu,
    check_labels,
    check_memory,
    check_network,
    check_per_peer_limit,
    check_pinned_peer,
    check_power,
    check_storage,
)


def used(cpu: float = 0.0, memory: int = 0, storage: int = 0, **per_service: int) -> Usage:
    n = sum(per_service.values())
    return Usage(cpu, memory, storage, n, dict(per_service))


def test_alive() -> None:
    assert check_alive(spec("s"), peer("p"), Usage()) is None
    assert check_alive(spec("s"), peer("p", alive=False), Usage()) == "peer is down"


def test_pinned_peer() -> None:
    assert check_pinned_peer(spec("s"), peer("p"), Usage()) is None
    assert check_pinned_peer(spec("s", peer="p"), peer("p"), Usage()) is None
    assert check_pinned_peer(spec("s", peer="q"), peer("p"), Usage()) == "pinned to peer q"


@pytest.mark.parametrize(("want", "have", "reason"), [
    ({}, {}, None),
    ({"room": "a"}, {"room": "a", "floor": "1"}, None),
    ({"room": "a"}, {}, "needs label room=a (missing)"),
    ({"room": "a"}, {"room": "b"}, "needs label room=a (has room=b)"),
    ({"room": "a", "floor": "2"}, {"room": "a", "floor": "1"}, "needs label floor=2 (has floor=1)"),
])
def test_labels(want: dict[str, str], have: dict[str, str], reason: str | None) -> None:
    assert check_labels(spec("s", labels=want), peer("p", labels=have), Usage()) == reason


@pytest.mark.parametrize(("caps", "devices", "cores", "reason"), [
    ((), (), 4, None),
    (("pir",), ("pir", "ble"), 4, None),
    (("compute",), (), 1, None),
    (("pulse-oximeter",), ("pir",), 4, "needs device pulse-oximeter"),
    (("pir", "ble"), (), 4, "needs devices ble, pir"),
    (("compute",), ("pir",), 0, "needs compute (no CPU cores)"),
    (("compute", "dd"), (), 0, "needs compute (no CPU cores); needs device dd"),
])
def test_capabilities(caps: tuple[str, ...], devices: tuple[str, ...], cores: float,
                      reason: str | None) -> None:
    s = spec("s", capabilities=caps)
    assert check_capabilities(s, peer("p", devices=devices, cores=cores), Usage()) == reason


@pytest.mark.parametrize(("power", "minimum", "source", "battery", "reason"), [
    (None, 0.0, None, 0.0, None),
    ("ac", 0.0, "ac", 0.0, None),
    ("ac", 0.0, "battery", 90.0, "needs AC power (on battery)"),
    ("ac", 0.0, None, 0.0, "needs AC power (power source unknown)"),
    ("battery", 0.0, "battery", 5.0, None),
    ("battery", 0.0, "ac", 0.0, "needs battery power (on AC)"),  # research: b_k == b_i
    ("battery", 20.0, "battery", 20.0, None),
    ("battery", 20.0, "battery", 12.5, "needs battery >= 20 % (12.5 %)"),
    (None, 20.0, "ac", 0.0, None),               # mains always satisfies a minimum
    (None, 20.0, "battery", 35.0, None),
    (None, 20.0, "battery", 19.0, "needs battery >= 20 % (19 %)"),
    (None, 20.0, None, 0.0, "needs battery >= 20 % (0 %)"),  # unknown power: no charge
    ("ac", 50.0, "ac", 0.0, None),
])
def test_power(power: str | None, minimum: float, source: str | None, battery: float,
               reason: str | None) -> None:
    s = spec("s", power=power, min_battery_percent=minimum)
    assert check_power(s, peer("p", power=source, battery=battery), Usage()) == reason


@pytest.mark.parametrize(("want", "have", "reason"), [
    (None, (), None),
    ("bluetooth", ("wifi", "bluetooth"), None),
    ("ethernet", ("wifi", "bluetooth"), "needs network ethernet (has bluetooth, wifi)"),
    ("wifi", (), "needs network wifi (has none)"),
])
def test_network(want: str | None, have: tuple[str, ...], reason: str | None) -> None:
    assert check_network(spec("s", network=want), peer("p", networks=have), Usage()) == reason


@pytest.mark.parametrize(("need", "cores", "usage", "reason"), [
    (0.0, 0, used(), None),                       # no requirement fits a peer without cores
    (1.0, 4, used(cpu=3.0), None),
    (1.0, 1, used(cpu=0.25), "needs 1 CPU cores, 0.75 free"),
    (0.5, 1, used(cpu=0.75), "needs 0.5 CPU cores, 0.25 free"),
    (0.1, 0.3, used(cpu=0.1 + 0.1), None),        # float sums: 0.1 + 0.1 + 0.1 fits 0.3
    (2.0, 4, used(cpu=5.0), "needs 2 CPU cores, 0 free"),
])
def test_cpu(need: float, cores: float, usage: Usage, reason: str | None) -> None:
    assert check_cpu(spec("s", cpu=need), peer("p", cores=cores), usage) == reason


@pytest.mark.parametrize(("need", "have", "usage", "reason"), [
    (0, 0, used(), None),
    (512, 512, used(), None),
    (512, 632, used(memory=512), "needs 512 MB memory, 120 MB free"),
    (0, 100, used(memory=200), None),             # no requirement even when over-full
])
def test_memory(need: int, have: int, usage: Usage, reason: str | None) -> None:
    assert check_memory(spec("s", memory_mb=need), peer("p", memory=have), usage) == reason


def test_storage() -> None:
    s = spec("s", storage_mb=10)
    assert check_storage(s, peer("p", storage=10), Usage()) is None
    assert check_storage(s, peer("p", storage=10), used(storage=8)) == \
        "needs 10 MB storage, 2 MB free"


@pytest.mark.parametrize(("s", "usage", "reason"), [
    (spec("s"), used(), None),
    (spec("s"), used(other=3), None),
    (spec("s"), used(s=1), "already runs an instance of s (spread)"),
    (spec("s", spread=False), used(s=9), None),
    (spec("s", spread=False, max_per_peer=2), used(s=1), None),
    (spec("s", spread=False, max_per_peer=2), used(s=2),
     "already runs 2 instances of s (max_per_peer 2)"),
    (spec("s", spread=True, max_per_peer=3), used(s=1), "already runs an instance of s (spread)"),
])
def test_per_peer_limit(s: ServiceSpec, usage: Usage, reason: str | None) -> None:
    assert check_per_peer_limit(s, peer("p"), usage) == reason


def test_why_not_joins_every_reason_and_first_failure_gives_the_first() -> None:
    s = spec("spo2", capabilities=["pulse-oximeter"], memory_mb=512, network="bluetooth")
    p = peer("peer-4", memory=600, networks=["wifi"])
    assert why_not(s, p, used(memory=480)) == (
        "needs device pulse-oximeter; needs network bluetooth (has wifi); "
        "needs 512 MB memory, 120 MB free")
    assert first_failure(s, p, used(memory=480)) == "needs device pulse-oximeter"


def test_why_not_a_dead_peer_says_only_that() -> None:
    s = spec("spo2", capabilities=["pulse-oximeter"])
    assert why_not(s, peer("p", alive=False), Usage()) == "peer is down"


def test_feasible_peer_has_no_reason() -> None:
    s = spec("s", capabilities=["pir"], cpu=1.0, memory_mb=64, power="ac", network="wifi",
             storage_mb=1, labels={"room": "a"}, peer="p")
    p = peer("p", devices=["pir"], labels={"room": "a"})
    assert why_not(s, p, Usage()) is None
    assert first_failure(s, p, Usage()) is None
