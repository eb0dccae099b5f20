"""Raft's TCP transport, hardened for a hostile network.

pysyncobj's own transport (0.3.17) cannot be exposed as it is (measured on
2026-12-05, issue 8):

- without a password it unpickles every frame it reads: remote code
  execution for anyone who reaches the Raft port;
- with one, it still trusts the 4-byte length prefix and buffers a frame up
  to that length *before* authenticating it: one 64 MiB junk frame grew a
  peer by 76 MiB, and a sustained flood against the leader forced an
  election;
- its reads are unbounded in time: a connection that never authenticates
  stays open forever and costs a file descriptor;
- its one password cannot change while the node runs.

We keep pysyncobj's Raft and its connection protocol (the random-key
handshake that binds every message to one connection, then the node's
address) and replace the layer beneath: `GuardedConnection` (framing and
authentication), `GuardedServer` (accepting with per-source limits) and
`GuardedTransport` (pysyncobj's ``TCPTransport`` built from those two, with a
sweep of connections that do not authenticate in time). Rules they keep:

1. **Nothing unauthenticated reaches zlib or pickle.** Every frame is a
   Fernet token (AES-128-CBC + HMAC-SHA256) whose MAC is checked before it
   is decrypted; only then is it decompressed and unpickled. There is no
   plaintext mode: a node without a cluster key is refused at construction.
2. **Nothing unauthenticated is buffered beyond `PRE_AUTH_FRAME_LIMIT`.** A
   link is authenticated by the first frame that carries the random key we
   sent on it (a valid MAC alone is not enough: a frame recorded on another
   link has one). Until then a length prefix above that limit closes the
   connection at once, before any byte of the body is kept; after, frames
   may be up to `MAX_FRAME`.
3. **Nothing unauthenticated lasts beyond `HANDSHAKE_TIMEOUT`,** at most
   `MAX_PENDING_PER_SOURCE` such connections per source address exist (more
   are closed on accept), and at most `MAX_PENDING` in all (the oldest makes
   room for a newcomer, so a full table never locks a member out).
4. **Any installed key is accepted; the primary one is used to send**
   (`KeyringCipher`, which reads the live `Keyring`): a rolling key rotation
   (install everywhere, make primary everywhere, remove the old one) never
   splits the control plane, and needs no restart.
5. **Established links speak compact frames** (`nanomesh.wire.raft_link`,
   issue 9): once both handshake keys are known and the other side said it
   reads them (`raft_link.HELLO`, which an older peer ignores), every frame
   is AES-GCM under a key of this link and direction with the frame's number
   as nonce, and heartbeats and their answers are a few msgpack integers: an
   idle heartbeat went from 432 to ~83 bytes on the wire. Rules 1-4 hold for
   them too (the tag before any decoding; a frame of another link, or a
   replayed one, fails its tag; any installed key opens).

Threads: everything here runs on pysyncobj's tick thread except
`KeyringCipher`'s reads of the keyring, whose key tuple the trio thread
replaces atomically (`Keyring` is copy-on-write).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import functools
import logging
import socket
import struct
import zlib
from collections.abc import Callable
from typing import Any

import pysyncobj  # type: ignore[import-untyped]
from cryptography.fernet import Fernet, InvalidToken
from pysyncobj import pickle as _pickle  # pysyncobj's pickle shim (protocol settings)
from pysyncobj.monotonic import monotonic as _monotonic  # type: ignore[import-untyped]
from pysyncobj.poller import POLL_EVENT_TYPE  # type: ignore[import-untyped]
from pysyncobj.tcp_connection import (  # type: ignore[import-untyped]
    CONNECTION_STATE,
    set_keepalive,
)
from pysyncobj.transport import TCPTransport  # type: ignore[import-untyped]

from nanomesh.errors import RemoteProtocolError
from nanomesh.wire import Keyring, derive_secret, raft_link

log = logging.getLogger("nanomesh.consensus.transport")

RAFT_KEY_PURPOSE = "raft-transport"
"""`Keyring.derive` purpose of the Raft link keys (`raft_key_purpose`)."""


def raft_key_purpose(epoch: int) -> str:
    """The derivation purpose of the link keys of control-plane `epoch`
    (`ConsensusConfig.epoch`): each recovery gets keys of its own."""
    return RAFT_KEY_PURPOSE if epoch == 0 else f"{RAFT_KEY_PURPOSE}/epoch-{epoch}"
PRE_AUTH_FRAME_LIMIT = 1024
"""Largest frame, in bytes, accepted on a connection that has not yet
authenticated. The handshake's frames (a 32-byte random key, a node address,
or a utility command) are Fernet tokens of ~150-250 bytes; 1 KiB leaves room
and bounds what an outsider can make us hold per connection."""
MAX_FRAME = 16 * 1024 * 1024
"""Largest frame, in bytes, from an authenticated node. pysyncobj batches
entries up to 64 KiB and sends full dumps in chunks; a single command can be
as large as the API admits (well under 1 MiB). 16 MiB only bounds a buggy
member."""
HANDSHAKE_TIMEOUT = 3.0
"""Seconds a connection may take to deliver its first authenticated frame.
A member sends it within one round trip of connecting; an outsider that
connects and stays silent, or drips bytes, is closed after this."""
MAX_PENDING_PER_SOURCE = 8
"""Unauthenticated incoming connections kept per source IP. Members open one
link to each voter (peers on one machine share an IP only in labs, and their
links authenticate within a round trip)."""
MAX_PENDING = 64
"""Unauthenticated incoming connections kept in all."""
READ_CHUNK = 64 * 1024
"""Bytes read per ``recv``."""
READ_BUDGET = 4 * 1024 * 1024
"""Bytes read from one connection per readiness event before other work of
the tick runs (so one busy link cannot starve heartbeats)."""

_LENGTH = struct.Struct("<I")
"""The frame length prefix. pysyncobj writes a native signed int; every
device we target is little-endian, so the bytes are the same; unsigned
because a negative length is garbage, not a frame."""

Counter = Callable[[str], None]
"""Called with a reason each time the transport drops something."""


class KeyringCipher:
    """Fernet tokens keyed from the live keyring: seal with the primary key,
    open with any installed key. The interface pysyncobj's transport expects
    of an ``encryptor`` (`encrypt_at_time`, `extract_timestamp`, `decrypt`),
    plus `open`, which does the last two with one key search."""

    def __init__(self, keyring: Keyring, epoch: int = 0) -> None:
        if not keyring.enabled:
            raise ValueError("the Raft transport needs a cluster key")
        self._keyring = keyring
        self._purpose = raft_key_purpose(epoch)
        self._cache: tuple[tuple[bytes, ...], tuple[Fernet, ...]] = ((), ())
        self._link_cache: tuple[tuple[bytes, ...], tuple[bytes, ...]] = ((), ())

    def _fernets(self) -> tuple[Fernet, ...]:
        keys = tuple(self._keyring.keys)
        cached_keys, fernets = self._cache
        if keys != cached_keys:
            fernets = tuple(Fernet(_fernet_key(k, self._purpose)) for k in keys)
            self._cache = (keys, fernets)
        return fernets

    def link_secrets(self) -> tuple[bytes, ...]:
        """The compact-frame secret of every installed key, primary first
        (`raft_link.LinkSeal` derives each link's keys from them)."""
        keys = tuple(self._keyring.keys)
        cached_keys, secrets = self._link_cache
        if keys != cached_keys:
            secrets = tuple(derive_secret(k, f"{self._purpose}/link") for k in keys)
            self._link_cache = (keys, secrets)
        return secrets

    def encrypt_at_time(self, data: bytes, at: int) -> bytes:
        return self._fernets()[0].encrypt_at_time(data, at)

    def open(self, token: bytes) -> tuple[int, bytes]:
        """(timestamp, plaintext) of a token any installed key authenticates;
        InvalidToken otherwise. The MAC is checked before anything else."""
        for fernet in self._fernets():
            try:
                plain = fernet.decrypt(token)
            except InvalidToken:
                continue
            return fernet.extract_timestamp(token), plain
        raise InvalidToken

    def extract_timestamp(self, token: bytes) -> int:
        return self.open(token)[0]

    def decrypt(self, token: bytes) -> bytes:
        return self.open(token)[1]


def _fernet_key(cluster_key: bytes, purpose: str) -> bytes:
    return base64.urlsafe_b64encode(derive_secret(cluster_key, purpose))


def _ignore(reason: str) -> None:
    pass


class GuardedConnection:
    """One TCP link, with the interface of pysyncobj's ``TcpConnection``
    (which the transport and `SyncObj` use) and rules 1-3 of the module
    docstring. `cipher` is always set: there is no plaintext mode."""

    def __init__(self, poller: Any, cipher: KeyringCipher, *, sock: socket.socket | None = None,
                 timeout: float = 10.0, send_buffer: int = 2 ** 16, recv_buffer: int = 2 ** 16,
                 keepalive: tuple[int, int, int] | None = None, source_ip: str | None = None,
                 dropped: Counter = _ignore) -> None:
        self.encryptor: KeyringCipher = cipher
        self.sendRandKey: bytes | None = None
        self.recvRandKey: bytes | None = None
        self.recvLastTimestamp = 0
        self.authenticated = False
        self.peer_ip: str | None = None
        self._poller = poller
        self._timeout = timeout
        self._send_buffer = send_buffer
        self._recv_buffer = recv_buffer
        self._keepalive = keepalive
        self._source_ip = source_ip
        self._dropped = dropped
        self._read = bytearray()
        self._write = bytearray()
        self._last_read = _monotonic()
        self.opened_at = self._last_read
        self.last_sent = self._last_read
        """When a message was last queued on this link (`send`)."""
        self._sending_since = self._last_read
        """Start of the current stretch of sends: a send after none for a
        ``connectionTimeout`` starts a new one (`_timed_out`)."""
        self.closed_by_peer = False
        """Did the last disconnect come from the other side (EOF, a reset or
        a socket error), as when its process dies? Read in the disconnect
        callback (`GuardedTransport.on_closed_by_peer`)."""
        self._link: raft_link.LinkSeal | None = None
        self._offered = False
        self.compact = False
        """Does the other side read compact frames (it sent `raft_link.HELLO`)?
        Then everything we send is one."""
        self._on_message: Callable[[Any], None] | None = None
        self._on_connected: Callable[[], None] | None = None
        self._on_disconnected: Callable[[], None] | None = None
        self._sock = sock
        self._fileno: int | None = None
        self._state = CONNECTION_STATE.DISCONNECTED
        if sock is not None:
            self.peer_ip = _peer_ip(sock)
            self._fileno = sock.fileno()
            self._state = CONNECTION_STATE.CONNECTED
            self._set_keepalive()
            self._poller.subscribe(self._fileno, self._on_event, _ALL_EVENTS)

    # ------------------------------------------------------------ pysyncobj's interface

    @property
    def state(self) -> int:
        return int(self._state)

    def fileno(self) -> int | None:
        return self._fileno

    def setOnConnectedCallback(self, fn: Callable[[], None] | None) -> None:
        self._on_connected = fn

    def setOnMessageReceivedCallback(self, fn: Callable[[Any], None] | None) -> None:
        self._on_message = fn

    def setOnDisconnectedCallback(self, fn: Callable[[], None] | None) -> None:
        self._on_disconnected = fn

    def getSendBufferSize(self) -> int:
        return len(self._write)

    def connect(self, host: str | None, port: int) -> bool:
        if host is None:
            return False
        self._reset()
        sock = socket.socket(_family(host), socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._send_buffer)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._recv_buffer)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        try:
            if self._source_ip is not None and _family(self._source_ip) == _family(host):
                # Leave from our own address, so the other side's per-source
                # accounting sees peers, not the machine.
                sock.bind((self._source_ip, 0))
            sock.connect((host, port))
        except BlockingIOError:
            pass
        except OSError:
            sock.close()
            return False
        self._sock = sock
        self._set_keepalive()
        self.peer_ip = host
        self._fileno = sock.fileno()
        self._state = CONNECTION_STATE.CONNECTING
        self._poller.subscribe(self._fileno, self._on_event, _ALL_EVENTS)
        return True

    def send(self, message: Any) -> None:
        now = _monotonic()
        if now - self.last_sent > self._timeout:
            self._sending_since = now  # after a quiet spell: a fresh start
        self.last_sent = now
        link = self._link_seal() if self.compact else None
        if link is not None:
            plain = raft_link.encode(message)
            if plain is None:
                plain = raft_link.generic(zlib.compress(_pickle.dumps(message), 3))
            token = link.seal(plain)
        else:
            if self.sendRandKey:
                message = (self.sendRandKey, message)
            data = zlib.compress(_pickle.dumps(message), 3)
            token = self.encryptor.encrypt_at_time(data, int(self.last_sent))
        self._write += _LENGTH.pack(len(token)) + token
        self._flush()

    def offer_compact(self) -> None:
        """Tell the other side, once, that we read compact frames (rule 5).
        Called when pysyncobj's handshake is over on this side: the hello
        then comes after the node address the other side waits for."""
        if not self._offered and self._link_seal() is not None:
            self._offered = True
            self.send(raft_link.HELLO)

    def _link_seal(self) -> raft_link.LinkSeal | None:
        """This link's compact-frame seal, once both handshake keys are known."""
        if self._link is None and self.sendRandKey and self.recvRandKey:
            try:
                self._link = raft_link.LinkSeal(self.encryptor.link_secrets,
                                                self.recvRandKey, self.sendRandKey)
            except ValueError:  # the other side's key is not 32 bytes: no compact frames
                return None
        return self._link

    def disconnect(self, *, by_peer: bool = False) -> None:
        notify = self._on_disconnected is not None and (
            self._state != CONNECTION_STATE.DISCONNECTED)
        self._reset()
        self.closed_by_peer = by_peer
        if notify and self._on_disconnected is not None:
            self._on_disconnected()

    # ------------------------------------------------------------ the rules

    def handshake_overdue(self, now: float) -> bool:
        """Rule 3: connected for HANDSHAKE_TIMEOUT without one authenticated frame."""
        return (not self.authenticated and self._state != CONNECTION_STATE.DISCONNECTED
                and now - self.opened_at > HANDSHAKE_TIMEOUT)

    def _next_frame(self) -> bytes | None:
        """The next whole frame's body, or None (need more bytes, or the
        connection was closed for a frame it may not send)."""
        if len(self._read) < _LENGTH.size:
            return None
        (length,) = _LENGTH.unpack_from(self._read)
        limit = MAX_FRAME if self.authenticated else PRE_AUTH_FRAME_LIMIT
        if not 0 < length <= limit:
            self._refuse("oversized-frame" if length else "empty-frame")
            return None
        end = _LENGTH.size + length
        if len(self._read) < end:
            return None
        body = bytes(self._read[_LENGTH.size:end])
        del self._read[:end]
        return body

    def _decode(self, token: bytes) -> Any:
        """Rule 1: the MAC first; zlib and pickle only for a member's frame.

        A valid MAC alone does not authenticate the *link*: a frame recorded
        on another link passes it too. pysyncobj's handshake makes each side
        send a fresh random key and the other wrap every later frame with
        it; only a frame carrying our own key (`recvRandKey`) proves that
        the sender holds the cluster key now, on this link. Until one
        arrives the link stays under rule 2 and rule 3 (on an incoming link
        the first frame, the sender's random key, cannot carry ours).
        A compact frame (rule 5) is bound to the link by its key."""
        if token[:1] == raft_link.MARK:
            return self._decode_compact(token)
        try:
            stamp, data = self.encryptor.open(token)
        except InvalidToken:
            self._refuse("unauthenticated")
            return _NOTHING
        if stamp < self.recvLastTimestamp:
            self._refuse("replayed")
            return _NOTHING
        self.recvLastTimestamp = stamp
        try:
            message = _pickle.loads(zlib.decompress(data))
        except Exception:
            # Authentic bytes that do not decode: a bug or a compromised
            # member, not an outsider; close and say so.
            log.warning("raft: closing the link from %s: undecodable frame", self.peer_ip)
            self._refuse("undecodable")
            return _NOTHING
        if self.recvRandKey:
            if not (isinstance(message, tuple) and len(message) == 2
                    and message[0] == self.recvRandKey):
                self._refuse("replayed")  # a frame recorded on another link
                return _NOTHING
            message = message[1]
            self.authenticated = True
        return message

    def _decode_compact(self, frame: bytes) -> Any:
        link = self._link_seal()
        if link is None:
            self._refuse("unauthenticated")
            return _NOTHING
        try:
            plain = link.open(frame)
        except RemoteProtocolError:
            self._refuse("unauthenticated")  # or replayed: the counter is the nonce
            return _NOTHING
        self.authenticated = True
        try:
            message = raft_link.decode(plain)
            if isinstance(message, bytes):
                message = _pickle.loads(zlib.decompress(message))
        except Exception:
            log.warning("raft: closing the link from %s: undecodable frame", self.peer_ip)
            self._refuse("undecodable")
            return _NOTHING
        return message

    def _refuse(self, reason: str) -> None:
        self._dropped(reason)
        log.debug("raft: closing a link from %s: %s", self.peer_ip, reason)
        self.disconnect()

    # ------------------------------------------------------------ events

    def _on_event(self, descr: int, event: int) -> None:
        if descr != self._fileno:
            self._poller.unsubscribe(descr)
            return
        # No `_timed_out` check here: bytes arriving prove the link alive, and
        # a write event goes through `_flush`, which checks it.
        if event & POLL_EVENT_TYPE.ERROR:
            self.disconnect(by_peer=True)
            return
        if self._sock is None or self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self.disconnect(by_peer=self._sock is not None)
            return
        if self._state == CONNECTION_STATE.CONNECTING:
            if self._on_connected is not None:
                self._on_connected()
            if self._state == CONNECTION_STATE.DISCONNECTED:
                return
            self._state = CONNECTION_STATE.CONNECTED
            self._last_read = _monotonic()
            return
        if event & POLL_EVENT_TYPE.WRITE:
            self._flush()
            if self._state == CONNECTION_STATE.DISCONNECTED:
                return
            mask = POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.ERROR
            if self._write:
                mask |= POLL_EVENT_TYPE.WRITE
            self._poller.subscribe(descr, self._on_event, mask)
        if event & POLL_EVENT_TYPE.READ:
            self._read_available()

    def _read_available(self) -> None:
        """Read, and deliver every whole frame after each read, so the buffer
        never holds more than one frame (bounded by rule 2) plus a chunk."""
        budget = READ_BUDGET
        while budget > 0 and self._sock is not None:
            try:
                incoming = self._sock.recv(READ_CHUNK)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.disconnect(by_peer=True)
                return
            if not incoming:
                self.disconnect(by_peer=True)  # EOF: the other side closed
                return
            budget -= len(incoming)
            self._last_read = _monotonic()
            self._read += incoming
            if not self._deliver():
                return

    def _deliver(self) -> bool:
        """Hand every whole frame to pysyncobj; False once disconnected."""
        while self._state != CONNECTION_STATE.DISCONNECTED:
            body = self._next_frame()
            if body is None:
                return bool(self.state != CONNECTION_STATE.DISCONNECTED)
            message = self._decode(body)
            if message is _NOTHING:
                return False
            if message == raft_link.HELLO:
                # Ours alone: pysyncobj never sees it. Only a link whose keys
                # are both known can speak compact frames.
                self.compact = self._link_seal() is not None
                continue
            if self._on_message is not None:
                self._on_message(message)
        return False

    def _flush(self) -> None:
        if self._timed_out():
            self.disconnect()
            return
        while self._write and self._sock is not None:
            try:
                sent = self._sock.send(self._write)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.disconnect()
                return
            if sent <= 0:
                return
            del self._write[:sent]

    def _timed_out(self) -> bool:
        """Is this link dead: have we been sending on it for longer than
        ``connectionTimeout`` without reading a byte? Checked before each
        write. pysyncobj's rule (nothing *read* for that long) also closed
        links that were merely quiet: followers never talk to each other, so
        the first vote request after a quiet spell closed its link instead
        of arriving, and every failover took two elections; keepalives on
        idle links were our first cure, at a cost. Here the first send after
        a quiet spell starts the clock instead, so it goes out; a peer that
        went silent is found once we have talked to it for a timeout without
        a word back (a leader sends heartbeats every period, which a live
        follower answers). A dead peer behind a link nobody uses is found
        when it is next used, or by the kernel's TCP keepalive
        (``tcp_keepalive``)."""
        now = _monotonic()
        return bool(now - max(self._last_read, self._sending_since) > self._timeout)

    def _reset(self) -> None:
        self.sendRandKey = None
        self.recvRandKey = None
        self._link = None
        self._offered = self.compact = False
        self.recvLastTimestamp = 0
        self.authenticated = False
        if self._fileno is not None:
            self._poller.unsubscribe(self._fileno)
            self._fileno = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._read = bytearray()
        self._write = bytearray()
        self._state = CONNECTION_STATE.DISCONNECTED
        self._last_read = self.opened_at = self.last_sent = _monotonic()
        self._sending_since = self._last_read

    def _set_keepalive(self) -> None:
        if self._sock is not None and self._keepalive is not None:
            set_keepalive(self._sock, *self._keepalive)


