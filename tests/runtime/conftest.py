"""Shared setup for the runtime tests: ``runtime_helpers`` lives next to them
(this directory is put on ``sys.path``, as in tests/placement)."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
