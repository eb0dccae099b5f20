"""Ports for instance endpoints, and the environment contract every instance gets.

An endpoint with a fixed ``port`` is served there, as given (two services
asking for the same fixed port on one peer is a manifest problem placement
does not see; the second instance fails to bind and says so in its log). An
endpoint with ``port = "auto"`` gets a port the kernel reports free on the
peer's IP (UDP for ``coap``, TCP otherwise), never one this driver already
handed to another live instance; an instance that restarts gets its previous
port back when it is still free, so the endpoints gossiped for it stay put.

The kernel picks from its ephemeral range, as ``bind(port=0)`` does for any
server; a port is only *reserved* among this driver's instances: between the
check and the instance's own ``bind`` another program could take it (the
instance then fails and is restarted on a fresh port).

The peer's own ports (`PortAllocator`'s ``reserved``: by default nanomesh's
default ports, `nanomesh.runtime.instance_spec.RESERVED_PORTS`) are never handed out,
and a fixed port among them is refused with `PortError` (the validator
already refuses the defaults; this also covers a document from an older peer
and a peer configured with other ports).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import sys
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from nanomesh.runtime.instance_spec import RESERVED_PORTS, EndpointSpec, InstanceSpec

AUTO_PORT_ATTEMPTS = 32
"""Kernel picks tried before giving up on a free port not held by another
instance (a collision needs the kernel to hand out a port we hold, rare)."""

TOKEN_BYTES = 32
"""Entropy of an instance token (256 bits, as the management token)."""

ENV_PREFIX = "NANOMESH_"
"""The daemon's variables with this prefix are never inherited by an instance
(:func:`instance_env`, :func:`nanomesh.runtime.oci.container_env`)."""


class PortError(OSError):
    """No port could be found or reserved for an endpoint."""


Endpoint = tuple[str, str, int]
"""``(name, protocol, port)``, as in
:attr:`nanomesh.runtime.reconcile_core.InstanceStatus.endpoints`."""


class PortAllocator:
    """Hands out ports for ``"auto"`` endpoints, remembering who holds which.
    ``reserved``: the peer's own ports (gossip, API, Raft, gateway, events),
    which no instance may serve on (neither transport)."""

    def __init__(self, reserved: Collection[int] = tuple(RESERVED_PORTS)) -> None:
        self.reserved = frozenset(reserved)
        self._held: dict[str, tuple[Endpoint, ...]] = {}
        self._last: dict[str, dict[str, int]] = {}

    def allocate(self, iid: str, host_ip: str,
                 endpoints: tuple[EndpointSpec, ...]) -> tuple[Endpoint, ...]:
        """The ports ``iid`` serves this run; held until :meth:`release`.
        Raises :class:`PortError` if no free port can be found."""
        self.release(iid)
        taken = {(_transport(proto), port) for held in self._held.values()
                 for _, proto, port in held}
        taken |= {(t, port) for t in ("udp", "tcp") for port in self.reserved}
        out: list[Endpoint] = []
        for ep in endpoints:
            port = ep.port
            if port in self.reserved:
                raise PortError(f"endpoint {ep.name!r}: port {port} is one of this peer's own "
                                f"ports ({', '.join(map(str, sorted(self.reserved)))})")
            if port is None:
                port = self._auto(host_ip, ep, taken, self._last.get(iid, {}).get(ep.name))
            taken.add((_transport(ep.protocol), port))
            out.append((ep.name, ep.protocol, port))
        self._held[iid] = tuple(out)
        self._last[iid] = {name: port for name, _, port in out}
        return tuple(out)

    def release(self, iid: str) -> None:
        """The run of ``iid`` ended: its ports are free again (its last choice
        is remembered for its next run)."""
        self._held.pop(iid, None)

    def forget(self, iid: str) -> None:
        self.release(iid)
        self._last.pop(iid, None)

    def held(self) -> dict[str, tuple[Endpoint, ...]]:
        return dict(self._held)

    @staticmethod
    def _auto(host_ip: str, ep: EndpointSpec, taken: set[tuple[str, int]],
              previous: int | None) -> int:
        transport = _transport(ep.protocol)
        if previous is not None and (transport, previous) not in taken \
                and port_is_free(host_ip, transport, previous):
            return previous
        for _ in range(AUTO_PORT_ATTEMPTS):
            port = free_port(host_ip, transport)
            if (transport, port) not in taken:
                return port
        raise PortError(f"no free {transport} port on {host_ip} for endpoint {ep.name!r}")


def _transport(protocol: str) -> str:
    return "udp" if protocol == "coap" else "tcp"


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_port(host_ip: str, transport: str) -> int:
    """A port the kernel reports free on ``host_ip`` (``"udp"`` or ``"tcp"``)."""
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    try:
        with socket.socket(_family(host_ip), kind) as sock:
            sock.bind((host_ip, 0))
            return int(sock.getsockname()[1])
    except OSError as exc:
        raise PortError(exc.errno, f"cannot bind a {transport} port on {host_ip}: "
                                   f"{exc.strerror}") from None


def port_is_free(host_ip: str, transport: str, port: int) -> bool:
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    with contextlib.suppress(OSError), socket.socket(_family(host_ip), kind) as sock:
        if transport == "tcp":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host_ip, port))
        return True
    return False


# -- the environment contract (spec.ENV_CONTRACT) --------------------------------------------


@dataclass(frozen=True, slots=True)
class ContractValues:
    """What the runtime tells one run of an instance about itself."""

    iid: str
    service: str
    host_ip: str
    endpoints: tuple[Endpoint, ...]
    peer_api: str
    token: str


def new_token() -> str:
    """A fresh random instance token (URL-safe text)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def contract_env(values: ContractValues) -> dict[str, str]:
    """The variables of :data:`nanomesh.runtime.instance_spec.ENV_CONTRACT` for one run."""
    env = {"NANOMESH_SERVICE": values.service, "NANOMESH_INSTANCE": values.iid,
           "NANOMESH_HOST": values.host_ip, "NANOMESH_PEER_API": values.peer_api,
           "NANOMESH_INSTANCE_TOKEN": values.token,
           "NANOMESH_ENDPOINTS": json.dumps(
               {name: {"protocol": proto, "port": port}
                for name, proto, port in values.endpoints}, separators=(",", ":"))}
    for name, proto, port in values.endpoints:
        env[EndpointSpec(name, proto).env_name] = str(port)
    if values.endpoints:
        env["NANOMESH_PORT"] = str(values.endpoints[0][2])
    return env


