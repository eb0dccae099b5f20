"""Instance ids and service names: the one home of their format.

An instance id names replica ``index`` of a service: ``"sensor-reader/0"``.
Placement makes them (`instance_id`), the Raft plan and the gossiped profile
carry them, and the runtime, name resolution, the deployment judge and the
HTTP API read them back. Service names may not contain ``/`` (see
`SERVICE_NAME`), so the service part is everything before the *last* ``/``.

Two readings, because the callers need two:

- `split_instance_id` is strict: the service part is non-empty and the index
  a decimal number, else ValueError. For ids a peer acts on (the plan it
  runs, an id in an API path).
- `service_of` and `partition_instance_id` never raise: they read whatever a
  peer gossips or a plan holds and let the caller match the result against
  known services (a malformed id then simply matches none).

For a well-formed id both readings agree. Pure: no I/O, no state.
"""

from __future__ import annotations

import re
from typing import Any, TypeGuard

SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
"""The service-name rule (use with ``fullmatch``): 1-63 letters, digits,
``.``, ``_`` or ``-``, starting with a letter or digit. Names become instance
ids (``name/index``), resolvable names, container ids and URL path segments:
no ``/``, and short enough for a DNS label."""

SERVICE_NAME_RULE = "1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
"""`SERVICE_NAME` in words, for error messages."""


def is_service_name(name: Any) -> TypeGuard[str]:
    """True if `name` is a string that follows `SERVICE_NAME`."""
    return isinstance(name, str) and SERVICE_NAME.fullmatch(name) is not None


def instance_id(service: str, index: int) -> str:
    """``"sensor-reader/0"``: the identity of replica ``index`` of ``service``."""
    return f"{service}/{index}"


def split_instance_id(iid: str) -> tuple[str, int]:
    """Inverse of :func:`instance_id`: ``"hello/2"`` -> ``("hello", 2)``.

    Raises ValueError for an id without ``/``, with an empty service part, or
    whose index is not a decimal number (``"a/x"``, ``"a/-1"``, ``"a/"``).
    The split is at the last ``/``: ``"a/b/1"`` gives ``("a/b", 1)``, whose
    service part then fails `is_service_name` wherever a name is checked.
    """
    service, sep, index = iid.rpartition("/")
    if not sep or not service or not index.isdecimal():
        raise ValueError(f"malformed instance id {iid!r}")
    return service, int(index)


def is_instance_id(iid: str) -> bool:
    """True if :func:`split_instance_id` accepts `iid`."""
    try:
        split_instance_id(iid)
    except ValueError:
        return False
    return True


def partition_instance_id(iid: str) -> tuple[str, str]:
    """``(service, index text)`` split at the last ``/``, never raising:
    ``"hello/0"`` -> ``("hello", "0")``; without a ``/``, ``("", iid)``."""
    service, _, index = iid.rpartition("/")
    return service, index


def service_of(iid: str) -> str:
    """The service part of `iid`, never raising: ``"hello/0"`` -> ``"hello"``;
    ``""`` if the id has no ``/``. Use where a malformed id should match no
    service rather than fail."""
    return partition_instance_id(iid)[0]
