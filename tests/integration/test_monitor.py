"""``nanomesh monitor`` against a real peer (issue 13): it prints the events
the peer holds and the new ones as they happen, and when the peer restarts
it says so and goes on following the new process, without printing an
event twice."""

from __future__ import annotations

import os
import re
import subprocess
import threading
from pathlib import Path

import pytest
from mesh_harness import PY, Cluster
from service_helpers import REPO

pytestmark = pytest.mark.integration

LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z  [a-z]+\.[a-z]+ +\S+: .+")
"""One event line: UTC time, type, subject, message."""


class Lines:
    """A process's output lines, read by a thread as they come."""

    def __init__(self, stream: object) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.lines.append(line.rstrip("\n"))

    def text(self) -> str:
        return "\n".join(self.lines)


def test_monitor_follows_a_peer_across_its_restart(cluster: Cluster, tmp_path: Path) -> None:
    [founder] = cluster.start_mesh(1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NANOMESH_")}
    proc = subprocess.Popen([PY, "-m", "nanomesh", "monitor", "--peer", founder.api],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, env=env, stdin=subprocess.DEVNULL)
    try:
        out, err = Lines(proc.stdout), Lines(proc.stderr)
        cluster.wait(lambda: any("leader.elected" in line for line in out.lines),
                     what="the founder's election printed", describe=out.text)
        before = len(out.lines)
        cluster.add("peer-2", join=[founder.gossip])
        cluster.wait(lambda: any("member.joined" in line and "peer-2" in line
                                 for line in out.lines[before:]),
                     what="peer-2's join printed live", describe=out.text)
        assert all(LINE.match(line) for line in out.lines), out.text()
        founder.terminate()
        founder.start()
        cluster.wait(lambda: "the peer restarted" in err.text(),
                     what="the restart reported on stderr", describe=lambda: err.text())
        assert "reconnected to" in err.text()
        # The new life's events follow: the founder rejoins peer-2.
        cluster.wait(lambda: sum("member.joined" in line and "peer-2" in line
                                 for line in out.lines) >= 2,
                     what="the new process's events printed", describe=out.text)
        assert proc.poll() is None, err.text()
        assert "Traceback" not in err.text()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
