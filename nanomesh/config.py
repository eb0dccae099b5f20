"""Peer configuration: a TOML file (``peers/*.toml``) merged with command-line
flags, validated in one place before anything starts.

```toml
[peer]
name = "room-pd1"                  # default: the host name
bind = "192.168.1.20:7946"         # gossip address (UDP and TCP)
api_port = 7947                    # HTTP JSON API, same IP
coap_port = 5683                   # CoAP gateway (UDP), same IP; 0 = no gateway
events_xpub_port = 7950            # event relay: subscribers connect here; 0 = no relay
events_xsub_port = 7951            # event relay: local publishers connect here
join = ["192.168.1.10"]            # seeds; default port 7946
data_dir = "/var/lib/nanomesh"
key_file = "/etc/nanomesh/cluster.key"
leaf_keys = "/etc/nanomesh/leaf.keys"  # microcontroller leaves' keys; default: no leaves
profile_refresh = 5.0              # seconds between live-load samples
labels = { room = "meeting-1" }
container_engine = "auto"          # auto | runc | podman | docker
ui = true                          # the web dashboard at http://IP:api_port/ui/
metrics_need_token = false         # GET /v1/metrics: open (default) or management token
install_root = "/opt/nanomesh"     # where `nanomesh upgrade` installs new versions; default: none

[gossip]
preset = "lan"                     # lan | local | memberlist-lan
probe_interval = 0.2               # any GossipConfig field overrides the preset
tcp_ping = true                    # TCP fallback when UDP probes fail (default on)

[[devices]]
type = "pir"
pin = 4
```
"""

from __future__ import annotations

import ipaddress
import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from nanomesh.errors import ConfigError
from nanomesh.gossip.config import GossipConfig, preset
from nanomesh.wire import Address

DEFAULT_GOSSIP_PORT = 7946
"""UDP and TCP port for gossip, as memberlist/Serf/Consul use."""
DEFAULT_API_PORT = 7947
"""HTTP JSON API port, on the same IP as gossip."""
DEFAULT_RAFT_PORT = 7948
"""TCP port for Raft, on the peer's IP (gossip 7946, API 7947, Raft 7948).
Here rather than in `nanomesh.consensus.config` (which re-exports it) so
that knowing the port does not load pysyncobj."""
DEFAULT_COAP_PORT = 5683
"""UDP port of the CoAP gateway (`nanomesh.gateway`), on the same IP as
gossip: CoAP's own default (RFC 7252 §6.1), so that ``coap://<peer>/s/NAME``
needs no port. 0 in the config disables the gateway."""
DEFAULT_EVENTS_XPUB_PORT = 7950
"""TCP port of the event relay's XPUB (subscribers connect), same IP as gossip
(`nanomesh.sdk.events.DEFAULT_XPUB_PORT`)."""
DEFAULT_EVENTS_XSUB_PORT = 7951
"""TCP port of the event relay's XSUB (local publishers connect), same IP as
gossip (`nanomesh.sdk.events.DEFAULT_XSUB_PORT`)."""
DEFAULT_PROFILE_REFRESH = 5.0
"""Seconds between samples of live values (load, memory, storage, battery). A
sample only changes the published profile when
`nanomesh.discovery.publish.ProfilePublisher` says so (buckets, hysteresis,
at most one live-only publication a minute)."""


CONTAINER_ENGINES = ("auto", "runc", "podman", "docker")
"""Values of ``peer.container_engine``: ``auto`` picks per service (runc for a
rootfs, podman then docker for an image; `nanomesh.runtime.container`)."""


def parse_address(text: str, default_port: int, what: str = "address") -> Address:
    """``IP[:PORT]`` (IPv6 as ``[::1]:PORT``) into an address; ConfigError if bad."""
    host, port = text.strip(), default_port
    if host.startswith("["):
        inner, _, rest = host[1:].partition("]")
        host = inner
        if rest.startswith(":"):
            port = _port(rest[1:], what, text)
    elif host.count(":") == 1:
        host, _, p = host.partition(":")
        port = _port(p, what, text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"{what} {text!r}: {host!r} is not an IP address") from None
    return (host, port)


