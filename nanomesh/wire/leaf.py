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

- hello, ``leaf/hello`` (untagged, before registering):
  ``{"id": hex(HMAC(key, "hello\\n" + NL)[:8]), "nl": hex(NL)}``, NL a fresh
  random 8-byte nonce of the leaf. The id names the leaf only to a peer that
  holds its key (it tries each of its keys, `hello_leaf`), and changes with
  NL, so an onlooker cannot follow a leaf by it. A peer holding the key
  answers 2.05 with a welcome, ``TAG || {"np": hex(NP)}``, TAG over
  ``"welcome\\n" + NL + "\\n" + BODY`` (`seal_welcome`): the peer proves it
  holds the key before the leaf says who it is or what devices it has (a
  discovery answer from anyone else gets nothing), and NP, the peer's
  nonce, makes the registration fresh;
- register, ``leaf/register``:
  ``{"leaf": L, "n": N, "np": hex(NP), "period": S, "dev": [{"r": R, "type": T}, ...]}``;
  a peer takes it only with an NP it issued to L in the last `HELLO_TTL` s,
  once, so a recorded registration is refused by every peer, restarted or
  not, and a leaf's reports count on a peer only above its fresh
  registration's counter (no replay of old reports anywhere);
- report, ``leaf/<L>/report``: ``{"n": N, "age": MS, "v": {R: value, ...}}``;
  ``age`` is how long ago (ms) the values were read, >0 for a reading that
  waited in the leaf's buffer while no peer answered.

``n`` is the leaf's message counter; replay protection (only a counter
above the last one accepted) is the registry's (`nanomesh.gateway.leaf_core`).

Answers (issue 11): the peer's answer to an authentic message is
``TAG || BODY`` too, TAG = first `TAG_SIZE` bytes of HMAC-SHA256(key,
``"answer\n"`` + PATH + ``"\n"`` + N + ``"\n"`` + CODE + ``"\n"`` + BODY),
N the request's counter and CODE the CoAP code as a decimal number
(`seal_answer`). The leaf takes an answer only if its tag checks, so a
forged ACK (a reading lost), 4.04 (a needless registration) or 4.01 (a
reading dropped) from someone without the key is ignored and the leaf
retransmits as if nothing came; bound to N, an answer recorded earlier
answers no later message; bound to CODE, a 2.04 cannot be turned into a
4.04. The ``answer`` prefix keeps answer tags apart from request tags
(every request PATH starts with ``leaf``).

Everything a leaf sends is untrusted until its tag checks: every decoder
here raises `RemoteProtocolError` on anything else, never another
exception. Keys come from a key file (`parse_leaf_keys`).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import math
import re
from collections.abc import Mapping
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
    peer_nonce: bytes = b""
    """The nonce of the peer's welcome (see the module docstring)."""


@dataclass(frozen=True)
class Report:
    leaf: str
    counter: int
    age_ms: int
    values: dict[str, LeafValue]


NONCE_SIZE = 8
"""Bytes of the leaf's and the peer's hello nonces (64 bits: never repeated
in practice, and an 8-byte id is one HMAC's worth of work per key)."""
HELLO_ID_SIZE = 8
HELLO_TTL = 30.0
"""Seconds a peer's nonce stays good for a registration: the hello and the
registration follow each other at once (a few retransmissions at most)."""


@dataclass(frozen=True)
class Hello:
    ident: bytes
    leaf_nonce: bytes


def is_name(value: object) -> bool:
    return isinstance(value, str) and _NAME.fullmatch(value) is not None


def _mac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()[:TAG_SIZE]


def tag(key: bytes, path: tuple[str, ...], body: bytes) -> bytes:
    """The tag of `body` sent to `path` (see the module docstring)."""
    return _mac(key, "/".join(path).encode() + b"\n" + body)


def answer_tag(key: bytes, path: tuple[str, ...], counter: int, code: int,
               body: bytes) -> bytes:
    """The tag of the answer `code` + `body` to message `counter` sent to
    `path` (see the module docstring)."""
    head = f"answer\n{'/'.join(path)}\n{counter}\n{code}\n".encode()
    return _mac(key, head + body)


def seal_answer(key: bytes, path: tuple[str, ...], counter: int, code: int,
                body: bytes) -> bytes:
    """The payload of the answer `code` to a leaf's message `counter`."""
    return answer_tag(key, path, counter, code, body) + body


def open_answer(key: bytes, path: tuple[str, ...], counter: int, code: int,
                payload: bytes) -> bytes | None:
    """The body of an answer if its tag checks, else None (what the leaf
    does, ``firmware/leaf.py``; tests and tools use this one)."""
    if len(payload) < TAG_SIZE:
        return None
    good = answer_tag(key, path, counter, code, payload[TAG_SIZE:])
    return payload[TAG_SIZE:] if hmac.compare_digest(payload[:TAG_SIZE], good) else None


def hello_id(key: bytes, leaf_nonce: bytes) -> bytes:
    return _mac(key, b"hello\n" + leaf_nonce)[:HELLO_ID_SIZE]


