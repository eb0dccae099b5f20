"""The pure parts of the data disk's health (`nanomesh.disk`) and the atomic
writes the daemon's state files go through: a failed write (a full disk)
keeps the previous file whole and leaves no temporary file."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest

from nanomesh import disk
from nanomesh.cli.mesh import problems as _problems
from nanomesh.daemon.membership import PEER_STATE, prepare_data_dir, save_peer_state
from nanomesh.disk import (
    DiskHealth,
    low_space_problem,
    retry_delay,
    summary,
    write_atomically,
    write_durably,
)

ENOSPC = OSError(errno.ENOSPC, "No space left on device")


def test_a_problem_is_reported_once_and_cleared_once() -> None:
    health = DiskHealth()
    first = health.failed("peer-state", "save the peer state (peer.json)", ENOSPC)
    assert first == "data disk full: No space left on device: cannot save the peer state " \
                    "(peer.json)"
    assert health.failed("peer-state", "save the peer state (peer.json)", ENOSPC) is None, \
        "the same failure again: nothing new to log"
    assert health.failing("peer-state")
    assert health.problems(["raft journal: x", first]) == [first, "raft journal: x"]
    assert health.succeeded("peer-state") and not health.succeeded("peer-state")
    assert health.problems() == []


def test_set_reports_whether_a_problem_changed() -> None:
    health = DiskHealth()
    assert health.set("low-space", "data disk full: 0 KiB free")
    assert not health.set("low-space", "data disk full: 0 KiB free")
    assert health.set("low-space", None) and not health.set("low-space", None)


@pytest.mark.parametrize(("free", "expected"), [
    (disk.MIN_FREE_BYTES, None),
    (disk.MIN_FREE_BYTES * 100, None),
    (disk.MIN_FREE_BYTES - 1, "data disk full: 1023 KiB free in /d (at least 1024 KiB needed)"),
    (0, "data disk full: 0 KiB free in /d (at least 1024 KiB needed)"),
])
def test_low_space_threshold(free: int, expected: str | None) -> None:
    assert low_space_problem(free, Path("/d")) == expected


def test_summary_is_short_enough_for_a_table_column() -> None:
    assert summary([]) == "ok"
    assert summary(["data disk full: 0 KiB free in /d"]) == "degraded: data disk full"
    assert summary(["I/O error on the data disk: x", "data disk full: y"]) == \
        "degraded: I/O error on the data disk (+1)"


def test_members_column_reads_only_a_list_of_problems() -> None:
    assert _problems(None) == [] and _problems({}) == []
    assert _problems({"degraded": "garbage"}) == []
    assert _problems({"degraded": ["data disk full: x"]}) == ["data disk full: x"]


def test_retry_delay_is_capped() -> None:
    assert retry_delay(0) == disk.RETRY_FIRST
    assert max(retry_delay(i) for i in range(100)) == disk.RETRY_MAX


def _fail_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    def write(fd: int, data: Any) -> int:
        raise ENOSPC
    monkeypatch.setattr(os, "write", write)


@pytest.mark.parametrize("writer", [write_atomically, write_durably])
def test_a_failed_write_keeps_the_old_file_and_no_temporary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: Any) -> None:
    path = tmp_path / "state.json"
    writer(str(path), b"old\n")
    _fail_writes(monkeypatch)
    with pytest.raises(OSError) as err:
        writer(str(path), b"new\n")
    assert err.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert path.read_bytes() == b"old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_peer_state_survives_a_failed_save(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    save_peer_state(tmp_path, 4, [("127.0.0.2", 7946)])
    _fail_writes(monkeypatch)
    with pytest.raises(OSError):
        save_peer_state(tmp_path, 5, [])
    monkeypatch.undo()
    assert json.loads((tmp_path / PEER_STATE).read_text())["incarnation"] == 4
    assert prepare_data_dir(tmp_path) == (4, (("127.0.0.2", 7946),))
