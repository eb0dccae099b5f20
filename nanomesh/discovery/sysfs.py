"""Small, forgiving readers for procfs/sysfs files.

Attributes in ``/sys`` and ``/proc/device-tree`` appear and vanish with drivers
and kernel versions, and some raise ``OSError`` on read (e.g. a battery's
``energy_full`` while the EC is busy). Every probe reads through these helpers,
so a missing or unreadable file means "unknown" rather than a crash.
"""

from __future__ import annotations

from pathlib import Path


def read_text(path: Path) -> str | None:
    """``path``'s content with whitespace and device-tree NULs stripped.

    Device-tree strings (``/proc/device-tree/model``, ``hat/vendor``) are
    NUL-terminated; sysfs attributes end in a newline. ``None`` when the file
    is missing or unreadable.
    """
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    return raw.decode("utf-8", errors="replace").strip("\x00 \t\r\n")


def read_int(path: Path) -> int | None:
    """``path`` parsed as an integer (decimal, or hex with ``0x``); ``None`` if not."""
    text = read_text(path)
    if text is None:
        return None
    for base in (0, 10):  # base 0 reads "0x1003"; base 10 reads "007"
        try:
            return int(text, base)
        except ValueError:
            continue
    return None


def list_dir(path: Path) -> list[Path]:
    """Entries of ``path`` sorted by name; empty when it does not exist."""
    try:
        return sorted(path.iterdir(), key=lambda p: p.name)
    except OSError:
        return []