def host_port(host: str, port: int) -> str:
    """``IP:PORT`` as a URL wants it (IPv6 in brackets); inverse of `parse_address`."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def api_address(profile: Mapping[str, Any] | None, gossip_ip: str) -> str:
    """The API ``ip:port`` a peer advertises in its gossiped profile, else the
    default port on its gossip IP (for the daemon and the CLI alike)."""
    peer = (profile or {}).get("peer")
    api = peer.get("api") if isinstance(peer, dict) else None
    if isinstance(api, str) and api:
        return api
    return host_port(gossip_ip, DEFAULT_API_PORT)


def member_api(member: Mapping[str, Any]) -> str:
    """`api_address` of a member as ``GET /v1/members`` returns it."""
    profile = member.get("profile")
    gossip_ip = parse_address(str(member.get("address", "")), DEFAULT_GOSSIP_PORT)[0]
    return api_address(profile if isinstance(profile, Mapping) else None, gossip_ip)


def _port(text: str, what: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigError(f"{what} {whole!r}: port must be 1-65535")
    return int(text)


def default_data_dir(name: str) -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/nanomesh") / name
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "nanomesh" / name


def default_lab_dir() -> Path:
    """Where `nanomesh lab` runs its peers unless told (``--dir``):
    ``$NANOMESH_LAB_DIR``, else ``$XDG_STATE_HOME/nanomesh/lab``
    (``~/.local/state/...``). The clients (`nanomesh.cli`, `nanomesh.sdk.client`)
    look there for a running lab's peers, cluster key and management token."""
    env = os.environ.get("NANOMESH_LAB_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "nanomesh" / "lab"


@dataclass(frozen=True)
class PeerConfig:
    name: str
    bind: Address
    api_port: int = DEFAULT_API_PORT
    coap_port: int = DEFAULT_COAP_PORT
    """CoAP gateway port (UDP); 0 runs no gateway."""
    events_xpub_port: int = DEFAULT_EVENTS_XPUB_PORT
    """Event relay XPUB port (TCP); 0 (either port) runs no relay."""
    events_xsub_port: int = DEFAULT_EVENTS_XSUB_PORT
    """Event relay XSUB port (TCP); 0 (either port) runs no relay."""
    join: tuple[Address, ...] = ()
    data_dir: Path = Path(".")
    key_file: Path | None = None
    leaf_keys: Path | None = None
    """The leaves' key file (`nanomesh.wire.leaf.parse_leaf_keys`: one
    ``<leaf> <hex key>`` per line): the gateway takes registrations and
    reports at ``/leaf/...`` from these leaves only. None: no leaves."""
    profile_refresh: float = DEFAULT_PROFILE_REFRESH
    labels: dict[str, str] = field(default_factory=dict)
    devices: tuple[dict[str, Any], ...] = ()
    gossip: GossipConfig = field(default_factory=GossipConfig)
    config_file: Path | None = None
    container_engine: str = "auto"
    ui: bool = True
    """Serve the web dashboard at ``/ui/`` on the API port (`nanomesh.daemon.api_ui`).
    Read-only without the management token; off for a peer whose API port
    should answer only the API."""
    metrics_need_token: bool = False
    """Whether ``GET /v1/metrics`` needs the management token. Off by default:
    the metrics hold no secrets (counts, states, peer and service names, all
    open in ``/v1/health`` and ``/v1/members`` already), and a scraper given
    the token could deploy code on every device. On: a Prometheus job sends it
    (``authorization: {credentials_file: ...}``), as Consul's
    ``/v1/agent/metrics`` wants an ACL token once ACLs are on. Decided in
    `nanomesh.daemon.api_auth.Access.authorize_metrics`."""
    install_root: Path | None = None
    """The install root (``/opt/nanomesh`` from install.sh: ``versions/``,
    the ``venv`` symlink, the launcher) into which ``nanomesh upgrade``
    installs a new version (`nanomesh.daemon.upgrade`). None (default):
    this peer refuses upgrades through the mesh, as a peer run from a
    checkout must (there is nothing to switch)."""

    @property
    def api_addr(self) -> Address:
        return (self.bind[0], self.api_port)


def load_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def _gossip_from(table: dict[str, Any], preset_override: str | None, where: str) -> GossipConfig:
    table = dict(table)
    base = preset(preset_override or table.pop("preset", "lan"))
    table.pop("preset", None)
    known = {f.name: f for f in fields(GossipConfig)}
    overrides: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown gossip setting {key!r}")
        if isinstance(getattr(base, key), bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: gossip.{key} must be true or false")
            overrides[key] = value
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: gossip.{key} must be a number")
        overrides[key] = type(getattr(base, key))(value)
    return replace(base, **overrides).validate()


def build_config(
    *,
    config_file: Path | None = None,
    name: str | None = None,
    bind: str | None = None,
    join: list[str] | None = None,
    data_dir: Path | None = None,
    key_file: Path | None = None,
    api_port: int | None = None,
    gossip_preset: str | None = None,
    coap_port: int | None = None,
    container_engine: str | None = None,
    ui: bool | None = None,
    install_root: Path | None = None,
) -> PeerConfig:
    """Merge the config file (if any) with flags; flags win."""
    raw = load_file(config_file) if config_file else {}
    where = str(config_file or "config")
    unknown = set(raw) - {"peer", "gossip", "devices"}
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {', '.join(sorted(unknown))}")
    peer = raw.get("peer", {})
    if not isinstance(peer, dict):
        raise ConfigError(f"{where}: [peer] must be a table")
    name = name or peer.get("name") or socket.gethostname()
    if not isinstance(name, str) or not name or len(name) > 128 or not name.isprintable():
        raise ConfigError(f"peer name {name!r} must be 1-128 printable characters")
    bind_text = bind or peer.get("bind") or "127.0.0.1"
    bind_addr = parse_address(str(bind_text), DEFAULT_GOSSIP_PORT, "--bind")
    seeds = join if join is not None else peer.get("join", [])
    if not isinstance(seeds, list):
        raise ConfigError(f"{where}: peer.join must be a list of addresses")
    labels = peer.get("labels", {})
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise ConfigError(f"{where}: peer.labels must map names to strings")
    devices = raw.get("devices", [])
    if not isinstance(devices, list) or not all(isinstance(d, dict) for d in devices):
        raise ConfigError(f"{where}: [[devices]] entries must be tables")
    refresh = peer.get("profile_refresh", DEFAULT_PROFILE_REFRESH)
    if isinstance(refresh, bool) or not isinstance(refresh, int | float) or refresh <= 0:
        raise ConfigError(f"{where}: peer.profile_refresh must be a positive number of seconds")
    key = key_file or (Path(peer["key_file"]) if "key_file" in peer else None)
    leaf_keys = peer.get("leaf_keys")
    if leaf_keys is not None and (not isinstance(leaf_keys, str) or not leaf_keys):
        raise ConfigError(f"{where}: peer.leaf_keys must be the path of the leaves' key file")
    port = api_port or int(peer.get("api_port", DEFAULT_API_PORT))
    if not 0 < port < 65536:
        raise ConfigError(f"api port {port} out of range")
    if port == bind_addr[1]:
        raise ConfigError(f"api port {port} is the gossip port; choose another")
    engine = container_engine or peer.get("container_engine", "auto")
    if engine not in CONTAINER_ENGINES:
        raise ConfigError(f"{where}: peer.container_engine must be one of "
                          f"{', '.join(CONTAINER_ENGINES)}, got {engine!r}")
    if coap_port is None:
        coap_port = peer.get("coap_port", DEFAULT_COAP_PORT)
    if isinstance(coap_port, bool) or not isinstance(coap_port, int) or not (
            0 <= coap_port < 65536):
        raise ConfigError(f"{where}: peer.coap_port must be a port 1-65535, or 0 for no "
                          "CoAP gateway")
    if coap_port == bind_addr[1]:
        raise ConfigError(f"coap port {coap_port} is the gossip port (both UDP); choose another")
    events_ports = _events_ports(peer, where, {bind_addr[1]: "gossip", port: "api"})
    if ui is None:
        ui = peer.get("ui", True)
    if not isinstance(ui, bool):
        raise ConfigError(f"{where}: peer.ui must be true or false")
    metrics_need_token = peer.get("metrics_need_token", False)
    if not isinstance(metrics_need_token, bool):
        raise ConfigError(f"{where}: peer.metrics_need_token must be true or false")
    return PeerConfig(
        name=name,
        bind=bind_addr,
        api_port=port,
        coap_port=coap_port,
        events_xpub_port=events_ports[0],
        events_xsub_port=events_ports[1],
        join=tuple(parse_address(str(s), DEFAULT_GOSSIP_PORT, "--join") for s in seeds),
        data_dir=data_dir or Path(peer.get("data_dir") or default_data_dir(name)),
        key_file=key,
        leaf_keys=Path(leaf_keys) if leaf_keys else None,
        profile_refresh=float(refresh),
        labels=dict(labels),
        devices=tuple(devices),
        gossip=_gossip_from(raw.get("gossip", {}), gossip_preset, where),
        config_file=config_file,
        container_engine=engine,
        ui=ui,
        metrics_need_token=metrics_need_token,
        install_root=install_root or (Path(peer["install_root"]) if peer.get("install_root")
                                      else None),
    )


def _events_ports(peer: dict[str, Any], where: str, taken: dict[int, str]) -> tuple[int, int]:
    """``(xpub, xsub)`` from ``[peer]``; both 0 when either is 0 (no relay)."""
    ports = []
    for key, default in (("events_xpub_port", DEFAULT_EVENTS_XPUB_PORT),
                         ("events_xsub_port", DEFAULT_EVENTS_XSUB_PORT)):
        value = peer.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 65536:
            raise ConfigError(f"{where}: peer.{key} must be a port 1-65535, or 0 for no "
                              "event relay")
        if value and value in taken:
            raise ConfigError(f"{where}: peer.{key} {value} is the {taken[value]} port; "
                              "choose another")
        ports.append(value)
    if 0 in ports:
        return 0, 0
    if ports[0] == ports[1]:
        raise ConfigError(f"{where}: peer.events_xpub_port and events_xsub_port are both "
                          f"{ports[0]}; they must differ")
    return ports[0], ports[1]