_NOTHING = object()
_ALL_EVENTS = POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.WRITE | POLL_EVENT_TYPE.ERROR


def _family(ip: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def _peer_ip(sock: socket.socket) -> str | None:
    try:
        return str(sock.getpeername()[0])
    except OSError:
        return None


class GuardedServer:
    """The Raft port's listener: accepts, and closes at once a connection
    over the unauthenticated limits of rule 3 (`admit` decides)."""

    def __init__(self, poller: Any, host: str, port: int, *,
                 make_connection: Callable[[socket.socket], GuardedConnection],
                 admit: Callable[[str | None], bool],
                 on_connection: Callable[[GuardedConnection], None]) -> None:
        self._poller = poller
        self._host = host
        self._port = int(port)
        self._make = make_connection
        self._admit = admit
        self._on_connection = on_connection
        self._sock: socket.socket | None = None

    def bind(self) -> None:
        sock = socket.socket(_family(self._host), socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setblocking(False)
        try:
            sock.bind((self._host, self._port))
            sock.listen(64)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._poller.subscribe(sock.fileno(), self._on_event,
                               POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.ERROR)

    def unbind(self) -> None:
        if self._sock is not None:
            self._poller.unsubscribe(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def _on_event(self, descr: int, event: int) -> None:
        if self._sock is None:
            return
        if event & POLL_EVENT_TYPE.READ:
            for _ in range(64):  # drain a burst, bounded so a flood cannot stall the tick
                try:
                    sock, addr = self._sock.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    log.warning("raft: accept failed: %s", exc)  # EMFILE and the like
                    break
                if not self._admit(str(addr[0])):
                    sock.close()
                    continue
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setblocking(False)
                self._on_connection(self._make(sock))
        if event & POLL_EVENT_TYPE.ERROR:
            log.error("raft: the listening socket failed; rebinding")
            self.unbind()


class GuardedTransport(TCPTransport):  # type: ignore[misc]
    """pysyncobj's ``TCPTransport`` on `GuardedConnection` and `GuardedServer`.

    Everything above the connection (which node a link belongs to, the
    handshake order, utility messages, reconnects) stays pysyncobj's: it is
    the part its authors and Patroni's users have exercised. Build it with
    `transport_class`."""

    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any, *,
                 cipher: KeyringCipher, source_ip: str | None, dropped: Counter) -> None:
        self._cipher = cipher
        self._source_ip = source_ip
        self._dropped = dropped
        self.on_closed_by_peer: Callable[[Any], None] | None = None
        """Called with the node (a voter) whose established link its side
        closed, after pysyncobj has counted it disconnected: the Raft node
        campaigns early when that node was its leader (`_pysyncobj`)."""
        super().__init__(syncObj, selfNode, otherNodes)

    def _new_connection(self, sock: socket.socket | None = None) -> GuardedConnection:
        conf = self._syncObj.conf
        return GuardedConnection(
            self._syncObj._poller, self._cipher, sock=sock, timeout=conf.connectionTimeout,
            send_buffer=conf.sendBufferSize, recv_buffer=conf.recvBufferSize,
            keepalive=conf.tcp_keepalive, source_ip=self._source_ip, dropped=self._dropped)

    def _createServer(self) -> None:
        host, port = self._syncObj.conf.bindAddress.rsplit(":", 1)
        self._server = GuardedServer(
            self._syncObj._poller, host, int(port), make_connection=self._new_connection,
            admit=self._admit, on_connection=self._onNewIncomingConnection)

    def _admit(self, ip: str | None) -> bool:
        """Rule 3 on accept. A source over its share is refused; when the
        table is full, the oldest pending link makes room, so an outsider
        who keeps it full cannot lock members out (theirs authenticate
        within a round trip; his wait out the deadline)."""
        pending = [c for c in self._unknownConnections if not c.authenticated]
        if sum(1 for c in pending if c.peer_ip == ip) >= MAX_PENDING_PER_SOURCE:
            self._dropped("too-many-from-source")
            return False
        if len(pending) >= MAX_PENDING:
            self._dropped("evicted-pending")
            min(pending, key=lambda c: c.opened_at).disconnect()
        return True

    def _onOutgoingMessageReceived(self, conn: GuardedConnection, message: Any) -> None:
        """pysyncobj's, then rule 5's offer: the address has been sent."""
        super()._onOutgoingMessageReceived(conn, message)
        conn.offer_compact()

    def _onIncomingMessageReceived(self, conn: GuardedConnection, message: Any) -> None:
        """pysyncobj's, then rule 5's offer once the link belongs to a node
        (not during the key exchange, nor on a utility connection)."""
        super()._onIncomingMessageReceived(conn, message)
        if conn not in self._unknownConnections and conn.state != CONNECTION_STATE.DISCONNECTED:
            conn.offer_compact()

    def addNode(self, node: Any) -> None:
        """pysyncobj's ``addNode`` with our connection class."""
        self._nodes.add(node)
        self._nodeAddrToNode[node.address] = node
        if self._shouldConnect(node):
            conn = self._new_connection()
            conn.setOnConnectedCallback(functools.partial(self._onOutgoingConnected, conn))
            conn.setOnMessageReceivedCallback(functools.partial(self._onMessageReceived, node))
            conn.setOnDisconnectedCallback(functools.partial(self._onDisconnected, conn))
            self._connections[node] = conn

    def _onDisconnected(self, conn: GuardedConnection) -> None:
        """pysyncobj's (forget the link, reconnect), then `on_closed_by_peer`
        if the other side closed a link of a voter."""
        node = self._connToNode(conn)
        super()._onDisconnected(conn)
        if (conn.closed_by_peer and node is not None and node in self._nodes
                and self.on_closed_by_peer is not None):
            self.on_closed_by_peer(node)

    def _onTick(self) -> None:
        super()._onTick()
        now = _monotonic()
        overdue = [c for c in (*self._unknownConnections, *self._connections.values())
                   if c.handshake_overdue(now)]
        for conn in overdue:
            self._dropped("handshake-timeout")
            conn.disconnect()


class PortProbe:
    """Does anything still listen at ``ip:port`` `address`? One non-blocking
    connect, watched by the tick thread's poller. `refused` becomes True if
    the host refuses it (ECONNREFUSED: nothing listens, as when the process
    died; the host answers within a round trip), and `on_refused` is called
    if that happens after construction. Anything else (accepted, an error,
    no answer before `close`) says nothing. Close it in every case."""

    def __init__(self, poller: Any, address: str, source_ip: str | None,
                 on_refused: Callable[[], None]) -> None:
        self._poller = poller
        self._on_refused = on_refused
        self.refused = False
        host, port = address.rsplit(":", 1)
        self._sock: socket.socket | None = socket.socket(_family(host), socket.SOCK_STREAM)
        self._sock.setblocking(False)
        try:
            if source_ip is not None and _family(source_ip) == _family(host):
                self._sock.bind((source_ip, 0))
            err = self._sock.connect_ex((host, int(port)))
        except OSError:
            err = -1
        if err == errno.EINPROGRESS:
            poller.subscribe(self._sock.fileno(), self._on_event,
                             POLL_EVENT_TYPE.WRITE | POLL_EVENT_TYPE.ERROR)
            return
        self.refused = err == errno.ECONNREFUSED
        self.close()

    @property
    def pending(self) -> bool:
        return self._sock is not None

    def _on_event(self, descr: int, event: int) -> None:
        if self._sock is None:
            return
        err = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        self.close()
        if err == errno.ECONNREFUSED:
            self.refused = True
            self._on_refused()

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(Exception):  # the poller may not know it yet
                self._poller.unsubscribe(self._sock.fileno())
            self._sock.close()
            self._sock = None


def transport_class(cipher: KeyringCipher, source_ip: str | None, dropped: Counter = _ignore
                    ) -> Callable[..., GuardedTransport]:
    """What to pass as ``SyncObj(transportClass=...)``: `KeyedSyncObj` with the
    same `cipher`. `source_ip`: the address links leave from (the node's own).
    `dropped(reason)` counts what the transport refuses."""
    return functools.partial(GuardedTransport, cipher=cipher, source_ip=source_ip,
                             dropped=dropped)


class KeyedSyncObj(pysyncobj.SyncObj):  # type: ignore[misc]
    """``SyncObj`` whose ``encryptor`` is our keyring cipher. pysyncobj's
    transport decides from ``syncObj.encryptor`` whether to run its
    random-key handshake; giving it our cipher (instead of a ``password``,
    which it would stretch with 100,000 PBKDF2 rounds into one fixed key)
    keeps that handshake and lets the keys change at run time."""

    def __init__(self, *args: Any, cipher: KeyringCipher, **kwargs: Any) -> None:
        self._nanomesh_cipher = cipher
        super().__init__(*args, **kwargs)

    @property
    def encryptor(self) -> KeyringCipher:
        return self._nanomesh_cipher
