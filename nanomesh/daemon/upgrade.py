"""This peer's side of ``nanomesh upgrade``: install a release bundle from the
mesh beside the running version, switch to it, restart; confirm it or roll
it back.

The install root (``--install-root``, ``/opt/nanomesh`` from install.sh)::

    versions/ID/        one venv per version (ID = VERSION-SHA12 of the bundle)
    venv -> versions/ID the version that runs (a relative symlink, switched by
                        an atomic rename, as install.sh switches it)
    previous -> versions/ID   the version before the last switch (rollback)
    trial               present while the running version is unconfirmed
    trial.starts        how often the launcher started it unconfirmed
    launch              the launcher, peers/nanomesh-launch

How a peer restarts itself, the same under systemd and in a lab: it leaves
the mesh gracefully (as on SIGTERM) and exits with `RESTART_EXIT`. Whatever
supervises it starts ``ROOT/launch peer run ...`` again: systemd's
``Restart=on-failure`` (the unit), or a lab's supervisor loop
(``experiments/upgrade_lab.py``). The launcher runs ``ROOT/venv``'s
nanomesh, the new version now. If that version keeps exiting before the
upgrader confirms it (`LAUNCH_TRIES` starts), the launcher switches ``venv``
back to ``previous`` itself: a version that cannot even start is rolled back
without anyone reaching its API.

Routes (all need the management token):

- ``POST /v1/upgrade`` ``{"sha256", "prepare_only": false}``: fetch the
  release bundle from the mesh (or hold it), check it against its manifest,
  install it into ``versions/ID`` offline (``pip --no-index`` from its
  wheels; kept if installed already), check the new venv runs ``nanomesh
  version``, switch, answer 202 ``{"from", "to", "restarting": true}`` and
  restart. With ``prepare_only`` it stops after the install: 200
  ``{"prepared": "versions/ID"}`` (the upgrader installs on every peer at
  once first, then restarts them one by one). 200 ``{"already": true}`` when it runs
  that version; 409 without an install root or while another upgrade runs;
  400 for a bundle that is not a sound release; 500 when the install failed
  (the running version is untouched).
- ``POST /v1/upgrade/confirm``: the running version is good; drop the trial
  marker and every version but this one and the previous.
- ``POST /v1/upgrade/rollback``: switch back to ``previous`` and restart.
- ``GET /v1/upgrade``: ``{"version", "install_root", "running", "previous",
  "trial"}``.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from nanomesh import __version__
from nanomesh.bundles import BundleError, check_sha
from nanomesh.bundles.release import open_release
from nanomesh.daemon.api_auth import Access
from nanomesh.daemon.http import Handler, HttpError, Request

log = logging.getLogger("nanomesh.upgrade")

RESTART_EXIT = 75
"""The daemon's exit status for "start me again" (EX_TEMPFAIL): a failure to
systemd (``Restart=on-failure`` restarts it), a signal to a lab supervisor."""
LAUNCH_TRIES = 3
"""Unconfirmed starts of a new version before the launcher rolls it back
(peers/nanomesh-launch reads the same number from its own line)."""
INSTALL_TIMEOUT = 600.0
"""Seconds one install step (venv, pip, the check) may take: pip installs ~15
wheels offline, ~20 s here and a few minutes on a Pi Zero."""
RESTART_DELAY = 0.2
"""Seconds between answering the upgrader and leaving: the answer must get
out before the API closes."""

VERSIONS, VENV, PREVIOUS, TRIAL, TRIAL_STARTS = (
    "versions", "venv", "previous", "trial", "trial.starts")


class UpgradeError(Exception):
    """An install or switch that failed; the running version is untouched."""


class InstallRoot:
    """The install root's files (module doc). Blocking: call through
    ``trio.to_thread``."""

    def __init__(self, root: Path, python: str | None = None) -> None:
        self.root = root
        self.python = python or getattr(sys, "_base_executable", None) or sys.executable
        """The interpreter new venvs are made with: the one running us (the
        bundle's wheels are for its version)."""

    def link(self, name: str) -> str | None:
        """Where ``venv`` or ``previous`` points (``versions/ID``), or None."""
        try:
            return os.readlink(self.root / name)
        except OSError:
            return None

    @property
    def on_trial(self) -> bool:
        return (self.root / TRIAL).exists()

    def status(self) -> dict[str, Any]:
        return {"install_root": str(self.root), "running": self.link(VENV),
                "previous": self.link(PREVIOUS), "trial": self.on_trial}

    def prepare(self, release: Path, version: str, slot: str) -> str:
        """Install the release unpacked at ``release`` into ``versions/slot``
        (kept if it is installed and runs already); return ``versions/slot``."""
        target = self.root / VERSIONS / slot
        if self._runs(target, version):
            return f"{VERSIONS}/{slot}"
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._run([self.python, "-m", "venv", str(target)], "making the venv")
            # No device pip config (an index, constraints): the bundle is all there is.
            self._run([str(target / "bin" / "python"), "-m", "pip", "install", "-q",
                       "--no-index", "--find-links", str(release / "wheels"),
                       f"nanomesh=={version}"], "pip install from the bundle's wheels")
            if not self._runs(target, version):
                raise UpgradeError(f"the new venv does not report nanomesh {version}")
        except UpgradeError:
            shutil.rmtree(target, ignore_errors=True)
            raise
        return f"{VERSIONS}/{slot}"

    def switch(self, slot: str) -> str | None:
        """Run ``slot`` from the next start on, on trial; the running one
        becomes ``previous``. Returns what ran before."""
        before = self.link(VENV)
        if before is not None and before != slot:
            self._point(PREVIOUS, before)
        (self.root / TRIAL).write_text(f"{before or ''}\n")
        (self.root / TRIAL_STARTS).unlink(missing_ok=True)
        self._point(VENV, slot)
        return before

    def rollback(self) -> str:
        """Run ``previous`` from the next start on; returns it."""
        previous = self.link(PREVIOUS)
        if previous is None or not (self.root / previous).is_dir():
            raise UpgradeError("no previous version to roll back to")
        self._point(VENV, previous)
        self._end_trial()
        return previous

    def confirm(self) -> list[str]:
        """End the trial; remove versions other than the running and the
        previous one. Returns the removed ones."""
        self._end_trial()
        keep = {self.link(VENV), self.link(PREVIOUS)}
        removed = []
        for path in sorted((self.root / VERSIONS).glob("*")):
            if f"{VERSIONS}/{path.name}" not in keep:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
        return removed

    def _end_trial(self) -> None:
        for name in (TRIAL, TRIAL_STARTS):
            (self.root / name).unlink(missing_ok=True)

    def _point(self, name: str, target: str) -> None:
        """``name -> target``, replaced atomically (a rename)."""
        tmp = self.root / f".{name}.new"
        tmp.unlink(missing_ok=True)
        os.symlink(target, tmp)
        os.replace(tmp, self.root / name)

    def _runs(self, venv: Path, version: str) -> bool:
        python = venv / "bin" / "python"
        if not python.exists():
            return False
        done = subprocess.run([str(python), "-m", "nanomesh", "version"], capture_output=True,
                              text=True, timeout=INSTALL_TIMEOUT, check=False,
                              env=_clean_env(), cwd=self.root)
        return done.returncode == 0 and done.stdout.startswith(f"nanomesh {version}\n")

    def _run(self, argv: list[str], what: str) -> None:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, check=False,
                                  timeout=INSTALL_TIMEOUT, env=_clean_env(), cwd=self.root)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise UpgradeError(f"{what}: {exc}") from None
        if done.returncode != 0:
            last = "\n".join(done.stderr.strip().splitlines()[-5:])
            raise UpgradeError(f"{what} failed: {last}")


