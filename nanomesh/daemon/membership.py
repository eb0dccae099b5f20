"""The gossip shell: a thin trio shell around the membership core.

Duties of the shell, in the order it performs them for every input:
decode the bytes at the boundary (garbage is counted and dropped), feed the
core the message and ``trio.current_time()``, then carry out the returned
effects in order: send datagrams, start stream calls, log notifications.
Nothing here decides anything about membership.

Tasks (`GossipShell.serve` runs the first three in its own nursery; the
composition root, `nanomesh.daemon.assemble`, starts the others):
- ``_receive_datagrams``: UDP in → core;
- ``_run_timers``: sleeps until the core's next deadline (or until an input
  may have moved it) and ticks the core;
- the TCP stream server (push-pull, profile pulls and the failure detector's
  TCP pings) and one task per outgoing stream call;
- ``refresh_profile``: samples live values; `ProfilePublisher` (a pure core)
  says when they are worth a new profile version;
- ``watch_disk``: retries a failed state save, watches the free space;
- ``join_until_joined``: contacts the seeds until one answers.

Also here: the peer state file (``peer.json``: our incarnation and the peers
we last saw alive) and the data directory's preparation.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import trio

from nanomesh import __version__
from nanomesh.config import PeerConfig
from nanomesh.daemon.limits import StreamAdmission
from nanomesh.daemon.profile import ProfileSource
from nanomesh.daemon.views import GOSSIP_TCP, GOSSIP_UDP, Traffic
from nanomesh.discovery.publish import ProfilePublisher
from nanomesh.disk import (
    WATCH_PERIOD,
    DiskHealth,
    free_bytes,
    low_space_problem,
    retry_delay,
    write_atomically,
)
from nanomesh.errors import RemoteProtocolError
from nanomesh.gossip.effects import (
    Effect,
    MemberFailed,
    MemberJoined,
    MemberLeft,
    MemberReaped,
    MemberRecovered,
    MemberSuspected,
    Notification,
    ProfileUpdated,
    Refuted,
    SendDatagram,
    StreamCall,
)
from nanomesh.gossip.machine import Membership
from nanomesh.versions import THIS, verdict
from nanomesh.wire import (
    FRAME_PREFIX_LEN,
    MAX_DATAGRAM_IN,
    MAX_FRAME,
    Address,
    DatagramMessage,
    Keyring,
    MemberState,
    Ping,
    PushPull,
    StreamMessage,
    frame,
    frame_length,
    open_envelope,
    seal,
)
from nanomesh.wire import ProfileRequest as _ProfileRequest

log = logging.getLogger("nanomesh.peer")

LEAVE_PROPAGATION = 0.5
"""Seconds we keep gossiping after announcing a graceful leave, so the leave
reaches peers by gossip as well as by the direct sends (a few gossip rounds)."""
JOIN_RETRY_MAX = 30.0
"""Longest back-off, in seconds, between attempts to reach the join seeds."""

_STREAM_REQUESTS = (PushPull, _ProfileRequest)
"""Requests only a stream may carry (one inside a datagram is dropped)."""
_SERVED_STREAM_REQUESTS = (*_STREAM_REQUESTS, Ping)
"""What the stream server answers: also a Ping, the TCP fallback of a probe."""


class GossipShell:
    """The trio shell of one peer's `Membership` core. Built by the
    composition root (`nanomesh.daemon.assemble`) once the core exists; the
    control plane's profile sections and its wish to replan come in and go
    out as callables, so the shell knows nothing above membership."""

    def __init__(self, config: PeerConfig, keyring: Keyring, core: Membership,
                 profiles: ProfileSource, live: ProfilePublisher, *,
                 disk: DiskHealth, traffic: Traffic,
                 sections: Callable[[], Mapping[str, Any]],
                 membership_changed: Callable[[], None],
                 storage_problems: Callable[[], Sequence[str]],
                 remembered: Sequence[Address] = (),
                 notify: Callable[[Notification], None] | None = None) -> None:
        self.config = config
        self.keyring = keyring
        self.core = core
        self.profiles = profiles
        self.live = live
        """Decides when our discovered profile's live values are published."""
        self.disk = disk
        """Writes to the data directory that fail right now (`nanomesh.disk`)."""
        self.traffic = traffic
        self._sections = sections
        """The control plane's part of our profile (Raft role, instances, bundles)."""
        self._membership_changed = membership_changed
        self._storage_problems = storage_problems
        self._notify = notify
        """Hears every notification of the core (the event hub)."""
        """The Raft node's storage problems, part of `disk_problems`."""
        self._saved_incarnation = -1
        self._membership_dirty = False
        self._remembered = tuple(remembered)
        """The rejoin candidates peer.json holds (`peers_to_remember`)."""
        self._published_problems: list[str] = []
        self._udp: socket.socket | None = None
        self._wake = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._joined = trio.Event()
        self._join_round_done = trio.Event()
        self._join_pending = 0
        self._streams = StreamAdmission()

    # ------------------------------------------------------------ lifecycle

    async def serve(self, udp: socket.socket, listeners: list[trio.SocketListener], *,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Receive datagrams, tick the core's timers and serve gossip streams on
        the already-open sockets; outgoing stream calls run here too."""
        self._udp = udp
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._receive_datagrams)
            nursery.start_soon(self._run_timers)
            nursery.start_soon(trio.serve_listeners, self._serve_stream, listeners)
            task_status.started()

    async def leave(self) -> None:
        """Announce a graceful leave and give it time to spread."""
        self._execute(self.core.leave(trio.current_time()))
        await trio.sleep(LEAVE_PROPAGATION)
        log.info("left the mesh")

    async def join_until_joined(self, seeds: tuple[Address, ...]) -> None:
        """Contact the seeds until one answers, with capped exponential back-off
        (Consul's retry_join): seeds that boot later are still found."""
        delay = 1.0
        shown = ", ".join(f"{h}:{p}" for h, p in seeds)
        while not self._joined.is_set():
            log.info("joining via %s", shown)
            calls = self.core.join(seeds, trio.current_time())
            self._join_round_done = trio.Event()
            self._join_pending = len(calls)
            self._execute(calls)
            await self._join_round_done.wait()
            if self._joined.is_set():
                return
            log.warning("no seed answered (%s); retrying in %.0fs. If the seeds are up, check "
                        "that this peer has the mesh's cluster key (--key-file)", shown, delay)
            await trio.sleep(delay)
            delay = min(delay * 2, JOIN_RETRY_MAX)

    # ------------------------------------------------------------ datagrams and timers

    async def _receive_datagrams(self) -> None:
        assert self._udp is not None
        sock = trio.socket.from_stdlib_socket(self._udp)
        while True:
            try:
                data, addr = await sock.recvfrom(MAX_DATAGRAM_IN + 1)
            except OSError as exc:  # e.g. ICMP errors surfacing on the socket
                self.traffic.dropped["recv-" + type(exc).__name__] += 1
                continue
            self.traffic.received[GOSSIP_UDP] += len(data)
            try:
                messages = open_envelope(data, self.keyring)
            except RemoteProtocolError as exc:
                self._drop(exc, addr)
                continue
            datagram = [m for m in messages if not isinstance(m, _STREAM_REQUESTS)]
            with self._contained("datagram", addr):
                self._execute(self.core.handle_datagram(
                    (addr[0], addr[1]), _as_datagram(datagram), trio.current_time()))

    @contextlib.contextmanager
    def _contained(self, what: str, addr: Any) -> Iterator[None]:
        """A bug in the core triggered by one peer's message must not take this
        peer down: log it loudly with the traceback, count it, carry on."""
        try:
            yield
        except Exception:
            self.traffic.dropped["internal-error"] += 1
            log.exception("BUG: handling a %s from %s raised; the input was dropped", what, addr)

    async def _run_timers(self) -> None:
        while True:
            self._wake = trio.Event()
            with trio.move_on_at(self.core.next_deadline()):
                await self._wake.wait()
            self._execute(self.core.tick(trio.current_time()))

    def _drop(self, exc: RemoteProtocolError, addr: Any) -> None:
        self.traffic.dropped[exc.reason] += 1
        log.debug("dropped packet from %s: %s", addr, exc)
        if self.traffic.dropped[exc.reason] in (1, 100, 10_000):
            log.warning("dropping %s packets (%d so far), latest from %s: %s",
                        exc.reason, self.traffic.dropped[exc.reason], addr, exc)

    # ------------------------------------------------------------ effects

    def _execute(self, effects: list[Effect]) -> None:
        for e in effects:
            match e:
                case SendDatagram():
                    self._send_datagram(e)
                case StreamCall():
                    assert self._nursery is not None
                    self._nursery.start_soon(self._stream_call, e)
                case _:
                    _log_notification(e)
                    if self._notify is not None:
                        self._notify(e)
                    if isinstance(e, ProfileUpdated):
                        self._check_versions(e.name)
                    if isinstance(e, MemberJoined | MemberFailed | MemberLeft):
                        self._membership_dirty = True
                    if not isinstance(e, Refuted):
                        self._membership_changed()
        self._wake.set()  # the core's next deadline may have moved
        self._save_state_if_changed()

    def _check_versions(self, name: str) -> None:
        """Log a member whose new profile says it cannot share our mesh
        (`nanomesh.versions`). It is not dropped from gossip (it may be
        mid-upgrade and come back compatible): placement and voting leave it
        out, and ``nanomesh members`` shows why."""
        member = self.core.member(name)
        if member is not None and (why := verdict(member.profile)):
            log.warning("member %s is incompatible with this peer (nanomesh %s): %s; it gets "
                        "no placements and no vote", name, THIS.version, "; ".join(why))

    def _save_state_if_changed(self) -> None:
        core = self.core
        if self.disk.failing(_PEER_STATE_KEY) or (
                core.incarnation == self._saved_incarnation and not self._membership_dirty):
            return  # a failed save is retried by watch_disk, with back-off
        self._save_state()

    def _save_state(self) -> bool:
        """Save peer.json now; on a failure keep it dirty, report the problem
        and return False (the daemon goes on: it only matters at a restart)."""
        core = self.core
        alive = [m.addr for m in core.members()
                 if m.state is MemberState.ALIVE and m.name != core.name]
        remembered = peers_to_remember(alive, self._remembered)
        try:
            save_peer_state(self.config.data_dir, core.incarnation, remembered)
        except OSError as exc:
            problem = self.disk.failed(_PEER_STATE_KEY, f"save the peer state ({PEER_STATE})",
                                       exc)
            if problem is not None:
                log.error("%s; the peer runs on and retries with back-off", problem)
            return False
        self._saved_incarnation, self._membership_dirty = core.incarnation, False
        self._remembered = remembered
        if self.disk.succeeded(_PEER_STATE_KEY):
            log.warning("peer state (%s) saved again", PEER_STATE)
        return True

    # ------------------------------------------------------------ the data disk

    async def watch_disk(self) -> None:
        """Retry a failed peer-state save (with back-off), read the free space
        and the Raft node's storage problems, and publish the problems (log,
        profile) when they change. Runs once a second while all is well."""
        attempt = 0
        while True:
            failing = self.disk.failing(_PEER_STATE_KEY)
            await trio.sleep(retry_delay(attempt) if failing else WATCH_PERIOD)
            if failing:
                attempt = 0 if self._save_state() else attempt + 1
            try:
                low = low_space_problem(free_bytes(self.config.data_dir), self.config.data_dir)
            except OSError as exc:
                low = f"cannot read the free space of {self.config.data_dir}: {exc.strerror}"
            self.disk.set(_LOW_SPACE_KEY, low)
            self._publish_disk_problems()

    def disk_problems(self) -> list[str]:
        """Every current problem of this peer's data disk (empty: healthy)."""
        return self.disk.problems(self._storage_problems())

    def _publish_disk_problems(self) -> None:
        problems = self.disk_problems()
        if problems == self._published_problems:
            return
        if problems:
            log.error("peer degraded: %s", "; ".join(problems))
        else:
            log.warning("peer no longer degraded: the data disk works again")
        self._published_problems = problems
        self.republish_profile()

    def _send_datagram(self, e: SendDatagram) -> None:
        assert self._udp is not None
        data = seal(e.messages, self.keyring)
        try:
            self._udp.sendto(data, e.addr)
            self.traffic.sent[GOSSIP_UDP] += len(data)
        except (BlockingIOError, OSError) as exc:
            # UDP is lossy anyway: a full buffer or an unreachable network is
            # a lost packet, which SWIM is built to survive.
            self.traffic.dropped["send-" + type(exc).__name__] += 1

    # ------------------------------------------------------------ streams

    async def _stream_call(self, call: StreamCall) -> None:
        reply: StreamMessage | None = None
        # A TCP ping is worth nothing after its probe period: the core says when.
        give_up = (call.deadline if call.deadline is not None
                   else trio.current_time() + self.config.gossip.stream_timeout)
        with trio.move_on_at(give_up):
            try:
                # From our gossip IP, so peers see who is calling.
                stream = await trio.open_tcp_stream(*call.addr, local_address=self.config.bind[0])
                async with stream:
                    request = frame(seal([call.request], self.keyring))
                    await stream.send_all(request)
                    self.traffic.sent[GOSSIP_TCP] += len(request)
                    reply = _only_stream(await self._read_frame(stream))
            except (OSError, trio.BrokenResourceError) as exc:
                log.debug("%s call to %s:%d failed: %s", call.purpose, *call.addr, exc)
            except RemoteProtocolError as exc:
                self._drop(exc, call.addr)
        now = trio.current_time()
        with self._contained("stream reply", call.addr):
            if reply is None:
                self._execute(self.core.stream_failed(call.call_id, now))
            else:
                self._execute(self.core.handle_stream_reply(call.call_id, reply, now))
        if call.purpose == "join":
            self._join_finished(call, reply is not None)

    def _join_finished(self, call: StreamCall, ok: bool) -> None:
        if ok and not self._joined.is_set():
            self._joined.set()
            log.info("joined the mesh via %s:%d (%d members known)", *call.addr,
                     len(self.core.members()))
        self._join_pending -= 1
        if ok or self._join_pending <= 0:
            self._join_round_done.set()

    async def _serve_stream(self, stream: trio.SocketStream) -> None:
        source = _peer_ip(stream)
        if not self._streams.admit(source):
            self.traffic.dropped["stream-limit"] += 1
            await stream.aclose()
            return
        try:
            await self._serve_admitted_stream(stream, source)
        finally:
            self._streams.release(source)

    async def _serve_admitted_stream(self, stream: trio.SocketStream, source: str) -> None:
        async with stream:
            with trio.move_on_after(self.config.gossip.stream_timeout):
                try:
                    request = _only_stream(await self._read_frame(stream, source=source))
                except RemoteProtocolError as exc:
                    self._drop(exc, _peer_of(stream))
                    return
                except (OSError, trio.BrokenResourceError):
                    return
                if not isinstance(request, _SERVED_STREAM_REQUESTS):
                    self.traffic.dropped["unexpected"] += 1
                    return
                reply: StreamMessage | None = None
                effects: list[Effect] = []
                with self._contained("stream request", _peer_of(stream)):
                    reply, effects = self.core.handle_stream_request(request,
                                                                     trio.current_time())
                self._execute(effects)
                if reply is not None:
                    data = frame(seal([reply], self.keyring))
                    try:
                        await stream.send_all(data)
                    except (OSError, trio.BrokenResourceError):
                        return
                    self.traffic.sent[GOSSIP_TCP] += len(data)

    async def _read_frame(self, stream: trio.SocketStream, *, source: str | None = None
                          ) -> list[Any]:
        """Read and open one sealed frame. With `source` (an inbound stream,
        not yet authenticated), each chunk is charged to that IP as it
        arrives (`StreamAdmission`); replies to our own calls are not."""
        prefix = await _receive_exactly(stream, FRAME_PREFIX_LEN)
        length = frame_length(prefix)
        if source is None:
            body = await _receive_exactly(stream, length)
        else:
            body = await self._receive_admitted(stream, source, length)
        self.traffic.received[GOSSIP_TCP] += FRAME_PREFIX_LEN + len(body)
        return open_envelope(body, self.keyring, limit=MAX_FRAME)

    async def _receive_admitted(self, stream: trio.SocketStream, source: str, length: int
                                ) -> bytes:
        if not self._streams.fits(length):
            raise RemoteProtocolError("oversized", f"a {length}-byte frame from {source}, over "
                                      "the quota of unauthenticated bytes per source")
        buf = bytearray()
        try:
            while len(buf) < length:
                chunk = await stream.receive_some(min(length - len(buf), 65536))
                if not chunk:
                    raise RemoteProtocolError("malformed", "stream closed mid-frame")
                if not self._streams.reserve(source, len(chunk)):
                    raise RemoteProtocolError(
                        "busy", f"{source} (or all sources) holds the most unauthenticated "
                        "bytes allowed; the sender retries later")
                buf += chunk
        finally:
            self._streams.free(source, len(buf))
        return bytes(buf)

    # ------------------------------------------------------------ profile

    async def refresh_profile(self) -> None:
        """Sample the live values every ``profile_refresh`` s; publish when the
        publisher says so."""
        while True:
            await trio.sleep(self.config.profile_refresh)
            sample = await trio.to_thread.run_sync(self.profiles.sample, self.live.published)
            if self.live.observe(sample, trio.current_time(), self.core.num_live()):
                self.republish_profile()

    def republish_profile(self) -> None:
        """Gossip the discovered profile plus the control plane's sections, if
        that differs from what we published last (a new profile version). A
        publication carries live values the rate limit held back along."""
        if self._profile(self.live.published) == self.core.me.profile:
            return
        now = trio.current_time()
        self._execute(self.core.update_profile(self._profile(self.live.take_pending(now)), now))

    def _profile(self, discovered: Mapping[str, Any]) -> dict[str, Any]:
        profile = {**discovered, **self._sections()}
        if self._published_problems:
            profile[DEGRADED_KEY] = list(self._published_problems)
        return profile


def _as_datagram(messages: list[Any]) -> list[DatagramMessage]:
    return messages


def _only_stream(messages: list[Any]) -> StreamMessage:
    if len(messages) != 1:
        raise RemoteProtocolError("malformed", "a stream frame carries exactly one message")
    msg: StreamMessage = messages[0]
    return msg


def _peer_ip(stream: trio.SocketStream) -> str:
    peer = _peer_of(stream)
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)


def _peer_of(stream: trio.SocketStream) -> Any:
    try:
        return stream.socket.getpeername()
    except OSError:
        return "?"


async def _receive_exactly(stream: trio.SocketStream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.receive_some(min(n - len(buf), 65536))
        if not chunk:
            raise RemoteProtocolError("malformed", "stream closed mid-frame")
        buf += chunk
    return bytes(buf)


PEER_STATE = "peer.json"
DEGRADED_KEY = "degraded"
"""Profile key of a degraded peer: the list of its data disk's problems
(absent when the peer is healthy)."""
_PEER_STATE_KEY, _LOW_SPACE_KEY = "peer-state", "low-space"
REMEMBERED_PEERS = 16
"""How many alive peers we remember as rejoin seeds for a restart."""


def prepare_data_dir(path: Path) -> tuple[int, tuple[Address, ...]]:
    """Create the data directory readable by its owner only (it holds the
    mesh's secrets: the management token, the Raft journal) and return what
    this peer's previous life left: its incarnation (-1 if none) and the
    gossip addresses of the peers it last saw alive."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    try:
        state = json.loads((path / PEER_STATE).read_text())
    except (OSError, ValueError):
        state = {}
    if not isinstance(state, dict):
        state = {}
    last = state.get("incarnation", -1)
    saved = state.get("peers")
    peers: list[Address] = []
    for item in saved if isinstance(saved, list) else []:
        if (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str)
                and isinstance(item[1], int)):
            peers.append((item[0], item[1]))
    return (last if isinstance(last, int) and last >= -1 else -1), tuple(peers)


def rejoin_targets(seeds: Sequence[Address], remembered: Sequence[Address],
                   bind: Address) -> tuple[Address, ...]:
    """Whom a starting peer contacts: the configured seeds first, then the
    peers it last saw alive (like Serf's snapshot rejoin), without itself or
    repeats. With the remembered peers, a mesh restarted while its seeds stay
    down still finds itself (every peer seeding from one that is gone would
    otherwise wait for it forever, each alone)."""
    return tuple(dict.fromkeys(a for a in (*seeds, *remembered) if a != bind))


def peers_to_remember(alive: Sequence[Address], remembered: Sequence[Address]
                      ) -> tuple[Address, ...]:
    """The rejoin candidates to save: the peers alive now, or, while this
    peer sees none (it restarted and has not found the mesh yet, or it is
    cut off), the ones it remembered before; forgetting them then would
    leave a restart with nobody to rejoin."""
    return tuple(sorted(alive)[:REMEMBERED_PEERS]) if alive else tuple(remembered)


def save_peer_state(path: Path, incarnation: int, peers: Sequence[Address]) -> None:
    """Persist (atomically) our incarnation, so a restart starts
    above it, and a few peers we saw alive, so a restart without --join can
    rejoin them. OSError (a full disk...) leaves the previous file intact."""
    doc = {"nanomesh": __version__, "incarnation": incarnation,
           "peers": [list(a) for a in sorted(peers)[:REMEMBERED_PEERS]]}
    # Not fsynced: it runs on the event loop, and an incarnation lost to a
    # power cut only costs a refutation round after the restart.
    write_atomically(str(path / PEER_STATE), (json.dumps(doc) + "\n").encode())


def _log_notification(e: Effect) -> None:
    match e:
        case MemberJoined():
            log.info("member %s %s at %s:%d", e.name, "rejoined" if e.rejoined else "joined",
                     *e.addr)
        case MemberSuspected():
            log.info("member %s suspected (by %s)", e.name, e.by)
        case MemberRecovered():
            log.info("member %s refuted its suspicion: alive", e.name)
        case MemberFailed():
            log.warning("member %s failed (declared dead by %s)", e.name, e.by)
        case MemberLeft():
            log.info("member %s left", e.name)
        case MemberReaped():
            log.info("member %s forgotten (reaped)", e.name)
        case Refuted():
            log.warning("we were suspected or declared dead by %s; refuted with "
                        "incarnation %d", e.accuser, e.incarnation)
        case ProfileUpdated():
            log.debug("profile of %s now at version %d", e.name, e.version)

