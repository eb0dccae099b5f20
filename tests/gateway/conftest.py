"""Shared setup for the gateway tests; helpers live in ``gateway_helpers``
(this directory is put on ``sys.path`` so it imports under any import mode)."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
