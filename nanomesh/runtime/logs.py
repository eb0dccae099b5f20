"""Instance log files: ``<log_dir>/<service>.<index>.log``, stdout and stderr together.

The supervisor shim (:mod:`nanomesh.runtime.shim`) sits in the output path:
the command writes into a pipe, the shim appends to the log and rotates it by
size *during* the run: when the log would pass :data:`ROTATE_BYTES` it
becomes ``.log.1`` (``.1`` becomes ``.2`` ..., :data:`ROTATE_KEEP` old files
kept, the oldest dropped) and a fresh file begins. The same rotation happens
when a run starts with a log already over the cap. So an instance uses at most
about ``(ROTATE_KEEP + 1) * ROTATE_BYTES`` of disk (15 MiB), however long it
runs and however often it restarts.

Each run begins with a ``=== nanomesh <time>: starting ...`` header line and
ends with a footer line saying how it ended; :func:`read_log_tail` reads the
last lines across the rotated files for ``nanomesh logs``.

Following (``nanomesh logs -f``): :func:`log_tail` also returns a
:class:`LogCursor` (the live file's inode and the offset after its last whole
line), and :func:`read_log_after` returns the whole lines written since a
cursor, and the next cursor. A restart appends to the same file; a rotation
renames the file, keeping its inode, so the rest of a rotated file is read
from ``.log.1`` before the new live file: no line is lost or repeated while
the cursor's file is among the kept ones.

These functions block (file system calls); the driver runs them in a thread.
"""

from __future__ import annotations

import os
import time
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from nanomesh.runtime.shim import rotate_files

ROTATE_BYTES = 5 * 1024 * 1024
"""Size (5 MiB) at which an instance's log is rotated, during a run or at its
start. The edge devices have small flash storage; 5 MiB keeps hours of
chatty output per file."""
ROTATE_KEEP = 2
"""Rotated files kept per instance (``.log.1``, ``.log.2``): with the live
file, at most 15 MiB per instance."""


def log_path(log_dir: Path, service: str, index: int) -> Path:
    """Where the output of instance ``service/index`` goes."""
    return Path(log_dir) / f"{service}.{index}.log"


def log_files(log_dir: Path, service: str, index: int) -> list[Path]:
    """The instance's existing log files, oldest first (``.log.2``, ``.log.1``, ``.log``)."""
    live = log_path(log_dir, service, index)
    rotated: list[tuple[int, Path]] = []
    for path in live.parent.glob(live.name + ".*"):
        suffix = path.name[len(live.name) + 1:]
        if suffix.isdigit():
            rotated.append((int(suffix), path))
    out = [path for _, path in sorted(rotated, reverse=True)]
    return [*out, live] if live.exists() else out


def read_log_tail(log_dir: Path, service: str, index: int, lines: int, *,
                  live_end: int | None = None) -> list[str]:
    """The last ``lines`` lines of instance ``service/index``'s output, across
    its rotated files, oldest first (without line ends; undecodable bytes
    replaced). Empty if it has no log. With `live_end`, the live file is
    read up to that offset only."""
    if lines <= 0:
        return []
    tail: deque[str] = deque(maxlen=lines)
    needed = lines
    chunks: list[list[str]] = []
    live = log_path(log_dir, service, index)
    for path in reversed(log_files(log_dir, service, index)):  # newest first
        try:
            end = live_end if path == live else None
            text = _read_tail_bytes(path, needed, end).decode(errors="replace")
        except OSError:
            continue
        got = text.splitlines()
        chunks.append(got)
        needed -= len(got)
        if needed <= 0:
            break
    for got in reversed(chunks):
        tail.extend(got)
    return list(tail)


FOLLOW_READ_BYTES = 256 * 1024
"""Most bytes :func:`read_log_after` returns at once: a chatty instance is
followed in several polls rather than one huge reply."""


SIGNATURE_BYTES = 32
"""A cursor recognises its file by the inode and a CRC-32 of the file's first
bytes, up to this many (the ones already read, which never change: logs
are append-only): a file system reuses a freed inode for the next new file,
and an inode alone would take a new log for the one rotated away."""


@dataclass(frozen=True)
class LogCursor:
    """A position in an instance's log: after ``offset`` bytes of the file
    whose inode is ``inode`` (live or, since, rotated) and whose first
    ``min(offset, SIGNATURE_BYTES)`` bytes have CRC-32 ``check``. Its text
    form ``"INODE:OFFSET:CHECK"`` travels through the API (``?after=``)."""

    inode: int
    offset: int
    check: int = 0

    def __str__(self) -> str:
        return f"{self.inode}:{self.offset}:{self.check}"

    @classmethod
    def parse(cls, text: str) -> LogCursor:
        """The cursor ``text`` names; ValueError (naming the form) if it is not one."""
        parts = text.split(":")
        if len(parts) != 3 or not all(p.isdigit() and len(p) <= 20 for p in parts):
            raise ValueError(f"a log cursor is INODE:OFFSET:CHECK (whole numbers), got "
                             f"{text[:80]!r}")
        return cls(*map(int, parts))

    def names(self, path: Path, inode: int) -> bool:
        """Whether this cursor is in `path` (whose inode is `inode`)."""
        return inode == self.inode and _signature(path, self.offset) == self.check


