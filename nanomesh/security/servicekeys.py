"""Keys of service traffic: ZeroMQ CURVE keypairs derived from the cluster
key, and the ZAP handler that decides who may connect.

Every member derives the same keypairs from the cluster keyring
(`nanomesh.wire.envelope.Keyring.derive`), so nobody exchanges keys:

- the **service** keypair (purpose ``"service-curve"``): the CURVE server key
  of every instance's ZeroMQ endpoint, of the event relays and of the
  gateway link, and the client key members call them with. A server admits a
  client whose public key is the service key of *any installed* cluster key;
- the **operator** keypair (``"service-curve-operator"``): held by daemons and
  by clients that read the key file, never by instances; events published
  with it carry whatever source the publisher names (it holds the cluster
  key: it could derive any instance's key anyway);
- one **instance** keypair per instance id (HKDF of
  ``"service-curve-instance"``'s secret with the id): what an instance
  publishes events with. The local relay knows which id each key belongs to
  (`Credentials.instance_env` records it) and sets the events' source from
  that, so an instance cannot speak as another.

An instance gets the service keypair, the accepted client keys and its own
instance keypair in its environment (`ENV_*`), never the cluster key nor the
operator or instance secrets it could derive others from. What a leaked
instance environment gives away: calls to and events of every service, until
the cluster key is rotated; not gossip, Raft or the management API.

**Key rotation.** A server presents one keypair: the primary's at the time it
started, and admits clients of every installed key. A call
(`nanomesh.transport.rpc.zmq_call`) expects its primary's server key first and, if the
handshake fails, the other installed keys' (remembering per address which
one worked). So after a new key is installed everywhere (step 1) nothing
changes, and while it is made primary peer by peer (step 2) calls between
peers on different primaries still succeed, at the cost of one failed
handshake per new connection. Event subscriptions do not fall back (one SUB
socket listens to every relay with one server key): events from a peer whose
primary differs pause until both have the same primary. Make the new key
primary on every peer within a short window; remove the old key (step 3) only
after that.

**ZAP** (ZeroMQ RFC 27): one handler thread per process answers libzmq's
authentication requests for every server socket of the process's context, by
the socket's ZAP domain (`DOMAIN_*`) and a policy registered for it
(`set_policy`). Server sockets also set ``ZMQ_ZAP_ENFORCE_DOMAIN``, so a
missing handler refuses clients instead of admitting all of them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from nanomesh.errors import ConfigError
from nanomesh.wire.envelope import Keyring, derive_secret

if TYPE_CHECKING:
    import zmq
# pyzmq (and libzmq, ~4 MiB with asyncio) is imported only by the functions
# that configure sockets: a peer that hosts and calls no service never loads
# it. Keys are Z85 text (`z85_encode`) and Curve25519 pairs (`CurveKey`)
# without it.

log = logging.getLogger("nanomesh.security.servicekeys")

_B85 = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz!#$%&()*+-;<=>?@^_`{|}~"
_Z85 = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
_TO_Z85, _FROM_Z85 = bytes.maketrans(_B85, _Z85), bytes.maketrans(_Z85, _B85)


def z85_encode(data: bytes) -> bytes:
    """Z85 (ZeroMQ RFC 32) of `data` (length a multiple of 4): the same
    big-endian base 85 as `base64.b85encode`, in another alphabet."""
    if len(data) % 4:
        raise ValueError("Z85 encodes a multiple of 4 bytes")
    return base64.b85encode(data).translate(_TO_Z85)


def z85_decode(text: bytes) -> bytes:
    """The bytes of Z85 `text`; ValueError if it is not Z85 (or its length
    not a multiple of 5)."""
    if len(text) % 5 or not set(text) <= set(_Z85):
        raise ValueError("not Z85 text")
    try:
        return base64.b85decode(text.translate(_FROM_Z85))
    except (ValueError, binascii.Error) as exc:  # a group above 2^32 - 1
        raise ValueError(f"not Z85 text: {exc}") from None


def curve_public(secret: bytes) -> bytes:
    """The Curve25519 public key of a 32-byte secret, Z85 (libzmq's
    ``zmq_curve_public``; X25519 clamps the secret the same way)."""
    public = X25519PrivateKey.from_private_bytes(secret).public_key()
    return z85_encode(public.public_bytes(Encoding.Raw, PublicFormat.Raw))

PURPOSE_SERVICE = "service-curve"
PURPOSE_OPERATOR = "service-curve-operator"
PURPOSE_INSTANCE = "service-curve-instance"

ENV_SECRET = "NANOMESH_CURVE_SECRET"
"""An instance's copy of the service secret key (Z85)."""
ENV_ACCEPT = "NANOMESH_CURVE_ACCEPT"
"""Comma-separated service public keys (Z85) of every installed cluster key,
primary first: the clients the instance's servers admit."""
ENV_PUBLISHER = "NANOMESH_CURVE_PUBLISHER"
"""The instance's own secret key (Z85), for publishing events."""
ENV_VISIBILITY = "NANOMESH_VISIBILITY"
"""``private`` or ``public`` (the manifest's ``visibility``)."""

