"""The BerryMed BM1000 pulse oximeter's BLE packets: a pure decoder (and the
encoder the simulated oximeter uses).

The research's oximeter (a BerryMed BM1000B) sends a stream of 5-byte
packets as notifications on a "transparent UART" characteristic. The format
is BerryMed's public BCI protocol (https://github.com/zh2x/BCI_Protocol), as
implemented by Adafruit's ``adafruit_ble_berrymed_pulse_oximeter`` (the UUIDs
are those of its ``TransparentUARTService``):

=====  =================================================================
byte   bits
=====  =================================================================
0      bit 7 = 1 (sync: only the first byte has it); bits 0-3 signal
       strength; bit 4 no signal; bit 5 probe unplugged; bit 6 pulse beep
1      bits 0-6 plethysmogram (0-100)
2      bits 0-3 bar graph; bit 4 no finger; bit 5 pulse searching;
       bit 6 = bit 7 of the pulse rate
3      bits 0-6 pulse rate (bpm; 255 = invalid)
4      bits 0-6 SpO2 (%; 127 = invalid)
=====  =================================================================

A notification may carry several packets or a packet split across two, so
`PacketStream` reassembles: it buffers, and on a byte without the sync bit
where a packet must start it drops bytes until the next sync byte (counted in
`PacketStream.dropped`). A packet whose values are out of range (SpO2 above
100 but not 127) is refused and counted, never passed on: a bad radio frame
must not become a patient reading.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nanomesh.errors import RemoteProtocolError

SERVICE_UUID = "49535343-fe7d-4ae5-8fa9-9fafd205e455"
"""The transparent UART GATT service of the BM1000."""
NOTIFY_UUID = "49535343-1e4d-4bd9-ba61-23c647249616"
"""Its characteristic that notifies the packets."""

PACKET_LEN = 5
SYNC = 0x80
SPO2_INVALID = 127
PULSE_INVALID = 255
MAX_BUFFER = 64
"""Bytes `PacketStream` keeps at most (a dozen packets): a stream that never
syncs cannot grow memory."""


@dataclass(frozen=True, slots=True)
class OximeterReading:
    """One decoded packet. ``spo2`` / ``pulse`` are None when the device says
    the value is not valid yet (no finger, still searching)."""

    spo2: int | None
    pulse: int | None
    pleth: int
    finger: bool
    probe_unplugged: bool = False

    @property
    def valid(self) -> bool:
        return self.spo2 is not None and self.pulse is not None and self.finger


def decode_packet(packet: bytes) -> OximeterReading:
    """One 5-byte packet as a reading; RemoteProtocolError("malformed") if it
    breaks the framing or carries impossible values."""
    if len(packet) != PACKET_LEN:
        raise RemoteProtocolError("malformed", f"packet of {len(packet)} bytes, want 5")
    if not packet[0] & SYNC:
        raise RemoteProtocolError("malformed", "first byte lacks the sync bit")
    if any(b & SYNC for b in packet[1:]):
        raise RemoteProtocolError("malformed", "sync bit inside a packet")
    pleth = packet[1]
    pulse = packet[3] | ((packet[2] & 0x40) << 1)
    spo2 = packet[4]
    if spo2 > 100 and spo2 != SPO2_INVALID:
        raise RemoteProtocolError("malformed", f"SpO2 {spo2} out of range")
    if pleth > 100:
        raise RemoteProtocolError("malformed", f"plethysmogram {pleth} out of range")
    return OximeterReading(
        spo2=None if spo2 == SPO2_INVALID else spo2,
        pulse=None if pulse == PULSE_INVALID else pulse,
        pleth=pleth,
        finger=not packet[2] & 0x10,
        probe_unplugged=bool(packet[0] & 0x20),
    )


def encode_packet(spo2: int | None, pulse: int | None, *, pleth: int = 50,
                  finger: bool = True, signal: int = 8) -> bytes:
    """The packet a BM1000 sends for these values (the simulated oximeter's
    notifications). ValueError for values the protocol cannot carry."""
    s = SPO2_INVALID if spo2 is None else spo2
    p = PULSE_INVALID if pulse is None else pulse
    if not (0 <= s <= 100 or s == SPO2_INVALID) or not 0 <= p <= 255:
        raise ValueError(f"SpO2 {spo2} / pulse {pulse} cannot be encoded")
    if not 0 <= pleth <= 100 or not 0 <= signal <= 15:
        raise ValueError(f"pleth {pleth} / signal {signal} out of range")
    b2 = (0 if finger else 0x10) | ((p >> 1) & 0x40) | (0 if spo2 is not None else 0x20)
    return bytes([SYNC | signal, pleth, b2, p & 0x7F, s])


@dataclass
class PacketStream:
    """Reassembles notifications into readings (module docstring)."""

    buffer: bytearray = field(default_factory=bytearray)
    dropped: int = 0
    """Bytes skipped to find a sync byte, plus the bytes of refused packets."""
    refused: int = 0
    """Well-framed packets with impossible values."""

    def feed(self, data: bytes) -> list[OximeterReading]:
        """Add a notification's bytes; return the readings now complete."""
        self.buffer += data
        readings: list[OximeterReading] = []
        while True:
            self._sync()
            if len(self.buffer) < PACKET_LEN:
                break
            packet = bytes(self.buffer[:PACKET_LEN])
            resync = next((i for i in range(1, PACKET_LEN) if packet[i] & SYNC), None)
            if resync is not None:  # a new packet began early: this one is cut short
                self.dropped += resync
                del self.buffer[:resync]
                continue
            del self.buffer[:PACKET_LEN]
            try:
                readings.append(decode_packet(packet))
            except RemoteProtocolError:
                self.refused += 1
                self.dropped += PACKET_LEN
        if len(self.buffer) > MAX_BUFFER:
            self.dropped += len(self.buffer) - MAX_BUFFER
            del self.buffer[:-MAX_BUFFER]
        return readings

    def _sync(self) -> None:
        start = next((i for i, b in enumerate(self.buffer) if b & SYNC), len(self.buffer))
        if start:
            self.dropped += start
            del self.buffer[:start]
