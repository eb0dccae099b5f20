"""The data disk's health: what this peer cannot write right now, and why.

A full or failing data disk must not kill the daemon: membership, the API
and the instances keep running, the peer reports itself degraded (``GET
/v1/health`` says ``"status": "degraded"`` with its problems; the gossiped
profile carries them, so ``nanomesh members`` shows them on every peer),
writes it cannot persist are refused with a plain error, and everything
recovers by itself once space is freed.

Where the daemon writes its data directory, and what a failed write does:

- ``peer.json`` (incarnation, peers to rejoin): kept dirty and retried with
  back-off (`retry_delay`) by the peer's disk watch; a restart before it is
  saved starts from the older incarnation, which the mesh refutes as usual;
- the Raft journal, its metadata and full dump, ``voters.json``
  (`nanomesh.consensus._journal`, `nanomesh.consensus.node`): the Raft node
  pauses and retries on its own thread; it acknowledges nothing meanwhile and
  refuses new writes (`StorageError`: the API answers 507);
- bundles (`nanomesh.bundles.store`): an upload or fetch that cannot be
  stored fails (507 for an upload) and leaves no partial file;
- the management token: created by the founder before it is committed;
  retried with back-off;
- instance logs and state directories: the shim drops log output it cannot
  write; an instance whose directory cannot be made fails to start and is
  retried by the reconciler.

Besides write failures, the watch reads the free space (`statvfs`) once a
second: below `MIN_FREE_BYTES` the peer is degraded before any write fails.
This module is the pure part (the record of problems, the thresholds, the
back-off) and two one-line system reads; the daemon's shell calls it.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

MIN_FREE_BYTES = 1 << 20
"""Free bytes on the data disk below which the peer reports itself degraded
(1 MiB: room for a few Raft batches and the small state files, but not for
a bundle; a disk that low is full for practical purposes)."""
WATCH_PERIOD = 1.0
"""Seconds between two looks at the free space and at the Raft node's
problems; a freed disk is noticed within this long (plus the back-off of a
write being retried, at most `RETRY_MAX`)."""
RETRY_FIRST = 0.1
"""Seconds before the first retry of a failed write to the data directory;
doubles up to `RETRY_MAX`. Short: a transient EIO or a quickly freed disk
costs little."""
RETRY_MAX = 5.0
"""Longest pause, in seconds, between retries of a failed write: a freed
disk is noticed within this long."""


def retry_delay(attempt: int) -> float:
    """Seconds to wait after the `attempt`-th consecutive failure (0-based)."""
    return float(min(RETRY_FIRST * 2 ** min(attempt, 32), RETRY_MAX))


def describe_disk_error(exc: OSError) -> str:
    """What happened to the disk, in a few words, then the system's message:
    the start of every log line and API error about a failed write."""
    kind = {errno.ENOSPC: "data disk full", errno.EDQUOT: "disk quota exceeded",
            errno.EROFS: "data disk read-only", errno.EIO: "I/O error on the data disk"}
    return f"{kind.get(exc.errno or 0, 'cannot write the data disk')}: {exc.strerror or exc}"


@dataclass
class DiskHealth:
    """The current problems of this peer's data directory, by key (one per
    kind of write). Pure: the shell reports failures and successes and reads
    `problems`; the return values say when to log a change."""

    _problems: dict[str, str] = field(default_factory=dict)

    def failed(self, key: str, what: str, exc: OSError) -> str | None:
        """Record that writing `what` failed; the problem text if it is new
        (log it), None if it was already known."""
        problem = f"{describe_disk_error(exc)}: cannot {what}"
        if self._problems.get(key) == problem:
            return None
        self._problems[key] = problem
        return problem

    def set(self, key: str, problem: str | None) -> bool:
        """Set or clear a problem found elsewhere; True if it changed."""
        if problem is None:
            return self._problems.pop(key, None) is not None
        changed = self._problems.get(key) != problem
        self._problems[key] = problem
        return changed

    def succeeded(self, key: str) -> bool:
        """Record that a write of this kind worked; True if it was failing."""
        return self._problems.pop(key, None) is not None

    def failing(self, key: str) -> bool:
        return key in self._problems

    def problems(self, extra: Iterable[str] = ()) -> list[str]:
        """Every current problem, this record's first, then `extra` (e.g.
        the Raft node's), without duplicates."""
        out = list(self._problems.values())
        out += [p for p in extra if p not in out]
        return out


def low_space_problem(free: int, path: Path, minimum: int = MIN_FREE_BYTES) -> str | None:
    """The problem to report when only `free` bytes are left, else None."""
    if free >= minimum:
        return None
    return (f"data disk full: {free // 1024} KiB free in {path} "
            f"(at least {minimum // 1024} KiB needed)")


def free_bytes(path: Path) -> int:
    """Bytes this process may still write on the file system of `path` (root
    may use the blocks reserved for it)."""
    st = os.statvfs(path)
    blocks = st.f_bfree if os.geteuid() == 0 else st.f_bavail
    return blocks * st.f_frsize


def summary(problems: list[str]) -> str:
    """One short phrase for a table column: the kind of the first problem
    (``data disk full``), with a count if there are more."""
    if not problems:
        return "ok"
    first = problems[0].split(":", 1)[0]
    return f"degraded: {first}" + (f" (+{len(problems) - 1})" if len(problems) > 1 else "")


def fsync_dir(path: str) -> None:
    """fsync the directory holding `path`: a rename into it is durable."""
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: str, data: bytes) -> None:
    """Replace `path` with `data` atomically and durably: temporary file,
    fsync, rename, fsync of the directory. The temporary file is removed if
    anything fails (a full disk must not keep a half-written file)."""
    write_atomically(path, data, durable=True)


def write_atomically(path: str, data: bytes, *, durable: bool = False) -> None:
    """Replace `path` with `data` atomically (temporary file, rename): a
    reader sees the old or the new file, never a half-written one, and a
    failed write (OSError) leaves the old file and no temporary file. With
    `durable`, also fsync the file before and the directory after the rename
    (a power cut then keeps the new file); without, the write never blocks
    on the disk (for the event loop's small, frequent saves)."""
    tmp = path + ".tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path)