ENV_KEY_FILE = "NANOMESH_KEY_FILE"
"""The key file a client reads when none is given (`find_key_file`)."""
INSTALLED_KEY_FILE = Path("/etc/nanomesh/cluster.key")
"""Where `peers/install.sh` puts the key: an operator's client on an installed
peer finds it there (readable by root)."""

DOMAIN_SERVICE = "nanomesh-service"
"""ZAP domain (prefix) of instance endpoints and the gateway link: service-key clients."""
DOMAIN_EVENTS_SUB = "nanomesh-events-sub"
"""ZAP domain of a relay's XPUB: subscribers (service or operator keys)."""
DOMAIN_EVENTS_PUB = "nanomesh-events-pub"
"""ZAP domain of a relay's XSUB: publishers (operator keys, local instances)."""

Policy = Callable[[bytes], "str | None"]
"""ZAP policy: Z85 client public key -> the user id to admit it as, or None to refuse."""

ANY_SOURCE = "*"
"""ZAP user id of an operator key: its events' sources are taken as named."""
MEMBER = "member"
"""ZAP user id of a client holding the service key."""


@dataclass(frozen=True)
class CurveKey:
    """A CURVE keypair, both halves Z85-encoded (40 characters), as libzmq takes them."""

    public: bytes
    secret: bytes

    @classmethod
    def from_secret(cls, secret: bytes) -> CurveKey:
        """The keypair of a 32-byte secret (any 32 random bytes are a Curve25519 key)."""
        return cls(curve_public(secret), z85_encode(secret))

    @classmethod
    def from_z85(cls, secret: str, where: str) -> CurveKey:
        raw = _z85_key(secret)
        if raw is None:
            raise ConfigError(f"{where} is not a Z85 CURVE secret key (40 characters)")
        return cls.from_secret(raw)


def _z85_key(text: str) -> bytes | None:
    """The 32 bytes of a Z85-encoded CURVE key, or None if `text` is not one."""
    try:
        raw = z85_decode(text.encode())
    except (ValueError, UnicodeEncodeError):
        return None
    return raw if len(raw) == 32 else None


def _z85_public(text: str, where: str) -> bytes:
    if _z85_key(text) is None:
        raise ConfigError(f"{where}: {text!r} is not a Z85 CURVE public key")
    return text.encode()


@dataclass(frozen=True)
class ServiceKeys:
    """The CURVE keys one process uses for service traffic."""

    service: CurveKey
    """Server key of every service endpoint; the client key of calls and subscriptions."""
    accepted: frozenset[bytes]
    """Client public keys a server admits (the service key of each installed cluster key)."""
    publisher: CurveKey
    """What events are published with: the operator key, or an instance's own."""
    server: bytes | None = None
    """The server key a client expects; None: ``service.public`` (see `server_keys`)."""

    @property
    def server_keys(self) -> tuple[bytes, ...]:
        """Server keys a client may meet, its primary's first: during a key
        rotation a server may still present another installed key's."""
        return (self.service.public, *sorted(self.accepted - {self.service.public}))

    @classmethod
    def from_keyring(cls, keyring: Keyring) -> ServiceKeys:
        """A key holder's keys (daemon, operator client). ConfigError without a key."""
        return cls(CurveKey.from_secret(keyring.derive(PURPOSE_SERVICE)),
                   frozenset(CurveKey.from_secret(s).public
                             for s in keyring.derive_all(PURPOSE_SERVICE)),
                   CurveKey.from_secret(keyring.derive(PURPOSE_OPERATOR)))

    @classmethod
    def from_environ(cls, env: Mapping[str, str]) -> ServiceKeys | None:
        """An instance's keys from the runtime's variables; None when the mesh
        has no key (none set); ConfigError if they are malformed."""
        if not env.get(ENV_SECRET):
            return None
        service = CurveKey.from_z85(env[ENV_SECRET], f"${ENV_SECRET}")
        accepted = frozenset(_z85_public(k, f"${ENV_ACCEPT}")
                             for k in env.get(ENV_ACCEPT, "").split(",") if k)
        publisher = CurveKey.from_z85(env.get(ENV_PUBLISHER, ""), f"${ENV_PUBLISHER}")
        return cls(service, accepted or frozenset({service.public}), publisher)


