"""A durable Raft journal for pysyncobj: nothing is acknowledged before it is
on disk, and a full or failing disk pauses this node instead of killing it.

Why. pysyncobj's ``FileJournal`` writes through an mmap and never flushes:
entries survive SIGKILL (the page cache outlives the process) but not power
loss, so a voter could acknowledge an entry, lose it, and let a committed
write vanish (Raft §5.4 assumes every acknowledged entry is on stable
storage). Worse, the mmap grows the file sparsely: on a full disk the first
store into a new page is a SIGBUS, which kills the daemon outright.

How pysyncobj uses its journal (0.3.17, ``syncobj.py``), and where the
durability barriers sit:

- a follower appends the entries of an AppendEntries message (``add``) and
  then sends its acknowledgement (``next_node_idx``) on the same call stack;
  a leader appends client commands in ``_checkCommandsToApply`` and counts
  its own log in the commit index at the start of the *next* tick;
- ``currentTerm``/``votedFor`` go through ``setCurrentTerm`` right before the
  vote request or grant that reflects them is sent.

So ``add`` only buffers, and `DurableJournal.sync` writes and fdatasyncs the
buffer (one fsync pair per burst, however many entries it holds). `sync` runs
(1) before every message that carries or acknowledges log entries
(`guard_sends`: a follower's ``next_node_idx``, a leader's
``append_entries``; not the leader's per-command ``apply_command_response``
to a forwarding follower, which would cost a sync per command) and (2) at
every tick (`RaftNode._tick`, after the commands of the tick were appended,
before the next tick counts them). Term and vote are stored synchronously.
The only entry that can count toward a commit before it is synced is the
no-op a *single* voter appends when it elects itself (same tick); it
carries no data. Cost: about four fdatasyncs on a write's path (leader and
follower, records then end offset); see README "Measured".

A failed write (ENOSPC, EIO, EROFS...) is retried with back-off
(`nanomesh.disk.retry_delay`) *on the tick thread*, which therefore stops:
no message leaves, nothing commits, no vote is granted, until the write
succeeds. The rest of the cluster sees a silent node (it elects another
leader if this one led); when space is freed the write goes through, the
node catches up and the problem is cleared. Every state change is logged
and reported through ``on_problem``.

File format: pysyncobj's own (header, then ``len | idx term command | len``
records, the end offset in the header), so journals written by pysyncobj's
``FileJournal`` load unchanged. Records are written and fdatasynced *before*
the header's end offset moves past them (so a torn write is never inside
the journal); a truncation moves the end back durably before new records are
written over the old ones; a compaction writes a new file and renames it in.
The metadata (term, vote, commit index) is pysyncobj's ``.meta`` pickle,
written to a temporary file, fsynced, renamed, and the directory fsynced.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from collections.abc import Callable
from typing import Any

import pysyncobj  # type: ignore[import-untyped]
import pysyncobj.journal  # type: ignore[import-untyped]
import pysyncobj.serializer  # type: ignore[import-untyped]
from pysyncobj.pickle import dumps, loads, to_bytes  # type: ignore[import-untyped]

from nanomesh.disk import RETRY_MAX, describe_disk_error, fsync_dir, retry_delay, write_durably

log = logging.getLogger("nanomesh.consensus")

FIRST_RECORD_OFFSET: int = pysyncobj.journal.FIRST_RECORD_OFFSET
END_OFFSET_AT: int = pysyncobj.journal.LAST_RECORD_OFFSET_OFFSET
_END = struct.Struct("<I")
_LEN = struct.Struct("<I")
_IDX_TERM = struct.Struct("<QQ")


Entry = tuple[bytes, int, int]
"""pysyncobj's log entry: (command, index, term)."""
ProblemCallback = Callable[[str | None], None]
"""Called on the tick thread with a description when writing starts to fail,
and with None when it works again."""


class JournalAborted(Exception):
    """The node is being destroyed while a journal write was being retried."""


# ------------------------------------------------------------ the format (pure)

def default_header() -> bytes:
    """pysyncobj's journal header: name, version, format, end offset."""
    name: bytes = pysyncobj.journal.APP_NAME.ljust(pysyncobj.journal.NAME_SIZE, b"\0")
    version: bytes = pysyncobj.journal.APP_VERSION.ljust(pysyncobj.journal.VERSION_SIZE, b"\0")
    return name + version + struct.pack("<II", pysyncobj.journal.JOURNAL_FORMAT_VERSION,
                                        FIRST_RECORD_OFFSET)


def encode_record(command: Any, idx: int, term: int) -> bytes:
    body = _IDX_TERM.pack(idx, term) + bytes(to_bytes(command))
    length = _LEN.pack(len(body))
    return length + body + length


