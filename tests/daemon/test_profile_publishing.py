"""The gossip shell's profile publishing (`GossipShell.refresh_profile` and
`republish_profile` around `nanomesh.discovery.publish.ProfilePublisher`):
a CPU load that swings on every sample costs at most one publication per
rate-limit interval, and a change of the control plane's sections goes out at
once, carrying the held live values. A real clock with a short sampling
period and interval (the shell samples in a thread, which an autojump clock
would skip over); the assertions are bounds that hold on a loaded machine."""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Any

import trio

from nanomesh.config import PeerConfig
from nanomesh.daemon.membership import GossipShell
from nanomesh.daemon.views import Traffic
from nanomesh.discovery.publish import ProfilePublisher, PublishPolicy
from nanomesh.disk import DiskHealth
from nanomesh.gossip.config import GossipConfig
from nanomesh.gossip.machine import Membership
from nanomesh.wire import Keyring

DISCOVERED: dict[str, Any] = {
    "cpu": {"cores": 2}, "memory": {"total_mb": 1024, "available_mb": 700},
    "storage": {"path": "/x", "total_mb": 32000, "free_mb": 19900},
    "power": {"source": "ac", "battery_percent": None, "battery_health_percent": None,
              "detected_by": "default"},
    "load": {"cpu_percent": 10.0, "memory_percent": 30.0, "load1": 0.2},
}


class SwingingLoad:
    """A ProfileSource whose CPU load swings 10 % / 90 % sample by sample
    (the shared, loaded machine of issue 9's measurement)."""

    def __init__(self, swing: bool = True) -> None:
        self.samples = 0
        self.swing = swing
        """False: 90 % every time."""

    def sample(self, published: dict[str, Any]) -> dict[str, Any]:
        self.samples += 1
        out = copy.deepcopy(published)
        out["load"]["cpu_percent"] = 90.0 if self.samples % 2 or not self.swing else 10.0
        return out


REFRESH = 0.01
"""Seconds between samples in these tests (5 s in a daemon)."""
INTERVAL = 0.2
"""The rate limit of live-only changes in these tests (60 s in a daemon)."""


def make_shell(tmp_path: Path, sections: dict[str, Any], swing: bool = True
               ) -> tuple[GossipShell, SwingingLoad]:
    config = PeerConfig(name="a", bind=("127.0.12.90", 7946), data_dir=tmp_path,
                        profile_refresh=REFRESH)
    live = ProfilePublisher(DISCOVERED, now=trio.current_time(),
                            policy=PublishPolicy(min_live_interval=INTERVAL,
                                                 live_interval_per_member=0.0))
    core = Membership("a", config.bind, GossipConfig(), random.Random(1),
                      trio.current_time(), profile=live.published)
    source = SwingingLoad(swing)
    shell = GossipShell(config, Keyring([bytes(32)]), core, source, live,  # type: ignore[arg-type]
                        disk=DiskHealth(), traffic=Traffic(), sections=lambda: dict(sections),
                        membership_changed=lambda: None, storage_problems=lambda: ())
    return shell, source


async def test_a_swinging_load_publishes_at_most_once_per_interval(tmp_path: Path) -> None:
    sections: dict[str, Any] = {"raft": {"role": "learner"}}
    shell, source = make_shell(tmp_path, sections)
    shell.republish_profile()                       # the sections join the profile
    start, t0 = shell.core.stats.profiles_published, trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(shell.refresh_profile)
        await trio.sleep(1.0)
        nursery.cancel_scope.cancel()
    elapsed = trio.current_time() - t0
    published = shell.core.stats.profiles_published - start
    # Every sample changes the bucketed CPU load: without the rate limit each
    # one would publish.
    assert source.samples >= 10
    assert 1 <= published <= elapsed / INTERVAL + 1, (published, source.samples)
    assert published < source.samples / 2
    assert shell.live.stats.live == published


async def test_a_section_change_goes_out_at_once_with_the_held_load(tmp_path: Path) -> None:
    sections: dict[str, Any] = {"raft": {"role": "learner"}}
    shell, _ = make_shell(tmp_path, sections, swing=False)
    shell.live.policy = PublishPolicy(min_live_interval=3600.0)   # hold every live change
    shell.republish_profile()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(shell.refresh_profile)
        while shell.live.stats.held < 1:            # a sample at 90 %, held
            await trio.sleep(REFRESH)
        nursery.cancel_scope.cancel()
    assert shell.live.pending is not None
    before = shell.core.stats.profiles_published
    sections["raft"] = {"role": "voter"}
    shell.republish_profile()
    assert shell.core.stats.profiles_published == before + 1
    me = shell.core.me.profile
    assert me is not None
    assert me["raft"] == {"role": "voter"} and me["load"]["cpu_percent"] == 80.0
    assert shell.live.stats.carried == 1


async def test_an_unchanged_profile_is_not_republished(tmp_path: Path) -> None:
    shell, _ = make_shell(tmp_path, {"raft": {"role": "learner"}})
    shell.republish_profile()
    count = shell.core.stats.profiles_published
    shell.republish_profile()
    assert shell.core.stats.profiles_published == count
