"""The reconcile loop over a real ProcessDriver: plan in, processes out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from runtime_helpers import BYE, PY, READY, READY_THEN_WAIT_FOR_TERM, wait_for_text, wait_until

from nanomesh.runtime import ProcessDriver, Reconciler, log_path, open_process_driver
from nanomesh.runtime.manifest import service_document
from nanomesh.runtime.reconcile_core import BackoffPolicy, spec_digest

ME = "pi-a"
FAST = BackoffPolicy(initial=0.05, factor=2.0, maximum=0.2, reset_after=60.0)


def service(name: str, code: str = READY_THEN_WAIT_FOR_TERM, replicas: int = 2,
            **env: str) -> dict[str, Any]:
    """The replicated service document, built the way a manifest is."""
    return service_document({"name": name, "replicas": replicas,
                             "run": {"command": [PY, "-c", code], "env": env}})


@asynccontextmanager
async def mesh_peer(tmp_path: Path) -> AsyncIterator[tuple[ProcessDriver, Reconciler]]:
    async with open_process_driver(stop_timeout=5.0) as driver:
        reconciler = Reconciler(ME, driver, tmp_path, backoff=FAST)
        async with trio.open_nursery() as nursery:
            await nursery.start(reconciler.run)
            yield driver, reconciler
            nursery.cancel_scope.cancel()


def states(driver: ProcessDriver) -> dict[str, str]:
    return {iid: s.state for iid, s in driver.status().items()}


async def test_follows_the_plan_spec_changes_and_deletions(tmp_path: Path) -> None:
    svc = service("svc", V="1")
    async with mesh_peer(tmp_path) as (driver, reconciler):
        reconciler.set_desired({"svc/0": ME, "svc/1": ME, "svc/2": "pi-b"}, {"svc": svc})
        await wait_until(lambda: states(driver) == {"svc/0": "running", "svc/1": "running"},
                         "my two instances running")
        first_pids = {iid: s.pid for iid, s in driver.status().items()}
        for i in (0, 1):
            await wait_for_text(log_path(tmp_path, "svc", i), READY)

        # a spec change restarts both (stop, then start with the new digest)
        svc2 = service("svc", V="2")
        reconciler.set_desired({"svc/0": ME, "svc/1": ME}, {"svc": svc2})
        await wait_until(lambda: all(
            s.state == "running" and s.spec_digest == spec_digest(svc2)
            for s in driver.status().values()), "both restarted on the new spec")
        assert all(driver.status()[iid].pid != pid for iid, pid in first_pids.items())
        assert BYE in log_path(tmp_path, "svc", 0).read_text()  # the old run was stopped
        await wait_for_text(log_path(tmp_path, "svc", 1), "\n" + READY + "\n" + BYE)
        await wait_until(lambda: log_path(tmp_path, "svc", 1).read_text().count(READY) == 2,
                         "the new svc/1 ready")
        assert all(s.restarts == 0 for s in driver.status().values())

        # scaling the service does not restart what runs
        pids = {iid: s.pid for iid, s in driver.status().items()}
        svc2 = service("svc", replicas=3, V="2")
        reconciler.set_desired({"svc/0": ME, "svc/1": ME, "svc/2": "pi-b"}, {"svc": svc2})
        rounds = reconciler.rounds
        await wait_until(lambda: reconciler.rounds > rounds, "a reconcile round")
        assert {iid: s.pid for iid, s in driver.status().items()} == pids

        # reassigned elsewhere: stopped, then forgotten
        reconciler.set_desired({"svc/0": ME, "svc/1": "pi-b"}, {"svc": svc2})
        await wait_until(lambda: states(driver) == {"svc/0": "running"}, "svc/1 gone from here")

        # service deleted: stopped, then forgotten
        reconciler.set_desired({"svc/0": ME}, {})
        await wait_until(lambda: states(driver) == {}, "svc/0 stopped and forgotten")
    assert BYE in log_path(tmp_path, "svc", 1).read_text()


async def test_a_crashing_instance_is_restarted_with_backoff(tmp_path: Path) -> None:
    crash = service("crash", "import sys; sys.exit(2)")
    async with mesh_peer(tmp_path) as (driver, reconciler):
        reconciler.set_desired({"crash/0": ME}, {"crash": crash})
        await wait_until(lambda: driver.status().get("crash/0") is not None
                         and driver.status()["crash/0"].restarts >= 3, "three restarts")
        status = driver.status()["crash/0"]
        assert status.exit_code in (None, 2)
        reconciler.set_desired({}, {})
        await wait_until(lambda: "crash/0" not in driver.status(), "forgotten once unwanted")
    text = log_path(tmp_path, "crash", 0).read_text()
    assert text.count("failed: exited with code 2") >= 3


async def test_an_invalid_run_section_is_reported_and_retried(tmp_path: Path) -> None:
    bad = {"name": "bad", "run": {"command": "python3 -m bad"}}
    async with mesh_peer(tmp_path) as (driver, reconciler):
        reconciler.set_desired({"bad/0": ME}, {"bad": bad})
        await wait_until(lambda: driver.status().get("bad/0") is not None
                         and driver.status()["bad/0"].restarts >= 2, "retried with back-off")
        status = driver.status()["bad/0"]
        assert status.state == "failed"  # record_failure never leaves it "starting"
        assert "invalid spec" in status.message and "run.command" in status.message

        # fixing the spec starts it at once (new digest: no back-off)
        good = service("bad")
        reconciler.set_desired({"bad/0": ME}, {"bad": good})
        await wait_until(lambda: states(driver) == {"bad/0": "running"}, "the fixed spec runs")
        await wait_for_text(log_path(tmp_path, "bad", 0), READY)


async def test_bundles_are_fetched_and_idle_services_wait(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    fetched: list[str] = []

    async def fetch(sha: str) -> Path:
        fetched.append(sha)
        return bundle

    code = "import os, time; print('cwd', os.getcwd(), flush=True); time.sleep(60)"
    doc = service_document({"name": "svc", "replicas": 1, "mode": "idle",
                            "run": {"command": [PY, "-c", code]}})
    doc["bundle"] = {"sha256": "cd" * 32}
    async with open_process_driver(stop_timeout=5.0) as driver:
        reconciler = Reconciler(ME, driver, tmp_path, fetch=fetch, backoff=FAST,
                                host_ip="127.0.0.1", peer_api="127.0.0.1:7000")
        async with trio.open_nursery() as nursery:
            await nursery.start(reconciler.run)
            reconciler.set_desired({"svc/0": ME}, {"svc": doc})
            await wait_until(lambda: states(driver) == {"svc/0": "idle"}, "prepared, idle")
            assert fetched == ["cd" * 32]
            # activate: started from the fetched bundle
            reconciler.set_desired({"svc/0": ME}, {"svc": {**doc, "mode": "active"}})
            await wait_until(lambda: states(driver) == {"svc/0": "running"}, "activated")
            await wait_for_text(log_path(tmp_path, "svc", 0), f"cwd {bundle}")
            # idle again: stopped, then recorded idle
            reconciler.set_desired({"svc/0": ME}, {"svc": doc})
            await wait_until(lambda: states(driver) == {"svc/0": "idle"}, "idle again")
            # unassigned: an idle record is forgotten
            reconciler.set_desired({}, {"svc": doc})
            await wait_until(lambda: states(driver) == {}, "forgotten")
            nursery.cancel_scope.cancel()


async def test_a_moved_instance_runs_until_its_new_copy_is_ready(tmp_path: Path) -> None:
    """Make before break: svc/1, reassigned to pi-b, keeps running here
    while gossip (`ready_elsewhere`) says pi-b's copy is not ready, and
    stops once it is; an instance dropped from the plan stops at once."""
    ready: set[tuple[str, str]] = set()
    svc = service("svc")
    async with open_process_driver(stop_timeout=5.0) as driver:
        reconciler = Reconciler(ME, driver, tmp_path, backoff=FAST,
                                ready_elsewhere=lambda iid, peer: (iid, peer) in ready)
        async with trio.open_nursery() as nursery:
            await nursery.start(reconciler.run)
            reconciler.set_desired({"svc/0": ME, "svc/1": ME}, {"svc": svc})
            await wait_until(lambda: states(driver) == {"svc/0": "running", "svc/1": "running"},
                             "both running here")
            pid = driver.status()["svc/1"].pid
            reconciler.set_desired({"svc/0": ME, "svc/1": "pi-b"}, {"svc": svc})
            rounds = reconciler.rounds
            await wait_until(lambda: reconciler.rounds >= rounds + 4,
                             "a few hand-over polls (HANDOVER_POLL)")
            assert driver.status()["svc/1"].state == "running"
            assert driver.status()["svc/1"].pid == pid

            ready.add(("svc/1", "pi-b"))
            await wait_until(lambda: states(driver) == {"svc/0": "running"},
                             "svc/1 handed over, stopped and forgotten")
            assert BYE in log_path(tmp_path, "svc", 1).read_text()

            reconciler.set_desired({}, {"svc": {**svc, "replicas": 0}})
            await wait_until(lambda: states(driver) == {}, "svc/0 scaled away at once")
            nursery.cancel_scope.cancel()
