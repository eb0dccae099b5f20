"""Health checks: a pure state machine, and the probes that feed it.

**The machine** (:func:`begin`, :func:`observe`; check results and ``now``
in, a :class:`Health` out), per :class:`~nanomesh.runtime.spec.HealthSpec`:

* ``starting``: checks every :data:`~nanomesh.runtime.spec.START_POLL`
  seconds until the first success (then ``healthy``); a check that fails at
  or after ``start_period`` seconds from the start gives up: the instance
  never became healthy;
* ``healthy``: checks every ``interval``; ``retries`` consecutive failures
  make it ``unhealthy`` and give up.

Giving up means the driver stops the instance and records it ``failed`` with
``"unhealthy: <last probe error>"``; the restart policy and the back-off in
:mod:`nanomesh.reconcile` decide what comes next, as for a crash.

**The probes** (:func:`probe`, the thin trio shell): ``tcp`` connect;
``http`` ``GET path`` answering 2xx; ``coap`` a CoAP ping (an empty
confirmable message, answered by a reset) or, with ``path``, ``GET path``
answering 2.xx (RFC 7252 §3, the few bytes built here with the stdlib);
``zmq`` an rpc ``GET path`` (:func:`nanomesh.rpc.zmq_call`) answering 2xx;
``exec`` the command, in the instance's folder and environment, exiting 0.
A probe returns None on success, else a short error text; it never raises
for a failed check.
"""

from __future__ import annotations

import math
import os
import secrets
import socket
import struct
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, replace

import trio

from nanomesh.errors import RemoteProtocolError
from nanomesh.runtime.spec import START_POLL, HealthSpec

# -- the state machine (pure) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Health:
    """Where one run's health checks stand."""

    state: str
    """``starting``, ``healthy`` or ``unhealthy``."""
    started: float
    """When the run started (``start_period`` counts from here)."""
    next_check: float
    """When the next check is due."""
    failures: int = 0
    """Consecutive failed checks."""
    last_error: str = ""
    give_up: bool = False
    """True: stop the instance; it is ``failed`` with :attr:`reason`."""

    @property
    def reason(self) -> str:
        return f"unhealthy: {self.last_error}" if self.last_error else "unhealthy"


def begin(now: float) -> Health:
    """A run that started at ``now``: the first check is due at once."""
    return Health("starting", started=now, next_check=now)


def observe(spec: HealthSpec, health: Health, error: str | None, now: float) -> Health:
    """The outcome of one check at ``now`` (``error`` None: it passed)."""
    if health.give_up:
        return health
    if error is None:
        return replace(health, state="healthy", failures=0, next_check=now + spec.interval)
    failures = health.failures + 1
    if health.state == "starting":
        if now - health.started >= spec.start_period:
            return replace(health, state="unhealthy", failures=failures, give_up=True,
                           last_error=f"no successful check within {spec.start_period:g} s "
                                      f"of the start (last: {error})")
        return replace(health, failures=failures, last_error=error,
                       next_check=now + START_POLL)
    if failures >= spec.retries:
        return replace(health, state="unhealthy", failures=failures, last_error=error,
                       give_up=True, next_check=math.inf)
    return replace(health, failures=failures, last_error=error, next_check=now + spec.interval)


# -- CoAP bytes (RFC 7252 §3) ------------------------------------------------------------------

COAP_VERSION = 1
CON, NON, ACK, RST = 0, 1, 2, 3
CODE_EMPTY, CODE_GET = 0x00, 0x01
OPTION_URI_PATH = 11


def coap_ping(message_id: int) -> bytes:
    """An empty confirmable message: a CoAP ping (§4.3); the answer is a reset."""
    return struct.pack("!BBH", COAP_VERSION << 6 | CON << 4, CODE_EMPTY, message_id)