def parse_journal(data: bytes) -> tuple[list[Entry], int]:
    """The entries of a journal file and its end offset. ValueError if the
    file is not a journal or a record crosses the recorded end."""
    if len(data) < FIRST_RECORD_OFFSET or not data.startswith(pysyncobj.journal.APP_NAME):
        raise ValueError("not a pysyncobj journal (bad header)")
    end = _END.unpack_from(data, END_OFFSET_AT)[0]
    if not FIRST_RECORD_OFFSET <= end <= len(data):
        raise ValueError(f"journal end offset {end} outside the file ({len(data)} bytes)")
    entries: list[Entry] = []
    offset = FIRST_RECORD_OFFSET
    while offset < end:
        size = _LEN.unpack_from(data, offset)[0]
        if offset + 8 + size > end or size < _IDX_TERM.size:
            raise ValueError(f"journal record at offset {offset} crosses the end")
        idx, term = _IDX_TERM.unpack_from(data, offset + 4)
        entries.append((data[offset + 4 + _IDX_TERM.size:offset + 4 + size], idx, term))
        offset += size + 8
    return entries, end


def durable_replace(tmp: str, path: str) -> None:
    """pysyncobj's ``atomicReplace`` for the full dump, made durable: the
    dump was written to `tmp` and closed; fsync it, rename, fsync the dir."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path)


# ------------------------------------------------------------ the journal

class DurableJournal(pysyncobj.journal.Journal):  # type: ignore[misc]
    """pysyncobj's journal interface over plain writes and fdatasync.

    Thread: every method runs on pysyncobj's tick thread (or the constructing
    thread, before the tick thread starts), except `abort` and `problem`.
    """

    def __init__(self, path: str, on_problem: ProblemCallback | None = None) -> None:
        self.path = path
        self.on_problem = on_problem
        self.problem: str | None = None
        self.syncs = 0
        """How many times a batch of entries was made durable (for tests and
        measurements)."""
        self._aborted = threading.Event()
        self._meta_path = path + ".meta"
        self._meta: dict[str, Any] = _load_meta(self._meta_path)
        self._meta_dirty = False
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        data = _read_all(self._fd)
        if not data:  # new: on a full disk this raises, and the node does not start
            self._write_header_only()
            data = default_header()
        self._entries, self._written = parse_journal(data)
        self._buffer = bytearray()
        """Records appended but not yet written; they start at `_written`."""

    # ------------------------------------------------ pysyncobj's interface

    def add(self, command: Any, idx: int, term: int) -> None:
        self._entries.append((command, idx, term))
        self._buffer += encode_record(command, idx, term)

    def clear(self) -> None:
        self._entries = []
        self._buffer.clear()
        self._retry("truncate the Raft journal", lambda: self._set_end(FIRST_RECORD_OFFSET))

    def __getitem__(self, item: Any) -> Any:
        return self._entries[item]

    def __len__(self) -> int:
        return len(self._entries)

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        removed = self._entries[entryFrom:]
        del self._entries[entryFrom:]
        size = sum(len(encode_record(*e)) for e in removed)
        if size <= len(self._buffer):
            del self._buffer[len(self._buffer) - size:]
            return
        # Into records already on disk: move the end back durably *before*
        # newer records are written over them.
        end = self._written + len(self._buffer) - size
        self._buffer.clear()
        self._retry("truncate the Raft journal", lambda: self._set_end(end))

    def deleteEntriesTo(self, entryTo: int) -> None:
        """Compaction: keep entries from `entryTo` on, in a new file renamed
        over the old one (a crash leaves either journal whole)."""
        kept = self._entries[entryTo:]
        body = b"".join(encode_record(*e) for e in kept)
        data = bytearray(default_header() + body)
        _END.pack_into(data, END_OFFSET_AT, len(data))
        self._retry("compact the Raft journal", lambda: self._replace_file(bytes(data)))
        self._entries, self._buffer, self._written = kept, bytearray(), len(data)

    def _destroy(self) -> None:
        try:
            self._sync_once()
            self._store_meta_if_dirty()
        except OSError as exc:
            log.error("raft journal: could not write the last entries on shutdown (%s); "
                      "they were never acknowledged", describe_disk_error(exc))
        finally:
            os.close(self._fd)

    def flush(self) -> None:
        self.sync()

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:
        # A hint for the restart (pysyncobj clamps it to the journal), stored
        # at most once a second by onOneSecondTimer. A follower is told the
        # index with every heartbeat, changed or not: only a change is stored
        # (else an idle follower rewrote and fsynced journal.meta ~33 times a
        # second once `_pysyncobj` stores each change at once).
        if self._meta.get("raftCommitIndex") == raftCommitIndex:
            return
        self._meta["raftCommitIndex"] = raftCommitIndex
        self._meta_dirty = True

    def getRaftCommitIndex(self) -> int:
        return int(self._meta.get("raftCommitIndex", 1))

    def setCurrentTerm(self, term: int, votedForNodeId: Any) -> None:
        # Raft §5: durable before the vote request or grant that reflects it.
        self._meta["currentTerm"] = term
        self._meta["votedForNodeId"] = votedForNodeId
        self._meta_dirty = True
        self._retry("store the Raft term and vote", self._store_meta_if_dirty)

    def getCurrentTerm(self) -> int:
        return int(self._meta.get("currentTerm", 0))

    def getVotedForNodeId(self) -> Any:
        return self._meta.get("votedForNodeId")

    def onOneSecondTimer(self) -> None:
        if not self._meta_dirty:
            return
        try:
            self._store_meta_if_dirty()
        except OSError as exc:
            self._failed("store the Raft commit index", exc)  # retried next second
            return
        self._succeeded("store the Raft commit index", 0)

    # ------------------------------------------------ durability

    def sync(self) -> None:
        """Make every appended entry durable; retry (blocking the calling
        tick thread) until it is. Cheap when there is nothing to write."""
        if self._buffer:
            self._retry("write the Raft journal", self._sync_once)

    def abort(self) -> None:
        """From any thread: stop retrying (the node is being destroyed)."""
        self._aborted.set()

    @property
    def dirty(self) -> bool:
        return bool(self._buffer)

    def _sync_once(self) -> None:
        if not self._buffer:
            return
        end = self._written + len(self._buffer)
        _pwrite_all(self._fd, bytes(self._buffer), self._written)
        os.fdatasync(self._fd)
        self._set_end(end)
        self._buffer.clear()
        self.syncs += 1

    def _set_end(self, end: int) -> None:
        _pwrite_all(self._fd, _END.pack(end), END_OFFSET_AT)
        os.fdatasync(self._fd)
        self._written = end

    def _write_header_only(self) -> None:
        _pwrite_all(self._fd, default_header(), 0)
        os.fsync(self._fd)
        fsync_dir(self.path)

    def _replace_file(self, data: bytes) -> None:
        write_durably(self.path, data)
        fd = os.open(self.path, os.O_RDWR)
        os.close(self._fd)
        self._fd = fd

    def _store_meta_if_dirty(self) -> None:
        if self._meta_dirty:
            write_durably(self._meta_path, dumps(self._meta))
            self._meta_dirty = False

    def _retry(self, what: str, write: Callable[[], None]) -> None:
        attempt = 0
        while True:
            try:
                write()
            except OSError as exc:
                self._failed(what, exc)
                if self._aborted.wait(retry_delay(attempt)):
                    raise JournalAborted(f"{what}: node destroyed while retrying") from exc
                attempt += 1
                continue
            break
        self._succeeded(what, attempt)

    def _succeeded(self, what: str, retries: int) -> None:
        if self.problem is not None:
            log.warning("raft journal: writing works again (%s, after %d retries); "
                        "this node takes part in Raft again", what, retries)
            self._report(None)

    def _failed(self, what: str, exc: OSError) -> None:
        problem = f"{describe_disk_error(exc)}: cannot {what} ({self.path})"
        if problem != self.problem:
            log.error("raft journal: %s; this node acknowledges nothing and sends no Raft "
                      "message until the write succeeds (retrying every %.1f s at most)",
                      problem, RETRY_MAX)
            self._report(problem)

    def _report(self, problem: str | None) -> None:
        self.problem = problem
        if self.on_problem is not None:
            try:
                self.on_problem(problem)
            except Exception:
                log.exception("raft journal: the problem callback failed")


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    chunks, offset = [], 0
    while offset < size:
        chunk = os.pread(fd, size - offset, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _load_meta(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            meta = loads(f.read())
    except FileNotFoundError:
        return {}
    except Exception:
        log.exception("raft journal: unreadable metadata %s; starting without it", path)
        return {}
    return meta if isinstance(meta, dict) else {}


LOG_MESSAGES = frozenset({"next_node_idx", "append_entries"})
"""pysyncobj's message types that acknowledge or carry log entries: they
leave only once the journal is durable."""


def guard_sends(transport: Any, journal: DurableJournal) -> None:
    """Make `transport.send` sync the journal before a `LOG_MESSAGES` message:
    no acknowledgement (and no entry) leaves this node ahead of its journal."""
    send = transport.send

    def durable_send(node: Any, message: Any) -> Any:
        if isinstance(message, dict) and message.get("type") in LOG_MESSAGES:
            journal.sync()
        return send(node, message)

    transport.send = durable_send


def create_journal(journal_file: str | None = None) -> Any:
    """pysyncobj's ``createJournal``, with `DurableJournal` for files."""
    if journal_file is None:
        return pysyncobj.journal.MemoryJournal()
    return DurableJournal(journal_file)


def install() -> None:
    """Make pysyncobj create durable journals and write its full dump durably
    (both are looked up as module globals at use)."""
    pysyncobj.syncobj.createJournal = create_journal
    pysyncobj.serializer.atomicReplace = durable_replace
