"""The simulated world's shell: the scenario file, its clock, and the fake
hardware it keeps up to date.

A simulated backend asks `SimWorld.now` what its device reads. The scenario
comes from ``NANOMESH_WORLD`` (a TOML file, `nanomesh.devices.world`) and its
clock from ``NANOMESH_WORLD_START`` (Unix seconds when the world's time was
0), so every service on every peer of a lab sees the same world at the same
moment; a peer passes both to its instances in their environment. Without
``NANOMESH_WORLD`` the world is empty: simulated devices read nothing.

`W1SimTree` writes the fake ``/sys/bus/w1/devices`` tree that the real
reader (`nanomesh.devices.w1.W1Thermometer`) reads; `drive_pirs` drives the
mock GPIO pins of the PIRs. `run_world` does both every `WORLD_PERIOD`.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import tomllib
from collections.abc import Mapping
from pathlib import Path

import trio

from nanomesh.devices.gpio import Gpio
from nanomesh.devices.w1 import is_sensor_id, render_w1_slave
from nanomesh.devices.world import (
    ENV_START,
    ENV_WORLD,
    Snapshot,
    World,
    WorldError,
    parse_world,
)

log = logging.getLogger("nanomesh.devices")

RELOAD_PERIOD = 0.5
"""Seconds between two checks of the scenario file's modification time."""
WORLD_PERIOD = 0.2
"""Seconds between two updates of the fake hardware: finer than any
scenario step a demo uses (whole seconds), cheap (a few small writes)."""


def load_world(path: Path) -> World:
    """Parse a scenario file; WorldError (naming the file and the field)."""
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except OSError as exc:
        raise WorldError(f"{path}: cannot read the scenario: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise WorldError(f"{path}: not TOML: {exc}") from None
    try:
        return parse_world(raw)
    except WorldError as exc:
        raise WorldError(f"{path}: {exc}") from None


class SimWorld:
    """The world and its clock; re-reads the scenario file when it changes
    (at most every `RELOAD_PERIOD`), so a demo can script the world as its
    story unfolds. A file that fails to parse then is logged and ignored:
    the world stays as it was."""

    def __init__(self, world: World, start: float, path: Path | None = None) -> None:
        self.world = world
        self.start = start
        self.path = path
        self._mtime = _mtime(path)
        self._checked = time.monotonic()

    def elapsed(self) -> float:
        return time.time() - self.start

    def now(self) -> Snapshot:
        self._maybe_reload()
        return self.world.at(self.elapsed())

    def _maybe_reload(self) -> None:
        if self.path is None or time.monotonic() - self._checked < RELOAD_PERIOD:
            return
        self._checked = time.monotonic()
        mtime = _mtime(self.path)
        if mtime == self._mtime:
            return
        self._mtime = mtime
        try:
            self.world = load_world(self.path)
            log.info("simulated world: reloaded %s", self.path)
        except WorldError as exc:
            log.warning("simulated world: %s (keeping the previous world)", exc)


def _mtime(path: Path | None) -> int | None:
    try:
        return path.stat().st_mtime_ns if path is not None else None
    except OSError:
        return None


def from_env(env: Mapping[str, str] | None = None) -> SimWorld:
    """The world this process simulates (module docstring)."""
    env = os.environ if env is None else env
    path = env.get(ENV_WORLD)
    world = load_world(Path(path)) if path else World()
    try:
        start = float(env.get(ENV_START) or time.time())
    except ValueError:
        raise WorldError(f"{ENV_START} must be Unix seconds, got {env[ENV_START]!r}") from None
    log.info("simulated world: %s, started %.1f s ago", path or "empty (no NANOMESH_WORLD)",
             time.time() - start)
    return SimWorld(world, start, Path(path) if path else None)


class W1SimTree:
    """A directory laid out like ``/sys/bus/w1/devices``, written from the world."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def update(self, snapshot: Snapshot) -> None:
        """Write each present thermometer's ``w1_slave``; remove the absent ones
        (an unplugged sensor's directory disappears, as in sysfs)."""
        for sensor_id, celsius in snapshot.thermometers.items():
            if not is_sensor_id(sensor_id):
                continue
            folder = self.root / sensor_id
            folder.mkdir(exist_ok=True)
            tmp = folder / "w1_slave.tmp"
            tmp.write_text(render_w1_slave(celsius))
            tmp.replace(folder / "w1_slave")  # a reader never sees half a file
        for folder in self.root.iterdir():
            if is_sensor_id(folder.name) and folder.name not in snapshot.thermometers:
                shutil.rmtree(folder, ignore_errors=True)


def drive_pirs(gpio: Gpio, pins: Mapping[str, int], snapshot: Snapshot) -> None:
    """Set each PIR's mock pin (by the id its ``[[devices]]`` entry carries)."""
    for pir_id, pin in pins.items():
        gpio.drive(pin, pir_id in snapshot.motion)


async def run_world(sim: SimWorld, *, w1: W1SimTree | None = None, gpio: Gpio | None = None,
                    pirs: Mapping[str, int] | None = None, period: float = WORLD_PERIOD) -> None:
    """Keep the fake hardware in step with the world, forever."""
    while True:
        snap = sim.now()
        if w1 is not None:
            w1.update(snap)
        if gpio is not None and pirs:
            drive_pirs(gpio, pirs, snap)
        await trio.sleep(period)
