"""`StreamAdmission`: what outsiders can hold on the gossip TCP port."""

from __future__ import annotations

from nanomesh.daemon.limits import StreamAdmission


def test_streams_are_capped_per_source_and_in_all() -> None:
    adm = StreamAdmission(max_per_source=2, max_streams=3, max_bytes=10)
    assert adm.admit("a") and adm.admit("a")
    assert not adm.admit("a"), "a third stream from one source"
    assert adm.admit("b")
    assert not adm.admit("c"), "over the total"
    adm.release("a")
    assert adm.admit("c") and not adm.admit("a")


def test_buffered_bytes_stay_within_the_budget() -> None:
    adm = StreamAdmission(max_bytes=10)
    assert adm.reserve(6) and not adm.reserve(5) and adm.reserve(4)
    adm.free(6)
    assert adm.reserve(6) and not adm.reserve(1)


def test_one_frame_larger_than_the_budget_passes_alone() -> None:
    adm = StreamAdmission(max_bytes=10)
    assert adm.reserve(25), "a large legitimate push-pull, nothing else buffered"
    assert not adm.reserve(1)
    adm.free(25)
    assert adm.reserve(3) and not adm.reserve(25)
