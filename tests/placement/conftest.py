"""Shared setup for the placement tests.

``placement_helpers`` (builders, hypothesis strategies and the invariant
checker) lives next to the tests; this directory is put on ``sys.path`` so it
imports the same way under pytest's default and ``importlib`` import modes.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
