"""Health checks: a pure state machine, and the probes that feed it.

**The machine** (:func:`begin`, :func:`observe`; check results and ``now``
in, a :class:`Health` out), per :class:`~nanomesh.runtime.instance_spec.HealthSpec`:

* ``starting``: checks every :data:`~nanomesh.runtime.instance_spec.START_POLL`
  seconds (:data:`EXEC_START_POLL` for an ``exec`` check: each one is a new
  process) until the first success (then ``healthy``); a check that fails at
  or after ``start_period`` seconds from the start gives up: the instance
  never became healthy;
* ``healthy``: checks every ``interval``; ``retries`` consecutive failures
  make it ``unhealthy`` and give up.

Giving up means the driver stops the instance and records it ``failed`` with
``"unhealthy: <last probe error>"``; the restart policy and the back-off in
:mod:`nanomesh.runtime.reconcile_core` decide what comes next, as for a crash.

**The probes** (:func:`probe`, the thin trio shell): ``tcp`` connect;
``http`` ``GET path`` answering 2xx; ``coap`` a CoAP ping (an empty
confirmable message, answered by a reset) or, with ``path``, ``GET path``
answering 2.xx (RFC 7252 §3, the few bytes built here with the stdlib);
``zmq`` an rpc ``GET path`` (:func:`nanomesh.transport.rpc.zmq_call`) answering 2xx;
``exec`` the command *inside the instance*, exiting 0 (:func:`exec_argv`).
A probe returns None on success, else a short error text; it never raises
for a failed check, nor for an answer it cannot understand: any exception
from a probe (a bug, or garbage we did not foresee) is a failed check,
``"bad answer: ..."``, logged with its traceback, so an instance can never
take the driver down through its health check.

**Exec checks run inside the instance.** For a process, the check joins the
instance's cgroup (a ``/bin/sh`` wrapper writes its pid to each
``cgroup.procs``, then execs the command), in the instance's folder and
environment, in a process group of its own; a container's check runs through
its engine (``runc exec``, ``podman exec``, ``docker exec``: the
container's root filesystem, environment and cgroup). Only the exit status
counts: stdin is ``/dev/null``, output goes into a pipe read with a bound
(its tail ends up in the error message) and is not waited for once the
command has exited, so a check that leaves something running in the
background (``sleep 60 & exit 0``) still passes. Whatever the check leaves
in its process group is killed as soon as it exits, or when it times out;
what escaped the group (``setsid``) is in the instance's cgroup and ends with
the instance. (A container check that times out is killed on the host side;
what it started inside the container ends with the container.)
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import signal
import socket
import struct
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, replace

import trio

from nanomesh.errors import RemoteProtocolError
from nanomesh.runtime.instance_spec import START_POLL, HealthSpec

log = logging.getLogger("nanomesh.runtime")

EXEC_START_POLL = 0.25
"""Seconds between ``exec`` checks until the first success (other checks use
:data:`~nanomesh.runtime.instance_spec.START_POLL`, 20 ms): every exec check is a new
process (through a container engine, 50-200 ms of CPU), so polling as fast as
a connect would spawn 50 a second on a small device for the whole start
period. A quarter second still finds a ready service quickly."""

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
                       next_check=now + start_poll(spec))
    if failures >= spec.retries:
        return replace(health, state="unhealthy", failures=failures, last_error=error,
                       give_up=True, next_check=math.inf)
    return replace(health, failures=failures, last_error=error, next_check=now + spec.interval)


def start_poll(spec: HealthSpec) -> float:
    """Seconds between checks while a run is ``starting``."""
    return EXEC_START_POLL if spec.check == "exec" else START_POLL


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
    exec_prefix: tuple[str, ...] | None = None
    """For a container: the engine's argv that runs a command inside it
    (``runc --root R exec ID``); the check's command is appended. None: the
    instance runs on the host."""
    cgroup_procs: tuple[str, ...] = ()
    """The instance's ``cgroup.procs`` files, one per hierarchy: a host exec
    check joins them before it runs (empty: no cgroup on this machine)."""


async def probe(spec: HealthSpec, target: Target) -> str | None:
    """Run one check of kind ``spec.check``, at most ``spec.timeout`` seconds.
    None if it passed, else why not."""
    host = _probe_host(target.host)
    where = repr(spec.command[0]) if spec.check == "exec" and spec.command \
        else f"{host}:{target.port}"
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
    except Exception as exc:  # anything else: a failed check, never a crash (docstring)
        _log_unexpected(spec.check, exc)
        return f"{spec.check} {where}: bad answer: {_short(exc)}"


UNEXPECTED_TEXT = 160
"""Characters of an unexpected exception's text kept in a check's error."""

_logged_unexpected: set[tuple[str, str]] = set()
"""(check, exception type) already logged with a traceback: a starting
instance is checked every 20 ms, so later ones are logged at debug level.
Bounded by the few check kinds and exception types there are."""


def _log_unexpected(check: str, exc: Exception) -> None:
    key = (check, type(exc).__name__)
    first = key not in _logged_unexpected
    _logged_unexpected.add(key)
    log.log(logging.WARNING if first else logging.DEBUG,
            "%s health check raised %s (counted as a failed check)%s", check,
            type(exc).__name__, "" if first else " again", exc_info=True)


def _short(exc: Exception) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= UNEXPECTED_TEXT else text[:UNEXPECTED_TEXT - 3] + "..."


def _probe_host(host: str) -> str:
    """A wildcard address is checked on loopback."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def _port(target: Target) -> int:
    if target.port is None:
        raise OSError("the check's endpoint has no port")
    return target.port