def decode_hello(payload: bytes) -> Hello:
    """A hello: RemoteProtocolError("malformed") unless it is exactly
    ``{"id": 16 hex digits, "nl": 16 hex digits}``."""
    if len(payload) > MAX_PAYLOAD:
        raise RemoteProtocolError("oversized", f"{len(payload)}-byte hello")
    try:
        body = json.loads(payload.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise RemoteProtocolError("malformed", "a hello is a JSON object") from None
    if not isinstance(body, dict):
        raise RemoteProtocolError("malformed", "a hello is a JSON object")
    _only(body, {"id", "nl"})
    return Hello(_hex(body.get("id"), HELLO_ID_SIZE, "id"),
                 _hex(body.get("nl"), NONCE_SIZE, "nl"))


def _hex(value: object, size: int, what: str) -> bytes:
    if isinstance(value, str) and len(value) == 2 * size:
        with contextlib.suppress(ValueError):
            return bytes.fromhex(value)
    raise RemoteProtocolError("malformed", f"{what} must be {2 * size} hex digits")


def hello_leaf(keys: Mapping[str, bytes], hello: Hello) -> str | None:
    """The leaf whose key makes `hello`'s id, if this peer holds it (one
    HMAC per key: a peer's few hundred leaves at most)."""
    for name, key in keys.items():
        if hmac.compare_digest(hello_id(key, hello.leaf_nonce), hello.ident):
            return name
    return None


def seal_welcome(key: bytes, leaf_nonce: bytes, peer_nonce: bytes) -> bytes:
    """The payload of a peer's answer to a hello: TAG || {"np": hex}."""
    raw = json.dumps({"np": peer_nonce.hex()}).encode()
    return _mac(key, b"welcome\n" + leaf_nonce + b"\n" + raw) + raw


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


RESERVED_NAMES = frozenset({"register", "agents", "hello"})
"""Paths under ``/leaf`` that are not leaves: no leaf may be named so."""


def decode_register(body: dict[str, Any]) -> Register:
    _only(body, {"leaf", "n", "np", "period", "dev"})
    leaf = _name(body.get("leaf"), "leaf")
    if leaf in RESERVED_NAMES:
        raise RemoteProtocolError("malformed", f"{leaf} is not a leaf name")
    devices_raw = body.get("dev")
    if not isinstance(devices_raw, list) or not 0 < len(devices_raw) <= MAX_DEVICES:
        raise RemoteProtocolError("malformed", f"dev must list 1-{MAX_DEVICES} devices")
    devices = tuple(_device(d) for d in devices_raw)
    if len({d.resource for d in devices}) != len(devices):
        raise RemoteProtocolError("malformed", "two devices with the same resource name")
    period = _as_real(body.get("period"))
    if period is None or not MIN_PERIOD <= period <= MAX_PERIOD:
        raise RemoteProtocolError("malformed", f"period must be {MIN_PERIOD}-{MAX_PERIOD} s")
    return Register(leaf, _counter(body.get("n")), period, devices,
                    _hex(body.get("np"), NONCE_SIZE, "np"))


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
        if name in RESERVED_NAMES:
            raise ConfigError(f"{where}, line {number}: {name} is reserved (a path under "
                              "/leaf), not a leaf name")
        try:
            key = bytes.fromhex(hexkey)
        except ValueError:
            raise ConfigError(f"{where}, line {number}: the key is not hex") from None
        if not KEY_MIN <= len(key) <= KEY_MAX:
            raise ConfigError(f"{where}, line {number}: a key is {KEY_MIN}-{KEY_MAX} bytes, "
                              f"this one {len(key)}")
        keys[name] = key
    return keys


# ------------------------------------------------------------ mobile agents

# A mobile agent is data, never code: a program of at most `MAX_PROGRAM`
# instructions from this set, which the firmware interprets (firmware/agent.py
# checks every program again before it runs one):
#   ["set", R, 0|1]       drive actuator resource R (an "out" driver)
#   ["wait", MS]          pause MS milliseconds
#   ["blink", R, N, MS]   N times: R on for MS, off for MS
#   ["read", R]           append R's reading to the agent's output
# plus its path (the leaves it visits, in order) and what to do when the next
# leaf is gone: "skip" it (reroute to the one after) or "fail" (stop there).
AGENT_OPS = {"set": 2, "wait": 1, "blink": 3, "read": 1}
"""Instruction name -> number of arguments."""
MAX_PROGRAM = 16
MAX_PATH = 16
MAX_STEP_MS = 10_000
"""Longest time one step (the program on one leaf) may pause in all: a leaf
does not read its sensors while it runs an agent."""
MAX_BLINKS = 20
ON_DEAD = ("skip", "fail")
MAX_OUTPUT = 16
"""Values an agent's step may return (``read`` instructions)."""
MAX_PROGRAM_BYTES = 900
"""JSON bytes of a program at most: with its tag and id the answer that
carries it stays within one datagram the leaf reads whole (1,152 bytes,
RFC 7252 §4.6, ``firmware/coap.py`` MAX_DATAGRAM)."""


@dataclass(frozen=True)
class AgentSpec:
    path: tuple[str, ...]
    program: tuple[tuple[str | int, ...], ...]
    on_dead: str


@dataclass(frozen=True)
class AgentResult:
    leaf: str
    counter: int
    agent: str
    ok: bool
    output: tuple[LeafValue, ...]
    error: str


def step_ms(program: tuple[tuple[str | int, ...], ...]) -> int:
    """Milliseconds a program pauses in all (`MAX_STEP_MS` bounds it)."""
    total = 0
    for op in program:
        if op[0] == "wait":
            total += int(op[1])
        elif op[0] == "blink":
            total += 2 * int(op[2]) * int(op[3])
    return total


def decode_agent(body: object) -> AgentSpec:
    """An agent submitted by a service: RemoteProtocolError("malformed")
    unless every instruction is in `AGENT_OPS` with arguments in range."""
    if not isinstance(body, dict):
        raise RemoteProtocolError("malformed", "an agent is a JSON object")
    _only(body, {"path", "prog", "on_dead"})
    path = body.get("path")
    if not isinstance(path, list) or not 0 < len(path) <= MAX_PATH:
        raise RemoteProtocolError("malformed", f"path must list 1-{MAX_PATH} leaves")
    leaves = tuple(_name(p, "leaf") for p in path)
    program = body.get("prog")
    if not isinstance(program, list) or not 0 < len(program) <= MAX_PROGRAM:
        raise RemoteProtocolError("malformed", f"prog must list 1-{MAX_PROGRAM} instructions")
    ops = tuple(_instruction(op) for op in program)
    if len(json.dumps(program)) > MAX_PROGRAM_BYTES:
        raise RemoteProtocolError("malformed", f"a program is {MAX_PROGRAM_BYTES} bytes "
                                  "of JSON at most")
    if step_ms(ops) > MAX_STEP_MS:
        raise RemoteProtocolError("malformed", f"a step may pause {MAX_STEP_MS} ms at most")
    on_dead = body.get("on_dead", "skip")
    if on_dead not in ON_DEAD:
        raise RemoteProtocolError("malformed", f"on_dead must be one of {', '.join(ON_DEAD)}")
    return AgentSpec(leaves, ops, str(on_dead))


def _instruction(op: object) -> tuple[str | int, ...]:
    if not isinstance(op, list) or not op or op[0] not in AGENT_OPS \
            or len(op) != 1 + AGENT_OPS[op[0]]:
        raise RemoteProtocolError("malformed", f"unknown instruction {str(op)[:40]}; "
                                  f"instructions are {', '.join(AGENT_OPS)}")
    name, args = op[0], op[1:]
    ints = [_as_int(a) for a in args]
    if name == "wait" and not (ints[0] is not None and 0 <= ints[0] <= MAX_STEP_MS):
        raise RemoteProtocolError("malformed", f"wait takes 0-{MAX_STEP_MS} ms")
    if name in ("set", "blink", "read"):
        _name(args[0], "resource")
    if name == "set" and ints[1] not in (0, 1):
        raise RemoteProtocolError("malformed", "set takes 0 or 1")
    if name == "blink" and not (ints[1] is not None and 1 <= ints[1] <= MAX_BLINKS
                                and ints[2] is not None and 1 <= ints[2] <= MAX_STEP_MS):
        raise RemoteProtocolError("malformed", f"blink takes 1-{MAX_BLINKS} times and "
                                  f"1-{MAX_STEP_MS} ms")
    return (name, *(a if i is None else i for a, i in zip(args, ints, strict=True)))


def agent_path(leaf: str) -> tuple[str, ...]:
    """Where a leaf posts the result of an agent's step."""
    return ("leaf", leaf, "agent")


def agent_body(agent: str, program: tuple[tuple[str | int, ...], ...]) -> bytes:
    """The body of the answer to a leaf's report that hands it agent `agent`;
    the answer's tag (`seal_answer`, bound to the report's counter) says
    only this leaf's key made it and that it answers this report only."""
    return json.dumps({"agent": agent, "prog": [list(op) for op in program]}).encode()


def decode_agent_result(leaf: str, body: dict[str, Any]) -> AgentResult:
    _only(body, {"n", "agent", "ok", "out", "err"})
    agent = body.get("agent")
    ok = body.get("ok")
    out = body.get("out", [])
    err = body.get("err", "")
    if not isinstance(agent, str) or not 0 < len(agent) <= 16 or not isinstance(ok, bool):
        raise RemoteProtocolError("malformed", "a result names its agent and says ok")
    if not isinstance(out, list) or len(out) > MAX_OUTPUT or not all(
            v is None or isinstance(v, bool) or _as_real(v) is not None for v in out):
        raise RemoteProtocolError("malformed", f"out lists at most {MAX_OUTPUT} values")
    if not isinstance(err, str) or len(err) > 80:
        raise RemoteProtocolError("malformed", "err is a short text")
    return AgentResult(leaf, _counter(body.get("n")), agent, ok, tuple(out), err)
