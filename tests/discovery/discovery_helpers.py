"""Fixture-tree helpers for the discovery tests (uniquely named so it cannot
clash with helpers of other test folders on ``sys.path``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"

#: A file's content, or ``("->", target)`` for a symlink to ``target``
#: (relative to the tree root, created as a directory), or ``{}`` for an
#: empty directory.
TreeEntry = str | bytes | tuple[str, str] | dict[str, str]
TreeWriter = Callable[[Mapping[str, TreeEntry]], Path]


def write_tree(root: Path, entries: Mapping[str, TreeEntry]) -> Path:
    """Create files, symlinks and empty dirs under ``root``; return ``root``."""
    for rel, content in entries.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, dict):
            path.mkdir(parents=True, exist_ok=True)
        elif isinstance(content, tuple):
            target = root / content[1]
            target.mkdir(parents=True, exist_ok=True)
            path.symlink_to(target)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root