def instance_secret(keyring: Keyring, iid: str) -> bytes:
    """The 32-byte secret of instance `iid`'s own keypair."""
    return derive_secret(keyring.derive(PURPOSE_INSTANCE), "instance:" + iid)


class Credentials:
    """A daemon's view: its own `ServiceKeys`, the environment it gives each
    instance, and who a publisher's key belongs to (for its relay)."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring
        self.keys = ServiceKeys.from_keyring(keyring)
        self._operators = frozenset(CurveKey.from_secret(s).public
                                    for s in keyring.derive_all(PURPOSE_OPERATOR))
        self._instances: dict[bytes, str] = {}
        self._lock = threading.Lock()

    def instance_env(self, iid: str, visibility: str = "private") -> dict[str, str]:
        """The ``NANOMESH_CURVE_*`` variables of one run of `iid` (and
        ``NANOMESH_VISIBILITY``); remembers its publisher key for `publisher_identity`."""
        own = CurveKey.from_secret(instance_secret(self.keyring, iid))
        with self._lock:  # read by the ZAP thread
            self._instances[own.public] = iid
        accepted = [self.keys.service.public,
                    *sorted(self.keys.accepted - {self.keys.service.public})]
        return {ENV_SECRET: self.keys.service.secret.decode(),
                ENV_ACCEPT: ",".join(k.decode() for k in accepted),
                ENV_PUBLISHER: own.secret.decode(), ENV_VISIBILITY: visibility}

    def publisher_identity(self, public: bytes) -> str | None:
        """ZAP policy of the relay's XSUB: `ANY_SOURCE` for an operator key,
        the instance id for a local instance's key, else None (refused)."""
        if public in self._operators:
            return ANY_SOURCE
        with self._lock:
            return self._instances.get(public)

    def subscriber_identity(self, public: bytes) -> str | None:
        """ZAP policy of the relay's XPUB: members (service or operator keys)."""
        if public in self.keys.accepted or public in self._operators:
            return MEMBER
        return None


def member_policy(keys: ServiceKeys) -> Policy:
    """ZAP policy admitting clients with the service key of any installed cluster key."""
    return lambda public: MEMBER if public in keys.accepted else None


# ------------------------------------------------------------------ this process's keys


_installed: ServiceKeys | None = None


def install(keys: ServiceKeys | None) -> None:
    """The keys this process uses by default (daemon: from its keyring; an
    instance: from its environment; None: plain ZeroMQ, a mesh without key)."""
    global _installed
    _installed = keys


def installed() -> ServiceKeys | None:
    return _installed


def find_key_file(explicit: Path | None = None) -> Path | None:
    """The key file a client uses: `explicit`, else ``$NANOMESH_KEY_FILE``,
    else the running lab's, else `INSTALLED_KEY_FILE` if readable; None if none."""
    if explicit is not None:
        return explicit
    if os.environ.get(ENV_KEY_FILE):
        return Path(os.environ[ENV_KEY_FILE])
    from nanomesh.config import default_lab_dir
    lab = default_lab_dir()
    # lab.json exists while a lab runs (`lab down` removes it); the key file
    # stays for the next `lab up` and must not follow the client elsewhere.
    if (lab / "lab.json").exists() and os.access(lab / "cluster.key", os.R_OK):
        return lab / "cluster.key"
    if os.access(INSTALLED_KEY_FILE, os.R_OK):
        return INSTALLED_KEY_FILE
    return None


def client_keys(key_file: Path | None = None) -> ServiceKeys | None:
    """The keys a client uses: this process's (`install`), else those of the
    key file `find_key_file` names; None without either. ConfigError if the
    file cannot be read."""
    if key_file is None and _installed is not None:
        return _installed
    if key_file is None and os.environ.get("NANOMESH_INSTANCE"):
        return None  # an instance of a mesh without a key: no key file to look for
    path = find_key_file(key_file)
    return None if path is None else ServiceKeys.from_keyring(Keyring.from_file(path))


# ------------------------------------------------------------------ sockets