def coap_get(message_id: int, token: bytes, path: str) -> bytes:
    """A confirmable ``GET`` of ``path`` (segments as Uri-Path options)."""
    if len(token) > 8:
        raise ValueError("a CoAP token is at most 8 bytes")
    out = bytearray(struct.pack("!BBH", COAP_VERSION << 6 | CON << 4 | len(token), CODE_GET,
                                message_id))
    out += token
    previous = 0
    for segment in (s for s in path.split("/") if s):
        value = segment.encode()
        out += _option_header(OPTION_URI_PATH - previous, len(value)) + value
        previous = OPTION_URI_PATH
    return bytes(out)


def _option_header(delta: int, length: int) -> bytes:
    ext = bytearray()

    def nibble(n: int) -> int:
        if n < 13:
            return n
        if n < 269:
            ext.append(n - 13)
            return 13
        ext.extend(struct.pack("!H", n - 269))
        return 14

    d, ln = nibble(delta), nibble(length)
    return bytes([d << 4 | ln]) + bytes(ext)


@dataclass(frozen=True, slots=True)
class CoapHeader:
    type: int
    code: int
    message_id: int
    token: bytes

    @property
    def code_text(self) -> str:
        return f"{self.code >> 5}.{self.code & 0x1F:02d}"


def coap_parse(data: bytes) -> CoapHeader:
    """The header of a CoAP message; :class:`RemoteProtocolError` for garbage."""
    if len(data) < 4:
        raise RemoteProtocolError("malformed", "CoAP message shorter than its header")
    first, code, message_id = struct.unpack("!BBH", data[:4])
    if first >> 6 != COAP_VERSION:
        raise RemoteProtocolError("version", f"CoAP version {first >> 6}")
    tkl = first & 0x0F
    if tkl > 8 or len(data) < 4 + tkl:
        raise RemoteProtocolError("malformed", "bad CoAP token length")
    return CoapHeader(first >> 4 & 3, code, message_id, data[4:4 + tkl])


def coap_empty_ack(message_id: int) -> bytes:
    return struct.pack("!BBH", COAP_VERSION << 6 | ACK << 4, CODE_EMPTY, message_id)


# -- the probes (trio shell) -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """What a probe checks: the instance's address and its run context."""

    host: str
    port: int | None = None
    cwd: str | None = None
    env: Mapping[str, str] | None = None


async def probe(spec: HealthSpec, target: Target) -> str | None:
    """Run one check of kind ``spec.check``, at most ``spec.timeout`` seconds.
    None if it passed, else why not."""
    host = _probe_host(target.host)
    where = f"{host}:{target.port}"
    try:
        with trio.fail_after(spec.timeout):
            match spec.check:
                case "none":
                    return None
                case "tcp":
                    stream = await _connect(host, _port(target))
                    await stream.aclose()
                    return None
                case "http":
                    return await _http(host, _port(target), spec.path)
                case "coap":
                    return await _coap(host, _port(target), spec.path, spec.timeout)
                case "zmq":
                    return await _zmq(host, _port(target), spec.path, spec.timeout)
                case "exec":
                    return await _exec(spec.command, target)
                case _:
                    return f"unknown check {spec.check!r}"
    except trio.TooSlowError:
        return f"{spec.check} {where}: no answer within {spec.timeout:g} s"
    except OSError as exc:
        return f"{spec.check} {where}: {exc.strerror or exc}"
    except RemoteProtocolError as exc:
        return f"{spec.check} {where}: bad answer ({exc})"


def _probe_host(host: str) -> str:
    """A wildcard address is checked on loopback."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def _port(target: Target) -> int:
    if target.port is None:
        raise OSError("the check's endpoint has no port")
    return target.port


async def _connect(host: str, port: int) -> trio.SocketStream:
    """One TCP connection to an IP (``trio.open_tcp_stream`` would hide the
    reason, "connection refused", inside a group of attempts)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        await sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def _http(host: str, port: int, path: str) -> str | None:
    stream = await _connect(host, port)
    async with stream:
        target = "/" + path.lstrip("/")
        hostname = f"[{host}]" if ":" in host else host
        await stream.send_all(f"GET {target} HTTP/1.1\r\nHost: {hostname}:{port}\r\n"
                              "User-Agent: nanomesh-health\r\nConnection: close\r\n\r\n"
                              .encode())
        head = b""
        while b"\r\n" not in head and len(head) < 4096:
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            head += chunk
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise RemoteProtocolError("malformed", f"not an HTTP status line: {line[:80]!r}")
    if not 200 <= int(parts[1]) < 300:
        return f"http GET {target}: {line.strip()[:120]}"
    return None


