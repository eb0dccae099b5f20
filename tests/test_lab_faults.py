"""The loopback lab's network faults (`nanomesh.cli.labfaults`), pure part:
which sides, how much loss, and the nft script that says exactly that."""

from __future__ import annotations

import pytest

from nanomesh.cli.labfaults import FaultError, Faults, fault_rules, parse_groups, parse_loss

NAMES = ["peer-1", "peer-2", "peer-3", "peer-4"]
IPS = {n: f"127.0.0.{i + 2}" for i, n in enumerate(NAMES)}


@pytest.mark.parametrize(("specs", "groups"), [
    (["peer-1,peer-2", "peer-3,peer-4"], [["peer-1", "peer-2"], ["peer-3", "peer-4"]]),
    (["peer-1,peer-2|peer-3"], [["peer-1", "peer-2"], ["peer-3"], ["peer-4"]]),
    (["peer-3"], [["peer-3"], ["peer-1", "peer-2", "peer-4"]]),  # the rest is a side
])
def test_sides(specs: list[str], groups: list[list[str]]) -> None:
    assert parse_groups(specs, NAMES) == groups


@pytest.mark.parametrize(("specs", "error"), [
    (["peer-9"], "not in the lab: peer-9"),
    (["peer-1,peer-2", "peer-2"], "named in two groups"),
    (["peer-1,peer-2,peer-3,peer-4"], "at least two sides"),
])
def test_bad_sides_are_refused(specs: list[str], error: str) -> None:
    with pytest.raises(FaultError, match=error):
        parse_groups(specs, NAMES)


@pytest.mark.parametrize(("text", "value"), [("10%", 0.1), ("0.25", 0.25), ("0", 0.0)])
def test_loss(text: str, value: float) -> None:
    assert parse_loss(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["100%", "-1%", "ten", "1.5"])
def test_bad_loss_is_refused(text: str) -> None:
    with pytest.raises(FaultError):
        parse_loss(text)


def test_a_partition_drops_both_directions_between_sides_only() -> None:
    script = fault_rules(Faults(groups=[["peer-1"], ["peer-2", "peer-3"]]), IPS)
    drops = [line.strip() for line in script.splitlines() if line.strip().endswith("drop")]
    assert drops == [
        "ip saddr { 127.0.0.2 } ip daddr { 127.0.0.3, 127.0.0.4 } drop",
        "ip saddr { 127.0.0.3, 127.0.0.4 } ip daddr { 127.0.0.2 } drop",
    ]
    assert script.startswith("table inet nanomesh_lab {}\ndelete table inet nanomesh_lab\n")


def test_loss_is_between_lab_peers_only_and_removed_peers_drop_out() -> None:
    ips = {n: ip for n, ip in IPS.items() if n != "peer-4"}  # peer-4 left the lab
    script = fault_rules(Faults(groups=[["peer-4"], ["peer-1"]], loss=0.1), ips)
    drops = [line.strip() for line in script.splitlines() if line.strip().endswith("drop")]
    assert drops == ["ip saddr { 127.0.0.2, 127.0.0.3, 127.0.0.4 } ip daddr "
                     "{ 127.0.0.2, 127.0.0.3, 127.0.0.4 } numgen random mod 1000 < 100 drop"]
