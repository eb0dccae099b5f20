"""The mesh harness's network-namespace cluster: one peer daemon per host of a
`nanomesh.testing.netns.NetnsLab`, on the host's eth0 address.

The root namespace has no route into the lab, so a peer's HTTP API is read
through a small long-lived python process inside its host (`NsAgent`).
Everything else (peer processes, waits, views, closing) is the loopback
harness's (`nanomesh.testing.cluster`).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from nanomesh.testing.cluster import API_TIMEOUT, PY, TIMEOUT, Cluster, PeerProcess, Starter
from nanomesh.transport.apiclient import ApiError

AGENT = r"""
import json, sys
from nanomesh.transport.apiclient import ApiError, get_json
print("ready", flush=True)
for line in sys.stdin:
    api, path, timeout = line.split()
    try:
        out = {"ok": get_json(api, path, timeout=float(timeout))}
    except ApiError as exc:
        out = {"error": str(exc)}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
"""
AGENT_REPLY_MARGIN = 7.0
"""Seconds an agent's answer may take beyond its GET's own timeout (the
agent is a python process on a loaded machine)."""


class NsAgent:
    """A python process inside one lab host that performs API GETs for us (the
    root namespace has no route into the lab). One request at a time."""

    def __init__(self, lab: Any, i: int) -> None:
        self.proc: subprocess.Popen[bytes] = lab.popen(
            i, [PY, "-c", AGENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, bufsize=0)
        self._buf = b""
        self._lock = threading.Lock()
        if self._readline(API_TIMEOUT) != b"ready":
            raise RuntimeError(f"API agent in lab host {i} did not start")

    def _readline(self, timeout: float) -> bytes:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout + AGENT_REPLY_MARGIN
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ApiError("API agent did not answer in time")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise ApiError("API agent exited")
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def get(self, api: str, path: str, timeout: float = API_TIMEOUT) -> Any:
        assert self.proc.stdin is not None
        with self._lock:
            try:
                self.proc.stdin.write(f"{api} {path} {timeout:g}\n".encode())
            except (BrokenPipeError, OSError) as exc:
                raise ApiError(f"API agent gone: {exc}") from None
            reply = json.loads(self._readline(timeout))
        if "error" in reply:
            raise ApiError(reply["error"])
        return reply["ok"]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)


class NetnsCluster(Cluster):
    """One peer per host of a `nanomesh.testing.netns.NetnsLab`, on the
    host's eth0 address; the API is reached through one `NsAgent` per host,
    started on the first GET into that host."""

    def __init__(self, root: Path, lab: Any, *, key_file: Path | None = None,
                 cwd: Path | None = None) -> None:
        super().__init__(root, key_file=key_file)
        self.lab = lab
        self.cwd = cwd
        self._agents: dict[int, NsAgent] = {}

    def agent(self, i: int) -> NsAgent:
        if i not in self._agents:
            self._agents[i] = NsAgent(self.lab, i)
        return self._agents[i]

    @property
    def agents(self) -> list[NsAgent]:
        """One agent per host (all started)."""
        return [self.agent(i) for i in range(self.lab.n)]

    def host_starter(self, i: int) -> Starter:
        """Starts a peer inside host i, in its own session."""
        lab, cwd = self.lab, self.cwd

        def start(argv: list[str], log: IO[bytes]) -> subprocess.Popen[bytes]:
            proc: subprocess.Popen[bytes] = lab.popen(
                i, argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=cwd,
                start_new_session=True)
            return proc
        return start

    def add_host(self, i: int, *, key_file: Path | None = None, join: Sequence[str] = (),
                 preset: str | None = "lan", name: str | None = None,
                 log_level: str | None = None, extra_args: Sequence[str] = (),
                 start: bool = True) -> PeerProcess:
        """The peer of host i (named ``host-i`` unless `name` says otherwise)."""
        # A fresh namespace has nothing bound, and the root namespace cannot
        # probe its addresses: no port check.
        peer = self.new_peer(name or f"host-{i}", self.lab.address(i), key_file=key_file,
                               join=join, preset=preset, log_level=log_level,
                               extra_args=extra_args, starter=self.host_starter(i),
                               getter=lambda api, path, timeout: self.agent(i).get(
                                   api, path, timeout),
                               check_ports=False)
        return peer.start() if start else peer

    def start_mesh(self, *, key_file: Path | None = None, preset: str | None = "lan",
                   names: Sequence[str] | None = None, log_level: str | None = None,
                   extra_args: Sequence[str] = (), timeout: float = TIMEOUT
                   ) -> list[PeerProcess]:
        """One peer per host, host 0 the seed (started first), all joined
        through it; returns once they all see each other alive."""
        seed = self.add_host(0, key_file=key_file, preset=preset, log_level=log_level,
                             extra_args=extra_args, name=names[0] if names else None)
        self.wait_api([seed])
        others = [self.add_host(i, key_file=key_file, preset=preset, join=[seed.gossip],
                                log_level=log_level, extra_args=extra_args,
                                name=names[i] if names else None)
                  for i in range(1, self.lab.n)]
        peers = [seed, *others]
        self.wait_converged(peers, timeout=timeout)
        return peers

    def close(self) -> None:
        try:
            super().close()
        finally:
            for a in self._agents.values():
                a.close()
