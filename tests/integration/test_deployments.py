"""Updates of a running service on real peer daemons (issue 8, items 10 and 13).

- Item 10: redeploying a service keeps the state it saved through the SDK's
  ``save_state`` (kept in Raft); only ``deploy --reset-state`` drops it.
- Item 13: an update whose instances crash or fail their health check is
  rolled back to the previous version by the Raft leader (Nomad's
  auto-revert); ``nanomesh deploy`` says so and exits 1, ``nanomesh
  services`` / ``placement`` show the reverted status and its reason. A
  first deploy that fails has nothing to revert to and just fails.

One module-wide mesh of three peers (every peer a voter), each test with its
own service names. Waits are bounded and generous; nothing asserts speed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mesh_harness import AddressPool, Cluster, Peer
from service_helpers import cli, cli_ok, cli_retry, copy_service, instances, wait_instances
from test_control_plane import peer_of, read_token, read_token_when_ready, wait_agreed

from nanomesh.transport.apiclient import get_json

pytestmark = pytest.mark.integration

WAIT = 60.0
"""Bound for a deploy to settle (fetch, start, health checks, the healthy time)."""
FAST_UPDATE = """
[update]
min_healthy_time = 2.0
healthy_deadline = 60.0
"""
"""Shorter than the defaults so the tests settle sooner (the verdict rules
are the same; `tests/control/test_deployment_judge.py` covers the times)."""


class Mesh:
    """Three converged peers, all Raft voters, one shared cluster key."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.peers = cluster.start_mesh(3)  # the session key, which the CLI reads
        read_token_when_ready(cluster, self.peers[0])
        # The founder creates the file, then writes it: wait for the token.
        self.token = cluster.wait(lambda: read_token(self.peers[0]) or None,
                                  what="the management token")
        wait_agreed(cluster, self.peers, voters=3)

    def deployment(self, name: str, via: Peer | None = None) -> dict[str, Any]:
        dep: dict[str, Any] = (via or self.peers[0]).get("/v1/deployments")[name]
        return dep

    def service(self, name: str, via: Peer | None = None) -> dict[str, Any]:
        """The service document in full (the token shows its saved state)."""
        docs = {d["name"]: d for d in get_json((via or self.peers[0]).api, "/v1/services",
                                               token=self.token)}
        doc: dict[str, Any] = docs[name]
        return doc


@pytest.fixture(scope="module")
def shared_mesh(tmp_path_factory: pytest.TempPathFactory, address_pool: AddressPool
                ) -> Iterator[Mesh]:
    cluster = Cluster(tmp_path_factory.mktemp("deploy"), address_pool)
    try:
        yield Mesh(cluster)
    finally:
        cluster.close()


@pytest.fixture
def mesh(shared_mesh: Mesh, attach_logs: Callable[[Any], None]) -> Mesh:
    attach_logs(shared_mesh.cluster)
    shared_mesh.cluster.check_processes()
    return shared_mesh


def count(mesh: Mesh, name: str, by: int | None = None) -> int:
    """GET (or POST ``by``) the counter through ``nanomesh call``."""
    args = ["call", name, "count"] + (["--data", json.dumps({"by": by})] if by else [])
    reply: int = json.loads(cli_ok(*args, peer=mesh.peers[1]))["count"]
    return reply


def saved_count(mesh: Mesh, name: str, via: Peer | None = None) -> int | None:
    """The count in the state blob the service saved, as Raft holds it on
    ``via`` (peers[0] by default). A write is applied on the peer that took it
    before its reply; other peers may apply it a moment later, so a read right
    after a write goes ``via`` the peer that took it."""
    import base64
    blob = mesh.service(name, via=via).get("state")
    return json.loads(base64.b64decode(blob))["count"] if blob else None


def idle_then_activate(mesh: Mesh, name: str) -> None:
    """`nanomesh idle` and `activate`: the instance stops and starts again, and
    reads its state back from the mesh on its first request."""
    cli_retry(mesh.cluster, "idle", name, peer=mesh.peers[0], token=mesh.token)
    mesh.cluster.wait(lambda: all(i["state"] == "idle" for i in instances(mesh.peers[0], name))
                      or None, WAIT, what=f"{name} idle")
    cli_retry(mesh.cluster, "activate", name, peer=mesh.peers[0], token=mesh.token)
    wait_instances(mesh.cluster, mesh.peers, name, 1, timeout=WAIT)


