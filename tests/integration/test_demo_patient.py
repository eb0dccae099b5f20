"""`nanomesh demo patient`, run as a real subprocess (`python -m nanomesh`):
real peers, real service processes, simulated hardware (issue 10)."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from mesh_harness import PY, processes_mentioning

from nanomesh.cli.demo import answers

pytestmark = pytest.mark.integration

BASE_IP = "127.0.15.20"
"""The demo's four peers: 127.0.15.20-23 (outside the lab's addresses)."""


def test_patient_demo_follows_the_devices_and_cleans_up(tmp_path: Path) -> None:
    """The demo exits 0 after narrating, in order and with timestamps: the
    mesh with the devices' simulated backends in home's profile; the services
    running on the ambulance and vitals from it; the SpO2 and fever alerts on
    the display and the oxygen valve opened; the move to the ward (the raised
    alert taken over there), the alert cleared and the valve closed. It
    leaves no process behind and removes its directory."""
    busy = [f"127.0.15.{n}" for n in range(20, 24) if answers(f"127.0.15.{n}", 7947)]
    if busy:
        pytest.skip(f"something already runs on {', '.join(busy)}")
    demo_dir = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NANOMESH_")}
    started = time.monotonic()
    result = subprocess.run([PY, "-m", "nanomesh", "demo", "patient", "--base-ip", BASE_IP,
                             "--dir", str(demo_dir)], capture_output=True, text=True,
                            timeout=300, env=env, stdin=subprocess.DEVNULL, check=False)
    took = time.monotonic() - started
    out = result.stdout
    assert result.returncode == 0, (out, result.stderr)

    lines = out.splitlines()

    def line(pattern: str) -> int:
        for i, text in enumerate(lines):
            if re.search(pattern, text):
                return i
        raise AssertionError(f"no line matching {pattern!r} in:\n{out}")

    order = [
        line(r"home's profile shows pulse-oximeter \(bleak-sim\), body-temperature "
             r"\(w1-sim\), oxygen-controller \(gpiozero-mock\)"),
        line(r"deployed bot on home, dd on hospital, oc on home, pom on home"),
        line(r"display shows vitals from home: SpO2 97 %"),
        line(r"ambulance joined the mesh"),
        line(r"home left the mesh"),
        line(r"pom placed on ambulance"),
        line(r"display shows vitals from the ambulance: SpO2 97 %"),
        line(r"the ambulance loses its link to the hospital display"),
        line(r"alerts raised while the display is unreachable, kept on disk: bot 1 pending, "
             r"pom 1 pending"),
        line(r"oxygen valve OPEN \(oc on the ambulance, BCM 17 via gpiozero-mock, pin "
             r"level True\)"),
        line(r"the link is back"),
        line(r"ALERT on the display: pom spo2 low \(86\).*delivered \d+\.\d s after it was "
             r"raised"),
        line(r"ward joined the mesh"),
        line(r"pom placed on ward"),
        line(r"display shows vitals from the ward"),
        line(r"SpO2 alert cleared on the display"),
        line(r"oxygen valve closed"),
    ]
    assert order == sorted(order), out
    line(r"ALERT on the display: bot celsius high \(38\.6")
    stamps = [float(m) for m in re.findall(r"^\[\s*(\d+\.\d{3})s\]", out, re.MULTILINE)]
    assert stamps == sorted(stamps) and len(stamps) >= 15, out
    assert re.search(r"home -> ambulance\s+\d+\.\d{3}", out), out

    assert not processes_mentioning(demo_dir)
    assert not demo_dir.exists()
    assert took < 240, f"the demo took {took:.0f} s"

