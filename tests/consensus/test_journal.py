"""The durable Raft journal (`nanomesh.consensus._journal`): entries are on
disk (fdatasync) before anything acknowledges them, survive SIGKILL and a
reopen, keep pysyncobj's file format, and a failing disk pauses the node
(retry with back-off, problem reported, nothing acknowledged) instead of
killing it."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pysyncobj.journal  # type: ignore[import-untyped]
import pytest
import trio

from nanomesh.consensus import (
    CommitTimeout,
    ConsensusConfig,
    StorageError,
    _journal,
    open_consensus,
)
from nanomesh.consensus._journal import (
    DurableJournal,
    JournalAborted,
    guard_sends,
    parse_journal,
)
from nanomesh.disk import RETRY_MAX, describe_disk_error, retry_delay
from nanomesh.wire import Keyring

KEYRING = Keyring([bytes(range(32))])

IpFactory = Callable[[int], list[str]]
ENTRIES = [(b"\x00", 1, 0), (b"put cam", 2, 1), (b"put mic", 3, 1)]


class SyncCounter:
    """Counts fsync/fdatasync calls (the journal's durability barriers)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        for name in ("fsync", "fdatasync"):
            real = getattr(os, name)
            monkeypatch.setattr(os, name, self._counting(real))

    def _counting(self, real: Callable[[int], None]) -> Callable[[int], None]:
        def call(fd: int) -> None:
            self.calls += 1
            real(fd)
        return call


def _filled(path: Path) -> DurableJournal:
    j = DurableJournal(str(path))
    for e in ENTRIES:
        j.add(*e)
    j.sync()
    return j


def test_add_buffers_and_sync_makes_a_burst_durable_with_one_barrier_pair(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    j = DurableJournal(str(tmp_path / "journal"))
    syncs = SyncCounter(monkeypatch)
    for e in ENTRIES:
        j.add(*e)
    assert syncs.calls == 0 and j.dirty, "add only buffers: the burst shares one sync"
    assert list(j[0:3]) == ENTRIES and len(j) == 3
    j.sync()
    assert syncs.calls == 2, "records fdatasynced, then the end offset fdatasynced"
    assert not j.dirty and j.syncs == 1
    j.sync()
    assert syncs.calls == 2, "nothing to write: no barrier"
    # What a power loss leaves is what the file holds now (no close, no flush).
    assert parse_journal((tmp_path / "journal").read_bytes())[0] == ENTRIES


def test_reopen_restores_entries_and_meta(tmp_path: Path) -> None:
    j = _filled(tmp_path / "journal")
    j.setCurrentTerm(7, "10.0.0.2:7948")
    j.setRaftCommitIndex(3)
    j.onOneSecondTimer()
    j._destroy()
    again = DurableJournal(str(tmp_path / "journal"))
    assert list(again[:]) == ENTRIES
    assert again.getCurrentTerm() == 7 and again.getVotedForNodeId() == "10.0.0.2:7948"
    assert again.getRaftCommitIndex() == 3


def test_an_unchanged_commit_index_is_not_written_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A follower is told the commit index with every heartbeat; only a new
    value may cost a durable write of journal.meta."""
    j = _filled(tmp_path / "journal")
    j.setRaftCommitIndex(3)
    j.onOneSecondTimer()
    writes: list[str] = []
    real = _journal.write_durably
    monkeypatch.setattr(_journal, "write_durably",
                        lambda path, data: (writes.append(path), real(path, data)))
    for _ in range(5):
        j.setRaftCommitIndex(3)
        j.onOneSecondTimer()
    assert writes == []
    j.setRaftCommitIndex(4)
    j.onOneSecondTimer()
    assert writes == [str(tmp_path / "journal.meta")]
    j._destroy()


def test_term_and_vote_are_fsynced_before_set_current_term_returns(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    j = DurableJournal(str(tmp_path / "journal"))
    syncs = SyncCounter(monkeypatch)
    j.setCurrentTerm(3, None)
    assert syncs.calls >= 2, "the file and its directory"
    assert DurableJournal(str(tmp_path / "journal")).getCurrentTerm() == 3


def test_the_file_format_is_pysyncobjs_both_ways(tmp_path: Path) -> None:
    old = pysyncobj.journal.FileJournal(str(tmp_path / "old"))
    for e in ENTRIES:
        old.add(*e)
    old.setCurrentTerm(4, None)
    old._destroy()
    upgraded = DurableJournal(str(tmp_path / "old"))
    assert list(upgraded[:]) == ENTRIES and upgraded.getCurrentTerm() == 4
    upgraded.add(b"later", 4, 4)
    upgraded._destroy()
    back = pysyncobj.journal.FileJournal(str(tmp_path / "old"))
    assert [back[i] for i in range(len(back))] == [*ENTRIES, (b"later", 4, 4)]
    back._destroy()


def test_truncation_into_synced_records_is_durable_before_new_records(
        tmp_path: Path) -> None:
    j = _filled(tmp_path / "journal")
    j.add(b"unsynced", 4, 1)
    j.deleteEntriesFrom(1)  # drops one buffered and two synced entries
    assert list(j[:]) == ENTRIES[:1]
    assert parse_journal((tmp_path / "journal").read_bytes())[0] == ENTRIES[:1], \
        "the end moved back on disk at once"
    j.add(b"new", 2, 2)
    j.sync()
    assert list(DurableJournal(str(tmp_path / "journal"))[:]) == [ENTRIES[0], (b"new", 2, 2)]


def test_truncation_of_buffered_entries_only_touches_memory(tmp_path: Path) -> None:
    j = _filled(tmp_path / "journal")
    j.add(b"a", 4, 1)
    j.add(b"b", 5, 1)
    j.deleteEntriesFrom(4)
    j.sync()
    assert list(DurableJournal(str(tmp_path / "journal"))[:]) == [*ENTRIES, (b"a", 4, 1)]


def test_compaction_and_clear_survive_a_reopen(tmp_path: Path) -> None:
    j = _filled(tmp_path / "journal")
    j.add(b"buffered", 4, 1)
    j.deleteEntriesTo(2)
    assert list(DurableJournal(str(tmp_path / "journal"))[:]) == [ENTRIES[2], (b"buffered", 4, 1)]
    assert not (tmp_path / "journal.tmp").exists()
    j.add(b"after", 5, 1)
    j.sync()
    assert len(DurableJournal(str(tmp_path / "journal"))) == 3
    j.clear()
    assert len(DurableJournal(str(tmp_path / "journal"))) == 0


def test_entries_synced_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    script = textwrap.dedent(f"""
        import sys, time
        from nanomesh.consensus._journal import DurableJournal
        j = DurableJournal({str(path)!r})
        for i in range(1, 201):
            j.add(b"cmd %d" % i, i, 1)
            if i % 50 == 0:
                j.sync()
        print("synced", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"synced\n"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(10)
    entries = list(DurableJournal(str(path))[:])
    assert len(entries) == 200 and entries[-1] == (b"cmd 200", 200, 1)


# ------------------------------------------------------------ a failing disk

def _enospc(*_: Any) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failing_write_is_retried_reported_and_cleared(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_journal, "retry_delay", lambda attempt: 0.0)
    real = _journal._pwrite_all
    failures = [3]

    def flaky(fd: int, data: bytes, offset: int) -> None:
        if failures[0]:
            failures[0] -= 1
            _enospc()
        real(fd, data, offset)

    reports: list[str | None] = []
    j = DurableJournal(str(tmp_path / "journal"), on_problem=reports.append)
    monkeypatch.setattr(_journal, "_pwrite_all", flaky)
    j.add(b"x", 1, 1)
    j.sync()  # blocks through three failures
    assert reports[0] is not None and "data disk full" in reports[0]
    assert reports[-1] is None and j.problem is None, "recovered and said so"
    assert len(reports) == 2, "one report per change, not one per retry"
    assert list(DurableJournal(str(tmp_path / "journal"))[:]) == [(b"x", 1, 1)]


def test_abort_ends_a_retry_loop_on_a_disk_that_stays_full(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_journal, "retry_delay", lambda attempt: 0.01)
    j = DurableJournal(str(tmp_path / "journal"))
    monkeypatch.setattr(_journal, "_pwrite_all", _enospc)
    j.add(b"x", 1, 1)
    threading.Timer(0.2, j.abort).start()
    with pytest.raises(JournalAborted):
        j.sync()
    assert j.dirty, "never written, never acknowledged"


def test_guarded_sends_leave_only_after_the_journal_is_durable(tmp_path: Path) -> None:
    j = DurableJournal(str(tmp_path / "journal"))

    class Transport:
        def __init__(self) -> None:
            self.sent: list[tuple[Any, bool]] = []

        def send(self, node: Any, message: Any) -> bool:
            self.sent.append((message, j.dirty))
            return True

    t = Transport()
    guard_sends(t, j)
    j.add(b"x", 1, 1)
    assert t.send("n", {"type": "apply_command_response"})
    assert t.send("n", {"type": "next_node_idx"})
    j.add(b"y", 2, 1)
    assert t.send("n", {"type": "append_entries"})
    assert t.sent == [({"type": "apply_command_response"}, True),
                      ({"type": "next_node_idx"}, False), ({"type": "append_entries"}, False)], \
        "acks and entries wait for the sync; a per-command reply does not"


def test_retry_delay_doubles_up_to_its_cap_and_errors_read_plainly() -> None:
    assert [retry_delay(i) for i in range(3)] == [0.1, 0.2, 0.4]
    assert retry_delay(10) == retry_delay(1000) == RETRY_MAX
    assert describe_disk_error(OSError(errno.ENOSPC, "No space left on device")) == \
        "data disk full: No space left on device"
    assert describe_disk_error(OSError(errno.EIO, "Input/output error")).startswith(
        "I/O error on the data disk")


async def test_a_voter_that_cannot_write_its_journal_acknowledges_nothing(
        ips: IpFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Raft §5.3/5.4: an entry counts toward a commit only once it is on the
    voter's stable storage. A one-voter cluster whose disk fills: the write
    never commits while the disk is full; later writes are refused at once
    (StorageError); when the disk works again the node recovers by itself
    and the pending write commits."""
    monkeypatch.setattr(_journal, "retry_delay", lambda attempt: 0.05)
    config = ConsensusConfig(address=(ips(1)[0], 7948), data_dir=tmp_path / "raft",
                             keyring=KEYRING)
    async with open_consensus(config) as node:
        await node.wait_status(lambda s: s.is_leader and s.ready, timeout=5)
        monkeypatch.setattr(_journal, "_pwrite_all", _enospc)
        with pytest.raises(CommitTimeout):
            await node.put_service("cam", {"image": "cam:1"}, timeout=1.0)
        assert "cam" not in node.state.services, "not acknowledged, not applied"
        assert node.storage_problems and "data disk full" in node.storage_problems[0]
        with pytest.raises(StorageError, match="data disk full"):
            await node.put_service("mic", {"image": "mic:1"})
        monkeypatch.undo()
        await node.wait_state(lambda s: "cam" in s.services, timeout=10)
        with trio.fail_after(5):
            while node.storage_problems:
                await trio.sleep(0.05)
        assert (await node.put_service("mic", {"image": "mic:1"})).applied


async def test_a_follower_that_cannot_write_its_journal_does_not_acknowledge(
        ips: IpFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Raft §5.3: the leader commits an entry once a majority *stored* it. Two
    voters: while the follower's journal writes fail, it acknowledges
    nothing, so the leader cannot commit; once its disk works again it
    writes, acknowledges, and the held write commits on both."""
    monkeypatch.setattr(_journal, "retry_delay", lambda attempt: 0.05)
    a, b = (f"{ip}:7948" for ip in ips(2))
    configs = {addr: ConsensusConfig(address=(addr.split(":")[0], 7948), peers=(other,),
                                     keyring=KEYRING,
                                     data_dir=tmp_path / addr)
               for addr, other in ((a, b), (b, a))}
    real = _journal._pwrite_all
    broken: list[str] = []

    def pwrite(fd: int, data: bytes, offset: int) -> None:
        if broken and os.readlink(f"/proc/self/fd/{fd}").startswith(broken[0]):
            _enospc()
        real(fd, data, offset)

    monkeypatch.setattr(_journal, "_pwrite_all", pwrite)
    async with open_consensus(configs[a]) as node_a, open_consensus(configs[b]) as node_b:
        nodes = {a: node_a, b: node_b}
        leader = await node_a.wait_leader(timeout=10)
        await nodes[leader].wait_status(lambda s: s.is_leader and s.ready, timeout=10)
        follower = b if leader == a else a
        broken.append(str(tmp_path / follower))
        with pytest.raises(CommitTimeout):
            await nodes[leader].put_service("cam", {"image": "cam:1"}, timeout=1.5)
        assert "cam" not in nodes[leader].state.services, "committed without the follower"
        assert nodes[follower].storage_problems
        broken.clear()
        for n in nodes.values():
            await n.wait_state(lambda s: "cam" in s.services, timeout=10)


def test_the_full_dump_is_fsynced_renamed_and_its_directory_fsynced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pysyncobj.serializer  # type: ignore[import-untyped]
    import pysyncobj.syncobj  # type: ignore[import-untyped]

    assert pysyncobj.serializer.atomicReplace is _journal.durable_replace
    assert pysyncobj.syncobj.createJournal is _journal.create_journal
    (tmp_path / "dump.tmp").write_bytes(b"state")
    syncs = SyncCounter(monkeypatch)
    _journal.durable_replace(str(tmp_path / "dump.tmp"), str(tmp_path / "dump"))
    assert syncs.calls == 2, "the file, then the directory"
    assert (tmp_path / "dump").read_bytes() == b"state" and not (tmp_path / "dump.tmp").exists()