def _clean_env() -> dict[str, str]:
    """Our environment without what would make the new venv's Python import
    anything but its own nanomesh (a checkout on PYTHONPATH, a pip config)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV") and not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


@dataclass(frozen=True)
class UpgradeContext:
    """What the upgrade routes use."""

    access: Access
    root: InstallRoot | None
    fetch_bundle: Callable[[str], Awaitable[Path]]
    """The extracted bundle ``sha``, from our store or fetched from a holder."""
    restart: Callable[[], None]
    """Leave gracefully and exit with `RESTART_EXIT`."""


def upgrade_routes(ctx: UpgradeContext) -> dict[tuple[str, str], Handler]:
    busy = trio.Lock()

    def root_or_409() -> InstallRoot:
        if ctx.root is None:
            raise HttpError(409, "this peer runs without an install root (--install-root): "
                                 "it cannot install a new version of itself; install it with "
                                 "install.sh --bundle, which sets one")
        return ctx.root

    def restart_soon() -> None:
        async def later() -> None:
            await trio.sleep(RESTART_DELAY)
            ctx.restart()
        trio.lowlevel.spawn_system_task(later)

    async def upgrade(request: Request) -> tuple[int, Any]:
        ctx.access.require_management_token(request)
        root = root_or_409()
        body = request.json()
        try:
            sha = check_sha(body.get("sha256") if isinstance(body, dict) else None)
        except BundleError as exc:
            raise HttpError(400, str(exc)) from None
        if busy.locked():
            raise HttpError(409, "an upgrade is already running on this peer")
        async with busy:
            try:
                extracted = await ctx.fetch_bundle(sha)
                release, manifest = await trio.to_thread.run_sync(open_release, extracted)
            except BundleError as exc:
                raise HttpError(400, f"bundle {sha[:12]}: {exc}") from None
            version = manifest["version"]
            if version == __version__:
                return 200, {"already": True, "version": version}
            slot = f"{version}-{sha[:12]}"
            log.info("upgrade: installing nanomesh %s into %s", version, root.root / VERSIONS)
            try:
                target = await trio.to_thread.run_sync(root.prepare, release, version, slot)
                if body.get("prepare_only") is True:
                    log.info("upgrade: nanomesh %s installed in %s, not switched", version,
                             target)
                    return 200, {"prepared": target, "version": version}
                before = await trio.to_thread.run_sync(root.switch, target)
            except (UpgradeError, OSError) as exc:
                log.warning("upgrade to %s failed; %s keeps running: %s", version,
                            __version__, exc)
                raise HttpError(500, f"installing nanomesh {version} failed; {__version__} "
                                     f"keeps running: {exc}") from None
            log.info("upgrade: switched %s -> %s; restarting", before, target)
            restart_soon()
            return 202, {"from": __version__, "to": version, "restarting": True}

    async def confirm(request: Request) -> tuple[int, Any]:
        ctx.access.require_management_token(request)
        root = root_or_409()
        removed = await trio.to_thread.run_sync(root.confirm)
        log.info("upgrade: nanomesh %s confirmed; removed old versions %s", __version__,
                 removed or "none")
        return 200, {"version": __version__, "removed": removed}

    async def rollback(request: Request) -> tuple[int, Any]:
        ctx.access.require_management_token(request)
        root = root_or_409()
        try:
            previous = await trio.to_thread.run_sync(root.rollback)
        except (UpgradeError, OSError) as exc:
            raise HttpError(409, f"rollback refused: {exc}") from None
        log.warning("upgrade: rolling %s back to %s; restarting", __version__, previous)
        restart_soon()
        return 202, {"from": __version__, "to": previous, "restarting": True}

    async def status(request: Request) -> tuple[int, Any]:
        ctx.access.require_management_token(request)
        found = await trio.to_thread.run_sync(ctx.root.status) if ctx.root else {
            "install_root": None}
        return 200, {"version": __version__, **found}

    return {("POST", "/v1/upgrade"): upgrade, ("POST", "/v1/upgrade/confirm"): confirm,
            ("POST", "/v1/upgrade/rollback"): rollback, ("GET", "/v1/upgrade"): status}
