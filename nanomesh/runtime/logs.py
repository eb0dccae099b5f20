"""Instance log files: ``<log_dir>/<service>.<index>.log``, stdout and stderr together.

Rotation is deliberately simple for now: when an instance starts and its log
is larger than :data:`ROTATE_BYTES`, the log becomes ``<name>.log.1``
(replacing an older ``.1``) and a fresh file is begun, so a crash-looping
service cannot fill the disk across restarts. A single long run can still grow
its log without bound: size-capped rotation *during* a run needs the daemon to
sit in the output path (a pipe it copies), which is issue 4's log collector.

These functions block (file system calls); the driver runs them in a thread.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

ROTATE_BYTES = 5 * 1024 * 1024
"""A log over this size (5 MiB) at an instance's start is rotated to ``.1``:
two files of about this size per instance at most across restarts (the edge
devices have small flash storage; 5 MiB keeps hours of chatty output)."""


def log_path(log_dir: Path, service: str, index: int) -> Path:
    """Where the output of instance ``service/index`` goes."""
    return Path(log_dir) / f"{service}.{index}.log"


def open_log(path: Path, header: str, rotate_bytes: int = ROTATE_BYTES) -> int:
    """Create the log's directory, rotate the log if it is over ``rotate_bytes``,
    append a ``header`` line, and return a file descriptor opened for appending
    (the caller hands it to the child and closes its own copy)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if path.stat().st_size > rotate_bytes:
            os.replace(path, path.with_name(path.name + ".1"))
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
