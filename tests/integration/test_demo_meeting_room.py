"""`nanomesh demo meeting-room`, run as a real subprocess (`python -m nanomesh`):
real peers, the six meeting-room services as real processes, simulated
PIRs, radios, LEDs and screen (issue 10)."""

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

BASE_IP = "127.0.18.20"
"""The demo's four peers: 127.0.18.20-23 (outside the lab's addresses)."""


def test_meeting_room_demo_states_failures_and_mcs_failover(tmp_path: Path) -> None:
    """The demo exits 0 after narrating, in order and with timestamps: no tag
    -> NOT_SCANNED; an unknown tag -> SCANNED then NOT_AUTHENTICATED; bob
    DETECTED -> SCANNED -> AUTHENTICATED -> GUIDED with a corridor LED lit;
    the MCS's peer killed and the MCS resumed on the other controller from
    its state blob, in GUIDED; bob PRESENTED by the new MCS and shown on the
    screen, the LEDs off; alice at the door without her tag NOT_PRESENTED
    (PD2 without BS2). It leaves no process behind and removes its directory."""
    busy = [f"127.0.18.{n}" for n in range(20, 24) if answers(f"127.0.18.{n}", 7947)]
    if busy:
        pytest.skip(f"something already runs on {', '.join(busy)}")
    demo_dir = tmp_path / "demo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NANOMESH_")}
    started = time.monotonic()
    result = subprocess.run([PY, "-m", "nanomesh", "demo", "meeting-room", "--base-ip",
                             BASE_IP, "--dir", str(demo_dir)], capture_output=True, text=True,
                            timeout=300, env=env, stdin=subprocess.DEVNULL, check=False)
    took = time.monotonic() - started
    out = result.stdout
    assert result.returncode == 0, (out, result.stderr)
    lines = out.splitlines()

    def line(pattern: str, after: int = -1) -> int:
        for i, text in enumerate(lines):
            if i > after and re.search(pattern, text):
                return i
        raise AssertionError(f"no line matching {pattern!r} after line {after} in:\n{out}")

    mcs = r"\[mcs/0 on (ctl-[ab])\]"
    order = [
        line(r"room's profile shows pir \(gpiozero-mock\), ble \(bleak-sim\), display"),
        line(r"deployed ae on room; bs on entrance, room; mcs on ctl-[ab]; mrs on room; "
             r"pd on entrance, room; ug on entrance"),
        line(r"AE \(SQLite\) knows 2 tags: .*; alice \(PUT persons/alice\) is invited to "
             r"aurora"),
        line(r"visit 1: DETECTED .*pd1 saw motion"),
        line(r"visit 1: NOT_SCANNED .*heard no tag"),
        line(r"visit 2: SCANNED .*bad0bad0"),
        line(r"visit 2: NOT_AUTHENTICATED .*unknown tag bad0bad0"),
        line(r"visit 3: DETECTED"),
        line(r"visit 3: SCANNED .*b0b0b0b0"),
        line(r"visit 3: AUTHENTICATED .*is bob, invited to aurora"),
        line(r"visit 3: GUIDED "),
        line(r"UG: corridor LED \d of 3 lit \(BCM \d+, gpiozero-mock"),
        line(r"killing ctl-[ab], the peer hosting the MCS, with SIGKILL"),
        line(r"MCS placed on ctl-[ab]"),
        line(r"the new MCS \(mcs/0 on ctl-[ab]\) resumed from its state blob: visit 3 in GUIDED "
             r"\(bob to aurora\)"),
        line(r"visit 3: PRESENTED .*confirmed tag b0b0b0b0"),
        line(r"MRS screen in aurora: present bob"),
        line(r"UG: guidance stopped \(guiding False, LED levels \[False, False, False\]\)"),
        line(r"visit 4: GUIDED .*alice"),
        line(r"visit 4: NOT_PRESENTED .*PD2 without BS2"),
        line(r"AE events \(GET events\): 1[5-9] transitions logged, 1 PRESENTED, "
             r"3 NOT-states"),
    ]
    assert order == sorted(order), out
    killed = re.search(r"killing (ctl-[ab])", out)
    placed = re.search(r"MCS placed on (ctl-[ab])", out)
    resumed = re.search(r"the new MCS \(mcs/0 on (ctl-[ab])\)", out)
    assert killed and placed and resumed and killed.group(1) != placed.group(1), out
    assert resumed.group(1) == placed.group(1), out
    before = re.search(r"visit 3: GUIDED .*" + mcs, out)
    after = re.search(r"visit 3: PRESENTED .*" + mcs, out)
    assert before and after, out
    assert before.group(1) == killed.group(1) and after.group(1) == placed.group(1), out
    stamps = [float(m) for m in re.findall(r"^\[\s*(\d+\.\d{3})s\]", out, re.MULTILINE)]
    assert stamps == sorted(stamps) and len(stamps) >= 20, out
    assert re.search(r"visit 3: presence detection \d+\.\d{3}, BLE authentication "
                     r"\d+\.\d{3}", out), out

    assert not processes_mentioning(demo_dir)
    assert not demo_dir.exists()
    assert took < 180, f"the demo took {took:.0f} s"