def make_server(sock: zmq.Socket[bytes], keys: ServiceKeys, domain: str) -> None:
    """Make `sock` (not yet bound) a CURVE server whose clients ZAP `domain` decides."""
    import zmq

    ensure_zap_handler(sock.context)
    sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
    sock.curve_server = True
    sock.curve_secretkey = keys.service.secret
    sock.curve_publickey = keys.service.public
    sock.zap_domain = domain.encode()


def make_member_server(sock: zmq.Socket[bytes], keys: ServiceKeys) -> None:
    """`make_server` admitting the holders of `keys`' accepted service keys
    (one ZAP domain per accepted set, so servers with other keys in the same
    process, as in tests, keep their own policy)."""
    domain = f"{DOMAIN_SERVICE}-{fingerprint(b''.join(sorted(keys.accepted)))}"
    set_policy(domain, member_policy(keys))
    make_server(sock, keys, domain)


def make_client(sock: zmq.Socket[bytes], keys: ServiceKeys, *, publisher: bool = False
                ) -> None:
    """Make `sock` (not yet connected) a CURVE client of the mesh's servers."""
    own = keys.publisher if publisher else keys.service
    sock.curve_secretkey = own.secret
    sock.curve_publickey = own.public
    sock.curve_serverkey = keys.server or keys.service.public


def user_id(frame: zmq.Frame) -> str | None:
    """The ZAP user id of the connection a received frame came on (None: none)."""
    import zmq

    try:
        value = frame.get("User-Id")
    except zmq.ZMQError:
        return None
    return value if isinstance(value, str) and value else None


# ------------------------------------------------------------------ ZAP


ZAP_ENDPOINT = "inproc://zeromq.zap.01"
_policies: dict[str, Policy] = {}
_handler_pid: int | None = None
_handler_lock = threading.Lock()


def set_policy(domain: str, policy: Policy) -> None:
    """Who a server socket of ZAP `domain` admits (replaces the previous policy)."""
    _policies[domain] = policy


def zap_reply(frames: list[bytes], policies: Mapping[str, Policy]) -> list[bytes]:
    """The ZAP reply to one request (RFC 27). Pure but for the policies.
    Only CURVE requests of a domain with a policy can be admitted."""
    if len(frames) < 6:
        return [b"1.0", b"", b"500", b"malformed ZAP request", b"", b""]
    version, request_id, domain, _address, _identity, mechanism = frames[:6]
    status, text, user = b"400", b"refused", b""
    policy = _policies_get(policies, domain)
    if version != b"1.0":
        status, text = b"500", b"unsupported ZAP version"
    elif mechanism == b"CURVE" and len(frames) == 7 and len(frames[6]) == 32 and policy:
        try:
            who = policy(z85_encode(frames[6]))
        except Exception:  # a policy bug refuses one client; the handler lives on
            log.exception("ZAP policy for %r failed", domain)
            who = None
        if who is not None:
            status, text, user = b"200", b"OK", who.encode()
    return [b"1.0", request_id, status, text, user, b""]


def _policies_get(policies: Mapping[str, Policy], domain: bytes) -> Policy | None:
    try:
        return policies.get(domain.decode())
    except UnicodeDecodeError:
        return None


def ensure_zap_handler(ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
    """Start this process's ZAP handler thread if it does not run yet (again
    after a fork); returns once it listens."""
    import zmq

    global _handler_pid
    with _handler_lock:
        if _handler_pid == os.getpid():
            return
        sock = ctx.socket(zmq.REP)
        sock.linger = 0
        sock.bind(ZAP_ENDPOINT)
        threading.Thread(target=_serve_zap, args=(sock,), name="nanomesh-zap",
                         daemon=True).start()
        _handler_pid = os.getpid()


def _serve_zap(sock: zmq.Socket[bytes]) -> None:
    import zmq

    refused = 0
    while True:
        try:
            frames = sock.recv_multipart()
        except zmq.ZMQError:
            return  # the context is gone (interpreter exit)
        reply = zap_reply(frames, _policies)
        if reply[2] != b"200":
            refused += 1
            if refused in (1, 10, 100) or refused % 1000 == 0:
                where = [f.decode("utf-8", "replace") for f in frames[2:4]]
                log.warning("refused a ZeroMQ client without the mesh's key (%s from %s; "
                            "%d so far)", *[*where, "?", "?"][:2], refused)
        sock.send_multipart(reply)


def fingerprint(key: bytes) -> str:
    """A short name of a public key for logs."""
    return hashlib.sha256(key).hexdigest()[:12]
