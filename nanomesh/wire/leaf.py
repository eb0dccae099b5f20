"""Leaf messages: what a microcontroller leaf (``firmware/``) sends a peer's
CoAP gateway, decoded strictly and authenticated with the leaf's key.

A leaf sends CoAP CON POSTs whose payload is ``TAG || BODY``:

- ``BODY`` is a JSON object (MicroPython has ``json``; msgpack it has not);
- ``TAG`` is the first `TAG_SIZE` bytes of HMAC-SHA256(key, PATH + ``"\\n"`` +
  BODY), PATH being the Uri-Path joined with ``/`` (``leaf/bed-1/report``),
  so a tag made for one resource is worthless on another. 128 bits of
  HMAC-SHA256 is what RFC 4868 uses for IPsec; the leaf computes it in about
  the RAM of two SHA-256 contexts (``firmware/mac.py``).

Bodies (``firmware/leaf.py`` writes them):

- register, ``leaf/register``:
  ``{"leaf": L, "n": N, "period": S, "dev": [{"r": R, "type": T}, ...]}``
- report, ``leaf/<L>/report``: ``{"n": N, "age": MS, "v": {R: value, ...}}``;
  ``age`` is how long ago (ms) the values were read, >0 for a reading that
  waited in the leaf's buffer while no peer answered.

``n`` is the leaf's message counter; replay protection (only a counter
above the last one accepted) is the registry's (`nanomesh.gateway.leaf_core`).

Everything a leaf sends is untrusted until its tag checks: every decoder
here raises `RemoteProtocolError` on anything else, never another
exception. Keys come from a key file (`parse_leaf_keys`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from nanomesh.errors import ConfigError, RemoteProtocolError

TAG_SIZE = 16
"""Bytes of HMAC-SHA256 kept as the tag (see the module docstring)."""
MAX_PAYLOAD = 1024
"""Largest leaf payload accepted, tag included: one CoAP datagram without
block-wise transfer, which the firmware does not implement. A full register
of `MAX_DEVICES` devices is about 700 bytes."""
MAX_DEVICES = 16
"""Devices (resources) one leaf may register."""
MIN_PERIOD, MAX_PERIOD = 0.05, 86_400.0
"""Bounds of a leaf's reporting period, seconds (50 ms lets tests run fast; a
day is the slowest leaf worth tracking)."""
MAX_AGE_MS = 7 * 86_400_000
"""Oldest reading a report may carry (a week in the buffer)."""
MAX_COUNTER = 2**63 - 1
KEY_MIN, KEY_MAX = 16, 64
"""Bytes of a leaf key: at least 128 bits; at most one SHA-256 block."""

_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
"""Leaf names and resource names: lowercase tokens of at most 32 characters
(the device-type rule of `nanomesh.discovery.devices`, bounded)."""

LeafValue = float | int | bool | None


@dataclass(frozen=True)
class LeafDevice:
    resource: str
    """The name the leaf reads it under and the gateway serves it at."""
    type: str
    """The capability type (`nanomesh.discovery.devices.KNOWN_DEVICE_TYPES` or custom)."""


@dataclass(frozen=True)
class Register:
    leaf: str
    counter: int
    period: float
    devices: tuple[LeafDevice, ...]


@dataclass(frozen=True)
class Report:
    leaf: str
    counter: int
    age_ms: int
    values: dict[str, LeafValue]


def is_name(value: object) -> bool:
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def tag(key: bytes, path: tuple[str, ...], body: bytes) -> bytes:
    """The tag of `body` sent to `path` (see the module docstring)."""
    return hmac.new(key, "/".join(path).encode() + b"\n" + body, hashlib.sha256
                    ).digest()[:TAG_SIZE]


def seal(key: bytes, path: tuple[str, ...], body: dict[str, Any]) -> bytes:
    """A leaf payload, as the firmware makes it (tests and experiments)."""
    raw = json.dumps(body).encode()
    return tag(key, path, raw) + raw


def open_body(payload: bytes) -> tuple[bytes, dict[str, Any]]:
    """(tag, body) of a payload, the body parsed but NOT yet trusted: the
    caller needs the leaf's name from it to find the key (`check_tag`)."""
    if len(payload) > MAX_PAYLOAD:
        raise RemoteProtocolError("oversized", f"{len(payload)}-byte leaf payload")
    if len(payload) <= TAG_SIZE:
        raise RemoteProtocolError("malformed", "leaf payload shorter than its tag")
    raw = payload[TAG_SIZE:]
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RemoteProtocolError("malformed", f"leaf body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RemoteProtocolError("malformed", "leaf body is not a JSON object")
    return payload[:TAG_SIZE], body


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number")


def check_tag(key: bytes, path: tuple[str, ...], payload: bytes) -> None:
    """RemoteProtocolError("auth") unless `payload`'s tag is right for `path` under `key`."""
    if not hmac.compare_digest(payload[:TAG_SIZE], tag(key, path, payload[TAG_SIZE:])):
        raise RemoteProtocolError("auth", "bad tag: wrong key, or the message was altered")


def decode_register(body: dict[str, Any]) -> Register:
    _only(body, {"leaf", "n", "period", "dev"})
    leaf = _name(body.get("leaf"), "leaf")
    devices_raw = body.get("dev")
    if not isinstance(devices_raw, list) or not 0 < len(devices_raw) <= MAX_DEVICES:
        raise RemoteProtocolError("malformed", f"dev must list 1-{MAX_DEVICES} devices")
    devices = tuple(_device(d) for d in devices_raw)
    if len({d.resource for d in devices}) != len(devices):
        raise RemoteProtocolError("malformed", "two devices with the same resource name")
    period = _as_real(body.get("period"))
    if period is None or not MIN_PERIOD <= period <= MAX_PERIOD:
        raise RemoteProtocolError("malformed", f"period must be {MIN_PERIOD}-{MAX_PERIOD} s")
    return Register(leaf, _counter(body.get("n")), period, devices)


def decode_report(leaf: str, body: dict[str, Any]) -> Report:
    _only(body, {"n", "age", "v"})
    age = _as_int(body.get("age", 0))
    if age is None or not 0 <= age <= MAX_AGE_MS:
        raise RemoteProtocolError("malformed", f"age must be 0-{MAX_AGE_MS} ms")
    values = body.get("v")
    if not isinstance(values, dict) or len(values) > MAX_DEVICES:
        raise RemoteProtocolError("malformed", f"v must map at most {MAX_DEVICES} resources")
    for name, value in values.items():
        _name(name, "resource")
        if value is not None and not isinstance(value, bool) and _as_real(value) is None:
            raise RemoteProtocolError("malformed", f"value of {name} is not a number")
    return Report(leaf, _counter(body.get("n")), age, dict(values))


def _only(body: dict[str, Any], allowed: set[str]) -> None:
    extra = set(body) - allowed
    if extra:
        raise RemoteProtocolError("malformed", f"unknown fields {sorted(extra)!r}"[:120])


def _name(value: object, what: str) -> str:
    if not is_name(value):
        raise RemoteProtocolError("malformed", f"{what} must be a token [a-z0-9-], "
                                  f"at most 32 characters")
    return str(value)


def _device(entry: object) -> LeafDevice:
    if not isinstance(entry, dict) or set(entry) != {"r", "type"}:
        raise RemoteProtocolError("malformed", 'a device is {"r": name, "type": type}')
    return LeafDevice(_name(entry["r"], "resource"), _name(entry["type"], "device type"))


def _counter(value: object) -> int:
    n = _as_int(value)
    if n is None or not 0 <= n <= MAX_COUNTER:
        raise RemoteProtocolError("malformed", "n must be a counter 0..2^63-1")
    return n


def _as_int(value: object) -> int | None:
    """`value` if it is an int (not a bool), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _as_real(value: object) -> float | None:
    """`value` as a float if it is a finite int or float (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        real = float(value)
    except OverflowError:  # an int too large for a float
        return None
    return real if math.isfinite(real) else None


# ------------------------------------------------------------ key file


def parse_leaf_keys(text: str, where: str = "leaf key file") -> dict[str, bytes]:
    """Leaf keys from a key file: one ``<leaf> <key in hex>`` per line,
    ``#`` comments and blank lines ignored. ConfigError naming the line for
    anything else (a duplicate leaf, a short key, a bad name)."""
    keys: dict[str, bytes] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ConfigError(f"{where}, line {number}: expected '<leaf> <hex key>'")
        name, hexkey = parts
        if not is_name(name):
            raise ConfigError(f"{where}, line {number}: leaf name {name!r} is not a "
                              f"lowercase token [a-z0-9-] of at most 32 characters")
        if name in keys:
            raise ConfigError(f"{where}, line {number}: leaf {name} listed twice")
        try:
            key = bytes.fromhex(hexkey)
        except ValueError:
            raise ConfigError(f"{where}, line {number}: the key is not hex") from None
        if not KEY_MIN <= len(key) <= KEY_MAX:
            raise ConfigError(f"{where}, line {number}: a key is {KEY_MIN}-{KEY_MAX} bytes, "
                              f"this one {len(key)}")
        keys[name] = key
    return keys
