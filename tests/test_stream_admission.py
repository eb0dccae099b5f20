"""`StreamAdmission`: what outsiders can hold on the gossip TCP port."""

from __future__ import annotations

from nanomesh.daemon.limits import (
    MAX_BUFFERED_BYTES,
    MAX_BYTES_PER_SOURCE,
    StreamAdmission,
)
from nanomesh.wire import MAX_FRAME


def test_streams_are_capped_per_source_and_in_all() -> None:
    adm = StreamAdmission(max_per_source=2, max_streams=3)
    assert adm.admit("a") and adm.admit("a")
    assert not adm.admit("a"), "a third stream from one source"
    assert adm.admit("b")
    assert not adm.admit("c"), "over the total"
    adm.release("a")
    assert adm.admit("c") and not adm.admit("a")


def test_one_source_at_its_quota_does_not_block_another() -> None:
    """The confirmed denial of service: one source's frame used to reserve
    the whole budget, so every other source's stream was refused."""
    adm = StreamAdmission(max_bytes_per_source=10, max_bytes=100)
    assert adm.reserve("attacker", 10)
    assert not adm.reserve("attacker", 1), "over its own quota"
    assert adm.reserve("member", 10), "another source is not affected"
    assert adm.held("attacker") == 10 and adm.held("member") == 10 and adm.held() == 20


def test_the_quota_is_shared_by_a_sources_streams_and_returned_on_free() -> None:
    adm = StreamAdmission(max_bytes_per_source=10, max_bytes=100)
    assert adm.reserve("a", 6) and not adm.reserve("a", 5) and adm.reserve("a", 4)
    adm.free("a", 6)
    assert adm.reserve("a", 6) and not adm.reserve("a", 1)
    adm.free("a", 10)
    assert adm.held("a") == 0 and adm.held() == 0


def test_the_total_is_capped_over_all_sources() -> None:
    adm = StreamAdmission(max_bytes_per_source=10, max_bytes=25)
    assert adm.reserve("a", 10) and adm.reserve("b", 10)
    assert not adm.reserve("c", 6), "over the total"
    assert adm.held("c") == 0, "a refused reservation charges nothing"
    assert adm.reserve("c", 5)
    adm.free("a", 10)
    assert adm.reserve("c", 5)


def test_a_frame_above_the_per_source_quota_never_fits() -> None:
    """No exception for a large frame arriving alone any more."""
    adm = StreamAdmission(max_bytes_per_source=10, max_bytes=25)
    assert adm.fits(10) and not adm.fits(11)
    assert not StreamAdmission().fits(MAX_FRAME - 16), "the 8 MiB announce of the attack"


def test_the_defaults_admit_a_large_push_pull_and_bound_the_total() -> None:
    push_pull_5000_members = 300 * 1024
    assert StreamAdmission().fits(push_pull_5000_members * 3)
    assert MAX_BUFFERED_BYTES // MAX_BYTES_PER_SOURCE >= 8, "a few sources cannot fill it"
    assert MAX_BUFFERED_BYTES <= MAX_FRAME, "no more than one frame held before"
