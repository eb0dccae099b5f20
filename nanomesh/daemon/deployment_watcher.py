"""The leader's deployment watcher: the trio shell around `nanomesh.runtime.deployment_core`.

Every `WATCH_PERIOD`, while this peer leads with a quorum, it looks at each
running deployment in the committed state, asks `judge` for a verdict with
the instances as gossip shows them, and commits a verdict through the
``deployment`` patch (`nanomesh.consensus.state.apply_settle_deployment`),
which reverts in the same command when the verdict says so. A verdict on a
deployment that a newer deploy replaced meanwhile is refused by the state
machine (compare-and-set on the deployment id), so a racing deploy is never
reverted by mistake.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import trio

from nanomesh.consensus import ConsensusError, ConsensusNode
from nanomesh.consensus.role_manager import leads_with_quorum
from nanomesh.consensus.state import DEPLOYMENT_KEY, RUNNING
from nanomesh.runtime.deployment_core import Verdict, Watch, instance_reports, judge

log = logging.getLogger("nanomesh.deploy")

WATCH_PERIOD = 0.5
"""Seconds between two looks at the running deployments. Instance states
reach the leader by gossip within about a second anyway; a shorter period
would only re-read the same reports."""

Reported = Mapping[str, Mapping[str, Mapping[str, Any]]]


class DeploymentWatcher:
    """Runs on every peer; acts only while the peer's node leads."""

    def __init__(self, node: Callable[[], object],
                 reported: Callable[[], Reported],
                 wait_leading: Callable[[], Awaitable[object]] | None = None) -> None:
        """`wait_leading()` returns once this peer's node leads
        (`RaftRoleManager.wait_leading`); without it a peer that does not
        lead looks again every `WATCH_PERIOD`."""
        self._node = node
        self._reported = reported
        self._wait_leading = wait_leading
        self._watches: dict[str, Watch] = {}

    async def run(self) -> None:
        while True:
            await trio.sleep(WATCH_PERIOD)
            node = self._node()
            if not leads_with_quorum(node):
                self._watches.clear()  # a later term starts every deadline again
                if self._wait_leading is not None:
                    await self._wait_leading()
                continue
            for verdict, name in self.look(node, trio.current_time()):
                await self._settle(node, name, verdict)

    def look(self, node: ConsensusNode, now: float) -> list[tuple[Verdict, str]]:
        """Judge every running deployment once; the verdicts to commit."""
        state = node.state
        reported = self._reported()
        verdicts: list[tuple[Verdict, str]] = []
        running = {name: dep for name, dep in state.deployments.items()
                   if dep.get("status") == RUNNING and name in state.services}
        self._watches = {n: w for n, w in self._watches.items() if n in running}
        for name, dep in sorted(running.items()):
            instances = instance_reports(state.plan, name, reported)
            watch, verdict = judge(state.services[name], dep, instances,
                                   name in state.previous, self._watches.get(name), now)
            self._watches[name] = watch
            if verdict is not None:
                verdicts.append((verdict, name))
        return verdicts

    async def _settle(self, node: ConsensusNode, name: str, verdict: Verdict) -> None:
        try:
            outcome = await node.patch_service(name, DEPLOYMENT_KEY, verdict.to_dict())
        except ConsensusError as exc:
            log.warning("deployment %d of %s: could not commit %s: %s", verdict.deployment,
                        name, verdict.status, exc)
            return
        if not outcome.applied:
            log.info("deployment %d of %s: %s not committed (%s)", verdict.deployment, name,
                     verdict.status, outcome.reason)
            return
        self._watches.pop(name, None)
        level = logging.INFO if verdict.status == "successful" else logging.WARNING
        what = {"reverted": "failed; reverted to the previous version"}.get(
            verdict.status, verdict.status)
        log.log(level, "deployment %d of %s %s: %s", verdict.deployment, name, what,
                verdict.reason)