# --------------------------------------------------------------------------- item 10


def test_redeploy_keeps_the_counters_state_and_reset_state_drops_it(
        mesh: Mesh, tmp_path: Path) -> None:
    """Issue 8 item 10, as reproduced on main: deploy services/counter, POST
    three times, deploy the same folder again, idle, activate: the count was
    0. Now it is 3; also after deploying a new version of it. Then `deploy
    --reset-state` drops it (and restarts the instance, which would else save
    its old count back): 0."""
    folder = copy_service("counter", tmp_path / "counter", {'name = "counter"': 'name = "keep"'})
    cli_retry(mesh.cluster, "deploy", str(folder), peer=mesh.peers[1], token=mesh.token)
    wait_instances(mesh.cluster, mesh.peers, "keep", 1, timeout=WAIT)
    for _ in range(3):
        count(mesh, "keep", by=1)
    mesh.cluster.wait(lambda: saved_count(mesh, "keep") == 3, WAIT, what="count 3 saved")

    out = cli_retry(mesh.cluster, "deploy", str(folder), peer=mesh.peers[2], token=mesh.token)
    assert "unchanged" in out, out
    idle_then_activate(mesh, "keep")
    assert count(mesh, "keep") == 3

    # a new version (its manifest changed: the instance restarts) keeps it too
    manifest = folder / "nanoservice.toml"
    manifest.write_text(manifest.read_text().replace('version = "0.1.0"', 'version = "0.2.0"'))
    out = cli_retry(mesh.cluster, "deploy", str(folder), peer=mesh.peers[0], token=mesh.token)
    assert "deployed keep" in out and "successful" in out, out
    assert mesh.service("keep")["version"] == "0.2.0"
    assert count(mesh, "keep") == 3

    out = cli_retry(mesh.cluster, "deploy", str(folder), "--reset-state", peer=mesh.peers[0],
                    token=mesh.token)
    assert "deployed keep" in out, out
    assert "state" not in mesh.service("keep")
    wait_instances(mesh.cluster, mesh.peers, "keep", 1, timeout=WAIT)
    mesh.cluster.wait(lambda: count(mesh, "keep") == 0, WAIT,
                      what="the restarted instance to count from 0")
    idle_then_activate(mesh, "keep")
    assert count(mesh, "keep") == 0
    cli_retry(mesh.cluster, "undeploy", "keep", peer=mesh.peers[0], token=mesh.token)


def test_reset_state_through_the_http_api_field(mesh: Mesh, tmp_path: Path) -> None:
    """``"reset_state": true`` beside the manifest's fields in POST
    /v1/services; a non-boolean is a 400 that changes nothing."""
    from nanomesh.runtime.manifest import load_manifest, manifest_from_document
    from nanomesh.transport.apiclient import ApiError, request_json

    folder = copy_service("counter", tmp_path / "c", {'name = "counter"': 'name = "api-reset"'})
    cli_retry(mesh.cluster, "deploy", str(folder), peer=mesh.peers[0], token=mesh.token)
    wait_instances(mesh.cluster, mesh.peers, "api-reset", 1, timeout=WAIT)
    count(mesh, "api-reset", by=5)
    mesh.cluster.wait(lambda: saved_count(mesh, "api-reset") == 5, WAIT, what="count saved")
    raw = manifest_from_document(mesh.service("api-reset"))
    raw.pop("state")
    with pytest.raises(ApiError, match="reset_state must be true or false"):
        request_json("POST", mesh.peers[1].api, "/v1/services", {**raw, "reset_state": "yes"},
                     mesh.token)
    assert saved_count(mesh, "api-reset") == 5
    reply = request_json("POST", mesh.peers[1].api, "/v1/services",
                         {**raw, "reset_state": True}, mesh.token)
    assert reply["changed"] and saved_count(mesh, "api-reset", via=mesh.peers[1]) is None
    assert load_manifest(folder)["name"] == "api-reset"
    cli_retry(mesh.cluster, "undeploy", "api-reset", peer=mesh.peers[0], token=mesh.token)


# --------------------------------------------------------------------------- item 13


