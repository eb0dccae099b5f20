"""nanomesh.testing.peerproc: the one `peer run` command line and port probe
that the lab, the integration tests and the experiments share."""

from __future__ import annotations

import socket
import sys

from nanomesh.testing.peerproc import DEFAULT_RAFT_PORT, peer_argv, ports_free


def test_peer_argv_has_what_was_asked_and_nothing_else() -> None:
    argv = peer_argv(name="peer-2", bind="127.0.0.3", data_dir="/d/peer-2", preset="lan",
                     join=["127.0.0.2:7946"], key_file="/k", extra=["--no-ui"])
    assert argv == [sys.executable, "-m", "nanomesh", "peer", "run", "--name", "peer-2",
                    "--bind", "127.0.0.3", "--data-dir", "/d/peer-2", "--gossip-preset", "lan",
                    "--join", "127.0.0.2:7946", "--key-file", "/k", "--no-ui"]
    bare = peer_argv(name="a", bind="127.0.0.9", data_dir="/d", python="py")
    assert bare == ["py", "-m", "nanomesh", "peer", "run", "--name", "a", "--bind", "127.0.0.9",
                    "--data-dir", "/d"]  # the daemon's defaults for the rest


def test_an_address_whose_raft_port_is_taken_is_not_free() -> None:
    ip = "127.0.9.201"
    assert ports_free(ip)
    with socket.socket() as busy:
        busy.bind((ip, DEFAULT_RAFT_PORT))
        busy.listen()
        assert not ports_free(ip)
    assert ports_free(ip)
