"""Predicates for values read from outside: manifests, specs, plans, gossip.

Every parser that reads a plain dict (TOML, JSON, a Raft entry, a gossiped
profile) asks the same few questions of a field, and Python makes each of
them easy to get subtly wrong: ``True`` is an ``int``, ``nan`` and ``inf``
are ``float``\\ s. One function per question keeps the answer the same in
every parser. The messages stay with the parsers, which know the field's
name and their own error type.

The wire codec (:mod:`nanomesh.wire.codec`) does not use these: after
msgpack it insists on exact types (``type(v) is int``) and has its own
bounds, and the wire package depends on nothing but `nanomesh.errors`.

Pure and dependency-free, so any layer may import it.
"""

from __future__ import annotations

import math
import re
from typing import Any, TypeGuard

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def is_int(value: Any) -> TypeGuard[int]:
    """An ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> TypeGuard[int | float]:
    """A finite ``int`` or ``float`` that is not a ``bool`` (no nan, no inf)."""
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def is_port(value: Any) -> TypeGuard[int]:
    """A TCP/UDP port number, 1-65535 (0, "pick one", is not a port here)."""
    return is_int(value) and 0 < value < 65536


def is_sha256_hex(value: Any) -> TypeGuard[str]:
    """A SHA-256 digest as 64 lowercase hex digits (a bundle's id)."""
    return isinstance(value, str) and _SHA256_HEX.fullmatch(value) is not None


def kind_name(value: object) -> str:
    """What `value` is, for an error message: ``"null"`` or its type's name."""
    return "null" if value is None else type(value).__name__


MAX_JSON_DEPTH = 32
"""Deepest nesting of lists/dicts accepted in a spec or plan."""


def is_json(value: Any, depth: int = 0) -> bool:
    """True if `value` is JSON-shaped (see `JsonObject`), at most
    `MAX_JSON_DEPTH` deep. Floats must be finite (NaN != NaN would make two
    equal states compare unequal); strings must be valid Unicode (JSON can
    carry a lone surrogate such as ``"\ud800"``, which no peer could encode
    to run, digest or send)."""
    if depth > MAX_JSON_DEPTH:
        return False
    if isinstance(value, str):
        return is_text(value)
    if value is None or isinstance(value, bool | int):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(is_json(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_text(k) and is_json(v, depth + 1)
                   for k, v in value.items())
    return False


def is_text(value: str) -> bool:
    """Whether ``value`` encodes as UTF-8 (no lone surrogates)."""
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
