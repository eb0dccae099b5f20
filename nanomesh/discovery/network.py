"""Network capability: which links this peer has, and which are up.

The *kind* of an interface comes from ``/sys/class/net/<name>/``, because
neither the name (``eth0``, ``enp3s0``, ``wlp2s0``, ``end0``...) nor psutil
says what the hardware is. The rules, first match wins:

1. ``lo`` or ``type`` 772 (ARPHRD_LOOPBACK) -> ``loopback``;
2. a ``wireless/`` directory or a ``phy80211`` link, or ``DEVTYPE=wlan`` in
   ``uevent`` -> ``wifi``;
3. ``DEVTYPE=bluetooth`` in ``uevent`` (BlueZ PAN ``bnep0``) -> ``bluetooth``;
4. no ``device`` link -> ``virtual`` (bridges, veth, tun, docker, ifb: they
   exist only in software);
5. ``type`` 1 (ARPHRD_ETHER) with a ``device`` link -> ``ethernet``;
6. anything else (``wwan``, CAN, InfiniBand) -> ``other``.

Whether an interface is up and its addresses come from psutil
(``net_if_stats`` / ``net_if_addrs``), which works on every OS; on Linux the
sysfs ``flags`` (IFF_UP) stand in for an interface psutil did not list.

The top-level ``ethernet`` / ``wifi`` / ``bluetooth`` flags say the hardware
is *present*, not connected: a service that needs Wi-Fi can be placed on a
peer whose Wi-Fi is down today; per-interface ``up`` carries connectivity.
Bluetooth radios (``hci0``) are not network interfaces; they are listed in
``/sys/class/bluetooth``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from nanomesh.discovery.profile import InterfaceKind, InterfaceProfile, NetworkProfile
from nanomesh.discovery.sysfs import list_dir, read_int, read_text

_ARPHRD_ETHER = 1
_ARPHRD_LOOPBACK = 772
_IFF_UP = 0x1


def _uevent_devtype(net_dir: Path) -> str | None:
    """``DEVTYPE`` from the interface's ``uevent`` file, if any."""
    for line in (read_text(net_dir / "uevent") or "").splitlines():
        key, _, value = line.partition("=")
        if key == "DEVTYPE":
            return value
    return None


def classify_interface(net_dir: Path) -> InterfaceKind:
    """The kind of the interface whose sysfs directory is ``net_dir`` (rules above)."""
    arp_type = read_int(net_dir / "type")
    devtype = _uevent_devtype(net_dir)
    if net_dir.name == "lo" or arp_type == _ARPHRD_LOOPBACK:
        return "loopback"
    if (net_dir / "wireless").is_dir() or (net_dir / "phy80211").exists() or devtype == "wlan":
        return "wifi"
    if devtype == "bluetooth":
        return "bluetooth"
    if not (net_dir / "device").exists():
        return "virtual"
    if arp_type == _ARPHRD_ETHER:
        return "ethernet"
    return "other"


def _kind_without_sysfs(name: str) -> InterfaceKind:
    """Best guess for an interface psutil lists but sysfs does not (non-Linux)."""
    return "loopback" if name.startswith("lo") else "other"


def _sysfs_up(net_dir: Path) -> bool:
    """IFF_UP from the sysfs ``flags`` attribute (administratively up)."""
    flags = read_int(net_dir / "flags")
    return flags is not None and bool(flags & _IFF_UP)


def _interface(name: str, net_dir: Path | None, addresses: Mapping[str, list[str]],
               up: Mapping[str, bool]) -> InterfaceProfile:
    """One ``interfaces`` entry, preferring psutil's ``up`` over sysfs flags."""
    kind = classify_interface(net_dir) if net_dir is not None else _kind_without_sysfs(name)
    is_up = up[name] if name in up else net_dir is not None and _sysfs_up(net_dir)
    return {"name": name, "kind": kind, "up": is_up, "addresses": list(addresses.get(name, []))}


def read_interfaces(sys_root: Path, addresses: Mapping[str, list[str]],
                    up: Mapping[str, bool]) -> list[InterfaceProfile]:
    """Every interface known to sysfs or psutil, sorted by name.

    ``addresses`` and ``up`` are psutil's view keyed by interface name; they
    are parameters so tests can pair a fixture sysfs tree with fixed values.
    """
    sysfs = {entry.name: entry for entry in list_dir(sys_root / "class/net")}
    names = sorted(set(sysfs) | set(addresses) | set(up))
    return [_interface(name, sysfs.get(name), addresses, up) for name in names]


def has_bluetooth(sys_root: Path) -> bool:
    """True when the kernel registered a Bluetooth controller (``hci0``, ...)."""
    return bool(list_dir(sys_root / "class/bluetooth"))


def network_profile(interfaces: list[InterfaceProfile], bluetooth_radio: bool) -> NetworkProfile:
    """The ``network`` section: interfaces plus presence flags per link kind."""
    kinds = {iface["kind"] for iface in interfaces}
    return {
        "interfaces": interfaces,
        "ethernet": "ethernet" in kinds,
        "wifi": "wifi" in kinds,
        "bluetooth": bluetooth_radio or "bluetooth" in kinds,
    }
