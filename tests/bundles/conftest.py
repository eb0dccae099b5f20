"""Shared setup for the bundle tests: service folders, raw tars, and real
HTTP servers (the daemon's `serve_http` with the bundle routes) on
127.0.52.x loopback addresses."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
