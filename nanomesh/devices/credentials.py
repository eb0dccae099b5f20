"""The meeting room's credential store (the research's AE) on SQLite.

The research specified four REST resources, each a collection with GET/POST
and an item with GET/PUT ``/{id}``: ``persons``, ``rooms``, ``tags`` and
``events``. This module is their store and their checks; the AE service
(``services/meeting-room/ae``) maps its routes onto `Store.list`,
`Store.create`, `Store.get` and `Store.put`. SQLite is the embedded default
(the research used MySQL on a laptop): one file, one table per resource,
each row an id and its JSON document.

Documents are checked at this boundary (`check`), so a bad body is a
`BadDocument` naming the field (the service answers 4.00), never a bad row:

- persons: ``{"name": str, "room": str | null}`` (the room they are invited to);
- rooms: ``{"name": str}``;
- tags: ``{"person": str}``, the id being the tag's iBeacon UUID (lower case);
  the person must exist;
- events: ``{"visit": int, "phase": str, "detail": str, "at": number}``, the
  MCS's log (ids given by the store).
"""

from __future__ import annotations

import json
import re
import sqlite3
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nanomesh.errors import NanomeshError

RESOURCES: Mapping[str, Mapping[str, tuple[type, ...]]] = {
    "persons": {"name": (str,), "room": (str, type(None))},
    "rooms": {"name": (str,)},
    "tags": {"person": (str,)},
    "events": {"visit": (int,), "phase": (str,), "detail": (str,), "at": (int, float)},
}
"""Each resource's fields and their JSON types (all required)."""
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
LIST_LIMIT = 1000
"""Items a collection GET returns at most (the newest for events)."""


class BadDocument(NanomeshError):
    """A body or id breaks the resource's rules; the message names the field."""


class NotFound(NanomeshError):
    pass


def check(resource: str, doc: object) -> dict[str, Any]:
    """``doc`` as a stored document of ``resource``; BadDocument if not."""
    fields = RESOURCES.get(resource)
    if fields is None:
        raise NotFound(f"no resource {resource!r} (known: {', '.join(RESOURCES)})")
    if not isinstance(doc, dict):
        raise BadDocument(f"{resource}: the body must be a JSON object")
    out = {}
    for key, types in fields.items():
        if key not in doc:
            raise BadDocument(f"{resource}.{key}: is required")
        v = doc[key]
        if isinstance(v, bool) or not isinstance(v, types):
            raise BadDocument(f"{resource}.{key}: must be {' or '.join(t.__name__ for t in types)}"
                              f", got {v!r}")
        out[key] = v
    extra = set(doc) - set(fields) - {"id"}
    if extra:
        raise BadDocument(f"{resource}: unknown fields {', '.join(sorted(extra))}")
    return out


def check_id(resource: str, item_id: str) -> str:
    if not _ID.fullmatch(item_id):
        raise BadDocument(f"{resource} id {item_id!r}: must be 1-64 of [A-Za-z0-9._-]")
    return item_id.lower() if resource == "tags" else item_id


class Store:
    """The four resources in one SQLite file (``:memory:`` for tests)."""

    def __init__(self, path: Path | str) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        for name in RESOURCES:
            self.db.execute(f"CREATE TABLE IF NOT EXISTS {name} (seq INTEGER PRIMARY KEY "
                            "AUTOINCREMENT, id TEXT UNIQUE NOT NULL, doc TEXT NOT NULL)")

    def list(self, resource: str) -> list[dict[str, Any]]:
        if resource not in RESOURCES:
            raise NotFound(f"no resource {resource!r}")
        rows = self.db.execute(f"SELECT id, doc FROM {resource} ORDER BY seq DESC LIMIT ?",
                               (LIST_LIMIT,)).fetchall()
        return [{"id": i, **json.loads(d)} for i, d in reversed(rows)]

    def get(self, resource: str, item_id: str) -> dict[str, Any]:
        if resource not in RESOURCES:
            raise NotFound(f"no resource {resource!r}")
        row = self.db.execute(f"SELECT doc FROM {resource} WHERE id = ?",
                              (check_id(resource, item_id),)).fetchone()
        if row is None:
            raise NotFound(f"no {resource} {item_id!r}")
        return {"id": check_id(resource, item_id), **json.loads(row[0])}

    def create(self, resource: str, body: object) -> dict[str, Any]:
        """POST on the collection: a new item (its id from the body's ``id``,
        or a fresh one); BadDocument if the id is taken."""
        doc = self._checked(resource, body)
        given = body.get("id") if isinstance(body, dict) else None
        if given is not None and not isinstance(given, str):
            raise BadDocument(f"{resource}.id: must be a string")
        item_id = check_id(resource, given or uuid.uuid4().hex[:12])
        try:
            self.db.execute(f"INSERT INTO {resource} (id, doc) VALUES (?, ?)",
                            (item_id, json.dumps(doc)))
        except sqlite3.IntegrityError:
            raise BadDocument(f"{resource} {item_id!r} exists: PUT it to change it") from None
        return {"id": item_id, **doc}

    def put(self, resource: str, item_id: str, body: object) -> dict[str, Any]:
        """PUT on an item: replace it (or create it with this id)."""
        doc = self._checked(resource, body)
        item_id = check_id(resource, item_id)
        self.db.execute(f"INSERT INTO {resource} (id, doc) VALUES (?, ?) ON CONFLICT(id) DO "
                        "UPDATE SET doc = excluded.doc", (item_id, json.dumps(doc)))
        return {"id": item_id, **doc}

    def _checked(self, resource: str, body: object) -> dict[str, Any]:
        doc = check(resource, body)
        if resource == "tags":
            self.get("persons", doc["person"])  # NotFound: a tag of nobody
        return doc

    def close(self) -> None:
        self.db.close()
