"""pyzmq sockets used natively from trio (no asyncio, no threads).

ZeroMQ exposes one file descriptor per socket, ``ZMQ_FD``, that becomes
readable when the socket's state *may* have changed; it is edge-triggered and
covers both directions. The rules this adapter follows:

- every operation is non-blocking (``NOBLOCK``); on ``EAGAIN`` the task waits;
- before every wait, read ``ZMQ_EVENTS`` (that also re-arms the edge): a wait
  only starts when the wanted event is really absent;
- only one task waits on the fd at a time (trio refuses a second
  ``wait_readable`` on one fd); other tasks park on an event that the fd
  waiter sets when it wakes;
- any successful send or receive may consume the fd's edge on behalf of the
  other direction, so afterwards every waiter (the fd waiter included) is woken
  to re-check ``ZMQ_EVENTS``. Without that, a task receiving on a socket that
  another task sends on can sleep forever with a message queued.

There is no busy loop: a task only re-checks after the fd fired or after an
operation on the same socket. Sockets are not shared between trio runs or
threads.
"""

from __future__ import annotations

import itertools
import os
from types import TracebackType
from typing import Any

import trio
import zmq

CONTEXT_IO_THREADS = 1
"""ZeroMQ I/O threads of the process-wide context: one thread moves about a
gigabyte per second, far above what a nanoservice needs."""

DEFAULT_MAX_MESSAGE = 2 << 20
"""Largest message, in bytes, a socket made by `socket()` accepts from a peer
(ZMQ_MAXMSGSIZE; a bigger message disconnects that peer). Above the wire
format's 1 MiB body limit with room for the envelope."""


def context() -> zmq.Context[zmq.Socket[bytes]]:
    """The process-wide ZeroMQ context (created on first use, fork-aware)."""
    return zmq.Context.instance(CONTEXT_IO_THREADS)


class Socket:
    """A trio-friendly wrapper of one pyzmq socket. Use `socket()` to make one;
    ``async with`` (or `close()`) closes it. Any number of tasks may send and
    receive concurrently; multipart messages stay atomic."""

    def __init__(self, raw: zmq.Socket[bytes]) -> None:
        self.raw = raw
        self._fd = int(raw.getsockopt(zmq.FD))
        self._watcher: trio.CancelScope | None = None
        self._changed = trio.Event()
        self._closed = False

    # ------------------------------------------------------------ operations

    async def send_multipart(self, frames: list[bytes]) -> None:
        """Send one message; waits (without spinning) while the socket is at
        its high-water mark. Raises trio.ClosedResourceError if closed."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            self._check_open()
            try:
                self.raw.send_multipart(frames, flags=zmq.NOBLOCK)
                break
            except zmq.Again:
                await self._wait_for(zmq.POLLOUT)
        self._wake_waiters()
        await trio.lowlevel.cancel_shielded_checkpoint()

    def send_multipart_nowait(self, frames: list[bytes]) -> bool:
        """Send if the socket can take the message now; False if it cannot
        (PUB and ROUTER sockets drop instead of blocking, so this is their
        normal way to send)."""
        self._check_open()
        try:
            self.raw.send_multipart(frames, flags=zmq.NOBLOCK)
        except zmq.Again:
            return False
        self._wake_waiters()
        return True

    async def recv_multipart(self) -> list[bytes]:
        """Receive one whole message (all its frames)."""
        frames: list[bytes] = await self._recv(copy=True)
        return frames

    async def recv_frames(self) -> list[zmq.Frame]:
        """Receive one whole message as `zmq.Frame`s, which carry the
        connection's metadata (``frame.get("User-Id")``: who ZAP admitted)."""
        frames: list[zmq.Frame] = await self._recv(copy=False)
        return frames

    async def _recv(self, copy: bool) -> Any:
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            self._check_open()
            try:
                frames = self.raw.recv_multipart(flags=zmq.NOBLOCK, copy=copy)
                break
            except zmq.Again:
                await self._wait_for(zmq.POLLIN)
        self._wake_waiters()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return frames

    # ------------------------------------------------------------ waiting

    async def _wait_for(self, flag: int) -> None:
        """Return once ``ZMQ_EVENTS`` may have changed; the caller retries."""
        if int(self.raw.getsockopt(zmq.EVENTS)) & flag:
            return
        if self._watcher is not None:
            await self._changed.wait()
            return
        with trio.CancelScope() as scope:
            self._watcher = scope
            try:
                await trio.lowlevel.wait_readable(self._fd)
            finally:
                self._watcher = None
                self._wake_waiters()

    def _wake_waiters(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
        if self._watcher is not None:
            # Cancelling only the watcher's own inner scope: it returns
            # normally from `_wait_for` and re-checks ZMQ_EVENTS.
            self._watcher.cancel()

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("ZeroMQ socket is closed")

    # ------------------------------------------------------------ lifetime

    def close(self, linger: int = 0) -> None:
        """Close now; tasks waiting on this socket get trio.ClosedResourceError.
        ``linger`` is how many milliseconds ZeroMQ may keep trying to deliver
        queued messages in the background (0: drop them)."""
        if self._closed:
            return
        self._closed = True
        try:
            trio.lowlevel.notify_closing(self._fd)
        except RuntimeError:
            pass  # outside trio.run (e.g. a pool emptied at exit): nobody can be waiting
        else:
            self._wake_waiters()
        self.raw.close(linger=linger)

    @property
    def closed(self) -> bool:
        return self._closed

    async def __aenter__(self) -> Socket:
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.close()


_monitor_ids = itertools.count(1)


def monitor(sock: Socket, events: int) -> Socket:
    """A PAIR socket receiving ``sock``'s monitor events (see zmq_socket_monitor).

    The inproc address is unique per monitor: pyzmq's default names it after
    the socket's fd, and an fd reused soon after a close can collide with the
    previous socket's monitor endpoint, which libzmq may not have torn down yet."""
    address = f"inproc://nanomesh-monitor-{os.getpid()}-{next(_monitor_ids)}"
    return Socket(sock.raw.get_monitor_socket(events, addr=address))


def socket(kind: int, *, max_message: int = DEFAULT_MAX_MESSAGE) -> Socket:
    """A new non-blocking socket of type ``kind`` (``zmq.DEALER``, ...), with
    ``linger`` 0 so that closing never blocks the event loop and a
    `max_message` cap on what peers may send it."""
    raw: zmq.Socket[bytes] = context().socket(kind)
    raw.setsockopt(zmq.LINGER, 0)
    raw.setsockopt(zmq.MAXMSGSIZE, max_message)
    return Socket(raw)