async def _bind_source(sock: trio.socket.SocketType, host: str) -> None:
    """Probe from the instance's own (the peer's) IP: a private service's
    CoAP and HTTP servers answer only that address (`nanomesh.sdk.service`); on
    loopback the kernel would otherwise pick 127.0.0.1. Best effort."""
    with contextlib.suppress(OSError):
        await sock.bind((host, 0))


async def _connect(host: str, port: int) -> trio.SocketStream:
    """One TCP connection to an IP (``trio.open_tcp_stream`` would hide the
    reason, "connection refused", inside a group of attempts)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        await _bind_source(sock, host)
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
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not (
            len(parts[1]) == 3 and parts[1].isascii() and parts[1].isdigit()):
        raise RemoteProtocolError("malformed", f"not an HTTP status line: {line[:80]!r}")
    if not 200 <= int(parts[1]) < 300:
        return f"http GET {target}: {line.strip()[:120]}"
    return None


async def _coap(host: str, port: int, path: str, timeout: float) -> str | None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with trio.socket.socket(family, socket.SOCK_DGRAM) as sock:
        await _bind_source(sock, host)
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
    from nanomesh.transport.rpc import RpcError, zmq_call
    from nanomesh.wire.service_traffic import Request

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
EXEC_READ_BYTES = 4096
"""Bytes of an exec check's output kept while it runs (the rest is read and
dropped, so a chatty check never blocks on a full pipe)."""
EXEC_REAP_TIMEOUT = 5.0
"""Seconds to wait for a check killed at its timeout to be reaped (SIGKILL
takes milliseconds; a process stuck in the kernel is left to the instance's
cgroup kill)."""

JOIN_CGROUP_SH = ('n=$1; shift; while [ "$n" -gt 0 ]; do '
                  'echo $$ > "$1" || exit 125; shift; n=$((n - 1)); done; exec "$@"')
"""``/bin/sh -c`` wrapper: ``sh -c JOIN name N PROCS_1..PROCS_N COMMAND...``
writes its pid to the N ``cgroup.procs`` files, then becomes the command, so
the check and everything it starts are in the instance's cgroup from the
first instruction (writing the pid after the spawn would race its forks)."""


def exec_argv(command: tuple[str, ...], target: Target) -> list[str]:
    """The argv that runs an exec check's ``command`` inside the instance
    (module docstring)."""
    if target.exec_prefix is not None:
        return [*target.exec_prefix, *command]
    if target.cgroup_procs:
        return ["/bin/sh", "-c", JOIN_CGROUP_SH, "nanomesh-health",
                str(len(target.cgroup_procs)), *target.cgroup_procs, *command]
    return list(command)


async def _exec(command: tuple[str, ...], target: Target) -> str | None:
    if target.exec_prefix is not None:  # the engine's client runs on the host
        env, cwd = dict(os.environ), None
    else:
        env = dict(os.environ if target.env is None else target.env)
        cwd = target.cwd
    try:
        rc, output = await run_check(exec_argv(command, target), cwd=cwd, env=env)
    except OSError as exc:
        return f"exec {command[0]!r}: {exc.strerror or exc}"
    if rc == 0:
        return None
    text = output.decode(errors="replace").strip()
    tail = text[-EXEC_OUTPUT:].replace("\n", " | ")
    return f"exec {command[0]!r} exited with {rc}" + (f": {tail}" if tail else "")


async def run_check(argv: list[str], *, cwd: str | None, env: Mapping[str, str]
                    ) -> tuple[int, bytes]:
    """Run ``argv`` in a new session (its own process group), stdin
    ``/dev/null``; return its exit status (``subprocess``-style) and the tail of
    its output (stdout and stderr) as read by the time it exited. Its process
    group is SIGKILLed when it exits and when this is cancelled (a timeout)."""
    read_end, write_end = os.pipe()
    try:
        process = await trio.lowlevel.open_process(
            argv, stdin=subprocess.DEVNULL, stdout=write_end, stderr=write_end, cwd=cwd,
            env=dict(env), start_new_session=True)
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    os.set_blocking(read_end, False)
    output = bytearray()
    pidfd = _pidfd_open(process.pid)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_collect, read_end, output)
            if pidfd is not None:
                await trio.lowlevel.wait_readable(pidfd)
            else:  # Linux < 5.3: reaped here, so no group kill (the pid could be reused)
                await process.wait()
            nursery.cancel_scope.cancel()
        _drain(read_end, output)  # what it wrote before it exited; leftovers are not waited for
        if pidfd is not None:
            _kill_group(process.pid)  # a zombie leader still holds the group's id
        rc = await process.wait()
    finally:
        if process.returncode is None:  # cancelled (timed out): not reaped yet
            _kill_group(process.pid)
            with trio.CancelScope(shield=True), trio.move_on_after(EXEC_REAP_TIMEOUT):
                await process.wait()
        for fd in (read_end, pidfd):
            if fd is not None:
                trio.lowlevel.notify_closing(fd)
                os.close(fd)
    return rc, bytes(output)


async def _collect(fd: int, output: bytearray) -> None:
    while True:
        await trio.lowlevel.wait_readable(fd)
        if not _read_some(fd, output):
            return


def _read_some(fd: int, output: bytearray) -> bool:
    """Read what is there into ``output`` (keeping its last
    :data:`EXEC_READ_BYTES`); False at the end of the file."""
    try:
        data = os.read(fd, EXEC_READ_BYTES)
    except BlockingIOError:
        return True
    except OSError:
        return False
    if not data:
        return False
    output += data
    del output[:-EXEC_READ_BYTES]
    return True


def _drain(fd: int, output: bytearray) -> None:
    """Read what is buffered now, without waiting (bounded: 64 reads)."""
    for _ in range(64):
        try:
            data = os.read(fd, EXEC_READ_BYTES)
        except OSError:  # BlockingIOError: nothing more buffered
            return
        if not data:
            return
        output += data
        del output[:-EXEC_READ_BYTES]


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pgid, signal.SIGKILL)


def _pidfd_open(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None
