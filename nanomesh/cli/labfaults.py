"""Network faults in a running loopback lab: partitions and packet loss.

The lab's peers share the loopback interface, one address each, so faults
are nftables rules in the root namespace that match lab addresses on both
ends: ``inet nanomesh_lab``, an input-hook chain. Packets from or to any
other address (the CLI asking a peer from 127.0.0.1) pass untouched, so
every peer stays reachable to the operator while it is cut off from the
others. Needs root and nft, like the namespace labs of the tests.

The wanted faults live in ``LAB_DIR/faults.json`` and the whole table is
rewritten from them in one ``nft -f`` transaction at every change; `heal`,
``loss 0`` and `lab down` remove what they undo. `fault_rules` (pure) turns
faults into the nft script.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nanomesh.errors import NanomeshError

TABLE = "nanomesh_lab"
FAULTS_FILE = "faults.json"


class FaultError(NanomeshError):
    pass


@dataclass
class Faults:
    groups: list[list[str]] = field(default_factory=list)
    """Peer names per side of a partition (empty: no partition)."""
    loss: float = 0.0
    """Probability (0..1) that a packet between two lab peers is dropped."""


def parse_groups(specs: Sequence[str], names: Sequence[str]) -> list[list[str]]:
    """``["peer-1,peer-2", "peer-3"]`` or ``["peer-1,peer-2|peer-3"]`` into
    groups; the lab's peers not named form one more group ("the rest"), so
    ``partition peer-3`` cuts peer-3 off from everyone else."""
    groups = [[n.strip() for n in side.split(",") if n.strip()]
              for spec in specs for side in spec.split("|")]
    groups = [g for g in groups if g]
    named = [n for g in groups for n in g]
    unknown = sorted(set(named) - set(names))
    if unknown:
        raise FaultError(f"not in the lab: {', '.join(unknown)} (its peers: {', '.join(names)})")
    if len(named) != len(set(named)):
        raise FaultError("a peer is named in two groups")
    rest = [n for n in names if n not in named]
    if rest:
        groups.append(rest)
    if len(groups) < 2:
        raise FaultError("a partition needs at least two sides")
    return groups


def parse_loss(text: str) -> float:
    """``10%`` or ``0.1`` into 0.1; 0 removes the loss."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise FaultError(f"loss {text!r}: give a percentage such as 10% (or 0.1)") from None
    if not 0.0 <= value < 1.0:
        raise FaultError(f"loss {text!r} must be from 0% to below 100%")
    return value


def fault_rules(faults: Faults, ips: dict[str, str]) -> str:
    """The nft script that installs exactly `faults` (``ips``: name -> address)."""
    lines = [f"table inet {TABLE} {{}}", f"delete table inet {TABLE}",
             f"table inet {TABLE} {{",
             "  chain input {",
             "    type filter hook input priority -10; policy accept;"]
    sides = [[n for n in g if n in ips] for g in faults.groups]  # (removed peers drop out)
    sides = [g for g in sides if g]
    for i, side in enumerate(sides):
        for j, other in enumerate(sides):
            if i != j:
                lines.append(f"    ip saddr {_set(side, ips)} ip daddr {_set(other, ips)} drop")
    if faults.loss > 0:
        lab = list(ips)
        per_mille = round(faults.loss * 1000)
        lines.append(f"    ip saddr {_set(lab, ips)} ip daddr {_set(lab, ips)} "
                     f"numgen random mod 1000 < {per_mille} drop")
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def _set(names: Sequence[str], ips: dict[str, str]) -> str:
    return "{ " + ", ".join(ips[n] for n in names) + " }"


# ------------------------------------------------------------------ the shell


def load(lab_dir: Path) -> Faults:
    try:
        raw = json.loads((lab_dir / FAULTS_FILE).read_text())
        return Faults(groups=[list(g) for g in raw.get("groups", [])],
                      loss=float(raw.get("loss", 0.0)))
    except FileNotFoundError:
        return Faults()
    except (ValueError, TypeError, AttributeError) as exc:
        raise FaultError(f"{lab_dir / FAULTS_FILE} is damaged ({exc}); remove it and run "
                         "`nanomesh lab heal`") from None


def apply(lab_dir: Path, faults: Faults, ips: dict[str, str]) -> None:
    """Install `faults` (replacing what was there) and remember them."""
    if not faults.groups and faults.loss == 0:
        clear(lab_dir)
        return
    _nft(fault_rules(faults, ips))
    tmp = lab_dir / (FAULTS_FILE + ".tmp")
    tmp.write_text(json.dumps(asdict(faults)) + "\n")
    tmp.replace(lab_dir / FAULTS_FILE)


def clear(lab_dir: Path) -> None:
    """Remove every fault (nothing to do if there is none)."""
    if (lab_dir / FAULTS_FILE).exists() or _table_exists():
        _nft(f"table inet {TABLE} {{}}\ndelete table inet {TABLE}\n")
    (lab_dir / FAULTS_FILE).unlink(missing_ok=True)


def _table_exists() -> bool:
    nft = shutil.which("nft")
    if nft is None or os.geteuid() != 0:
        return False
    return subprocess.run([nft, "list", "table", "inet", TABLE],
                          capture_output=True).returncode == 0


def _nft(script: str) -> None:
    nft = shutil.which("nft")
    if os.geteuid() != 0 or nft is None:
        raise FaultError("partitions and loss in a lab need root and nftables "
                         "(sudo; apt-get install nftables)")
    done = subprocess.run([nft, "-f", "-"], input=script, text=True, capture_output=True)
    if done.returncode != 0:
        raise FaultError(f"nft refused the lab's rules: {done.stderr.strip()}")