async def _coap(host: str, port: int, path: str, timeout: float) -> str | None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with trio.socket.socket(family, socket.SOCK_DGRAM) as sock:
        await sock.connect((host, port))
        message_id = secrets.randbelow(1 << 16)
        token = secrets.token_bytes(4)
        request = coap_get(message_id, token, path) if path else coap_ping(message_id)
        # One retransmission halfway through: a lost datagram is not a failed
        # check (RFC 7252's own schedule is far too slow for a 1 s timeout).
        resend_at = trio.current_time() + timeout / 2
        await sock.send(request)
        while True:
            with trio.move_on_at(resend_at) as scope:
                data = await sock.recv(2048)
            if scope.cancelled_caught:
                resend_at = math.inf
                await sock.send(request)
                continue
            reply = coap_parse(data)
            if reply.type == CON:  # a separate response: acknowledge it
                await sock.send(coap_empty_ack(reply.message_id))
            verdict = _coap_verdict(reply, message_id, token, path)
            if not isinstance(verdict, _Wait):
                return verdict


class _Wait:
    pass


_WAIT = _Wait()


def _coap_verdict(reply: CoapHeader, message_id: int, token: bytes,
                  path: str) -> str | _Wait | None:
    """What one received message says: passed (None), failed (text) or keep
    waiting (an unrelated message, or the empty ACK before a separate response)."""
    ours = reply.message_id == message_id
    if not path:  # a ping
        if not ours:
            return _WAIT
        return None if reply.type == RST else (
            f"coap ping: expected a reset, got type {reply.type} code {reply.code_text}")
    if ours and reply.type == RST:
        return f"coap GET /{path.lstrip('/')}: reset by the server"
    if ours and reply.type == ACK and reply.code == CODE_EMPTY:
        return _WAIT  # the response follows separately
    if reply.token != token or (reply.type == ACK and not ours):
        return _WAIT
    if reply.code >> 5 != 2:
        return f"coap GET /{path.lstrip('/')}: {reply.code_text}"
    return None


async def _zmq(host: str, port: int, path: str, timeout: float) -> str | None:
    # Imported here: the runtime must not need pyzmq unless a service asks
    # for a zmq check.
    from nanomesh.rpc import RpcError, zmq_call
    from nanomesh.wire.rpc import Request

    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        response = await zmq_call(address, Request("GET", path.lstrip("/")), timeout)
    except RpcError as exc:
        return str(exc)
    if not 200 <= response.status < 300:
        return f"zmq GET /{path.lstrip('/')}: {response.status} {response.error}".strip()
    return None


EXEC_OUTPUT = 200
"""Characters of a failed exec check's output kept in its error message."""


async def _exec(command: tuple[str, ...], target: Target) -> str | None:
    env = dict(os.environ if target.env is None else target.env)
    try:
        result = await trio.run_process(list(command), cwd=target.cwd, env=env,
                                        stdin=b"", capture_stdout=True, stderr=subprocess.STDOUT,
                                        check=False)
    except OSError as exc:
        return f"exec {command[0]!r}: {exc.strerror or exc}"
    if result.returncode == 0:
        return None
    output = result.stdout.decode(errors="replace").strip()
    tail = output[-EXEC_OUTPUT:].replace("\n", " | ")
    return f"exec {command[0]!r} exited with {result.returncode}" + (f": {tail}" if tail
                                                                       else "")
