"""Server-Sent Events framing (`nanomesh.monitor.sse`): what the peer writes,
the parser reads back, however the bytes are cut; resumption across a
peer's restart; garbage refused."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nanomesh.monitor.eventlog import EventLog, Fact
from nanomesh.monitor.sse import (
    KEEPALIVE,
    MAX_LINE,
    SseError,
    SseParser,
    frame,
    resume_after,
    retry_frame,
)

LIFE = "6ca251e5aeaf9238"


def frames(n: int) -> tuple[bytes, list[int]]:
    log = EventLog()
    events = [log.append(Fact("member.left", f"p{i}", "left the mesh\nreally"), float(i))
              for i in range(n)]
    data = retry_frame() + b"".join(frame(e, LIFE) + KEEPALIVE for e in events)
    return data, [e.seq for e in events]


@given(st.lists(st.integers(min_value=1, max_value=40), max_size=30))
def test_the_parser_reads_back_every_frame_however_the_bytes_are_cut(cuts: list[int]) -> None:
    data, seqs = frames(5)
    parser, got, pos = SseParser(), [], 0
    for cut in [*cuts, len(data)]:
        got += parser.feed(data[pos:pos + cut])
        pos += cut
    assert [json.loads(m.data)["seq"] for m in got] == seqs
    assert got[-1].id == f"{LIFE}:5" and parser.last_id == f"{LIFE}:5"
    assert parser.retry_ms == 2000
    assert json.loads(got[0].data)["message"] == "left the mesh\nreally"  # escaped, one line


def test_crlf_and_cr_line_ends_multi_line_data_and_named_events() -> None:
    parser = SseParser()
    got = parser.feed(b"event: note\r\ndata: a\r\ndata: b\r\n\r\n: c\rdata: x\r\r")
    assert [(m.event, m.data) for m in got] == [("note", "a\nb")]
    # A CR at the end may be half a CRLF: the blank line is complete with
    # the next byte (here the LF of that CRLF), not before.
    assert [(m.event, m.data) for m in parser.feed(b"\n")] == [("message", "x")]


def test_a_line_without_end_cannot_grow_without_bound() -> None:
    parser = SseParser()
    with pytest.raises(SseError, match="over"):
        parser.feed(b"data: " + b"x" * MAX_LINE)
    with pytest.raises(SseError, match="UTF-8"):
        SseParser().feed(b"data: \xff\n\n")


def test_resume_after_the_same_life_or_from_the_start_after_a_restart() -> None:
    assert resume_after(None, 7, LIFE) == 7
    assert resume_after("", None, LIFE) == 0
    assert resume_after(f"{LIFE}:41", 7, LIFE) == 41  # Last-Event-ID wins
    assert resume_after("00ff:41", 7, LIFE) == 0  # another life: everything it holds


@pytest.mark.parametrize("bad", ["41", "life:41", f"{LIFE}:", f"{LIFE}:-1", "x" * 200])
def test_a_forged_last_event_id_is_refused(bad: str) -> None:
    with pytest.raises(SseError, match="LIFE:SEQ"):
        resume_after(bad, None, LIFE)
