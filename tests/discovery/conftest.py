"""Shared fixtures for the discovery tests.

``nanomesh`` is not installed into the venv (no editable install), so the
repository root is put on ``sys.path`` here; this is a no-op once it is (or
once pytest's ``pythonpath`` setting covers it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
for _path in (REPO_ROOT, HERE):  # HERE for discovery_helpers under --import-mode=importlib
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from discovery_helpers import TreeWriter, write_tree  # noqa: E402


@pytest.fixture
def tree(tmp_path: Path) -> TreeWriter:
    """``tree({...})`` builds a fixture file tree in ``tmp_path`` and returns its root."""
    return lambda entries: write_tree(tmp_path, entries)
