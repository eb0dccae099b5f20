"""Alerts kept on disk until the display service has them.

An alert raised while the network is down must not be lost, nor be lost
when the service or its peer restarts before the network returns. The outbox
is a JSON file (written to a temporary name, then renamed: a crash leaves the
old or the new file, never half of one) holding every alert not yet
acknowledged, oldest first; the sender retries the oldest until it goes
through, so alerts arrive in order and at least once (each carries an ``id``
that the receiver uses to drop a repeat).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("nanomesh.devices")

MAX_PENDING = 1000
"""Alerts kept at most; beyond, the oldest are dropped (and logged): a
week-long outage must not fill the peer's disk."""


class DiskOutbox:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.items: list[dict[str, Any]] = self._load()

    def _load(self) -> list[dict[str, Any]]:
        try:
            items = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            log.warning("outbox %s unreadable (%s); starting empty", self.path, exc)
            return []
        if not isinstance(items, list):
            return []
        return [i for i in items if isinstance(i, dict) and isinstance(i.get("id"), str)]

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w") as f:
            json.dump(self.items, f)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)

    def add(self, item: dict[str, Any]) -> None:
        self.items.append(item)
        if len(self.items) > MAX_PENDING:
            dropped = self.items[: len(self.items) - MAX_PENDING]
            del self.items[: len(dropped)]
            log.warning("outbox full: dropped %d oldest alerts", len(dropped))
        self._save()

    def oldest(self) -> dict[str, Any] | None:
        return self.items[0] if self.items else None

    def remove(self, item_id: str) -> None:
        self.items = [i for i in self.items if i["id"] != item_id]
        self._save()
