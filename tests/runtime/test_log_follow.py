"""Following an instance's log (``nanomesh logs -f``): a cursor from the
tail, then every whole line written after it exactly once, across restarts
(appends) and rotations (renames), within a bounded read per poll."""

from __future__ import annotations

from pathlib import Path

import pytest

from nanomesh.runtime.logs import LogCursor, log_path, log_tail, read_log_after
from nanomesh.runtime.shim import rotate_files


def append(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


def follow(log_dir: Path, cursor: LogCursor, max_bytes: int = 1 << 20
           ) -> tuple[list[str], LogCursor]:
    """Read until nothing new comes (several polls if `max_bytes` is small)."""
    out: list[str] = []
    while True:
        lines, nxt, gap = read_log_after(log_dir, "svc", 0, cursor, max_bytes)
        assert not gap
        if nxt == cursor:
            return out, cursor
        out += lines
        cursor = nxt


def test_the_tail_stops_before_an_unfinished_line_and_follow_gives_it_once_whole(
        tmp_path: Path) -> None:
    live = log_path(tmp_path, "svc", 0)
    append(live, "one\ntwo\nthr")
    lines, cursor = log_tail(tmp_path, "svc", 0, 10)
    assert lines == ["one", "two"] and cursor is not None and cursor.offset == len("one\ntwo\n")
    assert follow(tmp_path, cursor)[0] == []  # still unfinished
    append(live, "ee\n=== nanomesh: exited 0\n=== nanomesh: starting svc/0\nfour\n")
    got, cursor = follow(tmp_path, cursor)
    assert got == ["three", "=== nanomesh: exited 0", "=== nanomesh: starting svc/0", "four"]
    assert follow(tmp_path, cursor)[0] == []


def test_a_rotation_loses_and_repeats_nothing(tmp_path: Path) -> None:
    live = log_path(tmp_path, "svc", 0)
    append(live, "a1\na2\n")
    _, cursor = log_tail(tmp_path, "svc", 0, 1)
    assert cursor is not None
    append(live, "a3\na4\n")
    rotate_files(str(live), 2)  # the shim renames the live file: .log -> .log.1
    append(live, "b1\n")
    got, cursor = follow(tmp_path, cursor)
    assert got == ["a3", "a4", "b1"]
    append(live, "b2\n")
    rotate_files(str(live), 2)
    append(live, "c1\n")
    assert follow(tmp_path, cursor)[0] == ["b2", "c1"]


def test_a_small_budget_follows_in_several_reads(tmp_path: Path) -> None:
    live = log_path(tmp_path, "svc", 0)
    append(live, "")
    _, cursor = log_tail(tmp_path, "svc", 0, 5)
    assert cursor is not None and cursor.offset == 0
    lines = [f"line {i:03d} " + "x" * 20 for i in range(50)]
    append(live, "".join(f"{line}\n" for line in lines))
    got, cursor = follow(tmp_path, cursor, max_bytes=100)
    assert got == lines
    append(live, "y" * 300 + "\n")  # longer than the budget: cut, never stalled
    assert "".join(follow(tmp_path, cursor, 100)[0]) == "y" * 300


def test_a_cursor_whose_file_was_rotated_away_resumes_at_the_oldest_kept(
        tmp_path: Path) -> None:
    live = log_path(tmp_path, "svc", 0)
    append(live, "old\n")
    _, cursor = log_tail(tmp_path, "svc", 0, 1)
    assert cursor is not None
    for text in ("r1\n", "r2\n", "r3\n"):  # three rotations, two kept: "old"'s file is gone
        rotate_files(str(live), 2)
        append(live, text)
    lines, nxt, gap = read_log_after(tmp_path, "svc", 0, cursor)
    assert gap and lines == ["r1", "r2", "r3"] and nxt.inode == live.stat().st_ino


def test_no_log_yet_is_no_line_and_the_same_cursor(tmp_path: Path) -> None:
    assert log_tail(tmp_path, "svc", 0, 10) == ([], None)
    assert read_log_after(tmp_path, "svc", 0, LogCursor(5, 7, 1)) == (
        [], LogCursor(5, 7, 1), False)


@pytest.mark.parametrize("text", ["", "12", "12:3", ":3:4", "a:1:2", "1:-2:3", "1:2:3:4",
                                  "9" * 30 + ":1:1"])
def test_a_cursor_that_is_not_one_is_refused_with_its_form(text: str) -> None:
    with pytest.raises(ValueError, match="INODE:OFFSET:CHECK"):
        LogCursor.parse(text)


def test_a_cursor_survives_its_text_form() -> None:
    assert LogCursor.parse(str(LogCursor(123456, 789, 42))) == LogCursor(123456, 789, 42)
