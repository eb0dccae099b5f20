"""The monitor shell: alerts written to the disk outbox first, delivered in
order when the display can be reached, kept across a restart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import trio

from nanomesh.devices.alert_core import Rule
from nanomesh.devices.monitor import DELIVERY_RETRY, VitalsMonitor
from nanomesh.devices.outbox import DiskOutbox
from nanomesh.errors import NanomeshError

RULES = [Rule("spo2", low=90, period=2, max_gap=10)]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def monitor_at(path: Path, clock: Clock) -> VitalsMonitor:
    return VitalsMonitor("pom", RULES, path, clock=clock)


def drop_and_recover(m: VitalsMonitor, clock: Clock) -> None:
    for value in (85, 85, 85, 95):  # raised at the third reading, cleared at the fourth
        m.observe("spo2", value)
        clock.now += 1


def test_alerts_are_on_disk_before_any_send(tmp_path: Path) -> None:
    clock = Clock()
    m = monitor_at(tmp_path / "out.json", clock)
    drop_and_recover(m, clock)
    on_disk = json.loads((tmp_path / "out.json").read_text())
    assert [(a["event"], a["metric"]) for a in on_disk] == [("raised", "spo2"),
                                                            ("cleared", "spo2")]
    # a restarted service finds them
    assert [a["id"] for a in DiskOutbox(tmp_path / "out.json").items] == [a["id"]
                                                                           for a in on_disk]


async def test_alerts_made_offline_arrive_in_order_when_the_network_returns(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    clock = Clock()
    m = monitor_at(tmp_path / "out.json", clock)
    drop_and_recover(m, clock)
    network_up = False
    received: list[dict[str, Any]] = []
    attempts = 0

    async def send(item: dict[str, Any]) -> None:
        nonlocal attempts
        attempts += 1
        if not network_up:
            raise NanomeshError("no route to dd")
        received.append(item)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(m.deliver, send)
        await trio.sleep(10 * DELIVERY_RETRY)
        assert received == [] and len(m.outbox.items) == 2 and attempts >= 5
        network_up = True
        await trio.sleep(3 * DELIVERY_RETRY)
        nursery.cancel_scope.cancel()
    assert [a["event"] for a in received] == ["raised", "cleared"]
    assert m.outbox.items == [] and m.delivered == 2
    assert json.loads((tmp_path / "out.json").read_text()) == []


def test_state_blob_round_trip_and_garbage(tmp_path: Path) -> None:
    clock = Clock()
    old = monitor_at(tmp_path / "a.json", clock)
    for _ in range(3):
        old.observe("spo2", 85)
        clock.now += 1
    new = monitor_at(tmp_path / "b.json", clock)
    assert new.restore(old.state_blob()) == ["spo2"]
    for junk in (b"", None, b"not json", b'{"raised": [1]}', b'{"raised": {"spo2": "x"}}'):
        assert monitor_at(tmp_path / "c.json", clock).restore(junk) == []


def test_a_damaged_outbox_starts_empty(tmp_path: Path) -> None:
    (tmp_path / "out.json").write_text("{half")
    assert DiskOutbox(tmp_path / "out.json").items == []