DEVICE_ENV = ("NANOMESH_DEVICES", "NANOMESH_WORLD", "NANOMESH_WORLD_START")
"""The daemon's ``NANOMESH_*`` variables its instances do inherit: they describe
the machine's hardware (simulated devices, and the simulated world's scenario
and clock: `nanomesh.devices.backend`, `nanomesh.devices.simworld`), so a
service drives the devices its peer's profile shows."""


def instance_env(spec: InstanceSpec, values: ContractValues,
                 base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The run's whole environment: ``base`` (the daemon's) without any
    ``NANOMESH_*`` variable, the spec's ``run.env``, then the contract (the
    spec cannot override it: the validator refuses ``NANOMESH_*`` names).
    Every ``NANOMESH_*`` an instance sees is one the runtime set for it: the
    daemon's own (``NANOMESH_TOKEN``, the management token operators export
    for the CLI; the contract of a daemon itself run as an instance) stay out,
    except `DEVICE_ENV`."""
    base = os.environ if base is None else base
    inherited = {k: v for k, v in base.items()
                 if not k.startswith(ENV_PREFIX) or k in DEVICE_ENV}
    inherited["PATH"] = daemon_first_path(inherited.get("PATH", os.defpath))
    return {**inherited, **spec.run.env, **contract_env(values)}


def daemon_first_path(path: str) -> str:
    """``PATH`` with the directory of the daemon's own Python first, so that a
    service's ``python3`` is the interpreter nanomesh is installed in (a venv
    on a device), and ``import nanomesh.sdk.service`` works in every nanoservice.
    A service that wants another Python names it by absolute path."""
    own = os.path.dirname(sys.executable)
    rest = [p for p in path.split(os.pathsep) if p and p != own]
    return os.pathsep.join([own, *rest])

