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
