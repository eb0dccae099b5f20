"""A mixed-version mesh with real daemons: one peer runs an old nanomesh (the
source tree of `OLD_REVISION`, taken with ``git archive``, the same
virtualenv), the others this tree. They must gossip, elect, place and serve
calls by name together: what a rolling upgrade (issue 15) goes through for
every peer it restarts.

The old revision is 0.1.0 from before versions were gossiped: its profile has
no ``peer.protocols`` and the new peers must read it as the legacy ranges
(compatible), while it must accept the new peers' profiles with the extra key.
Skipped, saying why, where the checkout has no git history (a source tarball).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from mesh_harness import Cluster, Peer
from service_helpers import cli_ok, cli_retry, copy_service, wait_instances
from test_control_plane import call, peer_of, read_token_when_ready, wait_agreed

from nanomesh import __version__

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
OLD_REVISION = "2119768"
"""main before issue 15's versions: nanomesh 0.1.0, no ``peer.protocols``."""
WAIT = 45.0


@pytest.fixture(scope="module")
def old_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The old revision's ``nanomesh`` package, extracted into a directory."""
    dest = tmp_path_factory.mktemp("old-nanomesh")
    try:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", OLD_REVISION, "nanomesh"],
                                 capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"no git history with {OLD_REVISION} in {REPO}: {exc}")
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True, timeout=60)
    return dest


def start_old(tree: Path) -> Any:
    """A `mesh_harness.Starter` running the daemon from ``tree`` (it comes
    first on sys.path: before this checkout and the installed package)."""
    def start(argv: list[str], log: Any) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": str(tree)}
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, env=env, cwd=tree)
    return start


def peer_section(observer: Peer, name: str) -> dict[str, Any]:
    member = observer.members()[name]
    assert member["profile"] is not None, f"{observer.name} has no profile of {name} yet"
    section: dict[str, Any] = member["profile"]["peer"]
    return section


def test_old_and_new_peers_gossip_elect_place_and_serve_calls_by_name(
        cluster: Cluster, old_tree: Path, tmp_path: Path) -> None:
    seed = cluster.add("new-1")
    cluster.wait_api([seed])
    old = cluster.add("old-2", join=[seed.gossip], starter=start_old(old_tree))
    new = cluster.add("new-3", join=[seed.gossip])
    peers = [seed, old, new]
    cluster.wait_converged(peers)
    wait_agreed(cluster, peers, voters=3)

    # Each side reads the other's profile: the old peer kept the new key, the
    # new peers see the old one as 0.1.0 without protocols, and compatible.
    cluster.wait(lambda: all(m["profile"] for m in old.members().values()),
                 what="the old peer to hold every profile")
    assert "protocols" in peer_section(old, "new-3")
    old_seen = new.members()["old-2"]
    assert "protocols" not in old_seen["profile"]["peer"], "old-2 does not run the old tree"
    assert old_seen["nanomesh"] == "0.1.0" and old_seen["incompatible"] == []
    assert new.members()["new-1"]["nanomesh"] == __version__
    table = cli_ok("members", peer=seed)
    assert "VERSION" in table and "incompatible" not in table

    # Place three replicas on the three peers, through the old peer's API.
    token = read_token_when_ready(cluster, seed)
    folder = copy_service("echo", tmp_path / "echo", {r"replicas = \d+": "replicas = 3"})
    cli_retry(cluster, "deploy", str(folder), peer=old, token=token)
    hosts = wait_instances(cluster, peers, "echo", 3, timeout=WAIT)
    assert set(hosts.values()) == {p.name for p in peers}
    for via in peers:
        assert "mixed" in cli_ok("call", "echo", "echo/mixed", peer=via)

    # Kill the founder (the first leader, as a rule): the old and the new peer
    # left hold the quorum together, elect a leader if it was one, and still
    # serve the name.
    seed.kill()
    survivors = [old, new]
    after = wait_agreed(cluster, survivors, min_voters=2, timeout=WAIT)
    assert peer_of(survivors, after["leader"]) is not None
    for via in survivors:
        assert "again" in cli_ok("call", "echo", "echo/again", peer=via)

    # Neither can be upgraded through the mesh: the new peer has no install
    # root (it runs from a checkout) and says so; the old one has no such
    # route. `nanomesh upgrade` stops at such a peer before anything restarts.
    body = {"sha256": "0" * 64, "prepare_only": True}
    code, reply = call(new, "POST", "/v1/upgrade", body, token=token)
    assert code == 409 and "install root" in reply["error"], reply
    code, _ = call(old, "POST", "/v1/upgrade", body, token=token)
    assert code == 404