HEALTHY_V1 = {'name = "echo"': 'name = "{name}"', r"replicas = .*": "replicas = 2",
              r"version = .*": 'version = "1.0"'}


def deploy_v1(mesh: Mesh, tmp_path: Path, name: str) -> Path:
    """services/echo as NAME version 1.0, deployed and judged successful."""
    folder = copy_service("echo", tmp_path / name,
                          {k: v.format(name=name) for k, v in HEALTHY_V1.items()},
                          append=FAST_UPDATE)
    out = cli_retry(mesh.cluster, "deploy", str(folder), peer=mesh.peers[0], token=mesh.token)
    assert "successful" in out, out
    return folder


def edit(folder: Path, old: str, new: str) -> None:
    manifest = folder / "nanoservice.toml"
    text = manifest.read_text()
    assert old in text, (old, text)
    manifest.write_text(text.replace(old, new))


def all_current(entries: list[dict[str, Any]]) -> bool:
    """Every instance runs the service's current (here: reverted-to) spec."""
    return all(e["current"] for e in entries)


def assert_rolled_back(mesh: Mesh, name: str, result: Any, why: str) -> None:
    """The deploy said it rolled back and failed; the mesh runs 1.0 again,
    every instance current and healthy; services and placement say why."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "rolled back to the previous version (1.0)" in result.stderr, result.stderr
    assert why in result.stderr, result.stderr
    for peer in mesh.peers:
        mesh.cluster.wait(lambda p=peer: mesh.service(name, p)["version"] == "1.0", WAIT,
                          what=f"{peer.name} to see version 1.0 again")
    wait_instances(mesh.cluster, mesh.peers, name, 2, timeout=WAIT, also=all_current)
    dep = mesh.deployment(name, mesh.peers[2])
    assert dep["status"] == "reverted" and why in dep["reason"], dep
    assert dep["reverted_from"] == "2.0"
    table = cli_ok("services", peer=mesh.peers[1])
    assert f"{name}: deployment {dep['id']} reverted (version 2.0 undone)" in table, table
    placement = cli_ok("placement", peer=mesh.peers[2])
    assert f"{name}: deployment {dep['id']} reverted: " in placement, placement
    assert "hi" in cli_ok("call", name, "echo/hi", peer=mesh.peers[1])


def test_update_that_crashes_is_rolled_back(mesh: Mesh, tmp_path: Path) -> None:
    """Deploy a healthy version, then one whose process exits at once: the
    leader reverts to 1.0, the instances run 1.0 again and are healthy, and
    the CLI and API report the revert with the reason (a crash loop)."""
    folder = deploy_v1(mesh, tmp_path, "crashy")
    edit(folder, 'version = "1.0"', 'version = "2.0"')
    edit(folder, 'command = ["python3", "-u", "echo.py"]',
         'command = ["python3", "-c", "raise SystemExit(3)"]')
    result = cli("deploy", str(folder), peer=mesh.peers[1], token=mesh.token)
    assert_rolled_back(mesh, "crashy", result, "restarted")
    cli_retry(mesh.cluster, "undeploy", "crashy", peer=mesh.peers[0], token=mesh.token)


def test_update_that_fails_its_health_check_is_rolled_back(mesh: Mesh, tmp_path: Path
                                                            ) -> None:
    """As above, with a version that runs but never passes its health check
    (an exec check that always fails): the runtime kills it as unhealthy,
    restart after restart, and the leader reverts."""
    folder = deploy_v1(mesh, tmp_path, "sick")
    edit(folder, 'version = "1.0"', 'version = "2.0"')
    edit(folder, 'check = "zmq"\npath = "health"\ninterval = 2.0\ntimeout = 1.0\nretries = 3',
         'check = "exec"\ncommand = ["false"]\ninterval = 0.3\ntimeout = 1.0\nretries = 2\n'
         'start_period = 0.5')
    result = cli("deploy", str(folder), peer=mesh.peers[2], token=mesh.token)
    assert_rolled_back(mesh, "sick", result, "restarted")
    cli_retry(mesh.cluster, "undeploy", "sick", peer=mesh.peers[0], token=mesh.token)


def test_first_deploy_that_fails_just_reports_failure(mesh: Mesh, tmp_path: Path) -> None:
    """Nothing to revert to: the deploy exits 1 saying it failed, and the
    service stays (failed) for the operator to fix or remove. (The CLI also
    warns that a service without endpoints cannot be called.)"""
    folder = copy_service("hello", tmp_path / "dud",
                          {'name = "hello"': 'name = "dud"', r"command = .*":
                           'command = ["python3", "-c", "raise SystemExit(3)"]'},
                          append=FAST_UPDATE)
    result = cli("deploy", str(folder), peer=mesh.peers[0], token=mesh.token)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "failed" in result.stderr and "no previous version" in result.stderr, result.stderr
    assert "rolled back" not in result.stderr
    # hello has no [[endpoints]]: deploying it says nothing can call it
    assert "dud declares no [[endpoints]]" in result.stderr, result.stderr
    dep = mesh.deployment("dud")
    assert dep["status"] == "failed" and "restarted" in dep["reason"], dep
    assert "last run exited with status 3" in dep["reason"], dep  # why, not only that
    cli_retry(mesh.cluster, "undeploy", "dud", peer=mesh.peers[0], token=mesh.token)


def test_auto_revert_off_keeps_the_broken_version(mesh: Mesh, tmp_path: Path) -> None:
    """``[update] auto_revert = false``: the failure is reported, not undone."""
    folder = deploy_v1(mesh, tmp_path, "stubborn")
    edit(folder, 'version = "1.0"', 'version = "2.0"')
    edit(folder, 'command = ["python3", "-u", "echo.py"]',
         'command = ["python3", "-c", "raise SystemExit(3)"]')
    edit(folder, "[update]\n", "[update]\nauto_revert = false\n")
    result = cli("deploy", str(folder), peer=mesh.peers[1], token=mesh.token)
    assert result.returncode == 1 and "auto_revert is off" in result.stderr, result.stderr
    assert mesh.service("stubborn")["version"] == "2.0"
    assert mesh.deployment("stubborn")["status"] == "failed"
    cli_retry(mesh.cluster, "undeploy", "stubborn", peer=mesh.peers[0], token=mesh.token)


def test_a_new_leader_finishes_the_revert(cluster: Cluster, tmp_path: Path) -> None:
    """The previous version lives in Raft, not in the leader's memory: deploy
    1.0, then a 2.0 that never passes its health check (a long start period,
    so it fails by the deadline, not by restarts), and SIGKILL the leader as
    soon as 2.0 is committed. A new leader starts the deadline again and
    reverts: the survivors run 1.0, healthy, and report the revert."""
    mesh = Mesh(cluster)
    folder = copy_service("echo", tmp_path / "handover", {
        'name = "echo"': 'name = "handover"', r"replicas = .*": "replicas = 1",
        r"version = .*": 'version = "1.0"'},
        append="\n[update]\nmin_healthy_time = 2.0\nhealthy_deadline = 10.0\n")
    out = cli_retry(cluster, "deploy", str(folder), peer=mesh.peers[0], token=mesh.token)
    assert "successful" in out, out
    edit(folder, 'version = "1.0"', 'version = "2.0"')
    edit(folder, 'check = "zmq"\npath = "health"\ninterval = 2.0\ntimeout = 1.0\nretries = 3',
         'check = "exec"\ncommand = ["false"]\ninterval = 1.0\ntimeout = 1.0\nretries = 3\n'
         'start_period = 300.0')
    leader = peer_of(mesh.peers, wait_agreed(cluster, mesh.peers)["leader"])
    assert leader is not None
    via = next(p for p in mesh.peers if p is not leader)
    out = cli_retry(cluster, "deploy", str(folder), "--detach", peer=via, token=mesh.token)
    assert "deployed handover" in out, out
    leader.kill()
    survivors = [p for p in mesh.peers if p is not leader]
    wait_agreed(cluster, survivors)
    cluster.wait(lambda: all(mesh.deployment("handover", p)["status"] == "reverted"
                             for p in survivors), WAIT, what="the new leader's revert")
    assert "not healthy within 10 s" in mesh.deployment("handover", via)["reason"]
    assert all(mesh.service("handover", p)["version"] == "1.0" for p in survivors)
    wait_instances(cluster, survivors, "handover", 1, timeout=WAIT, also=all_current)
