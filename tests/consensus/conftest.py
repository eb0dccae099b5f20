"""Fixtures for the consensus tests.

- ``ips(n)``: n fresh loopback addresses from 127.0.30.10-199 (this suite's
  range; the failover experiment uses 127.0.30.200-249), never reused within
  a session, so no test meets another's lingering sockets;
- ``cluster``: a `nanomesh.consensus.harness.RaftCluster` of real node
  processes under ``tmp_path``; all are killed at teardown, pass or fail, and
  a failing test's report carries the tail of every node's log.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from nanomesh.consensus.harness import RaftCluster, open_cluster

_IPS = itertools.cycle(range(10, 200))
_LOGS = pytest.StashKey[Path]()
LOG_TAIL_LINES = 25


@pytest.fixture
def ips() -> Callable[[int], list[str]]:
    return lambda n: [f"127.0.30.{next(_IPS)}" for _ in range(n)]


@pytest.fixture
async def cluster(request: pytest.FixtureRequest, tmp_path: Path
                  ) -> AsyncIterator[RaftCluster]:
    request.node.stash[_LOGS] = tmp_path
    async with open_cluster(tmp_path) as c:
        yield c


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Iterator[None]:
    report = yield
    workdir = item.stash.get(_LOGS, None)
    if report.failed and workdir is not None:
        for log in sorted(workdir.glob("*.log")):
            tail = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
            report.sections.append((f"raft log {log.name} ({report.when})", "\n".join(tail)))
    return report
