"""The meeting room's user guidance (``services/meeting-room/ug``) on
microcontroller leaves: the real firmware under MicroPython's unix port as
three LED controllers behind a real peer, and UG deployed there, guiding with
mobile agents (issues 10 and 11). The LED controller in the middle is dead
(gone from the peer's profile), so UG's agents leave it out of their path;
an agent skipping a leaf that dies on its way is tested in
test_leaf_firmware.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mesh_harness import Cluster
from service_helpers import cli, cli_retry, copy_service, wait_instances
from test_control_plane import read_token_when_ready
from test_leaf_firmware import KEY, leaf_config

from nanomesh.testing.leaf import LeafProcess

LEDS = ("led-1", "led-2", "led-3")


def ug_call(cluster: Cluster, peer: Any, path: str, data: object | None = None
            ) -> dict[str, Any] | None:
    args = ["call", "ug", path] + (["--data", json.dumps(data)] if data is not None else [])
    result = cli(*args, peer=peer)
    if result.returncode != 0:
        print(f"nanomesh {' '.join(args)}: {result.stderr.strip()}")  # shown if the test fails
        return None
    return json.loads(result.stdout)


def test_ug_guides_with_mobile_agents_along_the_leaves(cluster: Cluster,
                                                       tmp_path: Path) -> None:
    """UG finds the leaves' LEDs in its peer's profile, answers the MCS's
    guide with an agent along the live ones (not GPIO), each agent lights
    every LED on its path for STEP_S (reading it back as its output), a new
    agent follows the first until stop, and stop ends the guidance."""
    peer = cluster.add("corridor", extra_args=leaf_config(tmp_path, LEDS))
    cluster.wait_api([peer])
    token = read_token_when_ready(cluster, peer)
    leaves = {name: LeafProcess(tmp_path, name, KEY, [f"{peer.ip}:5683"], period=0.2,
                                devices=[{"r": "led", "type": "led", "driver": "out",
                                          "pin": 15}])
              for name in LEDS}
    try:
        for leaf in leaves.values():
            leaf.start()
        cluster.wait(lambda: True if {d.get("leaf") for d in peer.get("/v1/self")[
            "profile"]["devices"] if d.get("source") == "leaf"} >= set(LEDS) else None,
            30, what="the three LED leaves in the profile")
        # The middle controller dies: gone from the profile before UG starts.
        leaves["led-2"].kill()
        cluster.wait(lambda: True if "led-2" not in {d.get("leaf") for d in peer.get(
            "/v1/self")["profile"]["devices"]} else None, 30, what="led-2 gone")
        folder = copy_service("meeting-room/ug", tmp_path / "ug",
                              {r"env = .*": 'env = { STEP_S = "0.3", MAX_GUIDE_S = "60" }'})
        cli_retry(cluster, "deploy", str(folder), peer=peer, token=token)
        wait_instances(cluster, [peer], "ug", 1, timeout=60)

        started = cluster.wait(lambda: ug_call(cluster, peer, "guide", {
            "visit": 7, "person": "bob", "room": "aurora"}), 30, what="UG to guide")
        assert started["ok"] is True, started
        assert "mobile agent along leaves led-1, led-3" in started["detail"], started

        def two_agents_done() -> dict[str, Any] | None:
            shown = ug_call(cluster, peer, "leds")
            return shown if shown and len(shown["finished"]) >= 2 else None

        shown = cluster.wait(two_agents_done, 60, what="two agents done, one after the other")
        assert shown["mode"] == "leaf-agents" and shown["path"] == ["led-1", "led-3"], shown
        assert shown["guiding"] is True and shown["visit"] == 7, shown
        agent = shown["finished"][-1]
        assert agent["phase"] == "done", agent
        assert agent["visited"] == ["led-1", "led-3"] and agent["skipped"] == [], agent
        assert agent["output"] == {"led-1": [1], "led-3": [1]}, agent  # each LED was lit
        for name in ("led-1", "led-3"):
            assert sum(e.endswith(" ok") for e in leaves[name].events("agent")) >= 2, name
        assert not leaves["led-2"].events("agent")

        assert ug_call(cluster, peer, "stop", {"visit": 7}) == {"ok": True}
        after = cluster.wait(lambda: s if (s := ug_call(cluster, peer, "leds"))
                             and s["guiding"] is False else None, 10, what="guidance off")
        agents = after["agents"]
        # The agent under way ends its step (a leaf is never cut mid-step),
        # then the LEDs stay off and no new agent starts.
        cluster.wait(lambda: True if all((leaves[n].hw / "pin15").read_text() == "0"
                                         for n in ("led-1", "led-3")) else None, 10,
                     what="both LEDs off")
        assert ug_call(cluster, peer, "leds")["agents"] == agents
    finally:
        for leaf in leaves.values():
            leaf.kill()
