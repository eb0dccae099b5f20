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

These functions block (file system calls); the driver runs them in a thread.
"""

from __future__ import annotations

import os
import time
from collections import deque
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


def read_log_tail(log_dir: Path, service: str, index: int, lines: int) -> list[str]:
    """The last ``lines`` lines of instance ``service/index``'s output, across
    its rotated files, oldest first (without line ends; undecodable bytes
    replaced). Empty if it has no log."""
    if lines <= 0:
        return []
    tail: deque[str] = deque(maxlen=lines)
    needed = lines
    chunks: list[list[str]] = []
    for path in reversed(log_files(log_dir, service, index)):  # newest first
        try:
            text = _read_tail_bytes(path, needed).decode(errors="replace")
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


TAIL_READ_BYTES = 64 * 1024
"""Bytes read per step from a log's end when looking for its last lines."""


def _read_tail_bytes(path: Path, lines: int) -> bytes:
    """The end of ``path`` holding at least ``lines`` whole lines (or all of it)."""
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
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
