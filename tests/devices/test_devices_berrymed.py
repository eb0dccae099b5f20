"""The BerryMed BM1000 packet decoder (BCI protocol, nanomesh.devices.berrymed)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nanomesh.devices.berrymed import (
    PacketStream,
    decode_packet,
    encode_packet,
)
from nanomesh.errors import RemoteProtocolError


def test_a_known_packet_decodes() -> None:
    """Byte 2 bit 6 is bit 7 of the pulse rate: 0x40 | 0x05 -> 128 + 5 = 133."""
    r = decode_packet(bytes([0x88, 0x32, 0x40, 0x05, 0x5F]))
    assert (r.spo2, r.pulse, r.pleth, r.finger) == (95, 133, 50, True)
    assert r.valid


def test_invalid_markers_become_none() -> None:
    """SpO2 127 and pulse 255 are the device's "no value"; bit 4 of byte 2 is no finger."""
    r = decode_packet(bytes([0x80, 0x00, 0x50, 0x7F, 0x7F]))
    assert (r.spo2, r.pulse, r.finger, r.valid) == (None, None, False, False)


@pytest.mark.parametrize(("packet", "why"), [
    (b"\x88\x32\x40\x05", "4 bytes"),
    (bytes([0x08, 0x32, 0x40, 0x05, 0x5F]), "no sync bit"),
    (bytes([0x88, 0xB2, 0x40, 0x05, 0x5F]), "sync bit inside"),
    (bytes([0x88, 0x32, 0x40, 0x05, 0x65]), "SpO2 101"),
    (bytes([0x88, 0x70, 0x40, 0x05, 0x5F]), "pleth 112"),
])
def test_garbage_is_refused(packet: bytes, why: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_packet(packet)
    assert info.value.reason == "malformed", why


@given(st.one_of(st.none(), st.integers(0, 100)), st.one_of(st.none(), st.integers(0, 254)),
       st.booleans())
def test_encode_then_decode_round_trips(spo2: int | None, pulse: int | None,
                                        finger: bool) -> None:
    r = decode_packet(encode_packet(spo2, pulse, finger=finger))
    assert (r.spo2, r.pulse, r.finger) == (spo2, pulse, finger)


def test_stream_reassembles_split_and_joined_notifications() -> None:
    a, b = encode_packet(97, 72), encode_packet(88, 130)
    stream = PacketStream()
    assert stream.feed(a[:3]) == []
    got = stream.feed(a[3:] + b)
    assert [(r.spo2, r.pulse) for r in got] == [(97, 72), (88, 130)]
    assert stream.dropped == 0


def test_stream_resyncs_after_garbage_and_cut_packets() -> None:
    """Leading junk is skipped, a packet cut short by a new sync byte is
    dropped, and a well-framed packet with impossible values is refused:
    each counted, the good packets still come through."""
    good = encode_packet(95, 80)
    bad_values = bytes([0x88, 0x32, 0x40, 0x05, 0x70])  # SpO2 112
    stream = PacketStream()
    got = stream.feed(b"\x01\x02\x03" + good[:2] + good + bad_values + good)
    assert [(r.spo2, r.pulse) for r in got] == [(95, 80), (95, 80)]
    assert stream.refused == 1
    assert stream.dropped == 3 + 2 + 5


@given(st.binary(max_size=300))
def test_stream_never_raises_and_stays_bounded(data: bytes) -> None:
    stream = PacketStream()
    for r in stream.feed(data):
        assert r.spo2 is None or 0 <= r.spo2 <= 100
    assert len(stream.buffer) <= 64
