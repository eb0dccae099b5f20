"""A running lab as clients see it: ``lab.json`` in the lab directory
(`nanomesh.config.default_lab_dir`), and which peer API a client asks when
nobody names one.

`nanomesh lab` (`nanomesh.cli.lab`) writes the file; the CLI and
`nanomesh.sdk.client.connect` both find their peer with `default_peer_api`,
so a script using the SDK talks to the same mesh as the ``nanomesh``
commands typed beside it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from nanomesh.config import DEFAULT_API_PORT, default_lab_dir
from nanomesh.errors import NanomeshError

STATE_FILE = "lab.json"
DEFAULT_PEER_API = f"127.0.0.1:{DEFAULT_API_PORT}"
"""The peer API asked when neither the caller, the environment nor a running
lab names one: a peer on this machine with the default ports."""


class LabError(NanomeshError):
    pass


@dataclass
class LabPeer:
    name: str
    pid: int
    ip: str
    gossip_port: int
    api_port: int
    log: str
    config: str | None = None
    """The peer config file it runs with (``lab add --config``), kept so
    ``lab start`` brings it back as the same device."""

    @property
    def api(self) -> str:
        return f"{self.ip}:{self.api_port}"


def load_state(lab_dir: Path) -> list[LabPeer]:
    """The lab's peers as ``lab.json`` lists them ([] without a lab)."""
    path = lab_dir / STATE_FILE
    try:
        raw = json.loads(path.read_text())
        return [LabPeer(**p) for p in raw["peers"]]
    except FileNotFoundError:
        return []
    except (ValueError, KeyError, TypeError) as exc:
        raise LabError(f"{path} is damaged ({exc}); remove it and stop stray peers "
                       "with `pkill -f 'nanomesh peer run'`") from None


def alive(pid: int) -> bool:
    """Is `pid` a running nanomesh peer? Checks the command line, so a pid
    reused by another program after a reboot is never signalled, and treats
    a zombie (exited, not yet reaped) as gone."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rpartition(")")[2].split()[0]
    return state != "Z" and b"nanomesh" in cmdline and b"peer" in cmdline


def default_peer_api() -> str:
    """``IP:PORT`` of the peer API to ask when the caller names none:
    ``$NANOMESH_PEER_API`` (set for every instance, naming its own peer),
    else ``$NANOMESH_PEER``, else the first alive peer of a running lab
    (`nanomesh.config.default_lab_dir`), else `DEFAULT_PEER_API`. LabError
    if the lab's ``lab.json`` is damaged (rather than asking another peer
    than the lab's without a word)."""
    env = os.environ.get("NANOMESH_PEER_API") or os.environ.get("NANOMESH_PEER")
    if env:
        return env
    for p in load_state(default_lab_dir()):
        if alive(p.pid):
            return p.api
    return DEFAULT_PEER_API
