"""A vital-signs monitor's shell: readings through the alert core, alerts
through the disk outbox to whoever displays them.

`VitalsMonitor.observe` feeds one reading to `alert_core.AlertCore` (with the
wall clock as ``now``) and writes each alert it raises or clears to the
`outbox.DiskOutbox` at once, before any send is tried; `deliver` sends the
oldest pending alert until it goes through, `DELIVERY_RETRY` apart, so alerts
made while the network is down arrive, in order, when it returns.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import trio

from nanomesh.devices.alert_core import AlertCore, AlertRaised, Effect, Rule
from nanomesh.devices.outbox import DiskOutbox
from nanomesh.errors import NanomeshError

log = logging.getLogger("nanomesh.devices")

DELIVERY_RETRY = 1.0
"""Seconds between two attempts to deliver the oldest pending alert."""


def alert_record(source: str, effect: Effect) -> dict[str, Any]:
    """An alert as the outbox keeps it and the display receives it."""
    event = "raised" if isinstance(effect, AlertRaised) else "cleared"
    record = {"event": event, "source": source, **asdict(effect)}
    record["id"] = f"{source}:{effect.metric}:{event}:{effect.at:.3f}"
    return record


class VitalsMonitor:
    def __init__(self, source: str, rules: Sequence[Rule], outbox_path: Path,
                 clock: Callable[[], float] = time.time) -> None:
        self.source = source
        self.core = AlertCore.of(rules)
        self.outbox = DiskOutbox(outbox_path)
        self.clock = clock
        self.delivered = 0

    def observe(self, metric: str, value: float | None) -> list[Effect]:
        effects = self.core.observe(self.clock(), metric, value)
        for effect in effects:
            record = alert_record(self.source, effect)
            log.warning("ALERT %s %s %s: %s = %s", record["event"], self.source,
                        effect.metric, getattr(effect, "kind", "normal"), effect.value)
            self.outbox.add(record)
        return effects

    def status(self) -> dict[str, Any]:
        """What a monitoring service reports about its alerts."""
        return {"alerts_raised": self.core.raised(), "alerts_pending": len(self.outbox.items),
                "alerts_delivered": self.delivered}

    def state_blob(self) -> bytes:
        """The raised alerts, for the runtime's state hand-off (``save_state``)."""
        return json.dumps({"raised": self.core.snapshot()}).encode()

    def restore(self, blob: bytes | None) -> list[str]:
        """Take over a previous instance's raised alerts; the metrics restored.
        A blob that is not ours is ignored (logged), never fatal."""
        if not blob:
            return []
        try:
            raised = json.loads(blob)["raised"]
            if not isinstance(raised, dict) or not all(
                    isinstance(v, int | float) for v in raised.values()):
                raise ValueError("raised must map metrics to times")
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring a saved state that is not a monitor's: %s", exc)
            return []
        self.core.restore({str(k): float(v) for k, v in raised.items()}, self.clock())
        return sorted(self.core.raised())

    async def save(self, save_state: Callable[[bytes], Awaitable[None]]) -> None:
        """Hand the raised alerts to the runtime (the SDK's ``save_state``):
        the next instance, on another peer once the devices moved, takes
        them over. A failure is logged: the alerts themselves are in the outbox."""
        try:
            await save_state(self.state_blob())
        except NanomeshError as exc:
            log.warning("could not save the raised alerts: %s", exc)

    async def take_over(self, load_state: Callable[[], Awaitable[bytes | None]]) -> list[str]:
        """Restore the previous instance's raised alerts (the SDK's ``load_state``)."""
        try:
            restored = self.restore(await load_state())
        except NanomeshError as exc:
            log.warning("could not load the previous instance's alerts: %s", exc)
            return []
        if restored:
            log.info("took over raised alerts: %s", ", ".join(restored))
        return restored

    async def deliver(self, send: Callable[[dict[str, Any]], Awaitable[object]]) -> None:
        """Send pending alerts forever, oldest first (module docstring)."""
        while True:
            item = self.outbox.oldest()
            if item is None:
                await trio.sleep(DELIVERY_RETRY / 4)
                continue
            try:
                await send(item)
            except (NanomeshError, OSError) as exc:
                log.info("alert %s not delivered (%s); %d pending, retrying", item["id"],
                         exc, len(self.outbox.items))
                await trio.sleep(DELIVERY_RETRY)
                continue
            self.outbox.remove(item["id"])
            self.delivered += 1
            log.info("alert %s delivered", item["id"])
