"""How every harness starts a peer daemon: one `peer run` argument list and
one check that an address is free for a peer.

`nanomesh lab`, the integration tests (``tests/integration/mesh_harness.py``)
and the experiments (``experiments/_meshlib.py`` and the scripts on it) all
start real ``nanomesh peer run`` processes. Each used to build the argument
list and probe the ports itself, and the copies drifted (one probed the Raft
port, the others did not, so a stray Raft listener made a peer fail to start
with a confusing log instead of the harness naming the busy address). They
now all start peers through `nanomesh.testing.cluster.PeerProcess`, which
uses both.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from nanomesh.config import DEFAULT_API_PORT, DEFAULT_GOSSIP_PORT, DEFAULT_RAFT_PORT

PEER_PORTS: tuple[tuple[socket.SocketKind, int], ...] = (
    (socket.SOCK_DGRAM, DEFAULT_GOSSIP_PORT),   # gossip datagrams
    (socket.SOCK_STREAM, DEFAULT_GOSSIP_PORT),  # gossip streams (push-pull, TCP ping)
    (socket.SOCK_STREAM, DEFAULT_API_PORT),     # the HTTP API
    (socket.SOCK_STREAM, DEFAULT_RAFT_PORT),    # Raft, when the peer becomes a voter
)
"""What a peer on the default ports binds on its address."""


def peer_argv(*, name: str, bind: str, data_dir: Path | str, preset: str | None = None,
              join: Iterable[str] = (), key_file: Path | str | None = None,
              log_level: str | None = None, extra: Sequence[str] = (),
              python: str = sys.executable) -> list[str]:
    """The command line of one peer daemon (``python -m nanomesh peer run``);
    options left at None are left to the daemon's defaults."""
    argv = [python, "-m", "nanomesh", "peer", "run", "--name", name, "--bind", bind,
            "--data-dir", str(data_dir)]
    if preset is not None:
        argv += ["--gossip-preset", preset]
    if log_level is not None:
        argv += ["--log-level", log_level]
    for seed in join:
        argv += ["--join", seed]
    if key_file is not None:
        argv += ["--key-file", str(key_file)]
    return argv + list(extra)


def ports_free(ip: str, ports: Iterable[tuple[socket.SocketKind, int]] = PEER_PORTS) -> bool:
    """Whether a peer could bind every port it needs on `ip` now. A probe,
    not a reservation: a harness that runs beside others reserves the address
    too (the integration tests lock a file per address)."""
    for kind, port in ports:
        s = socket.socket(socket.AF_INET, kind)
        try:
            if kind == socket.SOCK_STREAM:  # as trio's listeners do
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((ip, port))
        except OSError:
            return False
        finally:
            s.close()
    return True
