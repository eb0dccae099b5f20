"""Fixtures for the integration tests: clusters of real peer processes.

- ``cluster``: a `mesh_harness.Cluster` on loopback addresses 127.0.10.1-249
  (never 127.0.0.x, which the manual lab uses); every peer it started is
  killed at teardown, pass or fail.
- ``netns_lab`` (factory): a `NetnsLab` plus a `NetnsCluster` on it; skipped
  unless the machine can build one, and a failure instead of a skip when
  ``NANOMESH_REQUIRE_NETNS=1`` (as in tests/test_netns_harness.py).

When a test fails, the tail of every peer's log is attached to its report.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import pytest
from mesh_harness import AddressPool, Cluster, NetnsCluster, session_key_file


class HasLogs(Protocol):
    def log_tails(self) -> str: ...


_CLUSTERS = pytest.StashKey[list[HasLogs]]()


def _register(request: pytest.FixtureRequest, cluster: HasLogs) -> None:
    request.node.stash.setdefault(_CLUSTERS, []).append(cluster)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Iterator[None]:
    report = yield
    if report.failed:
        for cluster in item.stash.get(_CLUSTERS, []):
            report.sections.append((f"peer logs ({report.when})", cluster.log_tails()))
    return report


@pytest.fixture
def attach_logs(request: pytest.FixtureRequest) -> Callable[[HasLogs], None]:
    """``attach_logs(obj)``: on failure, add ``obj.log_tails()`` to the report."""
    return lambda obj: _register(request, obj)


@pytest.fixture(autouse=True)
def cluster_key_for_clients(monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every peer the harness starts holds the session's key by default; the
    clients an integration test runs (`nanomesh call`, `nanomesh.sdk.client`)
    find it in ``$NANOMESH_KEY_FILE``, for this test only (the unit tests of
    other folders run keyless clients)."""
    key = session_key_file()
    monkeypatch.setenv("NANOMESH_KEY_FILE", str(key))
    return key


@pytest.fixture(scope="session")
def address_pool() -> AddressPool:
    return AddressPool()


@pytest.fixture
def cluster(request: pytest.FixtureRequest, tmp_path: Path, address_pool: AddressPool
            ) -> Iterator[Cluster]:
    c = Cluster(tmp_path, address_pool)
    _register(request, c)
    try:
        yield c
    finally:
        c.close()


def require_netns() -> None:
    from nanomesh.testing.netns import netns_available

    ok, reason = netns_available()
    if ok:
        return
    if os.environ.get("NANOMESH_REQUIRE_NETNS") == "1":
        pytest.fail(f"NANOMESH_REQUIRE_NETNS=1 but the netns lab is unavailable: {reason}")
    pytest.skip(reason)


@pytest.fixture
def netns_cluster(request: pytest.FixtureRequest, tmp_path: Path
                  ) -> Iterator[Callable[[int], NetnsCluster]]:
    """Factory: ``netns_cluster(n)`` builds an n-host lab with a cluster on it."""
    require_netns()
    from nanomesh.testing.netns import NetnsLab

    labs: list[NetnsLab] = []
    clusters: list[NetnsCluster] = []

    def make(n: int) -> NetnsCluster:
        lab = NetnsLab(n)
        labs.append(lab)
        c = NetnsCluster(tmp_path, lab)
        clusters.append(c)
        _register(request, c)
        return c

    try:
        yield make
    finally:
        for c in clusters:
            c.close()
        for lab in labs:
            lab.close()