def cursor_at(path: Path, inode: int, offset: int) -> LogCursor:
    return LogCursor(inode, offset, _signature(path, offset) or 0)


def _signature(path: Path, offset: int) -> int | None:
    """CRC-32 of the first ``min(offset, SIGNATURE_BYTES)`` bytes of `path`
    (None if it cannot be read, or is shorter: not the cursor's file)."""
    want = min(offset, SIGNATURE_BYTES)
    try:
        with open(path, "rb") as f:
            head = f.read(want)
    except OSError:
        return None
    return zlib.crc32(head) if len(head) == want else None


def log_tail(log_dir: Path, service: str, index: int, lines: int
             ) -> tuple[list[str], LogCursor | None]:
    """:func:`read_log_tail` up to the live file's last whole line, and the
    cursor after it (None without a live file). A line still being written
    is left for :func:`read_log_after`."""
    live = log_path(log_dir, service, index)
    try:
        with open(live, "rb") as f:
            inode, end = os.fstat(f.fileno()).st_ino, f.seek(0, os.SEEK_END)
            f.seek(max(0, end - TAIL_READ_BYTES))
            chunk = f.read(end - f.tell())
    except OSError:
        return read_log_tail(log_dir, service, index, lines), None
    # Up to the last whole line of this snapshot: what is written after it
    # (or the unfinished line) is for read_log_after, never shown twice.
    if b"\n" in chunk or end <= TAIL_READ_BYTES:
        end -= len(chunk) - (chunk.rfind(b"\n") + 1)
    return (read_log_tail(log_dir, service, index, lines, live_end=end),
            cursor_at(live, inode, end))


def read_log_after(log_dir: Path, service: str, index: int, cursor: LogCursor,
                   max_bytes: int = FOLLOW_READ_BYTES) -> tuple[list[str], LogCursor, bool]:
    """``(lines, next cursor, gap)``: the whole lines written after `cursor`
    (at most about `max_bytes`, oldest first). ``gap`` is True when the
    cursor's file is no longer kept (rotated away): reading resumed at the
    oldest kept file, and some lines were lost. Without any log, nothing and
    the same cursor."""
    files = [(path, ino) for path in log_files(log_dir, service, index)
             if (ino := _inode(path)) is not None]
    if not files:
        return [], cursor, False
    start = next((i for i, (path, ino) in enumerate(files) if cursor.names(path, ino)), None)
    gap = start is None
    position = LogCursor(files[0][1], 0) if start is None else cursor
    out: list[str] = []
    budget = max_bytes
    for i, (path, inode) in enumerate(files[start or 0:], start=start or 0):
        offset = position.offset if inode == position.inode else 0
        data = _read_from(path, offset, budget)
        if data is None:
            continue  # rotated away meanwhile; the next file continues
        live = i == len(files) - 1
        whole = data[:data.rfind(b"\n") + 1] if live or len(data) == budget else data
        if not whole and len(data) == budget:
            whole = data  # one line longer than the budget: cut it rather than stall
        out.extend(whole.decode(errors="replace").splitlines())
        position = cursor_at(path, inode, offset + len(whole))
        budget -= len(whole)
        if budget <= 0 or len(whole) < len(data):
            break
    return out, position, gap


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except OSError:
        return None


def _read_from(path: Path, offset: int, most: int) -> bytes | None:
    """Up to `most` bytes of `path` from `offset` (from 0 if the file is now
    shorter: it was truncated); None if it is gone."""
    try:
        with open(path, "rb") as f:
            end = f.seek(0, os.SEEK_END)
            f.seek(offset if offset <= end else 0)
            return f.read(most)
    except OSError:
        return None


TAIL_READ_BYTES = 64 * 1024
"""Bytes read per step from a log's end when looking for its last lines."""


def _read_tail_bytes(path: Path, lines: int, end: int | None = None) -> bytes:
    """The end of ``path`` (up to offset `end`, default its size) holding at
    least ``lines`` whole lines (or all of it)."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        end = size if end is None else min(end, size)
        start = end
        data = b""
        while start > 0 and data.count(b"\n") <= lines:
            start = max(0, start - TAIL_READ_BYTES)
            f.seek(start)
            data = f.read(end - start)
        if start > 0:  # drop the partial first line
            data = data.split(b"\n", 1)[1] if b"\n" in data else b""
        return data


def open_log(path: Path, header: str, rotate_bytes: int = ROTATE_BYTES,
             keep: int = ROTATE_KEEP) -> int:
    """Create the log's directory, rotate the log if it is over ``rotate_bytes``,
    append a ``header`` line, and return a file descriptor opened for appending
    (the caller hands it to the shim and closes its own copy)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if path.stat().st_size > rotate_bytes:
            rotate_files(str(path), keep)
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, _line(header))
    except BaseException:
        os.close(fd)
        raise
    return fd


def append_line(path: Path, text: str) -> None:
    """Append one ``=== nanomesh`` line to a log (best effort: a full disk must
    not break the driver)."""
    try:
        with open(path, "ab") as f:
            f.write(_line(text))
    except OSError:
        pass


def _line(text: str) -> bytes:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return f"=== nanomesh {stamp}: {text}\n".encode(errors="replace")
