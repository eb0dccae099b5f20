"""Interface kinds from /sys/class/net, and the network section."""

from __future__ import annotations

from pathlib import Path

import pytest
from discovery_helpers import TreeEntry, TreeWriter

from nanomesh.discovery.network import (
    classify_interface,
    has_bluetooth,
    network_profile,
    read_interfaces,
)

NET = "class/net"
PCI = "devices/pci0000:00/0000:00:1f.6"


def iface(name: str, arp_type: int, *, device: bool = True, flags: str = "0x1003",
          extra: dict[str, TreeEntry] | None = None) -> dict[str, TreeEntry]:
    files: dict[str, TreeEntry] = {f"{NET}/{name}/type": f"{arp_type}\n",
                                   f"{NET}/{name}/flags": f"{flags}\n"}
    if device:
        files[f"{NET}/{name}/device"] = ("->", f"{PCI}/{name}")
    files.update(extra or {})
    return files


LAPTOP_PI_MIX: dict[str, TreeEntry] = {
    **iface("lo", 772, device=False, flags="0x9"),
    **iface("eth0", 1),
    **iface("wlan0", 1, extra={f"{NET}/wlan0/wireless": {}}),
    **iface("wlp2s0", 1, extra={f"{NET}/wlp2s0/phy80211": ("->", "class/ieee80211/phy0")}),
    **iface("wwan0", 1, extra={f"{NET}/wwan0/uevent": "DEVTYPE=wlan\nINTERFACE=wwan0\n"}),
    **iface("bnep0", 1, extra={f"{NET}/bnep0/uevent": "DEVTYPE=bluetooth\nINTERFACE=bnep0\n"}),
    **iface("docker0", 1, device=False, flags="0x1002"),
    **iface("veth1a2b", 1, device=False),
    **iface("can0", 280),
}

EXPECTED_KINDS = {
    "lo": "loopback", "eth0": "ethernet", "wlan0": "wifi", "wlp2s0": "wifi", "wwan0": "wifi",
    "bnep0": "bluetooth", "docker0": "virtual", "veth1a2b": "virtual", "can0": "other",
}


@pytest.mark.parametrize(("name", "kind"), sorted(EXPECTED_KINDS.items()))
def test_classify_interface(tree: TreeWriter, name: str, kind: str) -> None:
    root = tree(LAPTOP_PI_MIX)
    assert classify_interface(root / NET / name) == kind


def test_read_interfaces_merges_psutil_state_and_addresses(tree: TreeWriter) -> None:
    root = tree(LAPTOP_PI_MIX)
    addrs = {"eth0": ["192.168.1.2", "fe80::1"], "lo": ["127.0.0.1", "::1"]}
    up = {"eth0": True, "lo": True, "wlan0": False}
    by_name = {i["name"]: i for i in read_interfaces(root, addrs, up)}
    assert sorted(by_name) == sorted(EXPECTED_KINDS)
    assert by_name["eth0"] == {"name": "eth0", "kind": "ethernet", "up": True,
                               "addresses": ["192.168.1.2", "fe80::1"]}
    assert by_name["wlan0"]["up"] is False
    # Not in psutil's view: sysfs IFF_UP decides (docker0 flags 0x1002 = down).
    assert (by_name["can0"]["up"], by_name["docker0"]["up"]) == (True, False)


def test_interfaces_only_psutil_knows_are_kept(tmp_path: Path) -> None:
    """A macOS peer has no sysfs: lo0 is still loopback, the rest 'other'."""
    interfaces = read_interfaces(tmp_path, {"en0": ["10.0.0.5"]}, {"en0": True, "lo0": True})
    assert interfaces == [
        {"name": "en0", "kind": "other", "up": True, "addresses": ["10.0.0.5"]},
        {"name": "lo0", "kind": "loopback", "up": True, "addresses": []},
    ]


def test_bluetooth_radio_from_class_bluetooth(tree: TreeWriter, tmp_path: Path) -> None:
    assert has_bluetooth(tmp_path) is False
    root = tree({"class/bluetooth/hci0": ("->", "devices/platform/soc/serial/hci0")})
    assert has_bluetooth(root) is True


def test_network_flags_say_present_not_connected(tree: TreeWriter) -> None:
    root = tree({**iface("lo", 772, device=False), **iface("wlan0", 1, flags="0x1002",
                                                           extra={f"{NET}/wlan0/wireless": {}})})
    net = network_profile(read_interfaces(root, {}, {}), bluetooth_radio=True)
    assert (net["ethernet"], net["wifi"], net["bluetooth"]) == (False, True, True)
    assert [i["up"] for i in net["interfaces"]] == [True, False]


def test_bluetooth_pan_interface_counts_without_radio_dir(tree: TreeWriter) -> None:
    root = tree(iface("bnep0", 1, extra={f"{NET}/bnep0/uevent": "DEVTYPE=bluetooth\n"}))
    net = network_profile(read_interfaces(root, {}, {}), bluetooth_radio=False)
    assert (net["ethernet"], net["wifi"], net["bluetooth"]) == (False, False, True)
